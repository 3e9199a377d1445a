//! The Prometheus provider against the scripted fake Prometheus of the test cluster: every kind of
//! sample, the timeout, the in-flight bound and the credentials actually sent; and, against a
//! small TLS server of our own, that the Secret's CA certificate is what makes a server trusted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use sluice::api::{self, PrometheusProvider};
use sluice::core::Sample;
use sluice::metrics::{
    CheckKey, Credentials, InFlight, MetricProvider, Prometheus, PrometheusAuth, Queries, check,
};
use sluice_testcluster::prometheus::fake::{Answer, ErrorType, FakePrometheus, QueryMatch, Series};

fn provider(url: &str, timeout: Option<Duration>) -> Prometheus {
    Prometheus::new(
        &PrometheusProvider {
            address: url.to_owned(),
            timeout: timeout.map(api::Duration),
            secret_ref: None,
        },
        &PrometheusAuth::default(),
    )
    .expect("a client for the fake")
}

async fn answer_of(answer: Answer) -> Sample {
    let fake = FakePrometheus::start().await.expect("the fake starts");
    fake.on(QueryMatch::exact("q"), answer);
    provider(&fake.url(), None).query("q").await
}

#[tokio::test]
async fn one_series_is_its_value() {
    assert_eq!(answer_of(Answer::value(0.25)).await, Sample::Value(0.25));
}

#[tokio::test]
async fn a_scalar_is_its_value() {
    assert_eq!(answer_of(Answer::scalar(3.0)).await, Sample::Value(3.0));
}

#[tokio::test]
async fn no_series_is_no_data() {
    assert_eq!(answer_of(Answer::no_data()).await, Sample::NoData);
}

#[tokio::test]
async fn a_nan_value_is_nan_not_a_number() {
    assert_eq!(answer_of(Answer::nan()).await, Sample::NaN);
}

#[tokio::test]
async fn several_series_are_reported_as_several_never_reduced() {
    let answer = Answer::series(["a-1", "a-2", "a-3"].map(|pod| Series::new([("pod", pod)], 1.0)));
    assert_eq!(answer_of(answer).await, Sample::Several(3));
}

#[tokio::test]
async fn an_http_error_from_a_proxy_is_an_error_with_its_status() {
    let sample = answer_of(Answer::http_error(StatusCode::BAD_GATEWAY, "upstream down")).await;
    assert_eq!(sample, Sample::Error("HTTP 502 Bad Gateway".into()));
}

#[tokio::test]
async fn a_prometheus_error_body_is_an_error_with_its_type_and_message() {
    let sample = answer_of(Answer::prometheus_error(
        ErrorType::Execution,
        "query processing would load too many samples into memory",
    ))
    .await;
    assert_eq!(
        sample,
        Sample::Error(
            "Prometheus answered execution: query processing would load too many samples into memory"
                .into()
        )
    );
}

#[tokio::test]
async fn bad_data_is_the_query_refused_not_a_failure_to_measure() {
    let sample = answer_of(Answer::prometheus_error(
        ErrorType::BadData,
        "parse error: unexpected end of input",
    ))
    .await;
    assert_eq!(
        sample,
        Sample::Invalid("parse error: unexpected end of input".into())
    );
}

#[tokio::test]
async fn a_refused_connection_is_an_error_saying_so() {
    let mut fake = FakePrometheus::start().await.unwrap();
    fake.go_down().await.unwrap();
    let sample = provider(&fake.url(), None).query("q").await;
    let Sample::Error(reason) = sample else {
        panic!("expected an error, got {sample:?}");
    };
    assert!(
        reason.starts_with("cannot connect to Prometheus"),
        "{reason}"
    );
    assert!(!reason.contains("127.0.0.1"), "no URL in reasons: {reason}");
}

#[tokio::test]
async fn a_slow_query_times_out_as_an_error_naming_the_limit() {
    let fake = FakePrometheus::start().await.unwrap();
    fake.on(
        QueryMatch::exact("slow"),
        Answer::slow(Duration::from_secs(30), Answer::value(1.0)),
    );
    let started = Instant::now();
    let sample = provider(&fake.url(), Some(Duration::from_millis(300)))
        .query("slow")
        .await;
    assert_eq!(sample, Sample::Error("timed out after 300ms".into()));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn the_default_timeout_is_five_seconds_and_prometheus_is_told_it() {
    let fake = FakePrometheus::start().await.unwrap();
    fake.on(QueryMatch::exact("q"), Answer::value(1.0));
    provider(&fake.url(), None).query("q").await;
    let received = fake.queries();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].params.get("timeout").map(String::as_str),
        Some("5000ms")
    );
}

