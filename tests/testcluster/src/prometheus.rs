//! Prometheus for the end-to-end tests, in two strengths: a scripted fake that answers each query
//! exactly as a test says ([`fake`]), and the real Prometheus server run as a child process that
//! scrapes the traffic simulator's apps ([`server`]).
//!
//! Neither is a PromQL implementation of ours: the fake matches query *text*, and the truth about
//! what a query means comes only from the real server.

pub mod fake;
pub mod server;
