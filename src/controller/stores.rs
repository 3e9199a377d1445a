//! The reflector caches a reconcile observes from (so a reconcile makes no GETs), and the API
//! resource of each kind sluice reads or writes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{ApiResource, GroupVersionKind};
use kube::runtime::reflector::{ObjectRef, Store};

use super::cached::{CachedCanary, CompactObject};
use crate::api::{AnalysisTemplate, CanaryPolicy, ClusterAnalysisTemplate};
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
