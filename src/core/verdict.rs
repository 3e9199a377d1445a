//! Analysis verdicts: what a metric's samples mean, as Pass, Fail or Unknown, with the values, the
//! limit and the test written out so a person reading status can check the judgement.
//!
//! Pure: samples in, verdict out. "Cannot measure" (no data held, NaN, several series, a provider
//! error, too few samples) is Unknown, never Fail; the state machine decides what Unknown does.
//! Must not query anything or decide about steps.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::validate::{DEFAULT_CONFIDENCE, ResolvedMetric};
use super::{MetricResult, Sample};
use crate::api::{CheckRecord, Comparison, ComparisonMethod, OnNoData, Verdict};

/// A verdict with its explanation.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    /// The canary's value, when there was one.
    pub value: Option<f64>,
    /// The stable side's value, in comparison mode.
    pub stable_value: Option<f64>,
    /// The limit the value was held to, e.g. `<= 0.05`.
    pub limit: Option<String>,
    /// Why, in words.
    pub reason: String,
}

impl Judgement {
    fn unknown(reason: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Unknown,
            value: None,
            stable_value: None,
            limit: None,
            reason: reason.into(),
        }
    }
}

/// Judges one metric's samples. Evidence comes first: with a count query, a side with fewer than
/// `minSamples` requests in the window gives Unknown whatever its value says.
pub fn judge(metric: &ResolvedMetric, result: &MetricResult) -> Judgement {
    if let Some(missing) = thin_evidence(metric, result) {
        return missing;
    }
    let value = match read(&result.canary, "canary") {
        Read::Value(v) => v,
        Read::NoData => return no_data(metric.on_no_data, "canary", "no data"),
        Read::NaN => return no_data(metric.on_no_data, "canary", "NaN"),
        Read::Unknown(reason) => return Judgement::unknown(reason),
    };
    let range = range_verdict(metric.min, metric.max, value);
    let mut judgement = match &range {
        Some((verdict, limit)) => Judgement {
            verdict: *verdict,
            value: Some(value),
            stable_value: None,
            limit: Some(limit.clone()),
            reason: format!(
                "canary value {value} {} the range {limit}",
                if *verdict == Verdict::Pass {
                    "is within"
                } else {
                    "is outside"
                }
            ),
        },
        None => Judgement {
            verdict: Verdict::Pass,
            value: Some(value),
            stable_value: None,
            limit: None,
            reason: format!("canary value {value}; no range or comparison to hold it to"),
        },
    };
    if let Some(compare) = &metric.compare {
        let compared = comparison(compare, value, result);
        let verdict = combine(judgement.verdict, compared.verdict, range.is_some());
        let limit = match (&judgement.limit, &compared.limit) {
            (Some(range), Some(cmp)) if range.is_empty() => Some(cmp.clone()),
            (Some(range), Some(cmp)) => Some(format!("{range} and {cmp}")),
            (None, l) | (l, None) => l.clone(),
        };
        let reason = if range.is_some() {
            format!("{}; {}", judgement.reason, compared.reason)
        } else {
            compared.reason
        };
        judgement = Judgement {
            verdict,
            value: Some(value),
            stable_value: compared.stable_value,
            limit,
            reason,
        };
    }
    judgement
}

/// The worse of a range verdict and a comparison verdict (Fail over Unknown over Pass). Without a
/// range, the comparison alone decides.
fn combine(range: Verdict, compared: Verdict, has_range: bool) -> Verdict {
    if !has_range {
        return compared;
    }
    match (range, compared) {
        (Verdict::Fail, _) | (_, Verdict::Fail) => Verdict::Fail,
        (Verdict::Unknown, _) | (_, Verdict::Unknown) => Verdict::Unknown,
        (Verdict::Pass, Verdict::Pass) => Verdict::Pass,
    }
}

enum Read {
    Value(f64),
    NoData,
    NaN,
    Unknown(String),
}

