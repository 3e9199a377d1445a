//! `kubectl sluice`, the kubectl plugin: show where rollouts stand, gate CI on a revision's
//! outcome (`wait`), send commands (promote, abort, retry, pause, resume, skip), and run a
//! Canary's queries on demand (`analyze`).
//!
//! Layout: [`args`] (clap definitions, the `--help` text), [`view`] (pure views built from a
//! Canary and its target), [`render`] (pure table/JSON/YAML renderers), [`wait`] (the gate's
//! pure decision), [`exit`] (the documented exit codes) and [`run`] (the thin I/O around them).
//!
//! Must not write controller-owned status fields or the spec: its one write is `status.command`
//! through the status subresource under its own field manager, so RBAC can grant commands on
//! `canaries/status` alone and GitOps tools never revert them.

pub mod args;
pub mod exit;
pub mod render;
pub mod run;
pub mod view;
pub mod wait;

pub use args::Cli;
pub use exit::ExitCode;
pub use run::run;
