//! Webhook calls: hooks (checks, gates and informational calls the core asks for) and
//! notifications (lifecycle events told to a generic webhook or Slack). This module calls and
//! reports what happened, as data; it never decides what an answer means for the rollout (the
//! core does: gates hold, pre-rollout and rollout failures count as failed checks).
//!
//! - [`address`]: which targets may be reached (the SSRF rules and the `--hook-allow-cidr`
//!   allow-list).
//! - [`caller`]: the shared HTTP client, per-call budget, retries with backoff, and the global
//!   bound on calls in flight.
//! - [`notify`]: the bodies sent and the mapping of core event reasons to lifecycle events.

pub mod address;
pub mod caller;
pub mod notify;

pub use address::{AllowList, RefusedTarget, Restricted};
pub use caller::{BuildHookClientError, Call, HookCaller, HookSettings, Outcome};
pub use notify::{HookBody, Subject, lifecycle, notification_body};
