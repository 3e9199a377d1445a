//! Validation and resolution of a Canary spec: merge the policy, apply defaults, and check every
//! bound the core relies on (the same bounds the CRD schema states, checked again because a schema
//! is not always installed as generated). Errors name the field and the reason.
//!
//! INTERFACE STUB: completed on the `core` branch.

use std::fmt;

/// One reason a spec cannot be acted on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.strategy.canary.stepWeights[2]`.
    pub field: String,
    /// What is wrong with it, in words.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}
