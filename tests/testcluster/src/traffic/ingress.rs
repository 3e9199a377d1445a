//! A simulated ingress-nginx controller in front of the stable and canary apps: it splits requests
//! by the canary share a [`WeightSource`] reads from the router object, forwards each to the chosen
//! app, and exports the controller's series on `/metrics`:
//! `nginx_ingress_controller_requests` and `nginx_ingress_controller_request_duration_seconds`
//! with `status, method, path, namespace, ingress, service, canary, host` and
//! `controller_namespace, controller_class, controller_pod`.
//!
//! A rule without a host exports nothing, as with ingress-nginx's default `--metrics-per-host`.
//! As in ingress-nginx, canary requests carry the *primary* Ingress and Service and are told apart
//! only by `canary="<namespace>-<canary service>-<port>"`; primary requests have `canary=""`.
//!
//! The share is re-read every [`IngressConfig::refresh`] in the background (and on
//! [`SimulatedIngress::refresh`]); when a read fails the last known share stays. Until a share is
//! known, requests get a 503 and no series, like ingress-nginx's default backend.
//!
//! It must not change the router object; it only reads it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::app::{ROLE_HEADER, Role, TestApp};
use super::exposition::{CounterFamily, HistogramFamily, Labels};
use super::weights::WeightSource;
use super::{ServerGuard, is_picked, pod_name, serve_loopback};
use crate::prometheus::server::ScrapeTarget;

/// ingress-nginx's buckets for `request_duration_seconds` (client_golang's defaults).
pub const NGINX_BUCKETS: [f64; 11] = super::app::DEFAULT_BUCKETS;

/// How long [`SimulatedIngress::refresh`] waits for a fresh read.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(10);

/// How the ingress and its controller are named.
#[derive(Clone, Debug)]
pub struct IngressConfig {
    /// The Ingresses' namespace (the `namespace` label).
    pub namespace: String,
    /// The primary Ingress (the `ingress` label of every request).
    pub ingress: String,
    /// The primary (stable) Service (the `service` label of every request).
    pub service: String,
    /// The canary Service, `<service>-canary` by default (inside the `canary` label).
    pub canary_service: String,
    /// The Service port (inside the `canary` label).
    pub port: u16,
    /// The rule's host (the `host` label). `None` is a rule without a host, for which
    /// ingress-nginx with its default `--metrics-per-host=true` exports no request series at all
    /// (ingress-nginx issues 3713, 4657): requests are still routed, but no series appear.
    pub host: Option<String>,
    /// The rule's path (the `path` label; not the request path).
    pub path: String,
    /// The controller's namespace.
    pub controller_namespace: String,
    /// The controller's class.
    pub controller_class: String,
    /// The controller's pod name.
    pub controller_pod: String,
    /// How often the canary share is re-read.
    pub refresh: Duration,
}

impl IngressConfig {
    /// An Ingress `<service>` for host `<service>.example.test`, path `/`, port 80, in front of
    /// Service `service` and its canary `<service>-canary`, with a controller named as the Helm
    /// chart names it.
    pub fn new(namespace: &str, service: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            ingress: service.to_owned(),
            service: service.to_owned(),
            canary_service: format!("{service}-canary"),
            port: 80,
            host: Some(format!("{service}.example.test")),
            path: "/".to_owned(),
            controller_namespace: "ingress-nginx".to_owned(),
            controller_class: "k8s.io/ingress-nginx".to_owned(),
            controller_pod: pod_name("ingress-nginx-controller", namespace),
            refresh: Duration::from_millis(200),
        }
    }

    /// The `canary` label of canary requests, `<namespace>-<canary service>-<port>`.
    pub fn canary_upstream(&self) -> String {
        format!("{}-{}-{}", self.namespace, self.canary_service, self.port)
    }
}

struct NginxMetrics {
    requests: CounterFamily,
    durations: HistogramFamily,
}

struct IngressState {
    config: IngressConfig,
    stable: SocketAddr,
    canary: SocketAddr,
    share: watch::Sender<ShareReading>,
    routed: AtomicU64,
    metrics: Mutex<NginxMetrics>,
    http: reqwest::Client,
}

