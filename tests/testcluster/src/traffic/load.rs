//! A load generator: real HTTP requests at a steady rate to one loopback address (normally the
//! [`super::ingress::SimulatedIngress`], which splits them by the router's weights), bounded in
//! count and in duration so it always stops by itself.
//!
//! It counts the answers by the app that gave them (the `x-sluice-role` header) and by status,
//! so a test can check the split and the errors it caused. It must never send anywhere but
//! 127.0.0.1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::app::ROLE_HEADER;

/// How much load to send.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Requests per second.
    pub rate_per_second: f64,
    /// Stop after this many requests.
    pub max_requests: u64,
    /// Stop after this long, whatever the count.
    pub max_duration: Duration,
    /// The request path.
    pub path: String,
    /// The `Host` header (the Ingress rule's host).
    pub host: Option<String>,
    /// At most this many requests in flight; at the limit the rate drops rather than piling up.
    pub max_in_flight: usize,
    /// Each request's timeout.
    pub request_timeout: Duration,
}

impl LoadConfig {
    /// `rate_per_second` requests per second, `max_requests` at most, for at most 60 s.
    pub fn new(rate_per_second: f64, max_requests: u64) -> Self {
        Self {
            rate_per_second,
            max_requests,
            max_duration: Duration::from_secs(60),
            path: "/".to_owned(),
            host: None,
            max_in_flight: 64,
            request_timeout: Duration::from_secs(10),
        }
    }

    /// With this duration bound.
    pub fn max_duration(mut self, duration: Duration) -> Self {
        self.max_duration = duration;
        self
    }

    /// With this `Host` header.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }
}

/// What the load generator saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Requests sent.
    pub sent: u64,
    /// Answers by the app that gave them (`stable`, `canary`, or `none` without the header).
    pub by_role: BTreeMap<String, u64>,
    /// Answers by HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection refused, timeout).
    pub failed: u64,
}

impl LoadReport {
    /// Answers the app of `role` (`stable` or `canary`) gave.
    pub fn answered_by(&self, role: &str) -> u64 {
        self.by_role.get(role).copied().unwrap_or(0)
    }

    /// The share of answered requests the canary gave.
    pub fn canary_share(&self) -> f64 {
        let answered: u64 = self.by_role.values().sum();
        if answered == 0 {
            return 0.0;
        }
        self.answered_by("canary") as f64 / answered as f64
    }

    /// Answers with a 5xx status.
    pub fn server_errors(&self) -> u64 {
        self.by_status
            .iter()
            .filter(|(status, _)| (500..600).contains(*status))
            .map(|(_, count)| count)
            .sum()
    }
}

/// The load could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendLoadError {
    /// The target is not on the loopback interface.
    #[error("refusing to send load to {0}: only 127.0.0.1 is allowed")]
    NotLoopback(SocketAddr),
    /// The rate is not a positive number.
    #[error("the request rate must be positive, not {0}")]
    InvalidRate(f64),
    /// The HTTP client could not be built.
    #[error("failed to build the load generator's HTTP client")]
    Client(#[source] reqwest::Error),
    /// The background task failed.
    #[error("the load generator task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// A load generator running in the background; [`LoadHandle::finish`] waits for its report.
/// Dropping the handle stops sending.
pub struct LoadHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<LoadReport>,
}

impl LoadHandle {
    /// Stops sending; requests in flight still finish.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until the load ends (by its bounds or [`Self::stop`]) and returns what it saw.
    pub async fn finish(mut self) -> Result<LoadReport, SendLoadError> {
        (&mut self.task).await.map_err(SendLoadError::Task)
    }
}

impl Drop for LoadHandle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Sends the load to `target` and waits until it ends.
pub async fn run(target: SocketAddr, config: LoadConfig) -> Result<LoadReport, SendLoadError> {
    spawn(target, config)?.finish().await
}

/// Starts sending the load to `target` in the background.
pub fn spawn(target: SocketAddr, config: LoadConfig) -> Result<LoadHandle, SendLoadError> {
    if !target.ip().is_loopback() {
        return Err(SendLoadError::NotLoopback(target));
    }
    if !(config.rate_per_second.is_finite() && config.rate_per_second > 0.0) {
        return Err(SendLoadError::InvalidRate(config.rate_per_second));
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(config.request_timeout)
        .build()
        .map_err(SendLoadError::Client)?;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(send(target, config, http, stopped));
    Ok(LoadHandle { stop, task })
}

async fn send(
    target: SocketAddr,
    config: LoadConfig,
    http: reqwest::Client,
    mut stopped: watch::Receiver<bool>,
) -> LoadReport {
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let deadline = Instant::now() + config.max_duration;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / config.rate_per_second));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let url = format!("http://{target}{}", config.path);
    let mut requests = JoinSet::new();
    let mut sent = 0;
    while sent < config.max_requests {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tokio::time::sleep_until(deadline) => break,
            _ = stopped.wait_for(|stop| *stop) => break,
        }
        if Instant::now() >= deadline {
            break;
        }
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        sent += 1;
        let mut request = http.get(&url);
        if let Some(host) = &config.host {
            request = request.header(reqwest::header::HOST, host);
        }
        let report = Arc::clone(&report);
        requests.spawn(async move {
            let answer = request.send().await;
            drop(permit);
            let mut report = report.lock().unwrap_or_else(PoisonError::into_inner);
            match answer {
                Ok(response) => {
                    let role = response
                        .headers()
                        .get(ROLE_HEADER)
                        .and_then(|role| role.to_str().ok())
                        .unwrap_or("none")
                        .to_owned();
                    *report.by_role.entry(role).or_insert(0) += 1;
                    *report
                        .by_status
                        .entry(response.status().as_u16())
                        .or_insert(0) += 1;
                }
                Err(_) => report.failed += 1,
            }
        });
        // Reap finished requests as we go so the set stays small.
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
    let mut report = report
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    report.sent = sent;
    report
}