fn key(metric: &str) -> CheckKey {
    CheckKey {
        namespace: "shop".into(),
        canary: "checkout".into(),
        metric: metric.into(),
    }
}

fn only_canary(query: &str) -> Queries {
    Queries {
        canary: query.into(),
        stable: None,
        canary_total: None,
        stable_total: None,
    }
}

#[tokio::test]
async fn a_two_proportion_check_runs_all_four_queries_and_keeps_them_apart() {
    let fake = FakePrometheus::start().await.unwrap();
    for (query, value) in [("ce", 1.0), ("se", 2.0), ("ct", 100.0), ("st", 900.0)] {
        fake.on(QueryMatch::exact(query), Answer::value(value));
    }
    let queries = Queries {
        canary: "ce".into(),
        stable: Some("se".into()),
        canary_total: Some("ct".into()),
        stable_total: Some("st".into()),
    };
    let result = check(
        &provider(&fake.url(), None),
        &InFlight::new(4),
        key("errors"),
        &queries,
    )
    .await;
    assert_eq!(result.metric, "errors");
    assert_eq!(result.query, "ce");
    assert_eq!(result.canary, Sample::Value(1.0));
    assert_eq!(result.stable, Some(Sample::Value(2.0)));
    assert_eq!(result.canary_total, Some(Sample::Value(100.0)));
    assert_eq!(result.stable_total, Some(Sample::Value(900.0)));
    assert_eq!(fake.query_count(), 4);
}

#[tokio::test]
async fn a_second_check_of_a_metric_in_flight_is_refused_without_querying() {
    let fake = FakePrometheus::start().await.unwrap();
    fake.on(
        QueryMatch::exact("slow"),
        Answer::slow(Duration::from_millis(700), Answer::value(1.0)),
    );
    let prometheus = provider(&fake.url(), None);
    let in_flight = InFlight::new(4);
    let queries = only_canary("slow");
    let first = check(&prometheus, &in_flight, key("errors"), &queries);
    let second = async {
        let deadline = Instant::now() + Duration::from_secs(5);
        while fake.query_count() == 0 {
            assert!(Instant::now() < deadline, "the first check never queried");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let refused = check(&prometheus, &in_flight, key("errors"), &queries).await;
        let running = in_flight.len();
        (refused, running)
    };
    let (first, (refused, running)) = tokio::join!(first, second);
    assert_eq!(first.canary, Sample::Value(1.0));
    assert_eq!(running, 1, "the first check was still registered");
    let Sample::Error(reason) = refused.canary else {
        panic!("expected a refusal, got {:?}", refused.canary);
    };
    assert!(reason.contains("already running"), "{reason}");
    assert_eq!(fake.query_count(), 1, "the refused check sent no query");
    assert!(
        in_flight.is_empty(),
        "the guard is released when a check ends"
    );
}

#[tokio::test]
async fn a_check_abandoned_midway_releases_its_metric() {
    let fake = FakePrometheus::start().await.unwrap();
    fake.on(
        QueryMatch::exact("slow"),
        Answer::slow(Duration::from_secs(30), Answer::value(1.0)),
    );
    let prometheus = provider(&fake.url(), None);
    let in_flight = InFlight::new(4);
    let abandoned = tokio::time::timeout(
        Duration::from_millis(200),
        check(&prometheus, &in_flight, key("errors"), &only_canary("slow")),
    )
    .await;
    assert!(
        abandoned.is_err(),
        "the check was still waiting when dropped"
    );
    assert!(in_flight.is_empty());
    fake.on(QueryMatch::exact("fast"), Answer::value(2.0));
    let result = check(&prometheus, &in_flight, key("errors"), &only_canary("fast")).await;
    assert_eq!(result.canary, Sample::Value(2.0));
}

/// An HTTPS server on 127.0.0.1 with a certificate from the test CA, answering one query.
async fn tls_server() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{self, ServerConfig};

    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prometheus-tls");
    let certs = CertificateDer::pem_file_iter(dir.join("server.crt"))
        .expect("the server certificate fixture")
        .collect::<Result<Vec<_>, _>>()
        .expect("a PEM certificate");
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("the server key fixture");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("a valid certificate and key");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port on 127.0.0.1");
    let url = format!(
        "https://{}",
        listener.local_addr().expect("a bound address")
    );
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to answer.
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // Headers, then the form body by its Content-Length.
                loop {
                    let Ok(read) = tls.read(&mut buffer).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|line| line.strip_prefix("content-length:"))
                            .and_then(|value| value.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let body =
                    r#"{"status":"success","data":{"resultType":"scalar","result":[0,"7"]}}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ignored = tls.write_all(response.as_bytes()).await;
                let _ignored = tls.shutdown().await;
            });
        }
    });
    url
}

