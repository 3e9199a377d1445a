//! The errors of both reconcile loops (the Canary controller's and the opt-in loop's), each saying
//! what failed (most also for which Canary), with a bounded `category()`: the Canary controller
//! counts its errors under it in `sluice_reconcile_errors`; the opt-in loop only logs its own.
//! Invalid user input is not here: the core reports it as the `InvalidSpec` condition (and the
//! controller does the same, reason `Malformed`, for a Canary that does not parse) and waits for a
//! change.
//!
//! The errors are not split into permanent and transient: every one is retried alike, after a
//! fixed delay (the Canary controller retries a conflict sooner; see each loop's
//! `error_policy`). Most are transient (the API server, a conflict, a read-back that does not
//! match, an object not in the cache yet, a clean-up not finished); some are not fixed by trying
//! again (a route or canary workload that cannot be built from the objects as they are, an object
//! without a field the loop needs, a serialisation failure) and repeat until those objects change.

use crate::router::BuildRouteError;
use crate::workload::BuildWorkloadError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to {action} {kind} {namespace}/{name}")]
    Write {
        action: &'static str,
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("failed to persist the status of Canary {namespace}/{name}")]
    Status {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("failed to build the route for Canary {namespace}/{name}")]
    Route {
        namespace: String,
        name: String,
        #[source]
        source: BuildRouteError,
    },
    #[error("failed to build the canary workload for Canary {namespace}/{name}")]
    Workload {
        namespace: String,
        name: String,
        #[source]
        source: BuildWorkloadError,
    },
    #[error(
        "router of Canary {namespace}/{name} reads back canary weight {found:?} after writing \
         {expected} (invariant I2)"
    )]
    ReadBack {
        namespace: String,
        name: String,
        expected: i32,
        found: Option<i32>,
    },
    #[error("cannot act on Canary {namespace}/{name} yet: {what} is not in the cache")]
    NotCached {
        namespace: String,
        name: String,
        what: String,
    },
    #[error("Canary {namespace}/{name} is being deleted; its clean-up is not finished")]
    CleanupPending { namespace: String, name: String },
    #[error("Canary object has no {field}")]
    Malformed { field: &'static str },
    #[error("failed to serialise {what}")]
    Serialise {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// A bounded name for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Write { source, .. } | Error::Status { source, .. } => match source.as_ref() {
                kube::Error::Api(status) if status.code == 409 => "conflict",
                kube::Error::Api(status) if status.code == 429 => "throttled",
                kube::Error::Api(status) if status.code == 404 => "not_found",
                kube::Error::Api(_) => "api",
                _ => "transport",
            },
            Error::Route { .. } => "route",
            Error::Workload { .. } => "workload",
            Error::ReadBack { .. } => "read_back",
            Error::NotCached { .. } => "not_cached",
            Error::CleanupPending { .. } => "cleanup_pending",
            Error::Malformed { .. } => "malformed",
            Error::Serialise { .. } => "serialise",
        }
    }

    /// A conflict means a newer object exists (often the very change the decision must see, I6):
    /// look again at once rather than after a backoff.
    pub fn is_conflict(&self) -> bool {
        self.category() == "conflict"
    }
}
