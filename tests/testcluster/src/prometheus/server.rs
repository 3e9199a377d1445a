//! The real Prometheus server, run as a child process for one test: a generated configuration
//! (scrape and evaluation interval 1 s, static targets the test names), storage in a temporary
//! directory, and a free port on 127.0.0.1.
//!
//! [`PrometheusServer::start`] returns only once the server is ready *and* has scraped every target
//! once, found by polling `/-/ready` and `/api/v1/targets` (never by sleeping a fixed time). The
//! process is killed when the value is dropped, a panicking test included, and its directory
//! removed.
//!
//! It must never touch a system-wide Prometheus: it uses its own port, configuration and storage.
//! The binary is `/usr/bin/prometheus` (Debian package `prometheus`) unless `SLUICE_PROMETHEUS_BIN`
//! names another; when it is missing, start fails with [`StartPrometheusError::BinaryMissing`] so a
//! test can skip with that reason.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

/// The environment variable that names another Prometheus binary.
pub const PROMETHEUS_BIN_ENV: &str = "SLUICE_PROMETHEUS_BIN";

/// Where the Debian package installs the binary.
pub const DEFAULT_PROMETHEUS_BIN: &str = "/usr/bin/prometheus";

/// How long start waits for readiness and the first scrapes, unless told otherwise.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(20);

/// How many times start tries another port when the one it picked was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

/// One endpoint for Prometheus to scrape.
#[derive(Clone, Debug)]
pub struct ScrapeTarget {
    /// The scrape job's name (the `job` label).
    pub job: String,
    /// Where to scrape; must be on 127.0.0.1.
    pub address: SocketAddr,
    /// The path to scrape, `/metrics` by default.
    pub metrics_path: String,
    /// Target labels, added to every series the target exports. The exporter's own labels win on
    /// a clash (`honor_labels: true`), so the simulator's `namespace`, `pod` and `service` stay as
    /// they are in production.
    pub labels: BTreeMap<String, String>,
}

impl ScrapeTarget {
    /// A target for `job` at `address`, path `/metrics`, no extra labels.
    pub fn new(job: impl Into<String>, address: SocketAddr) -> Self {
        Self {
            job: job.into(),
            address,
            metrics_path: "/metrics".to_owned(),
            labels: BTreeMap::new(),
        }
    }

    /// Adds a target label.
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(name.into(), value.into());
        self
    }

    /// Scrapes `path` instead of `/metrics`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.metrics_path = path.into();
        self
    }
}

/// Starting the Prometheus server failed.
#[derive(Debug, thiserror::Error)]
pub enum StartPrometheusError {
    /// There is no Prometheus binary: install the Debian package `prometheus`.
    #[error(
        "no Prometheus binary at {path} (install the Debian package `prometheus`, or set {PROMETHEUS_BIN_ENV})"
    )]
    BinaryMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A scrape target is not on the loopback interface.
    #[error("scrape target {address} of job {job} is not on 127.0.0.1")]
    TargetNotLoopback {
        /// The job.
        job: String,
        /// The address.
        address: SocketAddr,
    },
    /// Preparing the temporary directory, configuration or a free port failed.
    #[error("failed to prepare the Prometheus working directory or port")]
    Prepare(#[source] std::io::Error),
    /// The process could not be started.
    #[error("failed to spawn {path}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The process ended before it was ready.
    #[error("Prometheus exited before it was ready ({status}); its log:\n{log}")]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its standard error.
        log: String,
    },
    /// It was not ready, or had not scraped every target, in time.
    #[error("Prometheus was not ready with every target scraped within {timeout:?}: {waiting_for}")]
    NotReady {
        /// How long start waited.
        timeout: Duration,
        /// What was still missing.
        waiting_for: String,
    },
}

/// A query to the running server failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryPrometheusError {
    /// The HTTP request failed.
    #[error("failed to query Prometheus for {query}")]
    Http {
        /// The query.
        query: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The answer was not a success with a vector or scalar.
    #[error("Prometheus answered {query} with {answer}")]
    Unexpected {
        /// The query.
        query: String,
        /// The answer's JSON.
        answer: String,
    },
    /// The value did not arrive in time.
    #[error("{query} had no value that satisfies the test within {timeout:?} (last: {last:?})")]
    Timeout {
        /// The query.
        query: String,
        /// How long it waited.
        timeout: Duration,
        /// The last answer seen.
        last: Option<Vec<(BTreeMap<String, String>, f64)>>,
    },
}

/// A Prometheus server running as a child process for one test. Dropping it kills the process.
pub struct PrometheusServer {
    child: Child,
    addr: SocketAddr,
    http: reqwest::Client,
    // Held for its Drop: the configuration and storage live here.
    _dir: tempfile::TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `targets`, and waits (up to [`DEFAULT_START_TIMEOUT`]) until it
    /// is ready and has scraped each target once.
    pub async fn start(targets: &[ScrapeTarget]) -> Result<Self, StartPrometheusError> {
        Self::start_with_timeout(targets, DEFAULT_START_TIMEOUT).await
    }

