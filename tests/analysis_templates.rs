//! The shipped `analysis-templates/`: each file is a ClusterAnalysisTemplate with no field the
//! type does not know, renders with realistic variables, and, against the real Prometheus server
//! scraping the test cluster's traffic simulator, returns exactly one value that reflects the
//! simulated error rate and latency (and 0, not no data, for a healthy workload).
//!
//! The real-Prometheus tests skip with a message when `/usr/bin/prometheus` is missing, unless
//! `SLUICE_REQUIRE_PROMETHEUS` is set (CI sets it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::api::{self, ClusterAnalysisTemplate, MetricSpec, PrometheusProvider, TemplateRef};
use sluice::core::Sample;
use sluice::metrics::{
    CheckKey, InFlight, MetricProvider, Prometheus, PrometheusAuth, Queries, Variables, Workload,
    check, queries, render,
};
use sluice_testcluster::prometheus::server::{
    PrometheusServer, ScrapeTarget, StartPrometheusError,
};
use sluice_testcluster::traffic::Latency;
use sluice_testcluster::traffic::app::{AppConfig, LabelStyle, TestApp};
use sluice_testcluster::traffic::ingress::{IngressConfig, SimulatedIngress};
use sluice_testcluster::traffic::load::{self, LoadConfig};
use sluice_testcluster::traffic::weights::FixedShare;

fn templates_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("analysis-templates")
}

/// Every template file: (file stem, text), sorted by name.
fn template_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(templates_dir())
        .expect("analysis-templates/ exists")
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .map(|path| {
            let stem = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .expect("a UTF-8 file name")
                .to_owned();
            let text = std::fs::read_to_string(&path).expect("a readable template file");
            (stem, text)
        })
        .collect();
    files.sort();
    files
}

fn parse(text: &str) -> ClusterAnalysisTemplate {
    serde_saphyr::from_str(text).expect("a ClusterAnalysisTemplate")
}

fn template(name: &str) -> ClusterAnalysisTemplate {
    let (_, text) = template_files()
        .into_iter()
        .find(|(stem, _)| stem == name)
        .unwrap_or_else(|| panic!("no template {name}"));
    parse(&text)
}

/// Numbers as f64 everywhere, so `max: 500` and its round trip `500.0` compare equal.
fn normalise(value: Value) -> Value {
    match value {
        Value::Number(number) => number
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Value::Array(items) => Value::Array(items.into_iter().map(normalise).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, normalise(v))).collect())
        }
        other @ (Value::Null | Value::Bool(_) | Value::String(_)) => other,
    }
}

#[test]
fn every_file_is_a_cluster_analysis_template_with_no_unknown_fields() {
    let files = template_files();
    assert!(files.len() >= 8, "{} templates", files.len());
    for (stem, text) in files {
        let raw: Value = serde_saphyr::from_str(&text).unwrap();
        let typed = parse(&text);
        // A field the types do not know is dropped by the round trip.
        let round_trip = serde_json::to_value(&typed).unwrap();
        assert_eq!(
            normalise(round_trip),
            normalise(raw.clone()),
            "{stem}: unknown fields"
        );
        assert_eq!(raw["apiVersion"], "sluice.dev/v1alpha1", "{stem}");
        assert_eq!(
            typed.metadata.name.as_deref(),
            Some(stem.as_str()),
            "{stem}"
        );
        let spec = &typed.spec.template;
        let description = spec.description.as_deref().unwrap_or_default();
        assert!(
            (100..=1024).contains(&description.len()),
            "{stem}: a description saying what it assumes, within the schema's 1024 characters"
        );
        assert!(
            spec.max.is_some() || spec.compare.is_some(),
            "{stem}: a default limit or comparison"
        );
        assert!(
            spec.query.contains("sum"),
            "{stem}: every query aggregates to one series"
        );
    }
}

fn variables() -> Variables {
    Variables {
        namespace: "shop".into(),
        target: "web".into(),
        canary: "web-canary".into(),
        stable: "web".into(),
        service: "web".into(),
        interval: Duration::from_secs(10),
        revision: "5d8f7c9b4".into(),
    }
}

