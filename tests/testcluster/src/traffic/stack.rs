//! The usual arrangement in one call: a stable and a canary app of one service and the simulated
//! ingress in front of them, with the scrape targets a Prometheus needs to see all their series.
//!
//! A convenience over [`super::app`] and [`super::ingress`] only; tests that need other names or
//! behaviour build the parts themselves.

use super::app::{AppConfig, StartAppError, TestApp};
use super::ingress::{IngressConfig, SimulatedIngress, StartIngressError};
use super::weights::WeightSource;
use crate::prometheus::server::ScrapeTarget;

/// The scrape job of the apps' `/metrics`.
pub const APPS_JOB: &str = "apps";
/// The scrape job of the apps' Istio sidecar series.
pub const SIDECARS_JOB: &str = "envoy-stats";
/// The scrape job of the ingress controller.
pub const INGRESS_JOB: &str = "ingress-nginx";

/// Starting the stack failed.
#[derive(Debug, thiserror::Error)]
pub enum StartStackError {
    /// An app did not start.
    #[error(transparent)]
    App(#[from] StartAppError),
    /// The ingress did not start.
    #[error(transparent)]
    Ingress(#[from] StartIngressError),
}

/// A stable app, a canary app and the ingress that splits between them. Dropping it stops all
/// three.
pub struct TrafficStack {
    /// The stable app (workload and Service `<name>`).
    pub stable: TestApp,
    /// The canary app (workload and Service `<name>-canary`).
    pub canary: TestApp,
    /// The ingress, splitting by what the weight source reads.
    pub ingress: SimulatedIngress,
}

impl TrafficStack {
    /// Starts both apps of `name` in `namespace` with the given configurations and the ingress in
    /// front of them.
    pub async fn start_with(
        stable: AppConfig,
        canary: AppConfig,
        ingress: IngressConfig,
        weights: impl WeightSource,
    ) -> Result<Self, StartStackError> {
        let stable = TestApp::start(stable).await?;
        let canary = TestApp::start(canary).await?;
        let ingress = SimulatedIngress::start(ingress, &stable, &canary, weights).await?;
        Ok(Self {
            stable,
            canary,
            ingress,
        })
    }

    /// Starts healthy, fast apps of `name` in `namespace` and the ingress in front of them.
    pub async fn start(
        namespace: &str,
        name: &str,
        weights: impl WeightSource,
    ) -> Result<Self, StartStackError> {
        Self::start_with(
            AppConfig::stable(namespace, name),
            AppConfig::canary(namespace, name),
            IngressConfig::new(namespace, name),
            weights,
        )
        .await
    }

    /// Every target a Prometheus should scrape: both apps' `/metrics` (job [`APPS_JOB`]), their
    /// sidecar series (job [`SIDECARS_JOB`]) and the ingress (job [`INGRESS_JOB`]).
    pub fn scrape_targets(&self) -> Vec<ScrapeTarget> {
        vec![
            self.stable.scrape_target(APPS_JOB),
            self.canary.scrape_target(APPS_JOB),
            self.stable.istio_scrape_target(SIDECARS_JOB),
            self.canary.istio_scrape_target(SIDECARS_JOB),
            self.ingress.scrape_target(INGRESS_JOB),
        ]
    }
}
