//! A minimal writer of the Prometheus text format (0.0.4) for the exporters whose exact spelling
//! `prometheus-client` cannot produce: ingress-nginx names a counter
//! `nginx_ingress_controller_requests` (no `_total`, which OpenMetrics counters must end in), and
//! Envoy writes bucket bounds as `le="3600000"` where `prometheus-client` writes `3600000.0`.
//! Prometheus 2 keeps `le` values as written, so the spelling reaches queries.
//!
//! Counters and classic histograms only; a series exists from its first observation on, as with
//! the real exporters.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A label set, in the order the exporter writes it.
pub(crate) type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
pub(crate) struct CounterFamily {
    name: &'static str,
    help: &'static str,
    series: BTreeMap<Labels, f64>,
}

impl CounterFamily {
    pub(crate) fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            series: BTreeMap::new(),
        }
    }

    /// Creates the series at 0 if it does not exist (a pre-registered counter).
    pub(crate) fn touch(&mut self, labels: Labels) {
        self.series.entry(labels).or_insert(0.0);
    }

    pub(crate) fn inc(&mut self, labels: Labels) {
        *self.series.entry(labels).or_insert(0.0) += 1.0;
    }

    pub(crate) fn encode(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        for (labels, value) in &self.series {
            let _ = writeln!(
                out,
                "{}{} {}",
                self.name,
                label_text(labels, None),
                number(*value)
            );
        }
    }
}

#[derive(Debug)]
struct HistogramSeries {
    /// Observations at most each bound (cumulative, as exported).
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

#[derive(Debug)]
pub(crate) struct HistogramFamily {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    series: BTreeMap<Labels, HistogramSeries>,
}

impl HistogramFamily {
    pub(crate) fn new(name: &'static str, help: &'static str, bounds: &'static [f64]) -> Self {
        Self {
            name,
            help,
            bounds,
            series: BTreeMap::new(),
        }
    }

    pub(crate) fn observe(&mut self, labels: Labels, value: f64) {
        let series = self
            .series
            .entry(labels)
            .or_insert_with(|| HistogramSeries {
                buckets: vec![0; self.bounds.len()],
                count: 0,
                sum: 0.0,
            });
        for (bucket, bound) in series.buckets.iter_mut().zip(self.bounds) {
            if value <= *bound {
                *bucket += 1;
            }
        }
        series.count += 1;
        series.sum += value;
    }

    pub(crate) fn encode(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        for (labels, series) in &self.series {
            for (bound, bucket) in self.bounds.iter().zip(&series.buckets) {
                let le = number(*bound);
                let _ = writeln!(
                    out,
                    "{}_bucket{} {bucket}",
                    self.name,
                    label_text(labels, Some(&le))
                );
            }
            let _ = writeln!(
                out,
                "{}_bucket{} {}",
                self.name,
                label_text(labels, Some("+Inf")),
                series.count
            );
            let _ = writeln!(
                out,
                "{}_sum{} {}",
                self.name,
                label_text(labels, None),
                number(series.sum)
            );
            let _ = writeln!(
                out,
                "{}_count{} {}",
                self.name,
                label_text(labels, None),
                series.count
            );
        }
    }
}

/// A number as Go's `strconv.FormatFloat(v, 'f', -1, 64)` writes it: `3600000`, `0.5`.
fn number(value: f64) -> String {
    value.to_string()
}

fn label_text(labels: &Labels, le: Option<&str>) -> String {
    let mut out = String::from("{");
    let pairs = labels
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .chain(le.map(|le| ("le", le)));
    for (index, (name, value)) in pairs.enumerate() {
        if index > 0 {
            out.push(',');
        }
        let escaped = value
            .replace('\\', r"\\")
            .replace('"', "\\\"")
            .replace('\n', r"\n");
        let _ = write!(out, "{name}=\"{escaped}\"");
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_keep_envoys_spelling() {
        let mut family = HistogramFamily::new("h_ms", "help", &[0.5, 3_600_000.0]);
        family.observe(vec![("a", "x".to_owned())], 0.2);
        family.observe(vec![("a", "x".to_owned())], 1000.0);
        let mut out = String::new();
        family.encode(&mut out);
        assert!(out.contains("h_ms_bucket{a=\"x\",le=\"0.5\"} 1\n"), "{out}");
        assert!(
            out.contains("h_ms_bucket{a=\"x\",le=\"3600000\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("h_ms_bucket{a=\"x\",le=\"+Inf\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("h_ms_sum{a=\"x\"} 1000.2\n"), "{out}");
        assert!(out.contains("h_ms_count{a=\"x\"} 2\n"), "{out}");
    }

    #[test]
    fn a_counter_keeps_its_name_without_a_total_suffix_and_escapes_values() {
        let mut family = CounterFamily::new("nginx_ingress_controller_requests", "help");
        family.inc(vec![("path", "/a\"b".to_owned())]);
        family.inc(vec![("path", "/a\"b".to_owned())]);
        let mut out = String::new();
        family.encode(&mut out);
        assert!(out.contains("# TYPE nginx_ingress_controller_requests counter\n"));
        assert!(
            out.contains("nginx_ingress_controller_requests{path=\"/a\\\"b\"} 2\n"),
            "{out}"
        );
    }
}