/// The metric a user writes to use `name`, with the template's own comparison, if any.
fn metric(name: &str, args: &[(&str, &str)]) -> MetricSpec {
    MetricSpec {
        name: name.into(),
        template_ref: Some(TemplateRef {
            name: name.into(),
            kind: Some(api::TemplateKind::ClusterAnalysisTemplate),
        }),
        args: args
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..MetricSpec::default()
    }
}

#[test]
fn every_template_renders_with_realistic_variables() {
    for (stem, text) in template_files() {
        let spec = parse(&text).spec.template;
        let rendered = queries(&metric(&stem, &[]), Some(&spec), &variables())
            .unwrap_or_else(|error| panic!("{stem}: {error}"));
        let all = [
            Some(&rendered.canary),
            rendered.stable.as_ref(),
            rendered.canary_total.as_ref(),
            rendered.stable_total.as_ref(),
        ];
        for query in all.into_iter().flatten() {
            assert!(!query.contains("{{"), "{stem}: {query}");
            assert!(query.contains("[10s]"), "{stem}: the interval is used");
            assert!(query.contains("\"shop\""), "{stem}: the namespace is used");
        }
        let two_proportion = spec
            .compare
            .as_ref()
            .is_some_and(|c| c.method == api::ComparisonMethod::TwoProportion);
        // Every template declares the count its verdicts need, with a floor.
        assert!(rendered.canary_total.is_some(), "{stem}: no totalQuery");
        assert_eq!(
            rendered.stable_total.is_some(),
            spec.compare.is_some(),
            "{stem}"
        );
        assert!(
            spec.min_samples.is_some_and(|n| n >= 50),
            "{stem}: minSamples"
        );
        let _ = two_proportion;
        // Every query parses as PromQL and reads exactly the interval back.
        for query in all.into_iter().flatten() {
            assert_eq!(
                sluice::core::query::parse_window(query),
                Ok(Duration::from_secs(10)),
                "{stem}: {query}"
            );
        }
        if stem.starts_with("nginx") {
            assert!(rendered.canary.contains(r#"canary!="""#), "{stem}");
            assert!(!rendered.canary.contains("upstream_latency"), "{stem}");
        } else {
            assert!(rendered.canary.contains("\"web-canary"), "{stem}");
        }
        if let Some(stable) = &rendered.stable {
            assert!(!stable.contains("web-canary"), "{stem}: {stable}");
        }
    }
}

#[test]
fn every_template_is_listed_in_the_readme() {
    let readme = std::fs::read_to_string(templates_dir().join("README.md")).unwrap();
    for (stem, _) in template_files() {
        assert!(
            readme.contains(&format!("`{stem}`")),
            "{stem} missing from README.md"
        );
    }
}

async fn start_prometheus(targets: &[ScrapeTarget]) -> Option<PrometheusServer> {
    match PrometheusServer::start(targets).await {
        Err(missing @ StartPrometheusError::BinaryMissing { .. })
            if std::env::var_os("SLUICE_REQUIRE_PROMETHEUS").is_none() =>
        {
            eprintln!("skipping the real-Prometheus test: {missing}");
            None
        }
        started => Some(started.expect("Prometheus starts and scrapes every target")),
    }
}

fn provider(prometheus: &PrometheusServer) -> Prometheus {
    Prometheus::new(
        &PrometheusProvider {
            address: prometheus.url(),
            timeout: Some(api::Duration::from_secs(5)),
            secret_ref: None,
        },
        &PrometheusAuth::default(),
    )
    .expect("a client for the test Prometheus")
}

#[tokio::test]
async fn hostile_values_reach_prometheus_as_exactly_the_label_value_they_were() {
    let Some(prometheus) = start_prometheus(&[]).await else {
        return;
    };
    let provider = provider(&prometheus);
    let hostile = [
        r#"") or vector(1) #"#,
        "\"} or vector(2)",
        "it's \\ a \n new\tline \r\u{7}",
        "\u{0}é😀\u{fffd}\u{2028}",
        "`raw`",
    ];
    // Why only the delimiting quote is escaped: PromQL unquotes with Go's rules, which refuse an
    // escaped single quote inside double quotes.
    let over_escaped = provider
        .query(r#"label_replace(vector(1), "v", "it\'s", "", "")"#)
        .await;
    assert!(
        matches!(&over_escaped, Sample::Invalid(reason) if reason.contains("parse error")),
        "{over_escaped:?}"
    );
    for value in hostile {
        for template in [
            r#"count(label_replace(vector(1), "v", "{{ args.v }}", "", "") == 1)"#,
            r#"count(label_replace(vector(1), 'v', '{{ args.v }}', '', '') == 1)"#,
        ] {
            let args = BTreeMap::from([("v".to_owned(), value.to_owned())]);
            let query = render(template, &variables(), Workload::Canary, &args).unwrap();
            // One series whatever the value: the query kept its shape.
            assert_eq!(provider.query(&query).await, Sample::Value(1.0), "{query}");
            // And the label holds exactly the value given.
            let labelled = query
                .trim_start_matches("count(")
                .trim_end_matches(" == 1)")
                .to_owned();
            let series = prometheus.query(&labelled).await.unwrap();
            assert_eq!(series.len(), 1, "{labelled}");
            assert_eq!(
                series[0].0.get("v").map(String::as_str),
                Some(value),
                "{labelled}"
            );
        }
    }
}

/// Polls `query` until `accept` holds; fails with the last sample after `timeout`.
async fn poll(
    provider: &Prometheus,
    query: &str,
    timeout: Duration,
    accept: impl Fn(&Sample) -> bool,
) -> Sample {
    let deadline = Instant::now() + timeout;
    loop {
        let sample = provider.query(query).await;
        if accept(&sample) {
            return sample;
        }
        assert!(
            Instant::now() < deadline,
            "{query}\nhad no acceptable value within {timeout:?}; last: {sample:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn near(expected: f64, tolerance: f64) -> impl Fn(&Sample) -> bool {
    move |sample| matches!(sample, Sample::Value(v) if (v - expected).abs() <= tolerance)
}

fn within(low: f64, high: f64) -> impl Fn(&Sample) -> bool {
    move |sample| matches!(sample, Sample::Value(v) if *v > low && *v <= high)
}

fn rendered(name: &str, args: &[(&str, &str)], vars: &Variables) -> Queries {
    queries(
        &metric(name, args),
        Some(&template(name).spec.template),
        vars,
    )
    .unwrap_or_else(|error| panic!("{name}: {error}"))
}

fn value(sample: &Option<Sample>) -> f64 {
    match sample {
        Some(Sample::Value(v)) => *v,
        other => panic!("expected a value, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_measure_the_simulated_error_rate_and_latency_on_a_real_prometheus() {
    let started = Instant::now();
    let stable = TestApp::start(
        AppConfig::stable("shop", "web").latency(Latency::Fixed(Duration::from_millis(20))),
    )
    .await
    .unwrap();
    let canary = TestApp::start(
        AppConfig::canary("shop", "web")
            .error_rate(0.2)
            .latency(Latency::Fixed(Duration::from_millis(300))),
    )
    .await
    .unwrap();
    let ingress = SimulatedIngress::start(
        IngressConfig::new("shop", "web"),
        &stable,
        &canary,
        FixedShare::new(0.5),
    )
    .await
    .unwrap();
    let Some(prometheus) = start_prometheus(&[
        stable.scrape_target("apps"),
        canary.scrape_target("apps"),
        stable.istio_scrape_target("envoy"),
        canary.istio_scrape_target("envoy"),
        ingress.scrape_target("ingress-nginx"),
    ])
    .await
    else {
        return;
    };
    let traffic = load::spawn(
        ingress.addr(),
        LoadConfig::new(100.0, 100_000)
            .host("web.example.test")
            .max_duration(Duration::from_secs(60)),
    )
    .unwrap();
    let provider = provider(&prometheus);
    let vars = variables();
    let wait = Duration::from_secs(20);

    // Error ratios: the canary fails every fifth request; stable never fails and has no 5xx
    // series at all, which must read as 0, not as no data.
    for name in ["app-error-rate", "istio-error-rate"] {
        let q = rendered(name, &[], &vars);
        poll(&provider, &q.canary, wait, near(0.2, 0.03)).await;
        let stable_side = render(
            &template(name).spec.template.query,
            &vars,
            Workload::Stable,
            &sluice::metrics::template::template_args(
                &template(name).spec.template.args,
                &BTreeMap::new(),
            )
            .unwrap(),
        )
        .unwrap();
        poll(&provider, &stable_side, wait, |s| *s == Sample::Value(0.0)).await;
    }
    let nginx = rendered("nginx-error-rate", &[], &vars);
    poll(&provider, &nginx.canary, wait, near(0.2, 0.03)).await;

    // Latency: canary answers in 300 ms (bucket 0.25 to 0.5 s), stable in 20 ms; on a busy
    // 2-core machine stable's tail can reach the next bucket, so it is held to 0.01 to 0.1 s.
    for name in ["app-latency-p99", "nginx-latency-p99"] {
        let q = rendered(name, &[], &vars);
        poll(&provider, &q.canary, wait, within(0.25, 0.5)).await;
    }
    let app_latency = &template("app-latency-p99").spec.template;
    let stable_latency = render(
        &app_latency.query,
        &vars,
        Workload::Stable,
        &sluice::metrics::template::template_args(&app_latency.args, &BTreeMap::new()).unwrap(),
    )
    .unwrap();
    poll(&provider, &stable_latency, wait, within(0.01, 0.1)).await;
    let istio_latency = rendered("istio-latency-p99", &[], &vars);
    poll(&provider, &istio_latency.canary, wait, within(250.0, 500.0)).await;

    // Counts for the two-proportion test, all four queries in one check.
    for name in ["app-error-counts", "istio-error-counts"] {
        let q = rendered(name, &[], &vars);
        let deadline = Instant::now() + wait;
        loop {
            let result = check(
                &provider,
                &InFlight::new(4),
                CheckKey {
                    namespace: "shop".into(),
                    canary: "web".into(),
                    metric: name.into(),
                },
                &q,
            )
            .await;
            let canary_failed = value(&Some(result.canary.clone()));
            let canary_total = value(&result.canary_total);
            let stable_failed = value(&result.stable);
            let stable_total = value(&result.stable_total);
            let share = canary_failed / canary_total;
            if stable_failed == 0.0 && stable_total > 100.0 && (share - 0.2).abs() <= 0.03 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: canary {canary_failed}/{canary_total}, stable {stable_failed}/{stable_total}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // No traffic at all is no data, not 0; nor is too little traffic a value.
    let ghost = Variables {
        canary: "ghost-canary".into(),
        ..variables()
    };
    for name in ["app-error-rate", "istio-error-rate", "app-latency-p99"] {
        let q = rendered(name, &[], &ghost);
        assert_eq!(provider.query(&q.canary).await, Sample::NoData, "{name}");
    }

    // A query that forgets to aggregate is reported as several series, never averaged.
    let per_pod = r#"rate(http_requests_total{namespace="shop", code="200"}[10s])"#;
    poll(&provider, per_pod, wait, |s| *s == Sample::Several(2)).await;

    traffic.stop();
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_templates_read_the_kubernetes_pods_job_labels_through_their_arguments() {
    let pods_job = |config: AppConfig| AppConfig {
        label_style: LabelStyle::PodsJob,
        ..config
    };
    let stable = TestApp::start(pods_job(AppConfig::stable("shop", "web")))
        .await
        .unwrap();
    let canary = TestApp::start(pods_job(AppConfig::canary("shop", "web").error_rate(0.2)))
        .await
        .unwrap();
    let Some(prometheus) =
        start_prometheus(&[stable.scrape_target("pods"), canary.scrape_target("pods")]).await
    else {
        return;
    };
    let _to_canary = load::spawn(canary.addr(), LoadConfig::new(60.0, 100_000)).unwrap();
    let _to_stable = load::spawn(stable.addr(), LoadConfig::new(60.0, 100_000)).unwrap();
    let provider = provider(&prometheus);
    let vars = variables();
    let args = [
        ("namespace-label", "kubernetes_namespace"),
        ("pod-label", "kubernetes_pod_name"),
    ];
    let wait = Duration::from_secs(20);
    let q = rendered("app-error-rate", &args, &vars);
    poll(&provider, &q.canary, wait, near(0.2, 0.03)).await;
    let counts = rendered("app-error-counts", &args, &vars);
    poll(&provider, counts.stable.as_deref().unwrap(), wait, |s| {
        *s == Sample::Value(0.0)
    })
    .await;
    // With the ServiceMonitor label names there is nothing to find: no data, never 0.
    let defaults = rendered("app-error-rate", &[], &vars);
    assert_eq!(provider.query(&defaults.canary).await, Sample::NoData);
}

/// Evaluates `query` at `time` (Unix seconds) on `prometheus`: the value, or `None` for no data.
async fn value_at(prometheus: &PrometheusServer, query: &str, time: f64) -> Option<f64> {
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/api/v1/query", prometheus.url()))
        .form(&[("query", query.to_owned()), ("time", format!("{time:.3}"))])
        .send()
        .await
        .expect("Prometheus answers")
        .json()
        .await
        .expect("a JSON answer");
    assert_eq!(answer["status"], "success", "{query}: {answer}");
    answer["data"]["result"][0]["value"][1]
        .as_str()
        .map(|v| v.parse().expect("a number"))
}

/// The trap the error templates used to fall into, pinned on the real Prometheus: a canary that
/// has served good requests for a while starts failing, and its 5xx series is born at its first
/// error. Evaluated at the instant of that series' first sample, `rate()` sees the requests but
/// not the errors (a series needs two samples), and `... or vector(0)` read that as "no errors".
/// The templates must give no data there instead, and the error rate once the window has moved
/// past the birth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_young_error_series_is_no_data_never_zero_errors() {
    let canary = TestApp::start(AppConfig::canary("shop", "web"))
        .await
        .unwrap();
    let Some(prometheus) = start_prometheus(&[canary.scrape_target("apps")]).await else {
        return;
    };
    let traffic = load::spawn(canary.addr(), LoadConfig::new(50.0, 100_000)).unwrap();
    let provider = provider(&prometheus);
    let vars = variables();
    let window = 10.0;
    // Good requests first: the 200 series is mature before any error exists.
    let twos = r#"count_over_time(http_requests_total{namespace="shop", code="200"}[10s])"#;
    poll(
        &provider,
        twos,
        Duration::from_secs(20),
        |s| matches!(s, Sample::Value(n) if *n >= 4.0),
    )
    .await;
    canary.set_error_rate(0.3);
    let errors = r#"http_requests_total{namespace="shop", code="500"}"#;
    poll(&provider, errors, Duration::from_secs(20), |s| {
        matches!(s, Sample::Value(_))
    })
    .await;
    // The first sample of the 5xx series, read back raw: its birth as Prometheus saw it.
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/api/v1/query", prometheus.url()))
        .form(&[("query", format!("{errors}[1h]"))])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = answer["data"]["result"][0]["values"][0][0]
        .as_f64()
        .expect("the 5xx series' first sample");
    let old_rate = r#"(sum(rate(http_requests_total{namespace="shop", pod=~"web-canary-[a-z0-9]+-[a-z0-9]+", code=~"5.."}[10s])) or vector(0)) / sum(rate(http_requests_total{namespace="shop", pod=~"web-canary-[a-z0-9]+-[a-z0-9]+"}[10s]))"#;
    assert_eq!(
        value_at(&prometheus, old_rate, first).await,
        Some(0.0),
        "the trap as it was: the old form reads the young series as no errors"
    );
    for name in ["app-error-rate", "app-error-counts"] {
        let q = rendered(name, &[], &vars);
        assert_eq!(
            value_at(&prometheus, &q.canary, first).await,
            None,
            "{name}: a young 5xx series is no data at its birth"
        );
    }
    // Once the window has moved past the birth, the rate is the canary's 30%.
    let after = first + window + 2.0;
    poll(
        &provider,
        "time()",
        Duration::from_secs(30),
        |s| matches!(s, Sample::Value(now) if *now >= after),
    )
    .await;
    let q = rendered("app-error-rate", &[], &vars);
    let rate = value_at(&prometheus, &q.canary, after)
        .await
        .expect("a rate");
    assert!(
        (0.2..0.4).contains(&rate),
        "the canary's error rate: {rate}"
    );
    traffic.stop();
}