    /// [`Self::start`] with another time limit.
    pub async fn start_with_timeout(
        targets: &[ScrapeTarget],
        timeout: Duration,
    ) -> Result<Self, StartPrometheusError> {
        Self::start_binary(&binary_path(), targets, timeout).await
    }

    /// [`Self::start_with_timeout`] with the Prometheus binary at `binary`.
    pub async fn start_binary(
        binary: &Path,
        targets: &[ScrapeTarget],
        timeout: Duration,
    ) -> Result<Self, StartPrometheusError> {
        let binary = binary.to_owned();
        if !binary.is_file() {
            return Err(StartPrometheusError::BinaryMissing { path: binary });
        }
        if let Some(target) = targets.iter().find(|t| !t.address.ip().is_loopback()) {
            return Err(StartPrometheusError::TargetNotLoopback {
                job: target.job.clone(),
                address: target.address,
            });
        }
        let deadline = Instant::now() + timeout;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::launch(&binary, targets, deadline, timeout).await {
                Err(StartPrometheusError::Exited { log, .. })
                    if attempt < PORT_ATTEMPTS && log.contains("address already in use") =>
                {
                    tracing::debug!("the port picked for Prometheus was taken; trying another");
                }
                other => return other,
            }
        }
    }

    async fn launch(
        binary: &Path,
        targets: &[ScrapeTarget],
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Self, StartPrometheusError> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-prometheus-")
            .tempdir()
            .map_err(StartPrometheusError::Prepare)?;
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config(targets)).map_err(StartPrometheusError::Prepare)?;
        let data_path = dir.path().join("data");
        let log_path = dir.path().join("prometheus.log");
        let log = std::fs::File::create(&log_path).map_err(StartPrometheusError::Prepare)?;
        let addr = free_port().map_err(StartPrometheusError::Prepare)?;
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", data_path.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|source| StartPrometheusError::Spawn {
                path: binary.to_owned(),
                source,
            })?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|error| StartPrometheusError::Prepare(std::io::Error::other(error)))?;
        let mut server = Self {
            child,
            addr,
            http,
            _dir: dir,
        };
        server
            .wait_until_scraped(targets.len(), deadline, timeout, &log_path)
            .await?;
        Ok(server)
    }

    async fn wait_until_scraped(
        &mut self,
        expected_targets: usize,
        deadline: Instant,
        timeout: Duration,
        log_path: &Path,
    ) -> Result<(), StartPrometheusError> {
        let mut waiting_for = "readiness".to_owned();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                return Err(StartPrometheusError::Exited { status, log });
            }
            if Instant::now() > deadline {
                return Err(StartPrometheusError::NotReady {
                    timeout,
                    waiting_for,
                });
            }
            match self.unscraped_targets(expected_targets).await {
                Ok(None) => return Ok(()),
                Ok(Some(missing)) => waiting_for = missing,
                Err(error) => waiting_for = error,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `None` when ready with every target scraped once, otherwise what is still missing.
    async fn unscraped_targets(&self, expected: usize) -> Result<Option<String>, String> {
        let ready = self
            .http
            .get(format!("{}/-/ready", self.url()))
            .send()
            .await
            .map_err(|error| format!("readiness ({error})"))?;
        if !ready.status().is_success() {
            return Ok(Some(format!("readiness (HTTP {})", ready.status())));
        }
        let targets: Value = self
            .http
            .get(format!("{}/api/v1/targets?state=active", self.url()))
            .send()
            .await
            .map_err(|error| format!("the target list ({error})"))?
            .json()
            .await
            .map_err(|error| format!("the target list ({error})"))?;
        let active = targets["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if active.len() < expected {
            return Ok(Some(format!(
                "{} of {expected} targets discovered",
                active.len()
            )));
        }
        // Health stays "unknown" until the first scrape ends, successful or not.
        let unscraped: Vec<String> = active
            .iter()
            .filter(|target| target["health"].as_str().unwrap_or("unknown") == "unknown")
            .map(|target| target["scrapeUrl"].as_str().unwrap_or("?").to_owned())
            .collect();
        if unscraped.is_empty() {
            Ok(None)
        } else {
            Ok(Some(format!("first scrape of {}", unscraped.join(", "))))
        }
    }

    /// The base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Runs an instant query and returns its series (labels and value); a scalar comes back as one
    /// series without labels.
    pub async fn query(
        &self,
        query: &str,
    ) -> Result<Vec<(BTreeMap<String, String>, f64)>, QueryPrometheusError> {
        let http_error = |source| QueryPrometheusError::Http {
            query: query.to_owned(),
            source,
        };
        let answer: Value = self
            .http
            .post(format!("{}/api/v1/query", self.url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("query={}", form_encode(query)))
            .send()
            .await
            .map_err(http_error)?
            .json()
            .await
            .map_err(http_error)?;
        parse_instant_answer(&answer).ok_or_else(|| QueryPrometheusError::Unexpected {
            query: query.to_owned(),
            answer: answer.to_string(),
        })
    }

    /// Polls `query` until its series satisfy `accept`, and returns them; fails after `timeout`.
    pub async fn wait_for(
        &self,
        query: &str,
        timeout: Duration,
        accept: impl Fn(&[(BTreeMap<String, String>, f64)]) -> bool,
    ) -> Result<Vec<(BTreeMap<String, String>, f64)>, QueryPrometheusError> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            match self.query(query).await {
                Ok(series) if accept(&series) => return Ok(series),
                Ok(series) => last = Some(series),
                Err(error) => tracing::debug!(%error, "polling Prometheus"),
            }
            if Instant::now() > deadline {
                return Err(QueryPrometheusError::Timeout {
                    query: query.to_owned(),
                    timeout,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills the process now and waits for it to end.
    pub async fn stop(mut self) {
        // Already ended is fine: the point is that it no longer runs.
        let _ignored = self.child.kill().await;
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        // kill_on_drop also covers this; starting the kill here makes it happen even if the child
        // handle is leaked by a panic elsewhere.
        let _ignored = self.child.start_kill();
    }
}

fn binary_path() -> PathBuf {
    std::env::var_os(PROMETHEUS_BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PROMETHEUS_BIN))
}

/// A port that was free a moment ago. Prometheus binds it itself; start retries if it was taken.
fn free_port() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    listener.local_addr()
}

/// The Prometheus configuration for `targets`: one scrape job per target job name.
pub fn config(targets: &[ScrapeTarget]) -> String {
    let mut jobs: BTreeMap<(&str, &str), Vec<&ScrapeTarget>> = BTreeMap::new();
    for target in targets {
        jobs.entry((target.job.as_str(), target.metrics_path.as_str()))
            .or_default()
            .push(target);
    }
    let mut out = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for (index, ((job, path), targets)) in jobs.iter().enumerate() {
        // Two targets of one job with different paths need two scrape configs with distinct
        // names; the job label is set back to the test's job name.
        let _ = writeln!(
            out,
            "  - job_name: {}",
            yaml_string(&format!("{job}-{index}"))
        );
        let _ = writeln!(out, "    metrics_path: {}", yaml_string(path));
        out.push_str("    honor_labels: true\n    static_configs:\n");
        for target in targets {
            let _ = writeln!(
                out,
                "      - targets: [{}]",
                yaml_string(&target.address.to_string())
            );
            out.push_str("        labels:\n");
            let _ = writeln!(out, "          job: {}", yaml_string(job));
            for (name, value) in &target.labels {
                let _ = writeln!(out, "          {}: {}", name, yaml_string(value));
            }
        }
    }
    out
}

/// A YAML double-quoted string (JSON strings are valid YAML).
fn yaml_string(value: &str) -> String {
    Value::String(value.to_owned()).to_string()
}

fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte));
            }
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    out
}

