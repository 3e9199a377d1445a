//! [`HookCaller`]: POSTs a JSON body to a hook URL with one shared HTTP client, and returns what
//! happened as data ([`Outcome`]). It never decides what an answer means for the rollout.
//!
//! Guarantees:
//! - The whole call (lookup, every attempt, every backoff) ends within its budget, which the
//!   controller sets to at most half the analysis interval: a hanging hook cannot hold a
//!   reconcile longer than that.
//! - At most `--max-concurrent-hooks` calls are in flight across all Canaries (I5). A call that
//!   cannot get a permit within [`PERMIT_WAIT`] is not made ([`Outcome::Saturated`]) instead of
//!   queueing behind others: an unanswered gate holds, and nothing waits on a busy neighbour.
//! - Targets are vetted by the address rules of [`super::address`] before any connection, and
//!   again inside the client's resolver at connect time, so a name that re-resolves to a
//!   forbidden address between the two (DNS rebinding) is still refused. Redirects are never
//!   followed and proxies from the environment are never used, since either would reach an
//!   address nobody vetted.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::address::{self, AllowList, RefusedTarget};

/// How long a call waits for a concurrency permit before it is reported as not made.
pub const PERMIT_WAIT: Duration = Duration::from_millis(250);
/// The first pause between attempts; each later pause doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// How the controller's hook calls are bounded.
#[derive(Clone, Debug)]
pub struct HookSettings {
    /// Calls in flight at once, across all Canaries.
    pub max_concurrent: usize,
    /// Restricted addresses permitted anyway.
    pub allow: AllowList,
}

impl Default for HookSettings {
    fn default() -> Self {
        Self {
            max_concurrent: 16,
            allow: AllowList::default(),
        }
    }
}

/// The shared hook client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("failed to build the hook HTTP client")]
pub struct BuildHookClientError(#[source] reqwest::Error);

/// One call to make.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    pub url: &'a str,
    /// Attempts after the first.
    pub retries: u32,
    /// The whole call's time, retries included.
    pub budget: Duration,
}

/// What a call came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered 2xx.
    Passed { status: u16 },
    /// Answered, but not 2xx (the last answer, after retries).
    Rejected { status: u16 },
    /// No HTTP answer: connection refused, reset, TLS error (the last error, after retries).
    Failed { error: String },
    /// The budget ran out before an answer.
    TimedOut { budget: Duration },
    /// The target is not permitted; nothing was sent.
    Refused(RefusedTarget),
    /// Too many calls in flight; this one was not made.
    Saturated,
}

impl Outcome {
    /// Whether the hook said yes.
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Passed { .. })
    }

    /// Whether the call was made at all (a saturated call has no answer, not a failing one).
    pub fn answered(&self) -> bool {
        !matches!(self, Outcome::Saturated)
    }

    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Passed { .. } => "passed",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Failed { .. } => "error",
            Outcome::TimedOut { .. } => "timeout",
            Outcome::Refused(_) => "refused",
            Outcome::Saturated => "saturated",
        }
    }

    /// What happened, in words for status and events.
    pub fn message(&self) -> String {
        match self {
            Outcome::Passed { status } | Outcome::Rejected { status } => {
                let reason = StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("");
                format!("HTTP {status} {reason}").trim_end().to_owned()
            }
            Outcome::Failed { error } => error.clone(),
            Outcome::TimedOut { budget } => format!(
                "no answer within {} (the hook's timeout, at most half the interval)",
                crate::api::Duration(*budget)
            ),
            Outcome::Refused(refused) => refused.to_string(),
            Outcome::Saturated => {
                "not called: too many hook calls in flight (--max-concurrent-hooks)".to_owned()
            }
        }
    }
}

/// Calls hooks. Cheap to clone; every clone shares the client and the permits.
#[derive(Clone)]
pub struct HookCaller {
    client: reqwest::Client,
    permits: Arc<Semaphore>,
    allow: Arc<AllowList>,
}

impl std::fmt::Debug for HookCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookCaller")
            .field("available_permits", &self.permits.available_permits())
            .field("allow", &self.allow)
            .finish()
    }
}

impl HookCaller {
    pub fn new(settings: &HookSettings) -> Result<Self, BuildHookClientError> {
        let allow = Arc::new(settings.allow.clone());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(VettingResolver {
                allow: allow.clone(),
            })
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(BuildHookClientError)?;
        Ok(Self {
            client,
            permits: Arc::new(Semaphore::new(settings.max_concurrent.max(1))),
            allow,
        })
    }

