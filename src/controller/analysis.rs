//! Runs the checks `core::due` asks for, through the shared [check runner](crate::metrics::runner):
//! every metric of the observed Canary, concurrently, against its Prometheus (else the
//! controller's `--prometheus-url`). It never judges a value. At most one check per (canary,
//! metric) runs at once, and the whole set is bounded (I5).

use kube::Client;

use super::observe::Observed;
use crate::core::MetricResult;
use crate::metrics::{Checked, DefaultProvider, InFlight, Runner};

/// Why a metric is not checked when neither it, the Canary nor the controller names a Prometheus.
const NO_PROMETHEUS: &str = "no Prometheus configured: set spec.analysis.provider or run the controller with --prometheus-url";

/// Shared analysis state: the default Prometheus and the in-flight registry.
#[derive(Clone, Debug)]
pub struct Analysis {
    /// `--prometheus-url`, used when neither the metric nor the Canary names a provider.
    pub default_prometheus: DefaultProvider,
    pub in_flight: InFlight,
}

impl Analysis {
    pub fn new(default_prometheus: Option<String>) -> Self {
        Self {
            default_prometheus: match default_prometheus {
                Some(address) => DefaultProvider::Fallback(address),
                None => DefaultProvider::None(NO_PROMETHEUS),
            },
            in_flight: InFlight::default(),
        }
    }

    /// One check of every metric of the observed Canary, concurrently.
    pub async fn run_checks(&self, client: &Client, observed: &Observed) -> Vec<MetricResult> {
        let Some(resolved) = observed.resolved() else {
            return Vec::new();
        };
        let revision = observed
            .status
            .revision
            .clone()
            .or_else(|| {
                observed
                    .observations
                    .target
                    .as_ref()
                    .map(|t| t.revision.clone())
            })
            .unwrap_or_default();
        let runner = Runner::new(
            client,
            &self.in_flight,
            &self.default_prometheus,
            &observed.identity.namespace,
            &observed.identity.name,
            resolved,
            revision,
        );
        let checked = runner.check_all(&resolved.metrics).await;
        checked.into_iter().map(Checked::into_result).collect()
    }
}