fn read(sample: &Sample, side: &str) -> Read {
    match sample {
        Sample::Value(v) if v.is_nan() => Read::NaN,
        // No limit may pass an infinity (a `min`-only limit would pass +Inf): it is no measurement.
        Sample::Value(v) if v.is_infinite() => Read::Unknown(format!(
            "the {side} query returned {} (often x/0: errors counted but no requests in the window)",
            if *v > 0.0 { "+Inf" } else { "-Inf" }
        )),
        Sample::Value(v) => Read::Value(*v),
        Sample::NoData => Read::NoData,
        Sample::NaN => Read::NaN,
        Sample::Several(n) => Read::Unknown(format!(
            "the {side} query returned {n} series; aggregate it to a single value (for example with sum() or max())"
        )),
        Sample::Error(e) => Read::Unknown(format!(
            "the metrics provider failed for the {side} query: {e}"
        )),
        Sample::Invalid(e) => Read::Unknown(format!(
            "the metrics provider refused the {side} query as invalid: {e}"
        )),
    }
}

/// With a count query: Unknown unless every side it counts holds at least `minSamples` requests
/// in the window. A count that is not a number is no evidence either.
fn thin_evidence(metric: &ResolvedMetric, result: &MetricResult) -> Option<Judgement> {
    let need = metric.min_samples;
    let stable = metric.compare.as_ref().and(result.stable_total.as_ref());
    for (sample, side) in [(result.canary_total.as_ref(), "canary"), (stable, "stable")] {
        let Some(sample) = sample else { continue };
        let reason = match read(sample, &format!("{side} count")) {
            Read::Value(n) if n >= need as f64 => continue,
            Read::Value(n) => format!(
                "{} {side} requests in the window, at least {need} needed",
                n.max(0.0).floor()
            ),
            Read::NoData | Read::NaN => format!(
                "the {side} count query returned no data: no {side} requests in the window, at least {need} needed"
            ),
            Read::Unknown(reason) => reason,
        };
        return Some(Judgement::unknown(reason));
    }
    None
}

fn no_data(on_no_data: OnNoData, side: &str, what: &str) -> Judgement {
    let (verdict, meaning) = match on_no_data {
        OnNoData::Hold => (Verdict::Unknown, "held as Unknown (onNoData: Hold)"),
        OnNoData::Fail => (Verdict::Fail, "counted as a failure (onNoData: Fail)"),
        OnNoData::Pass => (Verdict::Pass, "counted as a pass (onNoData: Pass)"),
    };
    let why = if what == "NaN" {
        " (often 0/0: no traffic in the window)"
    } else {
        ""
    };
    Judgement {
        verdict,
        value: None,
        stable_value: None,
        limit: None,
        reason: format!("the {side} query returned {what}{why}, {meaning}"),
    }
}

fn range_verdict(min: Option<f64>, max: Option<f64>, value: f64) -> Option<(Verdict, String)> {
    let pass = |ok: bool| if ok { Verdict::Pass } else { Verdict::Fail };
    match (min, max) {
        (None, None) => None,
        (Some(min), None) => Some((pass(value >= min), format!(">= {min}"))),
        (None, Some(max)) => Some((pass(value <= max), format!("<= {max}"))),
        (Some(min), Some(max)) => Some((
            pass(value >= min && value <= max),
            format!(">= {min} and <= {max}"),
        )),
    }
}

