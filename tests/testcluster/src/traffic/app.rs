//! One simulated application pod (stable or canary): an HTTP server on 127.0.0.1 that answers any
//! path after its configured latency, fails its configured share of requests with a 5xx, and
//! exports what real pods export:
//!
//! - on `/metrics`, the client_golang series of METRICS.md "Plain application metrics",
//!   `http_requests_total{namespace, pod, service, code}` and `http_request_duration_seconds`
//!   (default client_golang buckets), encoded by `prometheus-client`;
//! - on `/stats/prometheus`, the Istio sidecar's view as the destination,
//!   `istio_requests_total` and `istio_request_duration_milliseconds` with Envoy's buckets.
//!
//! As in most apps in production, a series for a status code appears only with the first request
//! answered with that code: a healthy app has no `code="500"` series at all
//! ([`ErrorSeries::Late`], the default). [`ErrorSeries::Early`] is the app that pre-registers its
//! series at 0 when it starts.
//!
//! It must not decide traffic splits (the ingress does) nor talk to anything but its callers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use regex::Regex;

use super::exposition::{CounterFamily, HistogramFamily, Labels};
use super::{Latency, ServerGuard, is_picked, pod_name, serve_loopback};
use crate::prometheus::server::ScrapeTarget;

/// client_golang's `prometheus.DefBuckets`.
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Istio's default buckets for `istio_request_duration_milliseconds` (`istio/proxy`
/// `extensions/stats/plugin.cc`).
pub const ISTIO_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The response header naming which app answered (`stable` or `canary`), for the load generator.
pub const ROLE_HEADER: &str = "x-sluice-role";

/// Which side of the rollout an app plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The running version.
    Stable,
    /// The version being rolled out.
    Canary,
}

impl Role {
    /// `stable` or `canary`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "stable",
            Self::Canary => "canary",
        }
    }
}

/// How the scrape configuration names the pod's namespace and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelStyle {
    /// A ServiceMonitor (Prometheus Operator): `namespace`, `pod`, `service`.
    ServiceMonitor,
    /// The older `kubernetes-pods` job with `labelmap`: `kubernetes_namespace`,
    /// `kubernetes_pod_name`, and no `service`.
    PodsJob,
}

/// What one app is and how it behaves at start.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// Stable or canary.
    pub role: Role,
    /// The namespace label.
    pub namespace: String,
    /// The workload (Deployment) name: `<name>` for stable, `<name>-canary` for canary.
    pub workload: String,
    /// The Service the pod is reached through (the `service` and `destination_service_name`
    /// labels).
    pub service: String,
    /// The pod name, `<workload>-<hash>-<suffix>`.
    pub pod: String,
    /// The share of requests answered with `error_status`, in [0, 1].
    pub error_rate: f64,
    /// The status errors are answered with.
    pub error_status: StatusCode,
    /// How long requests take.
    pub latency: Latency,
    /// How the pod labels are named.
    pub label_style: LabelStyle,
    /// When the series of `error_status` (and of 200) is created.
    pub error_series: ErrorSeries,
}

/// When an app creates the request series of a status code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorSeries {
    /// At the first request answered with that code (client_golang's `WithLabelValues` on use).
    #[default]
    Late,
    /// At 0 when the app starts, for 200 and the error status (pre-registered).
    Early,
}

impl AppConfig {
    /// The stable app of `name` in `namespace`: workload and Service `<name>`.
    pub fn stable(namespace: &str, name: &str) -> Self {
        Self::new(Role::Stable, namespace, name.to_owned(), name.to_owned())
    }

    /// The canary app of `name` in `namespace`: workload and Service `<name>-canary`.
    pub fn canary(namespace: &str, name: &str) -> Self {
        let canary = format!("{name}-canary");
        Self::new(Role::Canary, namespace, canary.clone(), canary)
    }

    fn new(role: Role, namespace: &str, workload: String, service: String) -> Self {
        Self {
            role,
            namespace: namespace.to_owned(),
            pod: pod_name(&workload, namespace),
            workload,
            service,
            error_rate: 0.0,
            error_status: StatusCode::INTERNAL_SERVER_ERROR,
            latency: Latency::none(),
            label_style: LabelStyle::ServiceMonitor,
            error_series: ErrorSeries::Late,
        }
    }

    /// With its request series created when it starts, or at their first use.
    pub fn error_series(mut self, when: ErrorSeries) -> Self {
        self.error_series = when;
        self
    }