    /// A permit for one call, if one is free now (for calls made in the background, which are
    /// dropped rather than queued when none is).
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Makes `call` with `body`, waiting at most [`PERMIT_WAIT`] for a permit.
    pub async fn call(&self, call: Call<'_>, body: &(impl Serialize + Sync)) -> Outcome {
        let wait = PERMIT_WAIT.min(call.budget);
        let permit = match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            // A closed semaphore is never closed by sluice; treat it as saturation all the same.
            Ok(Err(_)) | Err(_) => return Outcome::Saturated,
        };
        self.call_with(permit, call, body).await
    }

    /// Makes `call` under a permit the caller already holds.
    pub async fn call_with(
        &self,
        permit: OwnedSemaphorePermit,
        call: Call<'_>,
        body: &(impl Serialize + Sync),
    ) -> Outcome {
        let outcome = tokio::time::timeout(call.budget, self.attempts(call, body))
            .await
            .unwrap_or(Outcome::TimedOut {
                budget: call.budget,
            });
        drop(permit);
        outcome
    }

    async fn attempts(&self, call: Call<'_>, body: &(impl Serialize + Sync)) -> Outcome {
        let deadline = Instant::now() + call.budget;
        let url = match reqwest::Url::parse(call.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            Ok(_) | Err(_) => {
                return Outcome::Refused(RefusedTarget::NotHttp {
                    url: call.url.to_owned(),
                });
            }
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Outcome::Refused(RefusedTarget::NotHttp {
                url: call.url.to_owned(),
            });
        };
        if let Err(refused) = address::resolve(host, port, &self.allow).await {
            return Outcome::Refused(refused);
        }
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Outcome::TimedOut {
                    budget: call.budget,
                };
            }
            let sent = self
                .client
                .post(url.clone())
                .timeout(remaining)
                .json(body)
                .send()
                .await;
            let outcome = match sent {
                Ok(response) if response.status().is_success() => {
                    return Outcome::Passed {
                        status: response.status().as_u16(),
                    };
                }
                Ok(response) => Outcome::Rejected {
                    status: response.status().as_u16(),
                },
                Err(error) if error.is_timeout() => Outcome::TimedOut {
                    budget: call.budget,
                },
                Err(error) => Outcome::Failed {
                    error: error_chain(&error),
                },
            };
            if attempt >= call.retries || !worth_retrying(&outcome) {
                return outcome;
            }
            attempt += 1;
            let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff *= 2;
        }
    }
}

