//! A Kubernetes-API-compatible test cluster for sluice's end-to-end tests: an API server on
//! loopback, a Deployment-controller and kubelet stand-in, fault injection, request accounting, and
//! metrics (a scripted Prometheus, the real Prometheus server, and a traffic simulator).
//!
//! Test code only: the shipped binaries never link it. Start here: [`TestCluster`].

pub mod accounting;
pub mod admission;
pub mod apiserver;
mod backoff;
pub mod faults;
pub mod harness;
pub mod kubeconfig;
pub mod kubelet;
pub mod prometheus;
pub mod schema;
pub mod traffic;

pub use accounting::{RequestCounts, RequestKey, Write};
pub use backoff::QuickBackoff;
pub use faults::{Faults, InjectedError, Parked, RequestMatch};
pub use harness::{CommitClock, HarnessError, TestCluster, TestClusterBuilder};