fn comparison(compare: &Comparison, canary: f64, result: &MetricResult) -> Judgement {
    let stable = match result.stable.as_ref().map(|s| read(s, "stable")) {
        None => return Judgement::unknown("no stable value to compare against"),
        Some(Read::Value(v)) => v,
        Some(Read::NoData | Read::NaN) => {
            return Judgement::unknown("the stable query returned no data or NaN; cannot compare");
        }
        Some(Read::Unknown(reason)) => return Judgement::unknown(reason),
    };
    match compare.method {
        ComparisonMethod::Difference | ComparisonMethod::Ratio => {
            if compare.method == ComparisonMethod::Difference {
                let max = compare.max_difference.unwrap_or(0.0);
                let verdict = if canary <= stable + max {
                    Verdict::Pass
                } else {
                    Verdict::Fail
                };
                Judgement {
                    verdict,
                    value: Some(canary),
                    stable_value: Some(stable),
                    limit: Some(format!("<= stable + {max} (= {})", stable + max)),
                    reason: format!(
                        "Difference: canary {canary} {} stable {stable} + {max}",
                        if verdict == Verdict::Pass { "<=" } else { ">" }
                    ),
                }
            } else {
                let ratio = compare.max_ratio.unwrap_or(1.0);
                // A zero stable value makes every ratio infinite: only a zero canary is no worse.
                let (verdict, reason) = if stable == 0.0 {
                    let ok = canary == 0.0;
                    (
                        if ok { Verdict::Pass } else { Verdict::Fail },
                        format!(
                            "Ratio: stable is 0, so the canary passes only at 0 (canary {canary})"
                        ),
                    )
                } else {
                    let ok = canary <= stable * ratio;
                    (
                        if ok { Verdict::Pass } else { Verdict::Fail },
                        format!(
                            "Ratio: canary {canary} is {:.3}× stable {stable} (limit {ratio}×)",
                            canary / stable
                        ),
                    )
                };
                Judgement {
                    verdict,
                    value: Some(canary),
                    stable_value: Some(stable),
                    limit: Some(format!("<= stable × {ratio} (= {})", stable * ratio)),
                    reason,
                }
            }
        }
        ComparisonMethod::TwoProportion => two_proportion(compare, canary, stable, result),
    }
}

/// One-sided two-proportion z-test: is the canary's failure proportion higher than stable's?
/// `canary` and `stable` are failure counts; the totals come from `totalQuery`.
fn two_proportion(
    compare: &Comparison,
    canary: f64,
    stable: f64,
    result: &MetricResult,
) -> Judgement {
    let total = |sample: &Option<Sample>, side: &str| match sample.as_ref().map(|s| read(s, side)) {
        Some(Read::Value(v)) => Ok(v),
        None | Some(Read::NoData | Read::NaN) => Err(format!("the {side} query returned no data")),
        Some(Read::Unknown(reason)) => Err(reason),
    };
    let (nc, ns) = match (
        total(&result.canary_total, "canary total"),
        total(&result.stable_total, "stable total"),
    ) {
        (Ok(nc), Ok(ns)) => (nc, ns),
        (Err(reason), _) | (_, Err(reason)) => return Judgement::unknown(reason),
    };
    let confidence = compare.confidence.unwrap_or(DEFAULT_CONFIDENCE);
    let counts = format!("canary {canary}/{nc} failed, stable {stable}/{ns} failed");
    let base = Judgement {
        verdict: Verdict::Unknown,
        value: Some(canary),
        stable_value: Some(stable),
        limit: Some(format!(
            "canary failure rate not higher than stable's at {confidence} confidence"
        )),
        reason: String::new(),
    };
    // `judge` has already held both totals to minSamples; a zero total is still no evidence.
    if nc <= 0.0 || ns <= 0.0 {
        return Judgement {
            reason: format!("TwoProportion: too few requests for a verdict ({counts})"),
            ..base
        };
    }
    if canary < 0.0 || stable < 0.0 || canary > nc || stable > ns {
        return Judgement {
            reason: format!("TwoProportion: failure counts outside their totals ({counts})"),
            ..base
        };
    }
    let (pc, ps) = (canary / nc, stable / ns);
    let pooled = (canary + stable) / (nc + ns);
    let se = (pooled * (1.0 - pooled) * (1.0 / nc + 1.0 / ns)).sqrt();
    let critical = inverse_normal_cdf(confidence);
    // With a pooled proportion of 0 or 1 both sides are identical: no evidence against the canary.
    let z = if se > 0.0 { (pc - ps) / se } else { 0.0 };
    let verdict = if z > critical {
        Verdict::Fail
    } else {
        Verdict::Pass
    };
    Judgement {
        verdict,
        reason: format!(
            "TwoProportion one-sided z-test: {counts}; rates {pc:.4} vs {ps:.4}, z = {z:.3} {} critical {critical:.3} (confidence {confidence})",
            if verdict == Verdict::Pass { "<=" } else { ">" }
        ),
        ..base
    }
}

