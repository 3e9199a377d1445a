//! Where the simulated ingress learns the canary's share of traffic: the router object the test
//! cluster currently holds, read through a `kube::Client`.
//!
//! Each router kind has a pure parser over the object (unit-tested with objects shaped the way the
//! upstream CRDs allow) and a thin reader that fetches it:
//!
//! | reader | object | canary share |
//! | --- | --- | --- |
//! | [`HttpRouteWeights`] | Gateway API `HTTPRoute` | backendRef weights of the rule that points at the stable Service; canary backend `<service>-canary` |
//! | [`NginxCanaryWeights`] | the canary `Ingress` | `canary-weight` / `canary-weight-total` when `canary: "true"`; no canary Ingress is 0 |
//! | [`ServiceSelectorWeights`] | the active `Service` (blue/green) | 1 if its selector matches the canary pods, 0 if the stable ones |
//! | [`ReplicaRatioWeights`] | two `Deployment`s (no router) | canary ready replicas / all ready replicas |
//!
//! Readers only read; they never write to the cluster.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

/// `nginx.ingress.kubernetes.io/canary`.
pub const NGINX_CANARY: &str = "nginx.ingress.kubernetes.io/canary";
/// `nginx.ingress.kubernetes.io/canary-weight`.
pub const NGINX_CANARY_WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";
/// `nginx.ingress.kubernetes.io/canary-weight-total` (100 when absent).
pub const NGINX_CANARY_WEIGHT_TOTAL: &str = "nginx.ingress.kubernetes.io/canary-weight-total";

/// A router object does not say what share the canary gets.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseWeightError {
    /// No rule of the HTTPRoute has a backendRef to the stable Service.
    #[error("no rule of the HTTPRoute sends traffic to Service {service}")]
    NoRuleForService {
        /// The stable Service.
        service: String,
    },
    /// The rule also sends traffic to a backend that is neither stable nor canary.
    #[error(
        "the HTTPRoute rule for {service} also routes to {backend}, which is neither stable nor canary"
    )]
    UnexpectedBackend {
        /// The stable Service.
        service: String,
        /// The other backend.
        backend: String,
    },
    /// Every weight is zero: no request is routed at all.
    #[error("every weight is zero, so no request would be routed")]
    NoWeight,
    /// A field has a value the API would reject.
    #[error("invalid {field}: {value}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// The Ingress has no `canary: "true"` annotation.
    #[error("Ingress {name} is not an NGINX canary Ingress (no {NGINX_CANARY}: \"true\")")]
    NotACanaryIngress {
        /// Its name.
        name: String,
    },
    /// The Service selector matches both sides or neither.
    #[error("the selector of Service {service} matches {matches} of the stable and canary pods")]
    SelectorAmbiguous {
        /// The Service.
        service: String,
        /// `both` or `neither`.
        matches: &'static str,
    },
}

/// Reading the canary's share from the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadWeightError {
    /// The API request failed.
    #[error("failed to get {kind} {namespace}/{name}")]
    Get {
        /// The kind read.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        source: kube::Error,
    },
    /// The object is missing.
    #[error("{kind} {namespace}/{name} does not exist")]
    Missing {
        /// The kind read.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The object does not say the share.
    #[error("failed to read the canary weight from {kind} {namespace}/{name}")]
    Parse {
        /// The kind read.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        source: ParseWeightError,
    },
}

/// Tells the share of requests the canary gets now, in [0, 1].
pub trait WeightSource: Send + Sync + 'static {
    /// The canary's share now.
    fn canary_share(&self) -> impl Future<Output = Result<f64, ReadWeightError>> + Send;
}

/// A share the test sets by hand (for tests without a router object), changeable while traffic
/// runs through any clone.
#[derive(Clone, Debug)]
pub struct FixedShare(Arc<Mutex<f64>>);

impl FixedShare {
    /// Starts at `share`.
    pub fn new(share: f64) -> Self {
        Self(Arc::new(Mutex::new(share.clamp(0.0, 1.0))))
    }

    /// Changes the share.
    pub fn set(&self, share: f64) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = share.clamp(0.0, 1.0);
    }
}

