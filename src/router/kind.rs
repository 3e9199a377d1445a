//! The one table of the kinds routers read and write: what the caches watch, what the executor
//! writes through, and what the RBAC test holds `deploy/rbac.yaml` to.

/// A kind of object a router reads or writes.
#[derive(Debug, PartialEq, Eq)]
pub struct Kind {
    pub api_version: &'static str,
    pub kind: &'static str,
    /// The resource name in API paths and RBAC rules.
    pub plural: &'static str,
    /// Sluice edits the user's object of this kind in place (a forced apply of the one field it
    /// takes over) rather than creating and deleting objects of its own.
    pub edits_user_object: bool,
    /// Served by a CustomResourceDefinition, which a cluster may not have: watched only when the
    /// API server serves it. Built-in kinds have typed caches.
    pub custom: bool,
}

impl Kind {
    /// The API group (empty for the core group).
    pub fn group(&self) -> &'static str {
        self.api_version
            .split_once('/')
            .map_or("", |(group, _)| group)
    }

    /// The version within the group.
    pub fn version(&self) -> &'static str {
        self.api_version
            .split_once('/')
            .map_or(self.api_version, |(_, version)| version)
    }
}

pub const HTTP_ROUTE: Kind = Kind {
    api_version: "gateway.networking.k8s.io/v1",
    kind: "HTTPRoute",
    plural: "httproutes",
    edits_user_object: true,
    custom: true,
};

pub const VIRTUAL_SERVICE: Kind = Kind {
    api_version: "networking.istio.io/v1",
    kind: "VirtualService",
    plural: "virtualservices",
    edits_user_object: true,
    custom: true,
};

/// The user's Ingress is read; sluice writes its own canary copy.
pub const INGRESS: Kind = Kind {
    api_version: "networking.k8s.io/v1",
    kind: "Ingress",
    plural: "ingresses",
    edits_user_object: false,
    custom: false,
};

/// The stable Service, whose selector the `service` router switches.
pub const SERVICE: Kind = Kind {
    api_version: "v1",
    kind: "Service",
    plural: "services",
    edits_user_object: true,
    custom: false,
};

pub const TRAFFIC_SPLIT: Kind = Kind {
    api_version: "split.smi-spec.io/v1alpha4",
    kind: "TrafficSplit",
    plural: "trafficsplits",
    edits_user_object: false,
    custom: true,
};

pub const TRAEFIK_SERVICE: Kind = Kind {
    api_version: "traefik.io/v1alpha1",
    kind: "TraefikService",
    plural: "traefikservices",
    edits_user_object: false,
    custom: true,
};

/// Every kind a router reads or writes.
pub const KINDS: &[&Kind] = &[
    &HTTP_ROUTE,
    &VIRTUAL_SERVICE,
    &INGRESS,
    &SERVICE,
    &TRAFFIC_SPLIT,
    &TRAEFIK_SERVICE,
];