/// The standard normal quantile for `p` in (0, 1), by Peter J. Acklam's rational approximation
/// ("An algorithm for computing the inverse normal cumulative distribution function", 2003;
/// relative error below 1.15e-9), which is ample for a confidence threshold.
pub fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    const P_LOW: f64 = 0.02425;
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < P_LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - P_LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    }
}

/// The status record of one metric's check.
pub fn check_record(
    metric: &ResolvedMetric,
    result: &MetricResult,
    revision: &str,
    step: i32,
    now: Timestamp,
) -> CheckRecord {
    let judgement = judge(metric, result);
    CheckRecord {
        metric: metric.name.clone(),
        revision: revision.to_owned(),
        step,
        query: (!result.query.is_empty()).then(|| result.query.clone()),
        value: judgement.value,
        stable_value: judgement.stable_value,
        limit: judgement.limit,
        verdict: judgement.verdict,
        reason: Some(judgement.reason),
        time: Time(now),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn metric(min: Option<f64>, max: Option<f64>) -> ResolvedMetric {
        ResolvedMetric {
            name: "error-rate".into(),
            template: None,
            query: "q".into(),
            total_query: None,
            args: BTreeMap::new(),
            min,
            max,
            interval: std::time::Duration::from_secs(60),
            window: std::time::Duration::from_secs(60),
            min_samples: 100,
            on_no_data: OnNoData::Hold,
            compare: None,
            provider: None,
        }
    }

    fn result(canary: Sample) -> MetricResult {
        MetricResult {
            metric: "error-rate".into(),
            query: "q".into(),
            canary,
            stable: None,
            canary_total: None,
            stable_total: None,
        }
    }

    fn compared(method: ComparisonMethod) -> ResolvedMetric {
        ResolvedMetric {
            compare: Some(Comparison {
                method,
                max_difference: Some(0.01),
                max_ratio: Some(1.5),
                confidence: Some(0.95),
                min_samples: Some(100),
            }),
            ..metric(None, None)
        }
    }

    #[test]
    fn a_value_within_max_passes_and_says_the_limit() {
        let j = judge(&metric(None, Some(0.05)), &result(Sample::Value(0.01)));
        assert_eq!(j.verdict, Verdict::Pass);
        assert_eq!(j.limit.as_deref(), Some("<= 0.05"));
        assert!(j.reason.contains("0.01"), "{}", j.reason);
    }

    #[test]
    fn a_value_above_max_fails() {
        let j = judge(&metric(None, Some(0.05)), &result(Sample::Value(0.2)));
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(j.reason.contains("0.2") && j.reason.contains("outside"));
    }

    #[test]
    fn a_value_below_min_fails_and_the_bounds_are_inclusive() {
        let m = metric(Some(0.99), Some(1.0));
        assert_eq!(
            judge(&m, &result(Sample::Value(0.98))).verdict,
            Verdict::Fail
        );
        assert_eq!(
            judge(&m, &result(Sample::Value(0.99))).verdict,
            Verdict::Pass
        );
        assert_eq!(
            judge(&m, &result(Sample::Value(1.0))).verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn no_data_follows_on_no_data() {
        for (on, expected) in [
            (OnNoData::Hold, Verdict::Unknown),
            (OnNoData::Fail, Verdict::Fail),
            (OnNoData::Pass, Verdict::Pass),
        ] {
            let m = ResolvedMetric {
                on_no_data: on,
                ..metric(None, Some(1.0))
            };
            let j = judge(&m, &result(Sample::NoData));
            assert_eq!(j.verdict, expected, "{on:?}");
            assert!(j.reason.contains("no data"));
        }
    }

    #[test]
    fn nan_follows_on_no_data_whether_sent_as_nan_or_as_a_value() {
        for (on, expected) in [
            (OnNoData::Hold, Verdict::Unknown),
            (OnNoData::Fail, Verdict::Fail),
            (OnNoData::Pass, Verdict::Pass),
        ] {
            for sample in [Sample::NaN, Sample::Value(f64::NAN)] {
                let m = ResolvedMetric {
                    on_no_data: on,
                    ..metric(None, Some(1.0))
                };
                let j = judge(&m, &result(sample));
                assert_eq!(j.verdict, expected, "{on:?}");
                assert!(j.reason.contains("NaN"), "{}", j.reason);
            }
        }
    }

    #[test]
    fn an_infinity_is_unknown_even_where_the_limit_would_pass_it() {
        for (min, max, value) in [
            (Some(0.99), None, f64::INFINITY),
            (None, Some(0.05), f64::NEG_INFINITY),
            (Some(0.0), Some(1.0), f64::INFINITY),
            (None, None, f64::INFINITY),
        ] {
            let j = judge(&metric(min, max), &result(Sample::Value(value)));
            assert_eq!(j.verdict, Verdict::Unknown, "{min:?} {max:?} {value}");
            assert!(j.reason.contains("Inf"), "{}", j.reason);
        }
    }

    #[test]
    fn a_check_with_fewer_requests_than_min_samples_is_unknown_whatever_its_value() {
        let m = metric(None, Some(0.05));
        for (count, value) in [(38.0, 0.0), (99.9, 0.0), (38.0, 0.5)] {
            let r = MetricResult {
                canary_total: Some(Sample::Value(count)),
                ..result(Sample::Value(value))
            };
            let j = judge(&m, &r);
            assert_eq!(j.verdict, Verdict::Unknown, "{count} {value}");
            assert!(
                j.reason
                    .contains("canary requests in the window, at least 100 needed"),
                "{}",
                j.reason
            );
        }
        let enough = MetricResult {
            canary_total: Some(Sample::Value(100.0)),
            ..result(Sample::Value(0.2))
        };
        assert_eq!(judge(&m, &enough).verdict, Verdict::Fail);
        let none = MetricResult {
            canary_total: Some(Sample::NoData),
            ..result(Sample::Value(0.0))
        };
        let j = judge(&m, &none);
        assert_eq!(j.verdict, Verdict::Unknown);
        assert!(j.reason.contains("no canary requests"), "{}", j.reason);
    }

    #[test]
    fn a_comparison_needs_min_samples_on_both_sides() {
        let m = compared(ComparisonMethod::Difference);
        let with = |nc: f64, ns: f64| MetricResult {
            stable: Some(Sample::Value(0.0)),
            canary_total: Some(Sample::Value(nc)),
            stable_total: Some(Sample::Value(ns)),
            ..result(Sample::Value(0.0))
        };
        let j = judge(&m, &with(500.0, 20.0));
        assert_eq!(j.verdict, Verdict::Unknown);
        assert!(j.reason.contains("20 stable requests"), "{}", j.reason);
        assert_eq!(judge(&m, &with(500.0, 500.0)).verdict, Verdict::Pass);
    }

    #[test]
    fn a_refused_query_is_never_a_pass() {
        let j = judge(
            &metric(None, Some(1.0)),
            &result(Sample::Invalid("parse error".into())),
        );
        assert_eq!(j.verdict, Verdict::Unknown);
    }

    #[test]
    fn several_series_are_unknown_and_the_reason_says_to_aggregate() {
        let j = judge(&metric(None, Some(1.0)), &result(Sample::Several(3)));
        assert_eq!(j.verdict, Verdict::Unknown);
        assert!(j.reason.contains("3 series") && j.reason.contains("aggregate"));
    }

    #[test]
    fn a_provider_error_is_unknown_not_fail() {
        let j = judge(
            &metric(None, Some(1.0)),
            &result(Sample::Error("connection refused".into())),
        );
        assert_eq!(j.verdict, Verdict::Unknown);
        assert!(j.reason.contains("connection refused"));
    }

    #[test]
    fn difference_compares_against_stable_plus_the_margin() {
        let m = compared(ComparisonMethod::Difference);
        let with = |c: f64, s: f64| MetricResult {
            stable: Some(Sample::Value(s)),
            ..result(Sample::Value(c))
        };
        let pass = judge(&m, &with(0.025, 0.02));
        assert_eq!(pass.verdict, Verdict::Pass);
        assert_eq!(pass.stable_value, Some(0.02));
        let fail = judge(&m, &with(0.05, 0.02));
        assert_eq!(fail.verdict, Verdict::Fail);
        assert!(
            fail.limit
                .as_deref()
                .is_some_and(|l| l.contains("stable + 0.01"))
        );
        assert!(fail.reason.contains("0.05") && fail.reason.contains("0.02"));
    }

    #[test]
    fn ratio_with_a_zero_stable_passes_only_a_zero_canary() {
        let m = compared(ComparisonMethod::Ratio);
        let with = |c: f64, s: f64| MetricResult {
            stable: Some(Sample::Value(s)),
            ..result(Sample::Value(c))
        };
        assert_eq!(judge(&m, &with(0.0, 0.0)).verdict, Verdict::Pass);
        assert_eq!(judge(&m, &with(0.001, 0.0)).verdict, Verdict::Fail);
        assert_eq!(judge(&m, &with(0.14, 0.1)).verdict, Verdict::Pass);
        assert_eq!(judge(&m, &with(0.16, 0.1)).verdict, Verdict::Fail);
    }

    #[test]
    fn a_comparison_without_stable_data_is_unknown() {
        let m = compared(ComparisonMethod::Difference);
        let r = MetricResult {
            stable: Some(Sample::NoData),
            ..result(Sample::Value(0.0))
        };
        assert_eq!(judge(&m, &r).verdict, Verdict::Unknown);
    }

    fn counts(fc: f64, nc: f64, fs: f64, ns: f64) -> MetricResult {
        MetricResult {
            stable: Some(Sample::Value(fs)),
            canary_total: Some(Sample::Value(nc)),
            stable_total: Some(Sample::Value(ns)),
            ..result(Sample::Value(fc))
        }
    }

    #[test]
    fn two_proportion_fails_a_clearly_worse_canary_and_shows_the_counts() {
        let m = compared(ComparisonMethod::TwoProportion);
        // 5% vs 1% on 1000 requests each: z ≈ 5.3.
        let j = judge(&m, &counts(50.0, 1000.0, 10.0, 1000.0));
        assert_eq!(j.verdict, Verdict::Fail);
        assert!(
            j.reason.contains("50/1000") && j.reason.contains("10/1000"),
            "{}",
            j.reason
        );
        assert!(j.reason.contains("z ="));
    }

    #[test]
    fn two_proportion_passes_a_difference_within_chance() {
        let m = compared(ComparisonMethod::TwoProportion);
        // 1.2% vs 1.0% on 1000 each: z ≈ 0.43, well below 1.645.
        assert_eq!(
            judge(&m, &counts(12.0, 1000.0, 10.0, 1000.0)).verdict,
            Verdict::Pass
        );
        // A better canary never fails a one-sided test.
        assert_eq!(
            judge(&m, &counts(0.0, 1000.0, 100.0, 1000.0)).verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn two_proportion_below_min_samples_is_unknown() {
        let m = compared(ComparisonMethod::TwoProportion);
        let j = judge(&m, &counts(10.0, 99.0, 0.0, 10000.0));
        assert_eq!(j.verdict, Verdict::Unknown);
        assert!(
            j.reason
                .contains("99 canary requests in the window, at least 100 needed")
        );
    }

    #[test]
    fn the_inverse_normal_matches_known_quantiles() {
        for (p, z) in [
            (0.5, 0.0),
            (0.95, 1.644_853_626_951),
            (0.975, 1.959_963_984_540),
            (0.99, 2.326_347_874_041),
            (0.9999, 3.719_016_485_456),
            (0.01, -2.326_347_874_041),
        ] {
            assert!((inverse_normal_cdf(p) - z).abs() < 1e-6, "p = {p}");
        }
    }
}
