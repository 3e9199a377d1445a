//! What every reconcile shares: the client, the hold mode, the reflector caches it observes from
//! (so a reconcile makes no GETs), the event recorder, the metrics, the analysis provider and the
//! hook caller.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::api::{ApiResource, GroupVersionKind};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};

use super::analysis::Analysis;
use super::cached::{CachedCanary, CompactObject};
use super::metrics::ControllerMetrics;
use crate::api::{AnalysisTemplate, CanaryPolicy, ClusterAnalysisTemplate, HoldMode};
use crate::router::{Kind, kind};

/// The API resource of a kind sluice reads or writes.
pub fn api_resource(kind: &Kind) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(kind.group(), kind.version(), kind.kind),
        kind.plural,
    )
}

/// The reflector caches a reconcile observes from.
#[derive(Clone)]
pub struct Stores {
    pub canaries: Store<CachedCanary>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub ingresses: Store<Ingress>,
    pub policies: Store<CanaryPolicy>,
    pub templates: Store<AnalysisTemplate>,
    pub cluster_templates: Store<ClusterAnalysisTemplate>,
    /// Router CRD kinds the API server serves, by kind.
    pub routers: BTreeMap<&'static str, (ApiResource, Store<CompactObject>)>,
}

impl Stores {
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Deployment> {
        self.deployments
            .get(&ObjectRef::new(name).within(namespace))
            .map(|d| (*d).clone())
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<Service> {
        self.services
            .get(&ObjectRef::new(name).within(namespace))
            .map(|s| (*s).clone())
    }

    /// A router object (of any kind sluice routes with) as JSON, from its cache.
    pub fn router_object(
        &self,
        of: &Kind,
        namespace: &str,
        name: &str,
    ) -> Option<serde_json::Value> {
        match of.kind {
            k if k == kind::INGRESS.kind => self
                .ingresses
                .get(&ObjectRef::new(name).within(namespace))
                .and_then(|i| serde_json::to_value(&*i).ok()),
            k if k == kind::SERVICE.kind => self
                .services
                .get(&ObjectRef::new(name).within(namespace))
                .and_then(|s| serde_json::to_value(&*s).ok()),
            _ => {
                let (resource, store) = self.routers.get(of.kind)?;
                store
                    .get(&ObjectRef::new_with(name, resource.clone()).within(namespace))
                    .map(|o| o.to_value())
            }
        }
    }
}

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
    pub last_warnings: super::optin::LastWarnings,
}
