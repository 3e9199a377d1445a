//! The [`MetricProvider`] trait and its Prometheus implementation: send one PromQL instant query
//! and return what came back as a [`Sample`] (a value, no data, NaN, several series, or an error
//! with a short reason). It never judges a sample: the core gives the verdict.
//!
//! Every query has a time limit (the provider's `timeout`, 5 s by default); a query that exceeds
//! it is `Sample::Error("timed out after 5s")`, which the core treats as Unknown, never as Fail.
//! Credentials (bearer token or basic auth, from a Secret) are sent as a sensitive default header
//! and never appear in `Debug` output, errors or logs; error reasons never include the URL, which
//! could hold user information.
//!
//! [`InFlight`] bounds concurrent checks (invariant I5): at most one check per (canary, metric)
//! at a time, and at most `capacity` checks overall. A second check for a key already in flight
//! is **refused**, not queued: kube-runtime never runs two reconciles of one Canary at once, so a
//! duplicate is a check left behind by an earlier reconcile, still waiting on a slow Prometheus.
//! Queuing behind it would add load to a server that is already slow and deliver a stale answer
//! late; refusing yields an Error sample at once (Unknown: the step holds) and the next interval
//! asks again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use k8s_openapi::ByteString;
use prometheus_http_query::response::Data;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};

use super::template::Queries;
use crate::api::{Duration, PrometheusProvider};
use crate::core::{MetricResult, Sample};

/// Per-query timeout when the provider sets none.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Checks in flight at once across all canaries when the controller sets no other bound.
pub const DEFAULT_IN_FLIGHT_CAPACITY: usize = 256;

/// The longest error reason kept in a sample (reasons end up in status).
const MAX_REASON: usize = 200;

/// A metrics backend: runs one query and returns what came back, as data.
pub trait MetricProvider {
    /// Runs `promql` as an instant query. Never fails: trouble is a [`Sample::Error`].
    fn query(&self, promql: &str) -> impl Future<Output = Sample> + Send;
}

/// Credentials for Prometheus, read from a Secret's data. `Debug` shows which kind, never values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PrometheusAuth {
    pub credentials: Credentials,
    /// PEM CA certificate(s) to trust instead of the system roots (`ca.crt`).
    pub ca_certificate: Option<Vec<u8>>,
}

/// How requests authenticate.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    None,
    /// `Authorization: Bearer <token>` (Secret key `token`).
    Bearer { token: String },
    /// `Authorization: Basic ...` (Secret keys `username` and `password`).
    Basic { username: String, password: String },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Bearer { .. } => f.write_str("Bearer { token: <redacted> }"),
            Credentials::Basic { .. } => {
                f.write_str("Basic { username: <redacted>, password: <redacted> }")
            }
        }
    }
}

impl fmt::Debug for PrometheusAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrometheusAuth")
            .field("credentials", &self.credentials)
            .field(
                "ca_certificate",
                &self.ca_certificate.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

/// The Secret's data could not be read as Prometheus credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadPrometheusSecretError {
    #[error("failed to read the Prometheus Secret: key {key:?} is not UTF-8")]
    NotUtf8 { key: &'static str },
    #[error("failed to read the Prometheus Secret: {present:?} is set without {missing:?}")]
    Incomplete {
        present: &'static str,
        missing: &'static str,
    },
    #[error(
        "failed to read the Prometheus Secret: set either token or username/password, not both"
    )]
    Ambiguous,
}

impl PrometheusAuth {
    /// Reads `token`, or `username` and `password`, and optionally `ca.crt` from a Secret's data.
    pub fn from_secret_data(
        data: &BTreeMap<String, ByteString>,
    ) -> Result<Self, ReadPrometheusSecretError> {
        let text = |key: &'static str| -> Result<Option<String>, ReadPrometheusSecretError> {
            data.get(key)
                .map(|bytes| {
                    String::from_utf8(bytes.0.clone())
                        .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                        .map_err(|_| ReadPrometheusSecretError::NotUtf8 { key })
                })
                .transpose()
        };
        let credentials = match (text("token")?, text("username")?, text("password")?) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(ReadPrometheusSecretError::Ambiguous);
            }
            (Some(token), None, None) => Credentials::Bearer { token },
            (None, Some(username), Some(password)) => Credentials::Basic { username, password },
            (None, Some(_), None) => {
                return Err(ReadPrometheusSecretError::Incomplete {
                    present: "username",
                    missing: "password",
                });
            }
            (None, None, Some(_)) => {
                return Err(ReadPrometheusSecretError::Incomplete {
                    present: "password",
                    missing: "username",
                });
            }
            (None, None, None) => Credentials::None,
        };
        Ok(Self {
            credentials,
            ca_certificate: data.get("ca.crt").map(|bytes| bytes.0.clone()),
        })
    }
}

