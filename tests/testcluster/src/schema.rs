//! Validation of custom resources against their CRD's `openAPIV3Schema`, the way kube-apiserver
//! does it: types, required, enum, bounds, patterns, formats, and `x-kubernetes-validations` (CEL),
//! plus structural pruning and defaulting. Pure functions over JSON; no I/O.
//!
//! INTERFACE STUB: the bodies are filled in on the `tc-fidelity` branch; the server calls these.

use serde_json::Value;

/// One reason an object fails its schema, shaped like a Kubernetes `StatusCause`
/// (`reason` such as `FieldValueInvalid`, `field` such as `spec.rules[0].backendRefs[1].weight`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub reason: String,
    pub field: String,
    pub message: String,
}

/// Checks `object` against one CRD version's `openAPIV3Schema`; `old` is the stored object on
/// updates (for CEL transition rules that use `oldSelf`). Returns every violation found.
pub fn validate(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<Cause> {
    let _ = (schema, object, old);
    Vec::new()
}

/// Removes fields the schema does not declare (structural pruning, honouring
/// `x-kubernetes-preserve-unknown-fields`) and applies `default`s. Returns the JSON paths of the
/// pruned fields so a `fieldValidation=Strict|Warn` request can report them as the real server does.
pub fn prune_and_default(schema: &Value, object: &mut Value) -> Vec<String> {
    let _ = (schema, object);
    Vec::new()
}
