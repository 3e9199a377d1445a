//! The offline tools of the `sluice` binary: `crds`, `lint`, `simulate` and `version`, and the
//! command line that runs them. None of them talks to a cluster or to Prometheus; they read files,
//! call the same `api` and `core` code the controller runs, and print.
//!
//! The command line ([`cli`]) is the only part that reads files, prints or picks exit codes; the
//! rest is pure and tested through the library.

pub mod cli;
pub mod documents;
pub mod lint;
pub mod schema;
pub mod simulate;
