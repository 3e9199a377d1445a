//! sluice: progressive delivery for Kubernetes.
pub mod api;
