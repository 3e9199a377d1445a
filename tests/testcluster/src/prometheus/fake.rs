//! A scripted fake Prometheus: an HTTP server on 127.0.0.1 that serves `/api/v1/query` and
//! `/api/v1/query_range` (GET with URL parameters, POST with a form body, as the
//! `prometheus-http-query` client sends them) with the answers a test chose for each query, and
//! records every query it receives.
//!
//! A test scripts answers with [`FakePrometheus::on`] (a [`QueryMatch`] on the query text and an
//! [`Answer`]); the most recently added rule that matches wins, so a test changes an answer while
//! sluice runs by adding a rule. Queries no rule matches get the default answer, which starts as
//! "no data" because that is what a real Prometheus answers for series it does not have.
//!
//! It must not evaluate PromQL: what a query *means* is the real server's job
//! ([`super::server`]). It answers only the two query endpoints; anything else is a 404.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use regex::Regex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long [`FakePrometheus::go_down`] waits for the port to refuse connections.
const DOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The most points a range answer holds, so a silly `step` cannot make a huge answer.
const MAX_RANGE_POINTS: usize = 11_000;

/// Which queries a rule applies to.
#[derive(Clone)]
pub enum QueryMatch {
    /// Every query.
    Any,
    /// A query whose text is exactly this (after trimming surrounding whitespace).
    Exact(String),
    /// A query whose text this regular expression finds a match in (not anchored).
    Regex(Regex),
    /// A query for which this function returns true.
    Predicate(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl QueryMatch {
    /// Matches the query text exactly.
    pub fn exact(query: impl Into<String>) -> Self {
        Self::Exact(query.into().trim().to_owned())
    }

    /// Matches queries in which `pattern` finds a match.
    ///
    /// # Panics
    /// If `pattern` is not a valid regular expression: a mistake in the test itself.
    pub fn regex(pattern: &str) -> Self {
        Self::Regex(Regex::new(pattern).expect("the test's query pattern is a valid regex"))
    }

    /// Matches queries for which `predicate` is true.
    pub fn predicate(predicate: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self::Predicate(Arc::new(predicate))
    }

    /// Whether this rule applies to `query`.
    pub fn matches(&self, query: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(text) => query.trim() == text,
            Self::Regex(regex) => regex.is_match(query),
            Self::Predicate(predicate) => predicate(query),
        }
    }
}

impl fmt::Debug for QueryMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("Any"),
            Self::Exact(text) => f.debug_tuple("Exact").field(text).finish(),
            Self::Regex(regex) => f.debug_tuple("Regex").field(&regex.as_str()).finish(),
            Self::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

/// One series of an instant answer: its labels (`__name__` included if wanted) and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The series' labels.
    pub labels: BTreeMap<String, String>,
    /// The series' value; NaN and infinities are written the way Prometheus writes them.
    pub value: f64,
}

impl Series {
    /// A series with these labels and this value.
    pub fn new<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>, value: f64) -> Self {
        Self {
            labels: labels
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
            value,
        }
    }
}

/// The `errorType` values of the Prometheus HTTP API, each with the HTTP status Prometheus sends
/// it with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    /// `bad_data`, HTTP 400: the query does not parse.
    BadData,
    /// `execution`, HTTP 422: the query failed while running.
    Execution,
    /// `timeout`, HTTP 503: the query ran out of time.
    Timeout,
    /// `canceled`, HTTP 503.
    Canceled,
    /// `internal`, HTTP 500.
    Internal,
    /// `unavailable`, HTTP 503.
    Unavailable,
}

impl ErrorType {
    /// The name Prometheus writes in `errorType`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadData => "bad_data",
            Self::Execution => "execution",
            Self::Timeout => "timeout",
            Self::Canceled => "canceled",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
        }
    }

    /// The HTTP status Prometheus answers this error with (`web/api/v1/api.go`, `respondError`).
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadData => StatusCode::BAD_REQUEST,
            Self::Execution => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Timeout | Self::Canceled | Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What the fake answers to a query.
#[derive(Clone, Debug)]
pub enum Answer {
    /// `resultType: scalar` with this value.
    Scalar(f64),
    /// `resultType: vector` with these series; no series at all is "no data". A range query gets
    /// the same series as a matrix, each value repeated at every step.
    Vector(Vec<Series>),
    /// An HTTP error with a plain-text body, as a proxy in front of Prometheus sends it.
    HttpError {
        /// The HTTP status.
        status: StatusCode,
        /// The plain-text body.
        body: String,
    },
    /// A Prometheus API error: `{"status":"error","errorType":...,"error":...}`.
    PrometheusError {
        /// The error type, which also fixes the HTTP status.
        error_type: ErrorType,
        /// The `error` message.
        message: String,
    },
    /// The inner answer, sent only after this delay.
    Delayed(Duration, Box<Answer>),
    /// The first answer to the first query this rule gets, the second to the second, and so on;
    /// the last answer repeats once the list is used up.
    Sequence(Vec<Answer>),
}

