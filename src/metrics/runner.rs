//! The one check runner, used by the controller and by `kubectl sluice analyze`: from a Canary's
//! resolved metrics to what its Prometheus said. For each metric it renders the queries
//! (escaped), picks the provider (the metric's, else the Canary's, else the [`DefaultProvider`]),
//! reads its credentials Secret, and sends the queries through [`check`] under the [`InFlight`]
//! bound. It never judges a sample: the core gives the verdict.
//!
//! A Prometheus Secret (`provider.prometheus.secretRef`) is read with one GET per check: sluice
//! keeps no cache of Secrets, so RBAC can grant `get` on that one Secret by name and nothing else.

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;

use super::{
    CheckKey, InFlight, Prometheus, PrometheusAuth, ReadPrometheusSecretError, Variables, check,
};
use crate::api::names::canary_name;
use crate::api::{PrometheusProvider, ProviderSpec};
use crate::core::validate::{Resolved, ResolvedMetric};
use crate::core::{MetricResult, Sample};

/// The Prometheus to use besides the ones the Canary names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefaultProvider {
    /// Used when neither the metric nor the Canary names a provider (the controller's
    /// `--prometheus-url`).
    Fallback(String),
    /// Used instead of whatever the metric or the Canary names (`analyze --prometheus-url`): its
    /// address replaces theirs, their timeout stays, their credentials do not apply.
    Override(String),
    /// No address: a metric with no provider named is not checked, for this reason.
    None(&'static str),
}

/// The Secret named by `provider.prometheus.secretRef` gave no credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The GET failed. The text names the Secret and the API server's answer, never its data.
    #[error("cannot read Secret {name}: {}", api_cause(.cause))]
    Get { name: String, cause: kube::Error },
    #[error(transparent)]
    Read(#[from] ReadPrometheusSecretError),
}

/// A kube error in words: for an API answer, its message and reason (kube's own `Display` of
/// [`kube::Error::Api`] appends the whole status `Debug`-formatted).
fn api_cause(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.to_string(),
        other => other.to_string(),
    }
}

/// The provider's credentials: none without a `secretRef`, else read from that Secret in
/// `namespace` with one GET.
pub async fn credentials(
    client: &Client,
    namespace: &str,
    provider: &PrometheusProvider,
) -> Result<PrometheusAuth, CredentialsError> {
    let Some(secret) = &provider.secret_ref else {
        return Ok(PrometheusAuth::default());
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let found = api
        .get(&secret.name)
        .await
        .map_err(|cause| CredentialsError::Get {
            name: secret.name.clone(),
            cause,
        })?;
    Ok(PrometheusAuth::from_secret_data(
        &found.data.unwrap_or_default(),
    )?)
}

/// The variables a Canary's queries are rendered with.
fn variables(namespace: &str, resolved: &Resolved, revision: String) -> Variables {
    Variables {
        namespace: namespace.to_owned(),
        target: resolved.target.clone(),
        canary: canary_name(&resolved.target),
        stable: resolved.target.clone(),
        service: resolved.service.name.clone(),
        interval: resolved.interval,
        revision,
    }
}

/// One metric's check.
#[derive(Clone, Debug, PartialEq)]
pub enum Checked {
    /// The queries went to Prometheus (or the in-flight bound refused them): the samples.
    Ran(MetricResult),
    /// No query was sent: it did not render, no provider, no credentials or no client.
    NotRun {
        metric: String,
        /// The canary query, rendered when it could be, else as written.
        query: String,
        reason: String,
    },
}

impl Checked {
    /// As the core takes it: a check that never ran is an Error sample of the canary query.
    pub fn into_result(self) -> MetricResult {
        match self {
            Checked::Ran(result) => result,
            Checked::NotRun {
                metric,
                query,
                reason,
            } => MetricResult {
                metric,
                query,
                canary: Sample::Error(reason),
                stable: None,
                canary_total: None,
                stable_total: None,
            },
        }
    }
}

/// Where and how one Canary's checks run.
pub struct Runner<'a> {
    client: &'a Client,
    in_flight: &'a InFlight,
    default: &'a DefaultProvider,
    namespace: &'a str,
    canary: &'a str,
    /// The Canary's provider (after its policy); a metric's own wins.
    provider: Option<&'a ProviderSpec>,
    vars: Variables,
}

impl<'a> Runner<'a> {
    /// The runner for the checks of Canary `namespace/canary`, resolved as `resolved`, with
    /// `revision` under analysis. Credentials are read with `client`; every check holds a slot
    /// of `in_flight` while it runs.
    pub fn new(
        client: &'a Client,
        in_flight: &'a InFlight,
        default: &'a DefaultProvider,
        namespace: &'a str,
        canary: &'a str,
        resolved: &'a Resolved,
        revision: String,
    ) -> Self {
        Self {
            client,
            in_flight,
            default,
            namespace,
            canary,
            provider: resolved.provider.as_ref(),
            vars: variables(namespace, resolved, revision),
        }
    }

    /// One check of every metric, concurrently; the results in the metrics' order.
    pub async fn check_all(&self, metrics: &[ResolvedMetric]) -> Vec<Checked> {
        futures::future::join_all(metrics.iter().map(|metric| self.check(metric))).await
    }

    /// One check of every metric, one after the other; the results in the metrics' order.
    pub async fn check_in_turn(&self, metrics: &[ResolvedMetric]) -> Vec<Checked> {
        let mut checked = Vec::with_capacity(metrics.len());
        for metric in metrics {
            checked.push(self.check(metric).await);
        }
        checked
    }

