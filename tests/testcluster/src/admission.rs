//! `MutatingAdmissionPolicy` and `MutatingAdmissionPolicyBinding`
//! (admissionregistration.k8s.io/v1) evaluated in-process with a CEL interpreter, as kube-apiserver
//! 1.36 does: match constraints (resource rules, operations, namespace and object selectors),
//! match conditions, and `JSONPatch` / `ApplyConfiguration` mutations. Pure; no I/O.
//!
//! INTERFACE STUB: the bodies are filled in on the `tc-fidelity` branch; the server calls these.

use serde_json::Value;

/// The admission operation, as in `AdmissionRequest.operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

/// What the server is about to persist, as the policy sees it.
#[derive(Debug, Clone)]
pub struct AdmissionRequest<'a> {
    pub operation: Operation,
    pub group: &'a str,
    pub version: &'a str,
    /// Plural resource name, e.g. `deployments`.
    pub resource: &'a str,
    /// `""` for the main resource, `"status"` for the status subresource.
    pub subresource: &'a str,
    /// `""` for cluster-scoped objects.
    pub namespace: &'a str,
    pub name: &'a str,
    pub object: &'a Value,
    pub old_object: Option<&'a Value>,
    /// The object's Namespace, for `namespaceSelector`.
    pub namespace_object: Option<&'a Value>,
}

/// A policy that failed to evaluate (failurePolicy Fail), reported as a Status by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionError {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

/// Runs every bound policy that matches `request`, in order. `Ok(Some(object))` is the mutated
/// object, `Ok(None)` means no policy changed anything.
pub fn mutate(
    policies: &[Value],
    bindings: &[Value],
    request: &AdmissionRequest<'_>,
) -> Result<Option<Value>, AdmissionError> {
    let _ = (policies, bindings, request);
    Ok(None)
}