impl Answer {
    /// One series without labels holding `value`: what `sum(...)` returns.
    pub fn value(value: f64) -> Self {
        Self::Vector(vec![Series {
            labels: BTreeMap::new(),
            value,
        }])
    }

    /// A scalar answer (`resultType: scalar`), as `scalar(...)` or a number literal returns.
    pub fn scalar(value: f64) -> Self {
        Self::Scalar(value)
    }

    /// An empty vector: Prometheus' "no data".
    pub fn no_data() -> Self {
        Self::Vector(Vec::new())
    }

    /// One series without labels holding NaN, as `0/0` gives.
    pub fn nan() -> Self {
        Self::value(f64::NAN)
    }

    /// Several series, as a query that forgot its `sum` returns.
    pub fn series(series: impl IntoIterator<Item = Series>) -> Self {
        Self::Vector(series.into_iter().collect())
    }

    /// `answer`, sent after `delay`.
    pub fn slow(delay: Duration, answer: Answer) -> Self {
        Self::Delayed(delay, Box::new(answer))
    }

    /// An HTTP error with a plain-text body.
    pub fn http_error(status: StatusCode, body: impl Into<String>) -> Self {
        Self::HttpError {
            status,
            body: body.into(),
        }
    }

    /// A Prometheus API error body.
    pub fn prometheus_error(error_type: ErrorType, message: impl Into<String>) -> Self {
        Self::PrometheusError {
            error_type,
            message: message.into(),
        }
    }
}

/// Which query endpoint a query came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/api/v1/query`.
    Instant,
    /// `/api/v1/query_range`.
    Range,
}

/// A query the fake received.
#[derive(Clone, Debug)]
pub struct ReceivedQuery {
    /// Which endpoint it came to.
    pub endpoint: Endpoint,
    /// GET or POST.
    pub method: Method,
    /// The `Authorization` header, if any (to check that credentials from a Secret arrive).
    pub authorization: Option<String>,
    /// The `query` parameter.
    pub query: String,
    /// Every parameter, `query` included (`time`, `start`, `end`, `step`, `timeout`, ...).
    pub params: BTreeMap<String, String>,
    /// When it arrived.
    pub received_at: Instant,
}

struct Rule {
    matcher: QueryMatch,
    answer: Answer,
    served: usize,
}

struct Script {
    rules: Vec<Rule>,
    default: Answer,
    required_authorization: Option<String>,
}

struct Shared {
    script: Mutex<Script>,
    received: Mutex<Vec<ReceivedQuery>>,
}

impl Shared {
    fn script(&self) -> MutexGuard<'_, Script> {
        // A panic while holding the lock leaves the script whole (no multi-step updates), so a
        // poisoned lock is still usable.
        self.script
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn received(&self) -> MutexGuard<'_, Vec<ReceivedQuery>> {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Starting, stopping or restarting the fake's listener failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeFakePrometheusError {
    /// Binding 127.0.0.1 failed.
    #[error("failed to bind the fake Prometheus to {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The port kept accepting connections after the fake was told to go down.
    #[error(
        "the fake Prometheus on {addr} still accepts connections {DOWN_TIMEOUT:?} after going down"
    )]
    StillUp {
        /// Its address.
        addr: SocketAddr,
    },
}

/// The scripted fake Prometheus. Dropping it stops the server.
pub struct FakePrometheus {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Option<Running>,
}