    /// With this error rate.
    pub fn error_rate(mut self, rate: f64) -> Self {
        self.error_rate = rate;
        self
    }

    /// With this latency.
    pub fn latency(mut self, latency: Latency) -> Self {
        self.latency = latency;
        self
    }
}

struct Behaviour {
    error_rate: f64,
    error_status: StatusCode,
    latency: Latency,
}

/// A client_golang-style label set, in the order the exporter writes it.
type PodLabels = Vec<(String, String)>;

/// A histogram family whose histograms all have [`DEFAULT_BUCKETS`].
type DurationFamily = Family<PodLabels, Histogram, fn() -> Histogram>;

struct PlainMetrics {
    registry: Registry,
    requests: Family<PodLabels, Counter>,
    durations: DurationFamily,
}

struct IstioMetrics {
    requests: CounterFamily,
    durations: HistogramFamily,
}

struct AppState {
    config: AppConfig,
    behaviour: Mutex<Behaviour>,
    served: AtomicU64,
    errors: AtomicU64,
    plain: PlainMetrics,
    istio: Mutex<IstioMetrics>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single update, so a poisoned lock still holds consistent data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starting an app failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to start the {role:?} app {pod} on 127.0.0.1")]
pub struct StartAppError {
    /// Its role.
    pub role: Role,
    /// Its pod name.
    pub pod: String,
    /// Why.
    pub source: std::io::Error,
}

/// A running simulated app. Dropping it stops the server.
pub struct TestApp {
    addr: SocketAddr,
    state: Arc<AppState>,
    _server: ServerGuard,
}

impl TestApp {
    /// Starts the app on a free port of 127.0.0.1.
    pub async fn start(config: AppConfig) -> Result<Self, StartAppError> {
        let mut registry = Registry::default();
        let requests = Family::<PodLabels, Counter>::default();
        let durations: DurationFamily =
            Family::new_with_constructor(|| Histogram::new(DEFAULT_BUCKETS));
        // prometheus-client appends `_total` to counters, giving `http_requests_total`.
        registry.register(
            "http_requests",
            "Total number of HTTP requests by status code",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Duration of HTTP requests",
            durations.clone(),
        );
        let state = Arc::new(AppState {
            behaviour: Mutex::new(Behaviour {
                error_rate: config.error_rate,
                error_status: config.error_status,
                latency: config.latency.clone(),
            }),
            config,
            served: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            plain: PlainMetrics {
                registry,
                requests,
                durations,
            },
            istio: Mutex::new(IstioMetrics {
                requests: CounterFamily::new("istio_requests_total", "requests_total"),
                durations: HistogramFamily::new(
                    "istio_request_duration_milliseconds",
                    "request_duration_milliseconds",
                    &ISTIO_BUCKETS_MS,
                ),
            }),
        });
        if state.config.error_series == ErrorSeries::Early {
            for status in [StatusCode::OK, state.config.error_status] {
                register(&state, status);
            }
        }
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/stats/prometheus", get(istio_stats))
            .fallback(answer)
            .with_state(Arc::clone(&state));
        let (addr, server) = serve_loopback(router)
            .await
            .map_err(|source| StartAppError {
                role: state.config.role,
                pod: state.config.pod.clone(),
                source,
            })?;
        Ok(Self {
            addr,
            state,
            _server: server,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it is.
    pub fn config(&self) -> &AppConfig {
        &self.state.config
    }

    /// Its pod name.
    pub fn pod(&self) -> &str {
        &self.state.config.pod
    }

    /// Changes the share of requests answered with an error, from the next request on.
    pub fn set_error_rate(&self, rate: f64) {
        lock(&self.state.behaviour).error_rate = rate;
    }

    /// Changes how long requests take, from the next request on.
    pub fn set_latency(&self, latency: Latency) {
        lock(&self.state.behaviour).latency = latency;
    }

    /// How many requests it has answered.
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::SeqCst)
    }

    /// How many of them were errors.
    pub fn errors(&self) -> u64 {
        self.state.errors.load(Ordering::SeqCst)
    }

    /// A scrape target for its `/metrics`.
    pub fn scrape_target(&self, job: &str) -> ScrapeTarget {
        ScrapeTarget::new(job, self.addr)
    }

    /// A scrape target for its Istio sidecar series (`/stats/prometheus`).
    pub fn istio_scrape_target(&self, job: &str) -> ScrapeTarget {
        ScrapeTarget::new(job, self.addr).path("/stats/prometheus")
    }

    /// The text of its `/metrics`, as a scrape would read it.
    pub fn plain_metrics_text(&self) -> String {
        encode_plain(&self.state)
    }
}

async fn answer(State(state): State<Arc<AppState>>) -> Response {
    let started = Instant::now();
    let index = state.served.fetch_add(1, Ordering::SeqCst);
    let (latency, status) = {
        let behaviour = lock(&state.behaviour);
        let status = if is_picked(behaviour.error_rate, index) {
            behaviour.error_status
        } else {
            StatusCode::OK
        };
        (behaviour.latency.for_request(index), status)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if status != StatusCode::OK {
        state.errors.fetch_add(1, Ordering::SeqCst);
    }
    record(&state, status, started.elapsed());
    (
        status,
        [(ROLE_HEADER, state.config.role.as_str())],
        state.config.role.as_str(),
    )
        .into_response()
}

fn record(state: &AppState, status: StatusCode, took: Duration) {
    let (pod_labels, request_labels, istio_labels) = labels(&state.config, status);
    state
        .plain
        .durations
        .get_or_create(&pod_labels)
        .observe(took.as_secs_f64());
    state.plain.requests.get_or_create(&request_labels).inc();
    let mut istio = lock(&state.istio);
    istio
        .durations
        .observe(istio_labels.clone(), took.as_secs_f64() * 1000.0);
    istio.requests.inc(istio_labels);
}

/// Creates the request series of `status` at 0, as an app that pre-registers them does.
fn register(state: &AppState, status: StatusCode) {
    let (_, request_labels, istio_labels) = labels(&state.config, status);
    let _created = state.plain.requests.get_or_create(&request_labels);
    lock(&state.istio).requests.touch(istio_labels);
}

/// The pod's labels, its request series' labels for `status`, and the sidecar's.
fn labels(config: &AppConfig, status: StatusCode) -> (PodLabels, PodLabels, Labels) {
    let code = status.as_u16().to_string();
    let pod_labels = match config.label_style {
        LabelStyle::ServiceMonitor => vec![
            ("namespace".to_owned(), config.namespace.clone()),
            ("pod".to_owned(), config.pod.clone()),
            ("service".to_owned(), config.service.clone()),
        ],
        LabelStyle::PodsJob => vec![
            ("kubernetes_namespace".to_owned(), config.namespace.clone()),
            ("kubernetes_pod_name".to_owned(), config.pod.clone()),
        ],
    };
    let mut request_labels = pod_labels.clone();
    request_labels.push(("code".to_owned(), code.clone()));
    let istio_labels: Labels = vec![
        ("reporter", "destination".to_owned()),
        ("source_workload", "unknown".to_owned()),
        ("source_workload_namespace", "unknown".to_owned()),
        ("destination_workload", config.workload.clone()),
        ("destination_workload_namespace", config.namespace.clone()),
        (
            "destination_service",
            format!("{}.{}.svc.cluster.local", config.service, config.namespace),
        ),
        ("destination_service_name", config.service.clone()),
        ("destination_service_namespace", config.namespace.clone()),
        ("request_protocol", "http".to_owned()),
        ("response_code", code),
        ("response_flags", "-".to_owned()),
        ("connection_security_policy", "mutual_tls".to_owned()),
    ];
    (pod_labels, request_labels, istio_labels)
}

fn encode_plain(state: &AppState) -> String {
    let mut out = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &state.plain.registry) {
        tracing::warn!(%error, "failed to encode the app's metrics");
    }
    client_golang_bounds(&out)
}

/// Rewrites whole-number bucket bounds the way client_golang writes them (`le="1"`, not
/// `le="1.0"`): Prometheus 2 keeps `le` as written, so a template selecting `le="1"` would
/// otherwise find nothing here while working in production.
fn client_golang_bounds(text: &str) -> String {
    static WHOLE_BOUND: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r#"le="([0-9]+)\.0""#).expect("a valid pattern"));
    WHOLE_BOUND.replace_all(text, r#"le="$1""#).into_owned()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        encode_plain(&state),
    )
        .into_response()
}

async fn istio_stats(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    {
        let istio = lock(&state.istio);
        istio.requests.encode(&mut out);
        istio.durations.encode(&mut out);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
