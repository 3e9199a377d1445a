//! The router a Canary names, as the core sees it: which one, and the object it names. Kube-free
//! (the builders and read-back parsers over it live in `crate::router`, which adds their methods
//! to this same type). One name per router, the one the Canary spells ([`Router::name`]).

use crate::api::{ObjectRef, RouterSpec};

/// The router of one Canary, resolved from its spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Router {
    /// Weights on the user's `HTTPRoute` rules that point at the stable Service.
    GatewayApi { http_route: ObjectRef },
    /// A sluice-owned canary copy of the user's Ingress with ingress-nginx's canary annotations.
    Nginx { ingress: ObjectRef },
    /// Weighted destinations on the user's `VirtualService`.
    Istio { virtual_service: ObjectRef },
    /// A sluice-owned `TrafficSplit`; `None` names it after the Service.
    Smi { traffic_split: Option<String> },
    /// A sluice-owned weighted `TraefikService`; `None` names it after the Service.
    Traefik { traefik_service: Option<String> },
    /// The stable Service's selector, switched to the canary pods and back (0 or 100 only).
    Service,
    /// `router.none`: no router object; canary pods share the stable Service and the split is
    /// the replica ratio.
    ReplicaRatio,
}

/// Why a Canary's `router` names no single router. A permanent error: the spec must change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveRouterError {
    #[error("failed to resolve the router: none is set")]
    Unset,
    #[error("failed to resolve the router: several are set ({})", .routers.join(", "))]
    Ambiguous { routers: Vec<&'static str> },
}

impl Router {
    /// The one router `spec` names. Unset or several is an error, never a default.
    pub fn from_spec(spec: &RouterSpec) -> Result<Router, ResolveRouterError> {
        // Destructured without `..` so a router added to the API fails to compile here.
        let RouterSpec {
            gateway_api,
            nginx,
            istio,
            smi,
            traefik,
            service,
            none,
        } = spec;
        let mut found = Vec::new();
        if let Some(r) = gateway_api {
            found.push(Router::GatewayApi {
                http_route: r.http_route.clone(),
            });
        }
        if let Some(r) = nginx {
            found.push(Router::Nginx {
                ingress: r.ingress.clone(),
            });
        }
        if let Some(r) = istio {
            found.push(Router::Istio {
                virtual_service: r.virtual_service.clone(),
            });
        }
        if let Some(r) = smi {
            found.push(Router::Smi {
                traffic_split: r.traffic_split.clone(),
            });
        }
        if let Some(r) = traefik {
            found.push(Router::Traefik {
                traefik_service: r.traefik_service.clone(),
            });
        }
        if service.is_some() {
            found.push(Router::Service);
        }
        if none.is_some() {
            found.push(Router::ReplicaRatio);
        }
        match found.len() {
            0 => Err(ResolveRouterError::Unset),
            1 => Ok(found.remove(0)),
            _ => Err(ResolveRouterError::Ambiguous {
                routers: found.iter().map(Router::name).collect(),
            }),
        }
    }

    /// The router's name as the Canary spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Router::GatewayApi { .. } => "gatewayAPI",
            Router::Nginx { .. } => "nginx",
            Router::Istio { .. } => "istio",
            Router::Smi { .. } => "smi",
            Router::Traefik { .. } => "traefik",
            Router::Service => "service",
            Router::ReplicaRatio => "none",
        }
    }

    /// The user's object the router writes weights on (an HTTPRoute, Ingress or
    /// VirtualService), as the Canary names it; `None` for the routers that edit the stable
    /// Service or build their own objects from the spec alone.
    pub fn user_object(&self) -> Option<&ObjectRef> {
        match self {
            Router::GatewayApi { http_route } => Some(http_route),
            Router::Nginx { ingress } => Some(ingress),
            Router::Istio { virtual_service } => Some(virtual_service),
            Router::Smi { .. }
            | Router::Traefik { .. }
            | Router::Service
            | Router::ReplicaRatio => None,
        }
    }
}