impl FakePrometheus {
    /// Starts the fake on a free port of 127.0.0.1, answering "no data" to everything.
    pub async fn start() -> Result<Self, ServeFakePrometheusError> {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener =
            TcpListener::bind(any_port)
                .await
                .map_err(|source| ServeFakePrometheusError::Bind {
                    addr: any_port,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServeFakePrometheusError::Bind {
                addr: any_port,
                source,
            })?;
        let shared = Arc::new(Shared {
            script: Mutex::new(Script {
                rules: Vec::new(),
                default: Answer::no_data(),
                required_authorization: None,
            }),
            received: Mutex::new(Vec::new()),
        });
        let running = serve(listener, Arc::clone(&shared));
        Ok(Self {
            addr,
            shared,
            running: Some(running),
        })
    }

    /// The base URL to give a Prometheus client, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the fake listens on (and listens on again after [`Self::come_up`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers queries `matcher` accepts with `answer`, ahead of every rule added before.
    pub fn on(&self, matcher: QueryMatch, answer: Answer) {
        self.shared.script().rules.push(Rule {
            matcher,
            answer,
            served: 0,
        });
    }

    /// Answers queries no rule matches with `answer`.
    pub fn set_default(&self, answer: Answer) {
        self.shared.script().default = answer;
    }

    /// Answers 401 to every request whose `Authorization` header is not exactly `authorization`
    /// (e.g. `Bearer <token>` or `Basic <base64>`); `None` accepts every request again.
    /// Refused requests are not recorded.
    pub fn require_authorization(&self, authorization: Option<&str>) {
        self.shared.script().required_authorization = authorization.map(str::to_owned);
    }

    /// Forgets every rule (the default answer stays).
    pub fn clear_rules(&self) {
        self.shared.script().rules.clear();
    }

    /// Every query received so far, oldest first.
    pub fn queries(&self) -> Vec<ReceivedQuery> {
        self.shared.received().clone()
    }

    /// How many queries arrived so far.
    pub fn query_count(&self) -> usize {
        self.shared.received().len()
    }

    /// How many of the queries received so far `matcher` accepts.
    pub fn count_matching(&self, matcher: &QueryMatch) -> usize {
        self.shared
            .received()
            .iter()
            .filter(|received| matcher.matches(&received.query))
            .count()
    }

    /// Stops listening: from when this returns until [`Self::come_up`], connections to the port
    /// are refused, as for a Prometheus that is down. Answers already being prepared (slow ones)
    /// are still sent.
    pub async fn go_down(&mut self) -> Result<(), ServeFakePrometheusError> {
        if let Some(running) = self.running.take() {
            // The server may already have ended on its own; either way it no longer listens.
            let _ignored = running.stop.send(());
            drop(running.task);
        }
        let deadline = Instant::now() + DOWN_TIMEOUT;
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            if Instant::now() > deadline {
                return Err(ServeFakePrometheusError::StillUp { addr: self.addr });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Listens again on the same port, with the same script and record of queries.
    pub async fn come_up(&mut self) -> Result<(), ServeFakePrometheusError> {
        if self.running.is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr).await.map_err(|source| {
            ServeFakePrometheusError::Bind {
                addr: self.addr,
                source,
            }
        })?;
        self.running = Some(serve(listener, Arc::clone(&self.shared)));
        Ok(())
    }
}

impl Drop for FakePrometheus {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.task.abort();
        }
    }
}

fn serve(listener: TcpListener, shared: Arc<Shared>) -> Running {
    let app = Router::new()
        .route("/api/v1/query", get(instant).post(instant))
        .route("/api/v1/query_range", get(range).post(range))
        .with_state(shared);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            // Dropping the sender (the fake dropped) also stops the server.
            let _ignored = stopped.await;
        };
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(%error, "the fake Prometheus stopped serving");
        }
    });
    Running { stop, task }
}

async fn instant(
    State(shared): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    Form(params): Form<Vec<(String, String)>>,
) -> Response {
    answer_query(&shared, Endpoint::Instant, method, &headers, params).await
}

async fn range(
    State(shared): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    Form(params): Form<Vec<(String, String)>>,
) -> Response {
    answer_query(&shared, Endpoint::Range, method, &headers, params).await
}

async fn answer_query(
    shared: &Shared,
    endpoint: Endpoint,
    method: Method,
    headers: &HeaderMap,
    params: Vec<(String, String)>,
) -> Response {
    let params: BTreeMap<String, String> = params.into_iter().collect();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let required = shared.script().required_authorization.clone();
    if required.is_some() && authorization != required {
        // As a Prometheus behind an authenticating proxy answers; the query never arrives.
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/plain")],
            "Unauthorized",
        )
            .into_response();
    }
    let Some(query) = params.get("query").cloned() else {
        return prometheus_error(ErrorType::BadData, "invalid parameter \"query\": missing");
    };
    shared.received().push(ReceivedQuery {
        endpoint,
        method,
        authorization,
        query: query.clone(),
        params: params.clone(),
        received_at: Instant::now(),
    });
    let answer = {
        let mut script = shared.script();
        match script
            .rules
            .iter_mut()
            .rev()
            .find(|rule| rule.matcher.matches(&query))
        {
            Some(rule) => {
                rule.served += 1;
                pick(&rule.answer, rule.served - 1)
            }
            None => pick(&script.default, 0),
        }
    };
    let mut answer = answer;
    loop {
        match answer {
            Answer::Delayed(delay, inner) => {
                tokio::time::sleep(delay).await;
                answer = *inner;
            }
            Answer::Sequence(_) => answer = Answer::no_data(),
            Answer::Scalar(value) => {
                return success(json!({
                    "resultType": "scalar",
                    "result": [evaluation_time(&params), format_value(value)],
                }));
            }
            Answer::Vector(series) => return vector_or_matrix(endpoint, &params, &series),
            Answer::HttpError { status, body } => {
                return (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response();
            }
            Answer::PrometheusError {
                error_type,
                message,
            } => return prometheus_error(error_type, &message),
        }
    }
}