impl WeightSource for FixedShare {
    async fn canary_share(&self) -> Result<f64, ReadWeightError> {
        Ok(*self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The canary share of an `HTTPRoute` (any object as JSON, as `kubectl get -o json` shows it):
/// within the first rule that has a backendRef to Service `service`, the weight of
/// `<service>-canary` over the sum of both weights. A missing weight is 1 (the CRD default); a
/// missing canary backend is a share of 0.
pub fn httproute_canary_share(route: &Value, service: &str) -> Result<f64, ParseWeightError> {
    let canary = format!("{service}-canary");
    let rules = route["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rule = rules
        .iter()
        .find(|rule| backend_refs(rule).any(|backend| is_service(backend, service)))
        .ok_or_else(|| ParseWeightError::NoRuleForService {
            service: service.to_owned(),
        })?;
    let (mut stable_weight, mut canary_weight) = (0.0, 0.0);
    for backend in backend_refs(rule) {
        let weight = match &backend["weight"] {
            Value::Null => 1.0,
            weight => weight
                .as_u64()
                .filter(|weight| *weight <= 1_000_000)
                .ok_or_else(|| ParseWeightError::Invalid {
                    field: "backendRef weight",
                    value: weight.to_string(),
                })? as f64,
        };
        if is_service(backend, service) {
            stable_weight += weight;
        } else if is_service(backend, &canary) {
            canary_weight += weight;
        } else if weight > 0.0 {
            return Err(ParseWeightError::UnexpectedBackend {
                service: service.to_owned(),
                backend: backend["name"].as_str().unwrap_or("?").to_owned(),
            });
        }
    }
    share(stable_weight, canary_weight)
}

fn backend_refs(rule: &Value) -> impl Iterator<Item = &Value> {
    rule["backendRefs"].as_array().into_iter().flatten()
}

/// Whether a backendRef names the core Service `name` (group and kind default to "" and Service).
fn is_service(backend: &Value, name: &str) -> bool {
    let group = backend["group"].as_str().unwrap_or("");
    let kind = backend["kind"].as_str().unwrap_or("Service");
    group.is_empty() && kind == "Service" && backend["name"].as_str() == Some(name)
}

/// The canary share an NGINX canary Ingress gives: `canary-weight` over `canary-weight-total`
/// (default 100), 0 when the weight is absent.
pub fn nginx_canary_share(canary_ingress: &Ingress) -> Result<f64, ParseWeightError> {
    let name = canary_ingress.metadata.name.clone().unwrap_or_default();
    let annotations = canary_ingress
        .metadata
        .annotations
        .clone()
        .unwrap_or_default();
    if annotations.get(NGINX_CANARY).map(String::as_str) != Some("true") {
        return Err(ParseWeightError::NotACanaryIngress { name });
    }
    let number =
        |key: &'static str, default: f64| -> Result<f64, ParseWeightError> {
            match annotations.get(key) {
                None => Ok(default),
                Some(text) => text.trim().parse::<u32>().map(f64::from).map_err(|_| {
                    ParseWeightError::Invalid {
                        field: key,
                        value: text.clone(),
                    }
                }),
            }
        };
    let weight = number(NGINX_CANARY_WEIGHT, 0.0)?;
    let total = number(NGINX_CANARY_WEIGHT_TOTAL, 100.0)?;
    if total == 0.0 {
        return Err(ParseWeightError::Invalid {
            field: NGINX_CANARY_WEIGHT_TOTAL,
            value: "0".to_owned(),
        });
    }
    // ingress-nginx sends everything to the canary when the weight reaches the total.
    Ok((weight / total).min(1.0))
}

/// Blue/green: 1 when the Service's selector matches the canary pods' labels, 0 when it matches
/// the stable pods' labels.
pub fn selector_canary_share(
    service: &Service,
    stable_pod_labels: &BTreeMap<String, String>,
    canary_pod_labels: &BTreeMap<String, String>,
) -> Result<f64, ParseWeightError> {
    let selector = service
        .spec
        .as_ref()
        .and_then(|spec| spec.selector.clone())
        .unwrap_or_default();
    let selects = |labels: &BTreeMap<String, String>| {
        !selector.is_empty()
            && selector
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
    };
    let service = service.metadata.name.clone().unwrap_or_default();
    match (selects(stable_pod_labels), selects(canary_pod_labels)) {
        (true, false) => Ok(0.0),
        (false, true) => Ok(1.0),
        (true, true) => Err(ParseWeightError::SelectorAmbiguous {
            service,
            matches: "both",
        }),
        (false, false) => Err(ParseWeightError::SelectorAmbiguous {
            service,
            matches: "neither",
        }),
    }
}

/// No router: kube-proxy spreads requests over ready pods, so the canary's share is its share of
/// ready replicas.
pub fn replica_canary_share(
    stable: &Deployment,
    canary: &Deployment,
) -> Result<f64, ParseWeightError> {
    let ready = |deployment: &Deployment| -> Result<f64, ParseWeightError> {
        let ready = deployment
            .status
            .as_ref()
            .and_then(|status| status.ready_replicas)
            .unwrap_or(0);
        u32::try_from(ready)
            .map(f64::from)
            .map_err(|_| ParseWeightError::Invalid {
                field: "status.readyReplicas",
                value: ready.to_string(),
            })
    };
    share(ready(stable)?, ready(canary)?)
}

fn share(stable: f64, canary: f64) -> Result<f64, ParseWeightError> {
    let total = stable + canary;
    if total <= 0.0 {
        return Err(ParseWeightError::NoWeight);
    }
    Ok(canary / total)
}

/// Reads the canary share from a Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`).
#[derive(Clone)]
pub struct HttpRouteWeights {
    /// The client.
    pub client: kube::Client,
    /// The route's namespace.
    pub namespace: String,
    /// The route's name.
    pub route: String,
    /// The stable Service; the canary backend is `<service>-canary`.
    pub service: String,
}

impl WeightSource for HttpRouteWeights {
    async fn canary_share(&self) -> Result<f64, ReadWeightError> {
        const KIND: &str = "HTTPRoute";
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", KIND),
            "httproutes",
        );
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, &resource);
        let route = get(&api, KIND, &self.namespace, &self.route).await?;
        let json = serde_json::to_value(&route).unwrap_or(Value::Null);
        httproute_canary_share(&json, &self.service).map_err(|source| ReadWeightError::Parse {
            kind: KIND,
            namespace: self.namespace.clone(),
            name: self.route.clone(),
            source,
        })
    }
}

/// Reads the canary share from an NGINX canary `Ingress`; while it does not exist, the canary gets
/// nothing.
#[derive(Clone)]
pub struct NginxCanaryWeights {
    /// The client.
    pub client: kube::Client,
    /// The Ingresses' namespace.
    pub namespace: String,
    /// The canary Ingress's name.
    pub canary_ingress: String,
}

impl WeightSource for NginxCanaryWeights {
    async fn canary_share(&self) -> Result<f64, ReadWeightError> {
        const KIND: &str = "Ingress";
        let api: Api<Ingress> = Api::namespaced(self.client.clone(), &self.namespace);
        let ingress =
            api.get_opt(&self.canary_ingress)
                .await
                .map_err(|source| ReadWeightError::Get {
                    kind: KIND,
                    namespace: self.namespace.clone(),
                    name: self.canary_ingress.clone(),
                    source,
                })?;
        match ingress {
            None => Ok(0.0),
            Some(ingress) => {
                nginx_canary_share(&ingress).map_err(|source| ReadWeightError::Parse {
                    kind: KIND,
                    namespace: self.namespace.clone(),
                    name: self.canary_ingress.clone(),
                    source,
                })
            }
        }
    }
}

/// Reads which side a blue/green `Service` selects.
#[derive(Clone)]
pub struct ServiceSelectorWeights {
    /// The client.
    pub client: kube::Client,
    /// The Service's namespace.
    pub namespace: String,
    /// The active Service.
    pub service: String,
    /// The stable pods' labels.
    pub stable_pod_labels: BTreeMap<String, String>,
    /// The canary pods' labels.
    pub canary_pod_labels: BTreeMap<String, String>,
}

impl WeightSource for ServiceSelectorWeights {
    async fn canary_share(&self) -> Result<f64, ReadWeightError> {
        const KIND: &str = "Service";
        let api: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        let service = get(&api, KIND, &self.namespace, &self.service).await?;
        selector_canary_share(&service, &self.stable_pod_labels, &self.canary_pod_labels).map_err(
            |source| ReadWeightError::Parse {
                kind: KIND,
                namespace: self.namespace.clone(),
                name: self.service.clone(),
                source,
            },
        )
    }
}

/// Reads the ready-replica ratio of the stable and canary `Deployment`s.
#[derive(Clone)]
pub struct ReplicaRatioWeights {
    /// The client.
    pub client: kube::Client,
    /// The Deployments' namespace.
    pub namespace: String,
    /// The stable Deployment.
    pub stable: String,
    /// The canary Deployment.
    pub canary: String,
}

impl WeightSource for ReplicaRatioWeights {
    async fn canary_share(&self) -> Result<f64, ReadWeightError> {
        const KIND: &str = "Deployment";
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let stable = get(&api, KIND, &self.namespace, &self.stable).await?;
        let canary = get(&api, KIND, &self.namespace, &self.canary).await?;
        replica_canary_share(&stable, &canary).map_err(|source| ReadWeightError::Parse {
            kind: KIND,
            namespace: self.namespace.clone(),
            name: format!("{} and {}", self.stable, self.canary),
            source,
        })
    }
}

async fn get<K>(
    api: &Api<K>,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> Result<K, ReadWeightError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(|source| ReadWeightError::Get {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| ReadWeightError::Missing {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(rules: Value) -> Value {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "parentRefs": [{"name": "public", "namespace": "gateways"}],
                "hostnames": ["web.example.test"],
                "rules": rules,
            },
        })
    }

    #[test]
    fn the_canary_share_of_an_httproute_is_its_weight_over_both_weights() {
        let route = route(json!([{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [
                {"group": "", "kind": "Service", "name": "web", "port": 80, "weight": 80},
                {"name": "web-canary", "port": 80, "weight": 20},
            ],
        }]));
        assert_eq!(httproute_canary_share(&route, "web"), Ok(0.2));
    }

    #[test]
    fn httproute_weights_are_relative_and_default_to_one() {
        let route = route(json!([{
            "backendRefs": [
                {"name": "web", "port": 80, "weight": 3},
                {"name": "web-canary", "port": 80},
            ],
        }]));
        assert_eq!(httproute_canary_share(&route, "web"), Ok(0.25));
    }

    #[test]
    fn an_httproute_without_a_canary_backend_gives_the_canary_nothing() {
        let route = route(json!([{"backendRefs": [{"name": "web", "port": 80}]}]));
        assert_eq!(httproute_canary_share(&route, "web"), Ok(0.0));
    }

    #[test]
    fn only_the_rule_that_points_at_the_stable_service_counts() {
        let route = route(json!([
            {"backendRefs": [{"name": "other", "port": 80}]},
            {"backendRefs": [
                {"name": "web", "port": 80, "weight": 0},
                {"name": "web-canary", "port": 80, "weight": 100},
            ]},
        ]));
        assert_eq!(httproute_canary_share(&route, "web"), Ok(1.0));
    }

    #[test]
    fn a_backend_of_another_kind_with_the_stable_name_is_not_the_stable_service() {
        let route = route(json!([{"backendRefs": [
            {"group": "multicluster.x-k8s.io", "kind": "ServiceImport", "name": "web", "port": 80},
        ]}]));
        assert_eq!(
            httproute_canary_share(&route, "web"),
            Err(ParseWeightError::NoRuleForService {
                service: "web".to_owned()
            })
        );
    }

    #[test]
    fn a_third_weighted_backend_or_all_zero_weights_are_reported() {
        let third = route(json!([{"backendRefs": [
            {"name": "web", "port": 80, "weight": 50},
            {"name": "web-canary", "port": 80, "weight": 25},
            {"name": "web-mirror", "port": 80, "weight": 25},
        ]}]));
        assert!(matches!(
            httproute_canary_share(&third, "web"),
            Err(ParseWeightError::UnexpectedBackend { backend, .. }) if backend == "web-mirror"
        ));
        let zero = route(json!([{"backendRefs": [
            {"name": "web", "port": 80, "weight": 0},
            {"name": "web-canary", "port": 80, "weight": 0},
        ]}]));
        assert_eq!(
            httproute_canary_share(&zero, "web"),
            Err(ParseWeightError::NoWeight)
        );
    }

    fn canary_ingress(annotations: &[(&str, &str)]) -> Ingress {
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": "web-canary",
                "namespace": "shop",
                "annotations": annotations.iter().copied().collect::<BTreeMap<_, _>>(),
            },
            "spec": {"ingressClassName": "nginx", "rules": [{"host": "web.example.test"}]},
        }))
        .expect("a valid Ingress")
    }

    #[test]
    fn an_nginx_canary_ingress_gives_its_weight_over_the_total() {
        let plain = canary_ingress(&[(NGINX_CANARY, "true"), (NGINX_CANARY_WEIGHT, "30")]);
        assert_eq!(nginx_canary_share(&plain), Ok(0.3));
        let total = canary_ingress(&[
            (NGINX_CANARY, "true"),
            (NGINX_CANARY_WEIGHT, "1"),
            (NGINX_CANARY_WEIGHT_TOTAL, "1000"),
        ]);
        assert_eq!(nginx_canary_share(&total), Ok(0.001));
        let unset = canary_ingress(&[(NGINX_CANARY, "true")]);
        assert_eq!(nginx_canary_share(&unset), Ok(0.0));
    }

    #[test]
    fn an_ingress_without_the_canary_annotation_or_with_a_bad_weight_is_reported() {
        let primary = canary_ingress(&[(NGINX_CANARY_WEIGHT, "30")]);
        assert!(matches!(
            nginx_canary_share(&primary),
            Err(ParseWeightError::NotACanaryIngress { .. })
        ));
        let bad = canary_ingress(&[(NGINX_CANARY, "true"), (NGINX_CANARY_WEIGHT, "thirty")]);
        assert!(matches!(
            nginx_canary_share(&bad),
            Err(ParseWeightError::Invalid { .. })
        ));
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn service(selector: &[(&str, &str)]) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": labels(selector), "ports": [{"port": 80}]},
        }))
        .expect("a valid Service")
    }

    #[test]
    fn a_blue_green_service_sends_everything_to_the_side_its_selector_matches() {
        let stable = labels(&[("app", "web"), ("pod-template-hash", "5d8f7c9b6")]);
        let canary = labels(&[("app", "web"), ("pod-template-hash", "7b4d9f8c5")]);
        let to_canary = service(&[("app", "web"), ("pod-template-hash", "7b4d9f8c5")]);
        let to_stable = service(&[("app", "web"), ("pod-template-hash", "5d8f7c9b6")]);
        assert_eq!(selector_canary_share(&to_canary, &stable, &canary), Ok(1.0));
        assert_eq!(selector_canary_share(&to_stable, &stable, &canary), Ok(0.0));
        let both = service(&[("app", "web")]);
        assert!(matches!(
            selector_canary_share(&both, &stable, &canary),
            Err(ParseWeightError::SelectorAmbiguous {
                matches: "both",
                ..
            })
        ));
    }

    fn deployment(ready: Option<i32>) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {}, "template": {}},
            "status": {"readyReplicas": ready},
        }))
        .expect("a valid Deployment")
    }

    #[test]
    fn without_a_router_the_canary_share_is_its_share_of_ready_replicas() {
        assert_eq!(
            replica_canary_share(&deployment(Some(3)), &deployment(Some(1))),
            Ok(0.25)
        );
        assert_eq!(
            replica_canary_share(&deployment(Some(2)), &deployment(None)),
            Ok(0.0)
        );
        assert_eq!(
            replica_canary_share(&deployment(None), &deployment(None)),
            Err(ParseWeightError::NoWeight)
        );
    }
}
