//! The controller: kube-runtime wiring that, per reconcile, observes from caches, asks the core,
//! executes the decided actions with server-side apply and persists status. It makes no decisions
//! of its own. (Being built: this module holds its metrics so far.)

pub mod metrics;
pub mod startup;