/// The answer for the `index`-th query a rule serves, sequences unrolled.
fn pick(answer: &Answer, index: usize) -> Answer {
    match answer {
        Answer::Sequence(answers) => match answers.get(index).or(answers.last()) {
            Some(chosen) => pick(chosen, 0),
            None => Answer::no_data(),
        },
        Answer::Delayed(delay, inner) => Answer::Delayed(*delay, Box::new(pick(inner, index))),
        Answer::Scalar(_)
        | Answer::Vector(_)
        | Answer::HttpError { .. }
        | Answer::PrometheusError { .. } => answer.clone(),
    }
}

fn vector_or_matrix(
    endpoint: Endpoint,
    params: &BTreeMap<String, String>,
    series: &[Series],
) -> Response {
    match endpoint {
        Endpoint::Instant => {
            let at = evaluation_time(params);
            let result: Vec<Value> = series
                .iter()
                .map(|one| json!({"metric": one.labels, "value": [at, format_value(one.value)]}))
                .collect();
            success(json!({"resultType": "vector", "result": result}))
        }
        Endpoint::Range => {
            let Some(steps) = range_steps(params) else {
                return prometheus_error(
                    ErrorType::BadData,
                    "invalid parameter \"start\", \"end\" or \"step\"",
                );
            };
            let result: Vec<Value> = series
                .iter()
                .map(|one| {
                    let values: Vec<Value> = steps
                        .iter()
                        .map(|at| json!([at, format_value(one.value)]))
                        .collect();
                    json!({"metric": one.labels, "values": values})
                })
                .collect();
            success(json!({"resultType": "matrix", "result": result}))
        }
    }
}

fn range_steps(params: &BTreeMap<String, String>) -> Option<Vec<f64>> {
    let number = |name: &str| params.get(name)?.parse::<f64>().ok();
    let (start, end, step) = (number("start")?, number("end")?, number("step")?);
    if step.is_nan() || step <= 0.0 || end < start {
        return None;
    }
    let mut steps = Vec::new();
    let mut at = start;
    while at <= end && steps.len() < MAX_RANGE_POINTS {
        steps.push(at);
        at += step;
    }
    Some(steps)
}

/// The `time` parameter, or now, in seconds since the epoch.
fn evaluation_time(params: &BTreeMap<String, String>) -> f64 {
    params
        .get("time")
        .and_then(|time| time.parse::<f64>().ok())
        .unwrap_or_else(|| jiff::Timestamp::now().as_millisecond() as f64 / 1000.0)
}

/// A sample value as Prometheus writes it: a string, with `NaN`, `+Inf` and `-Inf`.
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        value.to_string()
    }
}

fn success(data: Value) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

fn prometheus_error(error_type: ErrorType, message: &str) -> Response {
    (
        error_type.status(),
        axum::Json(json!({
            "status": "error",
            "errorType": error_type.as_str(),
            "error": message,
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_the_way_prometheus_writes_them() {
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn a_sequence_repeats_its_last_answer_once_used_up() {
        let answer = Answer::Sequence(vec![Answer::no_data(), Answer::value(1.0)]);
        assert!(matches!(pick(&answer, 0), Answer::Vector(series) if series.is_empty()));
        assert!(matches!(pick(&answer, 1), Answer::Vector(series) if series.len() == 1));
        assert!(matches!(pick(&answer, 7), Answer::Vector(series) if series.len() == 1));
    }

    #[test]
    fn a_range_has_one_point_per_step_from_start_to_end() {
        let params: BTreeMap<String, String> = [("start", "100"), ("end", "130"), ("step", "10")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(range_steps(&params), Some(vec![100.0, 110.0, 120.0, 130.0]));
    }
}