/// A hook's clear "no" (a 4xx) is an answer, asked again only when the next poll is due; trouble
/// on the way (no connection, 5xx, 408, 429, a timed-out attempt) may pass.
fn worth_retrying(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Rejected { status } => *status >= 500 || *status == 408 || *status == 429,
        Outcome::Failed { .. } | Outcome::TimedOut { .. } => true,
        Outcome::Passed { .. } | Outcome::Refused(_) | Outcome::Saturated => false,
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The client's resolver: the same rules at connect time, on the addresses it will connect to.
struct VettingResolver {
    allow: Arc<AllowList>,
}

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = address::resolve(&host, 0, &allow).await?;
            let addrs: Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::http::StatusCode as AxumStatus;
    use axum::routing::post;

    use super::*;

    fn loopback_allowed(max_concurrent: usize) -> HookCaller {
        HookCaller::new(&HookSettings {
            max_concurrent,
            allow: AllowList::new(vec!["127.0.0.1/32".parse().unwrap()]),
        })
        .unwrap()
    }

    /// Serves `app` on a random loopback port; the server stops with the test's runtime.
    async fn serve(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/hook")
    }

    fn call(url: &str, retries: u32, budget: Duration) -> Call<'_> {
        Call {
            url,
            retries,
            budget,
        }
    }

    #[tokio::test]
    async fn a_2xx_answer_passes_and_the_body_is_the_json_given() {
        let seen = Arc::new(std::sync::Mutex::new(None));
        let app = Router::new().route(
            "/hook",
            post({
                let seen = seen.clone();
                move |body: axum::Json<serde_json::Value>| async move {
                    *seen.lock().unwrap() = Some(body.0);
                    AxumStatus::ACCEPTED
                }
            }),
        );
        let url = serve(app).await;
        let outcome = loopback_allowed(4)
            .call(
                call(&url, 0, Duration::from_secs(5)),
                &serde_json::json!({"canary": "web"}),
            )
            .await;
        assert_eq!(outcome, Outcome::Passed { status: 202 });
        assert_eq!(
            seen.lock().unwrap().clone(),
            Some(serde_json::json!({"canary": "web"}))
        );
    }

    #[tokio::test]
    async fn a_5xx_is_retried_with_backoff_and_a_4xx_is_an_answer_not_retried() {
        let hits = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route(
                "/hook",
                post({
                    let hits = hits.clone();
                    move || async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        AxumStatus::SERVICE_UNAVAILABLE
                    }
                }),
            )
            .route("/no", post(|| async { AxumStatus::FORBIDDEN }));
        let url = serve(app).await;
        let caller = loopback_allowed(4);
        let outcome = caller
            .call(call(&url, 2, Duration::from_secs(5)), &())
            .await;
        assert_eq!(outcome, Outcome::Rejected { status: 503 });
        assert_eq!(hits.load(Ordering::SeqCst), 3, "one call and two retries");
        let no = url.replace("/hook", "/no");
        let outcome = caller.call(call(&no, 2, Duration::from_secs(5)), &()).await;
        assert_eq!(outcome, Outcome::Rejected { status: 403 });
        assert_eq!(outcome.message(), "HTTP 403 Forbidden");
    }

    #[tokio::test]
    async fn a_hanging_hook_ends_within_its_budget_retries_included() {
        let app = Router::new().route(
            "/hook",
            post(|| async {
                std::future::pending::<()>().await;
                AxumStatus::OK
            }),
        );
        let url = serve(app).await;
        let started = std::time::Instant::now();
        let outcome = loopback_allowed(4)
            .call(call(&url, 5, Duration::from_millis(400)), &())
            .await;
        assert!(matches!(outcome, Outcome::TimedOut { .. }), "{outcome:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let followed = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route(
                "/hook",
                post(|| async { (AxumStatus::TEMPORARY_REDIRECT, [("location", "/elsewhere")]) }),
            )
            .route(
                "/elsewhere",
                post({
                    let followed = followed.clone();
                    move || async move {
                        followed.fetch_add(1, Ordering::SeqCst);
                        AxumStatus::OK
                    }
                }),
            );
        let url = serve(app).await;
        let outcome = loopback_allowed(4)
            .call(call(&url, 0, Duration::from_secs(5)), &())
            .await;
        assert_eq!(outcome, Outcome::Rejected { status: 307 });
        assert_eq!(followed.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_loopback_hook_is_refused_without_a_connection_unless_allowed() {
        let hits = Arc::new(AtomicUsize::new(0));
        let app = Router::new().route(
            "/hook",
            post({
                let hits = hits.clone();
                move || async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    AxumStatus::OK
                }
            }),
        );
        let url = serve(app).await;
        let strict = HookCaller::new(&HookSettings::default()).unwrap();
        let outcome = strict
            .call(call(&url, 2, Duration::from_secs(5)), &())
            .await;
        assert!(
            matches!(outcome, Outcome::Refused(RefusedTarget::Address { .. })),
            "{outcome:?}"
        );
        assert!(outcome.message().contains("--hook-allow-cidr 127.0.0.1/32"));
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "no request reached the server"
        );
        let by_name = url.replace("127.0.0.1", "localhost");
        let outcome = strict
            .call(call(&by_name, 0, Duration::from_secs(5)), &())
            .await;
        assert!(matches!(outcome, Outcome::Refused(_)), "{outcome:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_metadata_address_is_refused_at_once_even_with_loopback_allowed() {
        let started = std::time::Instant::now();
        let outcome = loopback_allowed(4)
            .call(
                call(
                    "http://169.254.169.254/latest/meta-data",
                    2,
                    Duration::from_secs(5),
                ),
                &(),
            )
            .await;
        assert!(
            matches!(
                outcome,
                Outcome::Refused(RefusedTarget::Address {
                    why: address::Restricted::Metadata,
                    ..
                })
            ),
            "{outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn the_client_resolver_applies_the_same_rules_at_connect_time() {
        // What a name that re-resolved to loopback after the first check would meet.
        let strict = VettingResolver {
            allow: Arc::new(AllowList::default()),
        };
        let refused = strict.resolve("localhost".parse().unwrap()).await;
        let error = refused.err().expect("refused");
        assert!(error.to_string().contains("a loopback address"), "{error}");
        let allowed = VettingResolver {
            allow: Arc::new(AllowList::new(vec![
                "127.0.0.0/8".parse().unwrap(),
                "::1/128".parse().unwrap(),
            ])),
        };
        let addresses: Vec<_> = allowed
            .resolve("localhost".parse().unwrap())
            .await
            .expect("permitted")
            .collect();
        assert!(
            addresses.iter().all(|a| a.ip().is_loopback()),
            "{addresses:?}"
        );
        assert!(!addresses.is_empty());
    }

    #[tokio::test]
    async fn a_call_that_cannot_get_a_permit_is_not_made() {
        let caller = loopback_allowed(1);
        let held = caller.try_permit().expect("one permit free");
        assert!(caller.try_permit().is_none());
        let outcome = caller
            .call(
                call("http://127.0.0.1:9/hook", 0, Duration::from_secs(5)),
                &(),
            )
            .await;
        assert_eq!(outcome, Outcome::Saturated);
        assert!(!outcome.answered());
        drop(held);
        assert!(caller.try_permit().is_some());
    }
}
