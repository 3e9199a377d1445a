//! The controller's side of hooks: call the hooks `core::due` names (concurrently, each within its
//! budget) and hand the answers to the core as [`HookResult`]s; after the status is persisted, tell
//! each core event to every `event` hook and notification target in the background.
//!
//! Background calls never hold a reconcile: each takes a permit of the caller's global bound when
//! one is free, and is dropped (counted in `sluice_hook_calls_dropped`) when none is, so the set
//! of calls in flight stays bounded (I5). Their answers are counted, never recorded in status:
//! telling is informational and a second status write per event would cost API traffic.
//!
//! A notification's Secret (`urlSecretRef`) is read with one GET per send, as the Prometheus
//! Secret is: sluice keeps no Secret cache, so RBAC can grant `get` on that one Secret by name.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use tracing::{debug, warn};

use super::context::Context;
use super::metrics::{ControllerMetrics, DroppedLabels, HookLabels};
use super::observe::Observed;
use crate::api::{CanaryStatus, HookSpec, HookType, NotificationSpec};
use crate::core::validate::DEFAULT_HOOK_TIMEOUT;
use crate::core::{Decision, HookResult};
use crate::hooks::{Call, HookBody, HookCaller, Outcome, Subject, lifecycle, notification_body};

/// Label of notification calls in `sluice_hook_calls`.
const NOTIFICATION: &str = "notification";
/// Retries of a notification call.
const NOTIFICATION_RETRIES: u32 = 2;
/// The Secret key holding a notification URL when `urlSecretRef.key` is not set.
const DEFAULT_URL_KEY: &str = "url";

