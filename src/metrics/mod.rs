//! Metrics providers: query templating ([`template`]), the Prometheus provider ([`prometheus`])
//! and the check runner the controller and the plugin share ([`runner`]). Providers return data
//! (a [`Sample`](crate::core::Sample) per query); they never judge it: the core gives the verdict.

pub mod prometheus;
pub mod runner;
pub use crate::core::query as template;

pub use prometheus::{
    BeginCheckError, CheckKey, CreatePrometheusClientError, Credentials, InFlight, InFlightGuard,
    MetricProvider, Prometheus, PrometheusAuth, ReadPrometheusSecretError, check,
};
pub use runner::{Checked, CredentialsError, DefaultProvider, Runner};
pub use template::{Queries, RenderQueryError, Variables, Workload, queries, render};