fn parse_instant_answer(answer: &Value) -> Option<Vec<(BTreeMap<String, String>, f64)>> {
    if answer["status"] != "success" {
        return None;
    }
    let data = &answer["data"];
    let value_of = |pair: &Value| -> Option<f64> { pair.get(1)?.as_str()?.parse().ok() };
    match data["resultType"].as_str()? {
        "scalar" => Some(vec![(BTreeMap::new(), value_of(&data["result"])?)]),
        "vector" => data["result"]
            .as_array()?
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()?
                    .iter()
                    .map(|(name, value)| Some((name.clone(), value.as_str()?.to_owned())))
                    .collect::<Option<BTreeMap<_, _>>>()?;
                Some((labels, value_of(&series["value"])?))
            })
            .collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_keeps_exporter_labels_and_adds_target_labels() {
        let target = ScrapeTarget::new("apps", SocketAddr::from(([127, 0, 0, 1], 4000)))
            .label("namespace", "shop");
        let config = config(&[target]);
        assert!(config.contains("scrape_interval: 1s"), "{config}");
        assert!(config.contains("evaluation_interval: 1s"), "{config}");
        assert!(config.contains("honor_labels: true"), "{config}");
        assert!(config.contains("targets: [\"127.0.0.1:4000\"]"), "{config}");
        assert!(config.contains("namespace: \"shop\""), "{config}");
        assert!(config.contains("job: \"apps\""), "{config}");
    }

    #[test]
    fn form_encoding_escapes_promql_punctuation() {
        assert_eq!(
            form_encode("sum(x{a=~\"5..\"}[1m])"),
            "sum%28x%7Ba%3D~%225..%22%7D%5B1m%5D%29"
        );
    }

    #[test]
    fn a_scalar_answer_reads_as_one_unlabelled_series() {
        let answer = serde_json::json!({"status":"success","data":{"resultType":"scalar","result":[1.0,"0.5"]}});
        assert_eq!(
            parse_instant_answer(&answer),
            Some(vec![(BTreeMap::new(), 0.5)])
        );
    }
}
