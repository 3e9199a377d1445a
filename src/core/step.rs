//! The rollout state machine. INTERFACE STUB: completed on the `core` branch.

use jiff::Timestamp;

use super::{Decision, Due, Observations};
use crate::api::{CanarySpec, CanaryStatus};

/// What must be gathered (checks run, hooks called) before [`step`] can decide.
pub fn due(
    spec: &CanarySpec,
    status: &CanaryStatus,
    observed: &Observations,
    now: Timestamp,
) -> Due {
    let _ = (spec, status, observed, now);
    Due::default()
}

/// Decides what to do next.
pub fn step(
    spec: &CanarySpec,
    status: &CanaryStatus,
    observed: &Observations,
    now: Timestamp,
) -> Decision {
    let _ = (spec, observed, now);
    Decision {
        actions: Vec::new(),
        status: status.clone(),
        requeue_after: None,
        events: Vec::new(),
    }
}
