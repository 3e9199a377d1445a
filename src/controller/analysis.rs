//! Runs the checks `core::due` asks for: renders every metric's queries (escaped), sends them to
//! its Prometheus, and hands the samples to the core as data. It never judges a value. At most one
//! check per (canary, metric) runs at once, and the whole set is bounded (I5).
//!
//! A Prometheus Secret (`provider.prometheus.secretRef`) is read with one GET per check: sluice
//! keeps no cache of Secrets, so RBAC can grant `get` on that one Secret by name and nothing else.

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;

use super::observe::Observed;
use crate::api::PrometheusProvider;
use crate::api::names::canary_name;
use crate::core::validate::ResolvedMetric;
use crate::core::{MetricResult, Sample};
use crate::metrics::{CheckKey, InFlight, Prometheus, PrometheusAuth, Variables, check};

/// Shared analysis state: the default Prometheus and the in-flight registry.
#[derive(Clone, Debug)]
pub struct Analysis {
    /// `--prometheus-url`, used when neither the metric nor the Canary names a provider.
    pub default_prometheus: Option<String>,
    pub in_flight: InFlight,
}

impl Analysis {
    pub fn new(default_prometheus: Option<String>) -> Self {
        Self {
            default_prometheus,
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
        let vars = Variables {
            namespace: observed.identity.namespace.clone(),
            target: resolved.target.clone(),
            canary: canary_name(&resolved.target),
            stable: resolved.target.clone(),
            service: resolved.service.name.clone(),
            interval: resolved.interval,
            revision,
        };
        let checks = resolved.metrics.iter().map(|metric| {
            let provider = metric.provider.as_ref().or(resolved.provider.as_ref());
            self.check_one(
                client,
                observed,
                metric,
                provider.map(|p| &p.prometheus),
                &vars,
            )
        });
        futures::future::join_all(checks).await
    }

    async fn check_one(
        &self,
        client: &Client,
        observed: &Observed,
        metric: &ResolvedMetric,
        provider: Option<&PrometheusProvider>,
        vars: &Variables,
    ) -> MetricResult {
        let failed = |query: String, reason: String| MetricResult {
            metric: metric.name.clone(),
            query,
            canary: Sample::Error(reason),
            stable: None,
            canary_total: None,
            stable_total: None,
        };
        let queries = match metric.queries(vars) {
            Ok(queries) => queries,
            Err(error) => return failed(metric.query.clone(), error.to_string()),
        };
        let default_provider;
        let provider = match (provider, &self.default_prometheus) {
            (Some(provider), _) => provider,
            (None, Some(address)) => {
                default_provider = PrometheusProvider {
                    address: address.clone(),
                    timeout: None,
                    secret_ref: None,
                };
                &default_provider
            }
            (None, None) => {
                return failed(
                    queries.canary,
                    "no Prometheus configured: set spec.analysis.provider or run the controller \
                     with --prometheus-url"
                        .into(),
                );
            }
        };
        let auth = match &provider.secret_ref {
            None => PrometheusAuth::default(),
            Some(secret) => {
                let api: Api<Secret> =
                    Api::namespaced(client.clone(), &observed.identity.namespace);
                match api.get(&secret.name).await {
                    Ok(found) => {
                        let data = found.data.unwrap_or_default();
                        match PrometheusAuth::from_secret_data(&data) {
                            Ok(auth) => auth,
                            Err(error) => return failed(queries.canary, error.to_string()),
                        }
                    }
                    Err(error) => {
                        return failed(
                            queries.canary,
                            format!("cannot read Secret {}: {error}", secret.name),
                        );
                    }
                }
            }
        };
        let prometheus = match Prometheus::new(provider, &auth) {
            Ok(prometheus) => prometheus,
            Err(error) => return failed(queries.canary, error.to_string()),
        };
        let key = CheckKey {
            namespace: observed.identity.namespace.clone(),
            canary: observed.identity.name.clone(),
            metric: metric.name.clone(),
        };
        check(&prometheus, &self.in_flight, key, &queries).await
    }
}