    /// One check of `metric`.
    pub async fn check(&self, metric: &ResolvedMetric) -> Checked {
        let not_run = |query: String, reason: String| Checked::NotRun {
            metric: metric.name.clone(),
            query,
            reason,
        };
        let queries = match metric.queries(&self.vars) {
            Ok(queries) => queries,
            Err(error) => return not_run(metric.query.clone(), error.to_string()),
        };
        let named = metric
            .provider
            .as_ref()
            .or(self.provider)
            .map(|p| &p.prometheus);
        let provider = match (self.default, named) {
            (DefaultProvider::Override(address), named) => PrometheusProvider {
                address: address.clone(),
                timeout: named.and_then(|p| p.timeout),
                secret_ref: None,
            },
            (_, Some(named)) => named.clone(),
            (DefaultProvider::Fallback(address), None) => PrometheusProvider {
                address: address.clone(),
                timeout: None,
                secret_ref: None,
            },
            (DefaultProvider::None(reason), None) => {
                return not_run(queries.canary, (*reason).into());
            }
        };
        let auth = match credentials(self.client, self.namespace, &provider).await {
            Ok(auth) => auth,
            Err(error) => return not_run(queries.canary, error.to_string()),
        };
        let prometheus = match Prometheus::new(&provider, &auth) {
            Ok(prometheus) => prometheus,
            Err(error) => return not_run(queries.canary, error.to_string()),
        };
        let key = CheckKey {
            namespace: self.namespace.to_owned(),
            canary: self.canary.to_owned(),
            metric: metric.name.clone(),
        };
        Checked::Ran(check(&prometheus, self.in_flight, key, &queries).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CanarySpec;
    use crate::core::Dereferenced;

    /// Nothing listens there: the API server and Prometheus both refuse at once.
    const NOWHERE: &str = "http://127.0.0.1:1";

    fn resolved(provider: &str) -> Resolved {
        let spec: CanarySpec = serde_saphyr::from_str(&format!(
            "targetRef: {{name: checkout}}\n\
             service: {{port: 8080}}\n\
             router: {{gatewayAPI: {{httpRoute: {{name: checkout}}}}}}\n\
             analysis:\n  \
               interval: 1m\n  \
               {provider}\n  \
               metrics: [{{name: errors, query: 'sum(errors{{namespace=\"{{{{ namespace }}}}\"}})', max: 1}}]\n"
        ))
        .expect("spec");
        crate::core::resolve(&spec, &Dereferenced::default()).expect("resolves")
    }

    fn client() -> Client {
        let config = kube::Config::new(NOWHERE.parse().expect("url"));
        Client::try_from(config).expect("client")
    }

    async fn check(default: DefaultProvider, provider: &str) -> Checked {
        let resolved = resolved(provider);
        let (client, in_flight) = (client(), InFlight::default());
        let runner = Runner::new(
            &client,
            &in_flight,
            &default,
            "shop",
            "checkout",
            &resolved,
            "abc".into(),
        );
        let mut checked = runner.check_all(&resolved.metrics).await;
        assert_eq!(checked.len(), 1);
        checked.remove(0)
    }

    #[test]
    fn a_failed_secret_read_names_the_secret_and_the_answer_in_words() {
        let status = kube::core::Status {
            code: 403,
            message: "secrets \"prom\" is forbidden".into(),
            reason: "Forbidden".into(),
            ..Default::default()
        };
        let error = CredentialsError::Get {
            name: "prom".into(),
            cause: kube::Error::Api(Box::new(status)),
        };
        assert_eq!(
            error.to_string(),
            "cannot read Secret prom: secrets \"prom\" is forbidden: Forbidden"
        );
    }

    #[tokio::test]
    async fn with_no_provider_anywhere_nothing_is_sent_and_the_verdict_is_unknown_saying_why() {
        let checked = check(DefaultProvider::None("no Prometheus"), "threshold: 1").await;
        let Checked::NotRun { query, reason, .. } = &checked else {
            panic!("ran without a provider: {checked:?}");
        };
        assert_eq!(query, "sum(errors{namespace=\"shop\"})", "rendered");
        assert_eq!(reason, "no Prometheus");
        let result = checked.into_result();
        assert_eq!(result.canary, Sample::Error("no Prometheus".into()));
    }

    #[tokio::test]
    async fn the_canarys_secret_is_read_before_any_query() {
        let provider = format!(
            "provider: {{prometheus: {{address: '{NOWHERE}', secretRef: {{name: prom}}}}}}"
        );
        let checked = check(DefaultProvider::Fallback(NOWHERE.into()), &provider).await;
        let Checked::NotRun { reason, .. } = &checked else {
            panic!("queried without its credentials: {checked:?}");
        };
        assert!(reason.starts_with("cannot read Secret prom: "), "{reason}");
    }

    #[tokio::test]
    async fn an_override_address_is_queried_without_the_canarys_credentials() {
        let provider = "provider: {prometheus: {address: 'http://prometheus.invalid', secretRef: {name: prom}}}";
        let checked = check(DefaultProvider::Override(NOWHERE.into()), provider).await;
        let Checked::Ran(result) = &checked else {
            panic!("not sent: {checked:?}");
        };
        assert!(
            matches!(&result.canary, Sample::Error(reason) if !reason.contains("Secret")),
            "{result:?}"
        );
    }
}
