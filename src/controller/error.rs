//! The reconcile's errors, each named for the action that failed, with a bounded `category()`
//! used as the `sluice_reconcile_errors` label. Invalid user input is not here: the core reports it
//! as the `InvalidSpec` condition and the controller waits for a change. What is here is
//! transient (the API server, a conflict, a read-back that does not match) and retried with backoff.

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