/// Calls the hooks named in `names` at once; returns the answers of those that were called. A hook
/// that could not be called (no permit) has no result: the core then holds (gates, pre-rollout) or
/// calls the check Unknown (rollout).
pub async fn call_due(ctx: &Context, observed: &Observed, names: &[String]) -> Vec<HookResult> {
    let Some(resolved) = observed.resolved() else {
        return Vec::new();
    };
    let subject = subject(observed, &observed.status);
    let calls = names
        .iter()
        .filter_map(|name| resolved.hooks.iter().find(|h| &h.name == name))
        .map(|hook| {
            let subject = &subject;
            async move {
                let call = Call {
                    url: &hook.url,
                    retries: u32::try_from(hook.retries.unwrap_or(2)).unwrap_or(0),
                    budget: budget(hook, resolved.interval),
                };
                let body = HookBody {
                    subject,
                    hook: &hook.name,
                    hook_type: hook.hook_type,
                    event: None,
                    reason: None,
                    message: None,
                    metadata: &hook.metadata,
                };
                let outcome = ctx.hooks.call(call, &body).await;
                count(&ctx.metrics, observed, hook.hook_type.as_str(), &outcome);
                debug!(
                    canary = %observed.identity.name,
                    hook = %hook.name,
                    result = outcome.label(),
                    "hook called"
                );
                outcome.answered().then(|| HookResult {
                    name: hook.name.clone(),
                    hook_type: hook.hook_type,
                    passed: outcome.passed(),
                    message: outcome.message(),
                })
            }
        });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The budget of one hook call: its timeout (defaulted by the core), never over half the interval.
fn budget(hook: &HookSpec, interval: Duration) -> Duration {
    hook.timeout
        .map_or(DEFAULT_HOOK_TIMEOUT, |t| t.as_std())
        .min(interval / 2)
        .max(Duration::from_millis(1))
}

fn subject(observed: &Observed, status: &CanaryStatus) -> Subject {
    Subject {
        canary: observed.identity.name.clone(),
        namespace: observed.identity.namespace.clone(),
        revision: status.revision.clone().unwrap_or_default(),
        phase: status.phase.unwrap_or_default().as_str().to_owned(),
        weight: status.canary_weight,
        step: status.step_index,
    }
}

fn count(metrics: &ControllerMetrics, observed: &Observed, hook_type: &str, outcome: &Outcome) {
    metrics
        .hook_calls
        .get_or_create(&HookLabels {
            namespace: observed.identity.namespace.clone(),
            name: observed.identity.name.clone(),
            hook_type: hook_type.to_owned(),
            result: outcome.label().to_owned(),
        })
        .inc();
}

/// Tells the decision's events, once its status is persisted, to every `event` hook and every
/// notification target that wants them. Returns at once; the calls run in the background.
pub fn tell(ctx: &Context, observed: &Observed, decision: &Decision) {
    let Some(resolved) = observed.resolved() else {
        return;
    };
    if decision.events.is_empty() {
        return;
    }
    let subject = subject(observed, &decision.status);
    let notification_budget = DEFAULT_HOOK_TIMEOUT.min(resolved.interval / 2);
    let now = Timestamp::now();
    for event in &decision.events {
        let lifecycle = lifecycle(event.reason);
        for hook in resolved
            .hooks
            .iter()
            .filter(|h| h.hook_type == HookType::Event)
        {
            let body = HookBody {
                subject: &subject,
                hook: &hook.name,
                hook_type: HookType::Event,
                event: lifecycle,
                reason: Some(event.reason.as_str()),
                message: Some(&event.message),
                metadata: &hook.metadata,
            };
            let body = match serde_json::to_value(&body) {
                Ok(body) => body,
                Err(error) => {
                    warn!(%error, "failed to serialise an event hook body");
                    continue;
                }
            };
            send(
                ctx,
                observed,
                HookType::Event.as_str(),
                Target::Url(hook.url.clone()),
                u32::try_from(hook.retries.unwrap_or(2)).unwrap_or(0),
                budget(hook, resolved.interval),
                body,
            );
        }
        let Some(lifecycle) = lifecycle else {
            continue;
        };
        for notification in resolved
            .notifications
            .iter()
            .filter(|n| n.events.as_ref().is_none_or(|e| e.contains(&lifecycle)))
        {
            let body = notification_body(
                notification.format.unwrap_or_default(),
                &subject,
                lifecycle,
                event.reason.as_str(),
                &event.message,
                now,
            );
            send(
                ctx,
                observed,
                NOTIFICATION,
                target(notification),
                NOTIFICATION_RETRIES,
                notification_budget,
                body,
            );
        }
    }
}

/// Where a background call goes.
enum Target {
    Url(String),
    /// A key of a Secret in the Canary's namespace.
    Secret {
        name: String,
        key: String,
    },
}

fn target(notification: &NotificationSpec) -> Target {
    match (&notification.url, &notification.url_secret_ref) {
        (_, Some(secret)) => Target::Secret {
            name: secret.name.clone(),
            key: secret
                .key
                .clone()
                .unwrap_or_else(|| DEFAULT_URL_KEY.to_owned()),
        },
        (Some(url), None) => Target::Url(url.clone()),
        // Validation refuses a notification with neither; an empty URL is refused by the caller.
        (None, None) => Target::Url(String::new()),
    }
}

/// Starts one background call when a permit is free; otherwise counts it as dropped.
fn send(
    ctx: &Context,
    observed: &Observed,
    hook_type: &'static str,
    target: Target,
    retries: u32,
    budget: Duration,
    body: serde_json::Value,
) {
    let Some(permit) = ctx.hooks.try_permit() else {
        ctx.metrics
            .hook_calls_dropped
            .get_or_create(&DroppedLabels {
                hook_type: hook_type.to_owned(),
            })
            .inc();
        warn!(
            canary = %observed.identity.name,
            hook_type,
            "too many hook calls in flight; dropped one"
        );
        return;
    };
    let caller: HookCaller = ctx.hooks.clone();
    let client = ctx.client.clone();
    let metrics = ctx.metrics.clone();
    let namespace = observed.identity.namespace.clone();
    let name = observed.identity.name.clone();
    let from_secret = matches!(target, Target::Secret { .. });
    tokio::spawn(async move {
        let outcome = match url_of(&client, &namespace, target).await {
            Ok(url) => {
                let call = Call {
                    url: &url,
                    retries,
                    budget,
                };
                let outcome = caller.call_with(permit, call, &body).await;
                if !outcome.passed() {
                    // A URL read from a Secret may be a credential, and an error names its host.
                    let message = if from_secret {
                        "(not shown: the URL comes from a Secret)".to_owned()
                    } else {
                        outcome.message()
                    };
                    warn!(
                        canary = %name,
                        %namespace,
                        hook_type,
                        result = outcome.label(),
                        %message,
                        "a background hook call did not pass"
                    );
                }
                outcome
            }
            Err(words) => {
                warn!(canary = %name, %namespace, hook_type, "{words}");
                Outcome::Failed { error: words }
            }
        };
        metrics
            .hook_calls
            .get_or_create(&HookLabels {
                namespace,
                name,
                hook_type: hook_type.to_owned(),
                result: outcome.label().to_owned(),
            })
            .inc();
    });
}

async fn url_of(client: &Client, namespace: &str, target: Target) -> Result<String, String> {
    match target {
        Target::Url(url) => Ok(url),
        Target::Secret { name, key } => {
            let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
            let secret = api
                .get(&name)
                .await
                .map_err(|error| format!("cannot read Secret {name}: {error}"))?;
            let data = secret.data.unwrap_or_default();
            let value = data
                .get(&key)
                .ok_or_else(|| format!("Secret {name} has no key {key:?}"))?;
            String::from_utf8(value.0.clone())
                .map(|url| url.trim().to_owned())
                .map_err(|_| format!("Secret {name} key {key:?} is not UTF-8"))
        }
    }
}
