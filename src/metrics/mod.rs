//! Metrics providers: query templating ([`template`]) and the Prometheus provider
//! ([`prometheus`]). Providers return data (a [`Sample`](crate::core::Sample) per query); they
//! never judge it: the core gives the verdict.

pub mod prometheus;
pub use crate::core::query as template;

pub use prometheus::{
    BeginCheckError, CheckKey, CreatePrometheusClientError, Credentials, InFlight, InFlightGuard,
    MetricProvider, Prometheus, PrometheusAuth, ReadPrometheusSecretError, check,
};
pub use template::{Queries, RenderQueryError, Variables, Workload, queries, render};
