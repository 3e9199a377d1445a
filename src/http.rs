//! The controller's HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (the process
//! is serving) and `/readyz` (the controller has synced its caches and may act), on one port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Whether the controller is ready to act; flipped once its caches are synced.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// The routes, for serving or for testing without a socket.
pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            registry,
            readiness,
        })
}

/// Binds `addr` and serves until `shutdown` resolves. Returns the bound address through `bound`
/// before serving, so callers binding port 0 learn the real port.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    readiness: Readiness,
    bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    bound(listener.local_addr()?);
    axum::serve(listener, router(registry, readiness))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed to encode metrics",
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not yet synced")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::metrics::{ControllerMetrics, PhaseLabels};

    async fn started() -> (
        SocketAddr,
        Readiness,
        ControllerMetrics,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let mut registry = Registry::default();
        let metrics = ControllerMetrics::register(&mut registry);
        let readiness = Readiness::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let server_readiness = readiness.clone();
        tokio::spawn(async move {
            serve(
                "127.0.0.1:0".parse().unwrap(),
                Arc::new(registry),
                server_readiness,
                move |addr| {
                    let _ = addr_tx.send(addr);
                },
                async move {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
        });
        (addr_rx.await.unwrap(), readiness, metrics, stop)
    }

    #[tokio::test]
    async fn readyz_answers_503_until_the_controller_is_ready() {
        let (addr, readiness, _metrics, _stop) = started().await;
        let url = format!("http://{addr}/readyz");
        assert_eq!(reqwest::get(&url).await.unwrap().status(), 503);
        readiness.set_ready(true);
        assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
        let health = reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
    }

    #[tokio::test]
    async fn metrics_shows_what_the_controller_recorded() {
        let (addr, _readiness, metrics, _stop) = started().await;
        metrics.reconciles.inc();
        metrics
            .canaries
            .get_or_create(&PhaseLabels {
                phase: "Progressing".into(),
            })
            .set(3);
        let body = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("sluice_reconciles_total 1"), "{body}");
        assert!(
            body.contains("sluice_canaries{phase=\"Progressing\"} 3"),
            "{body}"
        );
        assert!(body.contains("# EOF"), "{body}");
    }
}