/// The latest read of the canary share.
#[derive(Clone, Debug, Default)]
struct ShareReading {
    /// The last share read successfully.
    share: Option<f64>,
    /// How many reads started.
    started: u64,
    /// The number (in start order, from 1) of the last read that finished, successful or not.
    finished: u64,
    /// The last read's error, if it failed.
    error: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is a single update, so a poisoned lock still holds consistent data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starting the ingress failed.
#[derive(Debug, thiserror::Error)]
pub enum StartIngressError {
    /// Binding 127.0.0.1 or building the HTTP client failed.
    #[error("failed to start the simulated ingress on 127.0.0.1")]
    Serve(#[source] std::io::Error),
}

/// A fresh read of the canary share did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RefreshShareError {
    /// The read failed.
    #[error("failed to read the canary share: {0}")]
    Read(String),
    /// No read finished in time.
    #[error("no read of the canary share finished within {0:?}")]
    Timeout(Duration),
}

/// A running simulated ingress. Dropping it stops the server and the weight reads.
pub struct SimulatedIngress {
    addr: SocketAddr,
    state: Arc<IngressState>,
    wake: Arc<Notify>,
    refresher: JoinHandle<()>,
    _server: ServerGuard,
}

impl SimulatedIngress {
    /// Starts the ingress in front of `stable` and `canary`, splitting by what `weights` reads.
    pub async fn start(
        config: IngressConfig,
        stable: &TestApp,
        canary: &TestApp,
        weights: impl WeightSource,
    ) -> Result<Self, StartIngressError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|error| StartIngressError::Serve(std::io::Error::other(error)))?;
        let (share, _) = watch::channel(ShareReading::default());
        let state = Arc::new(IngressState {
            stable: stable.addr(),
            canary: canary.addr(),
            share,
            routed: AtomicU64::new(0),
            metrics: Mutex::new(NginxMetrics {
                requests: CounterFamily::new(
                    "nginx_ingress_controller_requests",
                    "The total number of client requests",
                ),
                durations: HistogramFamily::new(
                    "nginx_ingress_controller_request_duration_seconds",
                    "The request processing time in milliseconds",
                    &NGINX_BUCKETS,
                ),
            }),
            http,
            config,
        });
        let wake = Arc::new(Notify::new());
        let refresher = tokio::spawn(refresh_loop(weights, Arc::clone(&state), Arc::clone(&wake)));
        let router = Router::new()
            .route("/metrics", get(metrics))
            .fallback(route_request)
            .with_state(Arc::clone(&state));
        let (addr, server) = serve_loopback(router)
            .await
            .map_err(StartIngressError::Serve)?;
        Ok(Self {
            addr,
            state,
            wake,
            refresher,
            _server: server,
        })
    }

    /// Where clients send requests.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its configuration.
    pub fn config(&self) -> &IngressConfig {
        &self.state.config
    }

    /// The canary share it routes by now, if one was read.
    pub fn canary_share(&self) -> Option<f64> {
        self.state.share.borrow().share
    }

    /// Reads the share again now and returns it, e.g. right after the test changed the router.
    pub async fn refresh(&self) -> Result<f64, RefreshShareError> {
        let mut readings = self.state.share.subscribe();
        // A read already under way may have fetched the object before the caller changed it;
        // only a read that starts after this point counts.
        let before = readings.borrow_and_update().started;
        self.wake.notify_one();
        let fresh = tokio::time::timeout(
            REFRESH_TIMEOUT,
            readings.wait_for(|reading| reading.finished > before),
        )
        .await
        .map_err(|_| RefreshShareError::Timeout(REFRESH_TIMEOUT))?
        .map_err(|_| RefreshShareError::Timeout(REFRESH_TIMEOUT))?
        .clone();
        match (fresh.error, fresh.share) {
            (Some(error), _) => Err(RefreshShareError::Read(error)),
            (None, Some(share)) => Ok(share),
            (None, None) => Err(RefreshShareError::Read("no share".to_owned())),
        }
    }

    /// A scrape target for the controller's `/metrics`.
    pub fn scrape_target(&self, job: &str) -> ScrapeTarget {
        ScrapeTarget::new(job, self.addr)
    }

    /// The text of its `/metrics`, as a scrape would read it.
    pub fn metrics_text(&self) -> String {
        encode(&self.state)
    }
}

impl Drop for SimulatedIngress {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

async fn refresh_loop(weights: impl WeightSource, state: Arc<IngressState>, wake: Arc<Notify>) {
    loop {
        let mut number = 0;
        state.share.send_modify(|reading| {
            reading.started += 1;
            number = reading.started;
        });
        let read = weights.canary_share().await;
        state.share.send_modify(|reading| {
            reading.finished = number;
            match read {
                Ok(share) => {
                    reading.share = Some(share.clamp(0.0, 1.0));
                    reading.error = None;
                }
                Err(error) => {
                    tracing::debug!(%error, "the simulated ingress keeps its last canary share");
                    reading.error = Some(error.to_string());
                }
            }
        });
        // Re-read on the period, or at once when asked to.
        let _woken = tokio::time::timeout(state.config.refresh, wake.notified()).await;
    }
}

async fn route_request(State(state): State<Arc<IngressState>>, request: Request) -> Response {
    let Some(share) = state.share.borrow().share else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no route yet").into_response();
    };
    let index = state.routed.fetch_add(1, Ordering::SeqCst);
    let role = if is_picked(share, index) {
        Role::Canary
    } else {
        Role::Stable
    };
    let upstream = match role {
        Role::Stable => state.stable,
        Role::Canary => state.canary,
    };
    let method = request.method().clone();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    let started = Instant::now();
    let forwarded = state
        .http
        .request(method.clone(), format!("http://{upstream}{path_and_query}"))
        .send()
        .await;
    let status = match &forwarded {
        Ok(response) => response.status(),
        // ingress-nginx answers 502 when the upstream cannot be reached.
        Err(_) => StatusCode::BAD_GATEWAY,
    };
    record(&state, role, method.as_str(), status, started.elapsed());
    (status, [(ROLE_HEADER, role.as_str())], role.as_str()).into_response()
}

fn record(state: &IngressState, role: Role, method: &str, status: StatusCode, took: Duration) {
    let config = &state.config;
    let Some(host) = &config.host else {
        return;
    };
    let canary = match role {
        Role::Stable => String::new(),
        Role::Canary => config.canary_upstream(),
    };
    let labels: Labels = vec![
        ("canary", canary),
        ("controller_class", config.controller_class.clone()),
        ("controller_namespace", config.controller_namespace.clone()),
        ("controller_pod", config.controller_pod.clone()),
        ("host", host.clone()),
        ("ingress", config.ingress.clone()),
        ("method", method.to_owned()),
        ("namespace", config.namespace.clone()),
        ("path", config.path.clone()),
        ("service", config.service.clone()),
        ("status", status.as_u16().to_string()),
    ];
    let mut metrics = lock(&state.metrics);
    metrics
        .durations
        .observe(labels.clone(), took.as_secs_f64());
    metrics.requests.inc(labels);
}

fn encode(state: &IngressState) -> String {
    let mut out = String::new();
    let metrics = lock(&state.metrics);
    metrics.requests.encode(&mut out);
    metrics.durations.encode(&mut out);
    out
}

async fn metrics(State(state): State<Arc<IngressState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        encode(&state),
    )
        .into_response()
}