/// The Prometheus client could not be built from the provider spec and Secret.
#[derive(Debug, thiserror::Error)]
pub enum CreatePrometheusClientError {
    #[error("failed to create the Prometheus client: the credentials are not a valid HTTP header")]
    InvalidCredentials,
    #[error("failed to create the Prometheus client: ca.crt holds no valid PEM certificate")]
    InvalidCaCertificate {
        #[source]
        source: Option<reqwest::Error>,
    },
    #[error("failed to create the Prometheus client")]
    Http(#[source] reqwest::Error),
    #[error("failed to create the Prometheus client: invalid address")]
    InvalidAddress(#[source] prometheus_http_query::Error),
}

/// Prometheus (or a compatible API) over HTTP(S), with rustls.
#[derive(Clone)]
pub struct Prometheus {
    client: prometheus_http_query::Client,
    timeout: std::time::Duration,
}

impl fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The base URL may carry user information: only its host is shown.
        f.debug_struct("Prometheus")
            .field("host", &self.client.base_url().host_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Prometheus {
    /// A client for `spec.address` with `spec.timeout` (default [`DEFAULT_TIMEOUT`]) and `auth`.
    pub fn new(
        spec: &PrometheusProvider,
        auth: &PrometheusAuth,
    ) -> Result<Self, CreatePrometheusClientError> {
        let mut headers = HeaderMap::new();
        let authorization = match &auth.credentials {
            Credentials::None => None,
            Credentials::Bearer { token } => Some(format!("Bearer {token}")),
            Credentials::Basic { username, password } => {
                use base64::Engine as _;
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                Some(format!("Basic {encoded}"))
            }
        };
        if let Some(authorization) = authorization {
            let mut value = HeaderValue::from_str(&authorization)
                .map_err(|_| CreatePrometheusClientError::InvalidCredentials)?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        // Proxies from the environment are ignored: Prometheus is addressed directly (usually
        // in-cluster), and credentials must not travel through a proxy nobody configured for it.
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .no_proxy();
        if let Some(pem) = &auth.ca_certificate {
            let certificates = reqwest::Certificate::from_pem_bundle(pem).map_err(|source| {
                CreatePrometheusClientError::InvalidCaCertificate {
                    source: Some(source),
                }
            })?;
            if certificates.is_empty() {
                return Err(CreatePrometheusClientError::InvalidCaCertificate { source: None });
            }
            // A given CA replaces the system roots: it is there to pin a private CA.
            builder = builder.tls_certs_only(certificates);
        }
        let http = builder.build().map_err(CreatePrometheusClientError::Http)?;
        let client = prometheus_http_query::Client::from(http, &spec.address)
            .map_err(CreatePrometheusClientError::InvalidAddress)?;
        Ok(Self {
            client,
            timeout: spec.timeout.map_or(DEFAULT_TIMEOUT, Duration::as_std),
        })
    }
}

impl MetricProvider for Prometheus {
    async fn query(&self, promql: &str) -> Sample {
        let timeout_ms = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
        // Prometheus is told the limit too, so it stops evaluating a query nobody waits for.
        let request = self.client.query(promql).timeout(timeout_ms).post();
        match tokio::time::timeout(self.timeout, request).await {
            Err(_elapsed) => Sample::Error(format!("timed out after {}", Duration(self.timeout))),
            Ok(Ok(result)) => sample(result.data()),
            // `bad_data` is Prometheus refusing the query itself (it does not parse, or a range
            // is malformed): no retry will change that, so it is a spec error, not Unknown.
            Ok(Err(prometheus_http_query::Error::Prometheus(error))) if error.is_bad_data() => {
                Sample::Invalid(truncate(error.message().to_owned()))
            }
            Ok(Err(error)) => Sample::Error(reason(&error)),
        }
    }
}

/// An instant query's data as a sample: one series (or a scalar) is a value or NaN.
fn sample(data: &Data) -> Sample {
    let value = |v: f64| {
        if v.is_nan() {
            Sample::NaN
        } else {
            Sample::Value(v)
        }
    };
    match data {
        Data::Scalar(scalar) => value(scalar.value()),
        Data::Vector(series) => match series.as_slice() {
            [] => Sample::NoData,
            [one] => value(one.sample().value()),
            several => Sample::Several(several.len()),
        },
        Data::Matrix(_) => Sample::Error(
            "the query returned a range vector; it must return one instant value".to_owned(),
        ),
    }
}

/// A short reason for a failed query, without the URL.
fn reason(error: &prometheus_http_query::Error) -> String {
    let text = match error {
        prometheus_http_query::Error::Prometheus(error) => {
            format!(
                "Prometheus answered {}: {}",
                error.error_type(),
                error.message()
            )
        }
        prometheus_http_query::Error::Client(error) => match error.inner() {
            Some(inner) if inner.status().is_some() => {
                format!(
                    "HTTP {}",
                    inner.status().map_or_else(String::new, |s| s.to_string())
                )
            }
            Some(inner) if inner.is_connect() => {
                format!("cannot connect to Prometheus: {}", root_cause(inner))
            }
            Some(inner) if inner.is_decode() => {
                format!("unreadable answer from Prometheus: {}", root_cause(inner))
            }
            Some(inner) => format!("{error}: {}", root_cause(inner)),
            None => error.to_string(),
        },
        other => other.to_string(),
    };
    truncate(text)
}

/// The innermost error's message: the useful part ("Connection refused (os error 111)"), and
/// unlike reqwest's own message it carries no URL.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

fn truncate(mut text: String) -> String {
    if text.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Identifies one metric of one Canary for [`InFlight`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckKey {
    pub namespace: String,
    pub canary: String,
    pub metric: String,
}

/// A check could not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BeginCheckError {
    #[error("a check of metric {metric} is already running for this canary")]
    AlreadyInFlight { metric: String },
    #[error("{capacity} metric checks are already running; try again at the next interval")]
    Full { capacity: usize },
}

/// The set of checks running now, bounded (I5). Cloning shares the set.
#[derive(Clone, Debug)]
pub struct InFlight {
    capacity: usize,
    running: Arc<Mutex<BTreeSet<CheckKey>>>,
}

/// Marks a check as running until dropped (a cancelled check included).
#[derive(Debug)]
pub struct InFlightGuard {
    running: Arc<Mutex<BTreeSet<CheckKey>>>,
    key: CheckKey,
}

impl InFlight {
    /// A registry admitting at most `capacity` checks at once (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            running: Arc::default(),
        }
    }

    /// Marks `key` as running, or refuses when it already runs or the registry is full.
    pub fn begin(&self, key: CheckKey) -> Result<InFlightGuard, BeginCheckError> {
        let mut running = lock(&self.running);
        if running.contains(&key) {
            return Err(BeginCheckError::AlreadyInFlight { metric: key.metric });
        }
        if running.len() >= self.capacity {
            return Err(BeginCheckError::Full {
                capacity: self.capacity,
            });
        }
        running.insert(key.clone());
        Ok(InFlightGuard {
            running: Arc::clone(&self.running),
            key,
        })
    }

    /// How many checks run now.
    pub fn len(&self) -> usize {
        lock(&self.running).len()
    }

    /// Whether no check runs now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for InFlight {
    fn default() -> Self {
        Self::new(DEFAULT_IN_FLIGHT_CAPACITY)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        lock(&self.running).remove(&self.key);
    }
}

// The set is changed by single inserts and removes, so a poisoned lock still holds a whole set.
fn lock(set: &Mutex<BTreeSet<CheckKey>>) -> MutexGuard<'_, BTreeSet<CheckKey>> {
    set.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs one check of one metric: every query of `queries` concurrently, under `key` in
/// `in_flight`. A refused check returns Error samples for every query it would have run.
pub async fn check<P: MetricProvider + Sync>(
    provider: &P,
    in_flight: &InFlight,
    key: CheckKey,
    queries: &Queries,
) -> MetricResult {
    let metric = key.metric.clone();
    let _guard = match in_flight.begin(key) {
        Ok(guard) => guard,
        Err(refused) => {
            let error = Sample::Error(refused.to_string());
            let also = |query: &Option<String>| query.as_ref().map(|_| error.clone());
            return MetricResult {
                metric,
                query: queries.canary.clone(),
                stable: also(&queries.stable),
                canary_total: also(&queries.canary_total),
                stable_total: also(&queries.stable_total),
                canary: error,
            };
        }
    };
    let optional = |query: &Option<String>| {
        let query = query.clone();
        async move {
            match query {
                Some(query) => Some(provider.query(&query).await),
                None => None,
            }
        }
    };
    let (canary, stable, canary_total, stable_total) = tokio::join!(
        provider.query(&queries.canary),
        optional(&queries.stable),
        optional(&queries.canary_total),
        optional(&queries.stable_total),
    );
    MetricResult {
        metric,
        query: queries.canary.clone(),
        canary,
        stable,
        canary_total,
        stable_total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(metric: &str) -> CheckKey {
        CheckKey {
            namespace: "shop".into(),
            canary: "checkout".into(),
            metric: metric.into(),
        }
    }

    #[test]
    fn a_second_check_of_the_same_metric_is_refused_until_the_first_ends() {
        let in_flight = InFlight::new(8);
        let first = in_flight.begin(key("errors")).unwrap();
        assert_eq!(
            in_flight.begin(key("errors")).unwrap_err(),
            BeginCheckError::AlreadyInFlight {
                metric: "errors".into()
            }
        );
        let other = in_flight.begin(key("latency")).unwrap();
        assert_eq!(in_flight.len(), 2);
        drop(first);
        let again = in_flight.begin(key("errors"));
        assert!(again.is_ok());
        drop((other, again));
        assert!(in_flight.is_empty());
    }

    #[test]
    fn the_registry_refuses_checks_beyond_its_capacity() {
        let in_flight = InFlight::new(2);
        let _a = in_flight.begin(key("a")).unwrap();
        let _b = in_flight.begin(key("b")).unwrap();
        assert_eq!(
            in_flight.begin(key("c")).unwrap_err(),
            BeginCheckError::Full { capacity: 2 }
        );
    }

    #[test]
    fn secret_data_gives_bearer_or_basic_credentials() {
        let data = |pairs: &[(&str, &str)]| -> BTreeMap<String, ByteString> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect()
        };
        assert_eq!(
            PrometheusAuth::from_secret_data(&data(&[("token", "s3cret\n")]))
                .unwrap()
                .credentials,
            Credentials::Bearer {
                token: "s3cret".into()
            }
        );
        let basic = PrometheusAuth::from_secret_data(&data(&[
            ("username", "u"),
            ("password", "p"),
            ("ca.crt", "pem"),
        ]))
        .unwrap();
        assert_eq!(
            basic.credentials,
            Credentials::Basic {
                username: "u".into(),
                password: "p".into()
            }
        );
        assert_eq!(basic.ca_certificate.as_deref(), Some(&b"pem"[..]));
        assert_eq!(
            PrometheusAuth::from_secret_data(&data(&[("username", "u")])),
            Err(ReadPrometheusSecretError::Incomplete {
                present: "username",
                missing: "password"
            })
        );
        assert_eq!(
            PrometheusAuth::from_secret_data(&data(&[("token", "t"), ("password", "p")])),
            Err(ReadPrometheusSecretError::Ambiguous)
        );
        assert_eq!(
            PrometheusAuth::from_secret_data(&data(&[])).unwrap(),
            PrometheusAuth::default()
        );
    }

    #[test]
    fn debug_output_never_shows_secret_values() {
        let auth = PrometheusAuth {
            credentials: Credentials::Basic {
                username: "admin-user".into(),
                password: "hunter2".into(),
            },
            ca_certificate: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
        };
        let bearer = Credentials::Bearer {
            token: "tok-123".into(),
        };
        let shown = format!("{auth:?} {bearer:?}");
        for secret in ["admin-user", "hunter2", "BEGIN CERTIFICATE", "tok-123"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let provider = Prometheus::new(
            &PrometheusProvider {
                address: "http://user:pw@127.0.0.1:9".into(),
                ..PrometheusProvider::default()
            },
            &PrometheusAuth {
                credentials: bearer,
                ca_certificate: None,
            },
        )
        .unwrap();
        let shown = format!("{provider:?}");
        assert!(
            !shown.contains("tok-123") && !shown.contains("pw"),
            "{shown}"
        );
    }

    #[test]
    fn an_invalid_ca_certificate_is_refused() {
        let error = Prometheus::new(
            &PrometheusProvider {
                address: "https://127.0.0.1:9".into(),
                ..PrometheusProvider::default()
            },
            &PrometheusAuth {
                credentials: Credentials::None,
                ca_certificate: Some(b"not a certificate".to_vec()),
            },
        )
        .unwrap_err();
        assert!(
            matches!(
                error,
                CreatePrometheusClientError::InvalidCaCertificate { .. }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let cut = truncate("é".repeat(300));
        assert!(cut.len() <= MAX_REASON + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