fn https_provider(url: &str, ca_certificate: Option<Vec<u8>>) -> Prometheus {
    Prometheus::new(
        &PrometheusProvider {
            address: url.to_owned(),
            timeout: Some(api::Duration::from_secs(5)),
            secret_ref: None,
        },
        &PrometheusAuth {
            credentials: Credentials::None,
            ca_certificate,
        },
    )
    .expect("a client for the TLS server")
}

#[tokio::test]
async fn a_server_certified_by_the_secrets_ca_is_trusted_and_refused_without_it() {
    let url = tls_server().await;
    let ca = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/prometheus-tls/ca.crt"),
    )
    .unwrap();
    let auth =
        PrometheusAuth::from_secret_data(&secret(&[("ca.crt", std::str::from_utf8(&ca).unwrap())]))
            .unwrap();
    assert_eq!(
        https_provider(&url, auth.ca_certificate).query("up").await,
        Sample::Value(7.0)
    );
    let without = https_provider(&url, None).query("up").await;
    let Sample::Error(reason) = without else {
        panic!("a private CA must not be trusted without ca.crt, got {without:?}");
    };
    assert!(reason.contains("certificate"), "{reason}");
}

fn secret(pairs: &[(&str, &str)]) -> BTreeMap<String, k8s_openapi::ByteString> {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                k8s_openapi::ByteString(v.as_bytes().to_vec()),
            )
        })
        .collect()
}

async fn authorization_sent(auth: PrometheusAuth) -> Option<String> {
    let fake = FakePrometheus::start().await.expect("the fake starts");
    fake.on(QueryMatch::exact("up"), Answer::value(1.0));
    let prometheus = Prometheus::new(
        &PrometheusProvider {
            address: fake.url(),
            timeout: None,
            secret_ref: None,
        },
        &auth,
    )
    .expect("a client for the fake");
    assert_eq!(prometheus.query("up").await, Sample::Value(1.0));
    let received = fake.queries();
    assert_eq!(received.len(), 1);
    received[0].authorization.clone()
}

#[tokio::test]
async fn a_bearer_token_from_the_secret_is_sent() {
    let auth = PrometheusAuth::from_secret_data(&secret(&[("token", "t0ken")])).unwrap();
    assert!(matches!(auth.credentials, Credentials::Bearer { .. }));
    assert_eq!(
        authorization_sent(auth).await.as_deref(),
        Some("Bearer t0ken")
    );
}

#[tokio::test]
async fn basic_auth_from_the_secret_is_sent() {
    let auth =
        PrometheusAuth::from_secret_data(&secret(&[("username", "alice"), ("password", "s3cret")]))
            .unwrap();
    // base64("alice:s3cret")
    assert_eq!(
        authorization_sent(auth).await.as_deref(),
        Some("Basic YWxpY2U6czNjcmV0")
    );
}

#[tokio::test]
async fn wrong_credentials_are_an_error_with_the_http_status() {
    let fake = FakePrometheus::start().await.unwrap();
    fake.require_authorization(Some("Bearer right"));
    fake.on(QueryMatch::exact("up"), Answer::value(1.0));
    let auth = PrometheusAuth::from_secret_data(&secret(&[("token", "wrong")])).unwrap();
    let prometheus = Prometheus::new(
        &PrometheusProvider {
            address: fake.url(),
            timeout: None,
            secret_ref: None,
        },
        &auth,
    )
    .unwrap();
    assert_eq!(
        prometheus.query("up").await,
        Sample::Error("HTTP 401 Unauthorized".into())
    );
}

#[tokio::test]
async fn no_secret_sends_no_authorization() {
    assert_eq!(authorization_sent(PrometheusAuth::default()).await, None);
}
