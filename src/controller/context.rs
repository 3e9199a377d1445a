//! What every reconcile shares: the client, the hold mode, the reflector caches it observes from
//! (so a reconcile makes no GETs), the event recorder, the metrics, the analysis provider and the
//! hook caller.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use super::analysis::Analysis;
use super::metrics::ControllerMetrics;
use super::stores::Stores;
use crate::api::HoldMode;

/// The resourceVersions of Canaries the controller has written past: after a status write
/// conditional on resourceVersion X (accepted, or refused because the object moved on), a cached
/// Canary still at X is older than the server's, and deciding on it would replay an old step
/// (a route put back to the previous weight). Bounded by the number of Canaries (I5): an entry
/// goes as soon as the cache shows a newer version, or when the Canary is deleted.
#[derive(Debug, Default)]
pub struct Superseded(std::sync::Mutex<std::collections::HashMap<(String, String), String>>);

impl Superseded {
    /// Records that `namespace/name` at `resource_version` is no longer current.
    pub fn record(&self, namespace: &str, name: &str, resource_version: &str) {
        self.lock().insert(
            (namespace.to_owned(), name.to_owned()),
            resource_version.to_owned(),
        );
    }

    /// Whether the cached `resource_version` is one the controller knows to be superseded;
    /// forgets the entry once the cache has moved on.
    pub fn is_stale(&self, namespace: &str, name: &str, resource_version: &str) -> bool {
        let mut map = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        match map.get(&key) {
            Some(superseded) if superseded == resource_version => true,
            Some(_) => {
                map.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Forgets `namespace/name` (it is gone).
    pub fn forget(&self, namespace: &str, name: &str) {
        self.lock().remove(&(namespace.to_owned(), name.to_owned()));
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), String>> {
        // Single inserts and removes: a poisoned lock still holds a whole map.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// At most this many Deployments' last warnings are remembered (I5); past it the memory starts
/// afresh, which at worst repeats a warning event once.
const LAST_WARNINGS_CAPACITY: usize = 10_000;

/// The opt-in loop's last warning event published per Deployment, so a warning is published when it changes,
/// not at every status change of the Deployment.
#[derive(Debug, Default)]
pub struct LastWarnings(Mutex<HashMap<(String, String), String>>);

impl LastWarnings {
    /// Whether `message` is new for `namespace/name` (and remembers it).
    pub fn is_new(&self, namespace: &str, name: &str, message: &str) -> bool {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (namespace.to_owned(), name.to_owned());
        if map.get(&key).is_some_and(|last| last == message) {
            return false;
        }
        if map.len() >= LAST_WARNINGS_CAPACITY {
            map.clear();
        }
        map.insert(key, message.to_owned());
        true
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(namespace.to_owned(), name.to_owned()));
    }
}

/// The controller's event recorder, reporting as `sluice` (instance: `POD_NAME`). One per process:
/// its cache is what counts a repeated event as one series.
pub fn recorder(client: Client) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: "sluice".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    )
}

/// Everything a reconcile needs besides the Canary.
pub struct Context {
    pub client: Client,
    pub hold_mode: HoldMode,
    pub stores: Stores,
    pub recorder: Recorder,
    pub metrics: ControllerMetrics,
    pub analysis: Analysis,
    /// Calls hooks and notification targets, bounded across all Canaries.
    pub hooks: crate::hooks::HookCaller,
    pub superseded: Superseded,
    /// The opt-in loop's last warning per Deployment.
    pub last_warnings: LastWarnings,
}
