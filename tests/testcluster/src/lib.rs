//! A Kubernetes-API-compatible test cluster for sluice's end-to-end tests: an API server on
//! loopback, a Deployment-controller and kubelet stand-in, fault injection, request accounting, and
//! metrics (a scripted Prometheus, the real Prometheus server, and a traffic simulator).
//!
//! Test code only: the shipped binaries never link it.

pub mod admission;
pub mod prometheus;
pub mod schema;
pub mod traffic;
