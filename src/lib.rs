//! sluice: progressive delivery for Kubernetes. A Deployment gets a new pod template; sluice runs
//! the new revision beside the stable one as a canary, moves live traffic to it in steps through a
//! router, asks Prometheus at every interval whether it is healthy, and promotes it or rolls it back.
//!
//! Dependencies point one way: [`api`] <- [`core`] <- everything else.

pub mod api;
pub mod cli;
pub mod controller;
pub mod core;
pub mod dereference;
pub mod hooks;
pub mod http;
pub mod metrics;
pub mod router;
pub mod telemetry;
pub mod tools;
pub mod workload;
