//! Router builders and parsers held to objects a user could have written, to the upstream CRD
//! schemas (through the test cluster's validator), and to each other (build, then read back).

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use serde_json::{Value, json};
use sluice_testcluster::schema::{prune_and_default, validate};

use super::*;
use crate::api::names::{MANAGED_BY_LABEL, nginx as ann};
use crate::api::{
    GatewayApiRouter, HeaderMatch, HeaderMatchType, IstioRouter, NginxRouter, NoRouter, RouterSpec,
    ServiceRouter, SmiRouter, TraefikRouter,
};
use crate::workload::STABLE_SELECTOR_ANNOTATION;

const ROUND_TRIP_WEIGHTS: [i32; 5] = [0, 1, 50, 99, 100];
const UID: &str = "5a1d3c9e-0000-4000-8000-000000000001";

fn inputs() -> RouteInputs {
    RouteInputs {
        canary: CanaryIdentity {
            name: "checkout".into(),
            namespace: "shop".into(),
            uid: UID.into(),
        },
        service: "checkout".into(),
        port: 80,
    }
}

fn owner() -> Value {
    json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "Canary", "name": "checkout", "uid": UID, "controller": true})
}

fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("fixture YAML parses")
}

fn ab_matches() -> Vec<HttpMatch> {
    vec![HttpMatch {
        headers: vec![HeaderMatch {
            name: "X-Canary".into(),
            value: "always".into(),
            match_type: HeaderMatchType::Exact,
        }],
    }]
}

/// The `openAPIV3Schema` of the served storage version of an upstream CRD in shared/upstream-crds.
fn crd_schema(file: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/upstream-crds")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("read upstream CRD");
    let crd: Value =
        serde_saphyr::from_str(text.trim_start_matches("---\n")).expect("parse CRD YAML");
    crd["spec"]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .find(|v| v["served"] == true && v["storage"] == true)
        .expect("a served storage version")["schema"]["openAPIV3Schema"]
        .clone()
}

/// Validates `object` as the API server would store it (pruned and defaulted first) and asserts
/// that nothing was pruned (an unknown field) and no rule failed.
fn assert_valid(schema: &Value, object: &Value, what: &str) {
    let mut stored = object.clone();
    let pruned = prune_and_default(schema, &mut stored);
    assert!(pruned.is_empty(), "{what}: unknown fields {pruned:?}");
    let causes = validate(schema, &stored, None);
    assert!(causes.is_empty(), "{what}: {causes:#?}");
}

/// What server-side apply makes of `patch` on `live` when the patch holds one atomic spec field
/// (`rules`, `http`): that field replaced as a whole, the rest of the object kept.
fn applied_atomic(live: &Value, patch: &Value, field: &str) -> Value {
    let mut merged = live.clone();
    merged["spec"][field] = patch["spec"][field].clone();
    merged
}

fn router(spec: RouterSpec) -> Router {
    Router::from_spec(&spec).expect("one router")
}

// ---------------------------------------------------------------------------------------------
// Resolution

#[test]
fn an_unset_router_is_an_error_not_a_default() {
    assert_eq!(
        Router::from_spec(&RouterSpec::default()),
        Err(ResolveRouterError::Unset)
    );
}

#[test]
fn two_routers_are_an_error_naming_both() {
    let spec = RouterSpec {
        nginx: Some(NginxRouter {
            ingress: ObjectRef {
                name: "web".into(),
                namespace: None,
            },
        }),
        none: Some(NoRouter {}),
        ..RouterSpec::default()
    };
    assert_eq!(
        Router::from_spec(&spec),
        Err(ResolveRouterError::Ambiguous {
            routers: vec!["nginx", "none"]
        })
    );
}

#[test]
fn each_router_spec_resolves_to_its_router() {
    let reference = ObjectRef {
        name: "web".into(),
        namespace: Some("edge".into()),
    };
    let cases = [
        (
            RouterSpec {
                gateway_api: Some(GatewayApiRouter {
                    http_route: reference.clone(),
                }),
                ..RouterSpec::default()
            },
            Router::GatewayApi {
                http_route: reference.clone(),
            },
        ),
        (
            RouterSpec {
                istio: Some(IstioRouter {
                    virtual_service: reference.clone(),
                }),
                ..RouterSpec::default()
            },
            Router::Istio {
                virtual_service: reference.clone(),
            },
        ),
        (
            RouterSpec {
                smi: Some(SmiRouter {
                    traffic_split: None,
                }),
                ..RouterSpec::default()
            },
            Router::Smi {
                traffic_split: None,
            },
        ),
        (
            RouterSpec {
                traefik: Some(TraefikRouter {
                    traefik_service: Some("web-split".into()),
                }),
                ..RouterSpec::default()
            },
            Router::Traefik {
                traefik_service: Some("web-split".into()),
            },
        ),
        (
            RouterSpec {
                service: Some(ServiceRouter {}),
                ..RouterSpec::default()
            },
            Router::Service,
        ),
    ];
    for (spec, expected) in cases {
        assert_eq!(router(spec), expected);
    }
}

#[test]
fn only_the_none_router_shares_the_stable_service() {
    assert_eq!(Router::ReplicaRatio.pod_labels(), PodLabels::Shared);
    assert_eq!(Router::Service.pod_labels(), PodLabels::Separate);
}

#[test]
fn a_weight_outside_zero_to_hundred_is_refused() {
    for weight in [-1, 101] {
        let result = Router::ReplicaRatio.desired(&inputs(), None, weight, &[]);
        assert!(matches!(
            result,
            Err(BuildRouteError::WeightOutOfRange { .. })
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway API

/// A route as the API server returns it: schema defaults filled in (group, kind, path match).
fn http_route() -> Value {
    yaml(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: checkout, namespace: shop, resourceVersion: "77", generation: 3}
spec:
  parentRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: public, namespace: edge}]
  hostnames: [shop.example.com]
  rules:
  - name: api
    matches: [{path: {type: PathPrefix, value: /api}}]
    timeouts: {request: 10s}
    backendRefs: [{group: "", kind: Service, name: checkout, port: 80, weight: 1}]
  - matches: [{path: {type: PathPrefix, value: /static}}]
    backendRefs: [{group: "", kind: Service, name: assets, port: 8080, weight: 1}]
"#,
    )
}

fn gateway_router() -> Router {
    Router::GatewayApi {
        http_route: ObjectRef {
            name: "checkout".into(),
            namespace: None,
        },
    }
}

fn gateway_patch(live: &Value, weight: i32, matches: &[HttpMatch]) -> Value {
    gateway_router()
        .desired(&inputs(), Some(live), weight, matches)
        .expect("builds")
        .expect("an object")
}

#[test]
fn the_httproute_patch_weights_the_stable_rule_and_adds_the_canary_backend() {
    assert_eq!(
        gateway_patch(&http_route(), 10, &[]),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "checkout", "namespace": "shop", "resourceVersion": "77"},
            "spec": {"rules": [
                {
                    "name": "api",
                    "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                    "timeouts": {"request": "10s"},
                    "backendRefs": [
                        {"group": "", "kind": "Service", "name": "checkout", "port": 80, "weight": 90},
                        {"group": "", "kind": "Service", "name": "checkout-canary", "port": 80, "weight": 10},
                    ],
                },
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/static"}}],
                    "backendRefs": [{"group": "", "kind": "Service", "name": "assets", "port": 8080, "weight": 1}],
                },
            ]},
        })
    );
}

#[test]
fn the_httproute_patch_at_rest_has_no_canary_backend_and_reads_back_as_absent() {
    let at_ten = applied_atomic(
        &http_route(),
        &gateway_patch(&http_route(), 10, &ab_matches()),
        "rules",
    );
    let at_rest = gateway_patch(&at_ten, 0, &[]);
    let rules = at_rest["spec"]["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 2, "the A/B rule is gone");
    assert_eq!(
        rules[0]["backendRefs"],
        json!([{"group": "", "kind": "Service", "name": "checkout", "port": 80, "weight": 100}])
    );
    assert_eq!(http_route_weight(&at_rest, &inputs()), None);
}

#[test]
fn the_httproute_patch_never_carries_parent_refs_or_hostnames() {
    let patch = gateway_patch(&http_route(), 50, &[]);
    let spec = patch["spec"].as_object().expect("spec");
    assert_eq!(spec.keys().collect::<Vec<_>>(), vec!["rules"]);
}

#[test]
fn the_httproute_ab_rule_sends_header_matched_requests_to_the_canary_first() {
    let patch = gateway_patch(&http_route(), 0, &ab_matches());
    let rules = patch["spec"]["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 3);
    assert_eq!(
        rules[0],
        json!({
            "matches": [{
                "path": {"type": "PathPrefix", "value": "/api"},
                "headers": [{"name": "X-Canary", "value": "always", "type": "Exact"}],
            }],
            "timeouts": {"request": "10s"},
            "backendRefs": [{"group": "", "kind": "Service", "name": "checkout-canary", "port": 80, "weight": 100}],
        })
    );
    assert_eq!(rules[1]["name"], "api");
    assert_eq!(http_route_weight(&patch, &inputs()), Some(0));
}

#[test]
fn rebuilding_the_httproute_from_its_applied_state_gives_the_same_patch() {
    for weight in ROUND_TRIP_WEIGHTS {
        for matches in [vec![], ab_matches()] {
            let fresh = gateway_patch(&http_route(), weight, &matches);
            let previous = applied_atomic(
                &http_route(),
                &gateway_patch(&http_route(), 37, &ab_matches()),
                "rules",
            );
            assert_eq!(
                gateway_patch(&previous, weight, &matches),
                fresh,
                "weight {weight}"
            );
        }
    }
}

#[test]
fn the_httproute_round_trips_every_weight() {
    for weight in ROUND_TRIP_WEIGHTS {
        let live = applied_atomic(
            &http_route(),
            &gateway_patch(&http_route(), weight, &[]),
            "rules",
        );
        let read = gateway_router().canary_weight(&inputs(), Some(&live), ReadyReplicas::default());
        let expected = (weight > 0).then_some(weight);
        assert_eq!(read, expected, "weight {weight}");
    }
}

#[test]
fn every_built_httproute_is_valid_against_the_upstream_crd() {
    let schema = crd_schema("gateway-api/httproutes.yaml");
    assert_valid(&schema, &http_route(), "the fixture itself");
    for weight in ROUND_TRIP_WEIGHTS {
        for matches in [vec![], ab_matches()] {
            let patch = gateway_patch(&http_route(), weight, &matches);
            let what = format!("weight {weight}, {} matches", matches.len());
            assert_valid(&schema, &patch, &format!("patch at {what}"));
            assert_valid(
                &schema,
                &applied_atomic(&http_route(), &patch, "rules"),
                &format!("applied at {what}"),
            );
        }
    }
}

#[test]
fn the_httproute_validator_does_reject_a_bad_route() {
    // Guards the test above: the validator and schema do catch a broken backendRef.
    let schema = crd_schema("gateway-api/httproutes.yaml");
    let mut patch = gateway_patch(&http_route(), 10, &[]);
    patch["spec"]["rules"][0]["backendRefs"][1]["weight"] = json!(-1);
    assert!(!validate(&schema, &patch, None).is_empty());
}

#[test]
fn an_httproute_without_a_rule_to_the_stable_service_is_an_error() {
    let mut route = http_route();
    route["spec"]["rules"][0]["backendRefs"][0]["name"] = json!("elsewhere");
    let result = gateway_router().desired(&inputs(), Some(&route), 10, &[]);
    assert!(matches!(
        result,
        Err(BuildRouteError::NoStableBackend { .. })
    ));
}

#[test]
fn a_missing_httproute_is_an_error_not_a_creation() {
    let result = gateway_router().desired(&inputs(), None, 10, &[]);
    assert!(matches!(result, Err(BuildRouteError::SourceMissing { .. })));
}

#[test]
fn removing_the_gateway_router_applies_the_full_rules_without_the_canary() {
    let live = applied_atomic(
        &http_route(),
        &gateway_patch(&http_route(), 40, &[]),
        "rules",
    );
    let Ok(Removal::Apply(body)) = gateway_router().removal(&inputs(), Some(&live)) else {
        panic!("removal is an apply");
    };
    assert_eq!(body["spec"]["rules"].as_array().map(Vec::len), Some(2));
    assert_eq!(http_route_weight(&body, &inputs()), None);
    assert!(gateway_router().force_apply());
}

// ---------------------------------------------------------------------------------------------
// Istio

fn virtual_service() -> Value {
    yaml(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: checkout, namespace: shop, resourceVersion: "91"}
spec:
  hosts: [shop.example.com]
  gateways: [edge/public]
  http:
  - name: api
    match: [{uri: {prefix: /api}}]
    retries: {attempts: 2}
    route:
    - destination: {host: checkout.shop.svc.cluster.local, port: {number: 80}}
  - route:
    - destination: {host: assets}
"#,
    )
}

fn istio_router() -> Router {
    Router::Istio {
        virtual_service: ObjectRef {
            name: "checkout".into(),
            namespace: None,
        },
    }
}

fn istio_patch(live: &Value, weight: i32, matches: &[HttpMatch]) -> Value {
    istio_router()
        .desired(&inputs(), Some(live), weight, matches)
        .expect("builds")
        .expect("an object")
}

#[test]
fn the_virtual_service_patch_weights_the_stable_destination_and_adds_the_canary() {
    assert_eq!(
        istio_patch(&virtual_service(), 25, &[]),
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "checkout", "namespace": "shop", "resourceVersion": "91"},
            "spec": {"http": [
                {
                    "name": "api",
                    "match": [{"uri": {"prefix": "/api"}}],
                    "retries": {"attempts": 2},
                    "route": [
                        {"destination": {"host": "checkout.shop.svc.cluster.local", "port": {"number": 80}}, "weight": 75},
                        {"destination": {"host": "checkout-canary.shop.svc.cluster.local", "port": {"number": 80}}, "weight": 25},
                    ],
                },
                {"route": [{"destination": {"host": "assets"}}]},
            ]},
        })
    );
}

#[test]
fn the_virtual_service_ab_route_matches_lower_case_headers_and_comes_first() {
    let patch = istio_patch(&virtual_service(), 0, &ab_matches());
    let http = patch["spec"]["http"].as_array().expect("http");
    assert_eq!(http.len(), 3);
    assert_eq!(
        http[0]["match"],
        json!([{"uri": {"prefix": "/api"}, "headers": {"x-canary": {"exact": "always"}}}])
    );
    assert_eq!(
        http[0]["route"],
        json!([{"destination": {"host": "checkout-canary.shop.svc.cluster.local", "port": {"number": 80}}, "weight": 100}])
    );
    assert_eq!(http[0].get("name"), None);
    assert_eq!(virtual_service_weight(&patch, &inputs()), Some(0));
}

#[test]
fn the_virtual_service_round_trips_every_weight_and_rebuilds_idempotently() {
    for weight in ROUND_TRIP_WEIGHTS {
        let fresh = istio_patch(&virtual_service(), weight, &[]);
        let live = applied_atomic(&virtual_service(), &fresh, "http");
        let read = istio_router().canary_weight(&inputs(), Some(&live), ReadyReplicas::default());
        assert_eq!(read, (weight > 0).then_some(weight), "weight {weight}");
        let previous = applied_atomic(
            &virtual_service(),
            &istio_patch(&virtual_service(), 60, &ab_matches()),
            "http",
        );
        assert_eq!(
            istio_patch(&previous, weight, &[]),
            fresh,
            "weight {weight}"
        );
    }
}

#[test]
fn every_built_virtual_service_is_valid_against_the_upstream_crd() {
    let schema = crd_schema("istio/virtualservices.yaml");
    assert_valid(&schema, &virtual_service(), "the fixture itself");
    for weight in ROUND_TRIP_WEIGHTS {
        for matches in [vec![], ab_matches()] {
            let patch = istio_patch(&virtual_service(), weight, &matches);
            let what = format!("weight {weight}, {} matches", matches.len());
            assert_valid(&schema, &patch, &format!("patch at {what}"));
            assert_valid(
                &schema,
                &applied_atomic(&virtual_service(), &patch, "http"),
                &format!("applied at {what}"),
            );
        }
    }
}

#[test]
fn a_virtual_service_without_a_route_to_the_stable_service_is_an_error() {
    let mut vs = virtual_service();
    vs["spec"]["http"][0]["route"][0]["destination"]["host"] = json!("payments");
    assert!(matches!(
        istio_router().desired(&inputs(), Some(&vs), 5, &[]),
        Err(BuildRouteError::NoStableBackend { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// NGINX

fn user_ingress() -> Value {
    yaml(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: shop
  namespace: shop
  annotations: {nginx.ingress.kubernetes.io/rewrite-target: /}
spec:
  ingressClassName: nginx
  tls: [{hosts: [shop.example.com], secretName: shop-tls}]
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /api, pathType: Prefix, backend: {service: {name: checkout, port: {number: 80}}}}
      - {path: /static, pathType: Prefix, backend: {service: {name: assets, port: {name: http}}}}
  - http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: checkout, port: {name: http}}}}
"#,
    )
}

fn nginx_router() -> Router {
    Router::Nginx {
        ingress: ObjectRef {
            name: "shop".into(),
            namespace: None,
        },
    }
}

fn nginx_object(weight: i32, matches: &[HttpMatch]) -> Value {
    nginx_router()
        .desired(&inputs(), Some(&user_ingress()), weight, matches)
        .expect("builds")
        .expect("an object")
}

#[test]
fn the_canary_ingress_copies_only_stable_paths_and_points_them_at_the_canary() {
    assert_eq!(
        nginx_object(30, &[]),
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": "shop-canary",
                "namespace": "shop",
                "labels": {MANAGED_BY_LABEL: "sluice"},
                "annotations": {ann::CANARY: "true", ann::CANARY_WEIGHT: "30"},
                "ownerReferences": [owner()],
            },
            "spec": {
                "ingressClassName": "nginx",
                "tls": [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
                "rules": [
                    {"host": "shop.example.com", "http": {"paths": [
                        {"path": "/api", "pathType": "Prefix", "backend": {"service": {"name": "checkout-canary", "port": {"number": 80}}}},
                    ]}},
                    {"http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "checkout-canary", "port": {"name": "http"}}}},
                    ]}},
                ],
            },
        })
    );
}

#[test]
fn the_canary_ingress_routes_by_header_value_or_pattern() {
    let exact = nginx_object(0, &ab_matches());
    assert_eq!(
        exact["metadata"]["annotations"],
        json!({ann::CANARY: "true", ann::CANARY_WEIGHT: "0", ann::CANARY_BY_HEADER: "X-Canary", ann::CANARY_BY_HEADER_VALUE: "always"})
    );
    let mut regex = ab_matches();
    regex[0].headers[0].match_type = HeaderMatchType::RegularExpression;
    regex[0].headers[0].value = "^(a|b)$".into();
    let pattern = nginx_object(0, &regex);
    assert_eq!(
        pattern["metadata"]["annotations"][ann::CANARY_BY_HEADER_PATTERN],
        "^(a|b)$"
    );
    assert_eq!(
        pattern["metadata"]["annotations"].get(ann::CANARY_BY_HEADER_VALUE),
        None
    );
}

#[test]
fn the_canary_ingress_refuses_more_than_one_header_instead_of_dropping_some() {
    let mut two = ab_matches();
    two[0].headers.push(HeaderMatch {
        name: "X-Region".into(),
        value: "eu".into(),
        match_type: HeaderMatchType::Exact,
    });
    assert!(matches!(
        nginx_router().desired(&inputs(), Some(&user_ingress()), 0, &two),
        Err(BuildRouteError::MatchesUnsupported {
            router: "nginx",
            ..
        })
    ));
}

#[test]
fn the_canary_ingress_round_trips_every_weight() {
    for weight in ROUND_TRIP_WEIGHTS {
        let object = nginx_object(weight, &[]);
        let read = nginx_router().canary_weight(&inputs(), Some(&object), ReadyReplicas::default());
        assert_eq!(read, Some(weight), "weight {weight}");
    }
}

#[test]
fn an_ingress_not_marked_canary_reads_back_as_absent() {
    assert_eq!(
        nginx_router().canary_weight(&inputs(), Some(&user_ingress()), ReadyReplicas::default()),
        None
    );
}

#[test]
fn every_canary_ingress_is_a_valid_ingress_with_no_unknown_field() {
    for weight in ROUND_TRIP_WEIGHTS {
        for matches in [vec![], ab_matches()] {
            let object = nginx_object(weight, &matches);
            let typed: Ingress = serde_json::from_value(object.clone()).expect("an Ingress");
            assert_eq!(
                serde_json::to_value(&typed).expect("serialises"),
                object,
                "a field was dropped"
            );
        }
    }
}

#[test]
fn a_rule_without_host_is_warned_about_because_nginx_then_exports_no_metrics() {
    let warnings = nginx_router().warnings(Some(&user_ingress()));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("rule 1 has no host"),
        "{}",
        warnings[0]
    );
    let mut hosted = user_ingress();
    hosted["spec"]["rules"][1]["host"] = json!("www.example.com");
    assert!(nginx_router().warnings(Some(&hosted)).is_empty());
}

#[test]
fn removing_the_nginx_router_deletes_the_canary_ingress() {
    assert_eq!(
        nginx_router()
            .removal(&inputs(), Some(&user_ingress()))
            .ok(),
        Some(Removal::Delete(ObjectKey {
            kind: &kind::INGRESS,
            namespace: "shop".into(),
            name: "shop-canary".into(),
        }))
    );
    assert!(!nginx_router().force_apply());
}

// ---------------------------------------------------------------------------------------------
// SMI and Traefik

fn smi_router() -> Router {
    Router::Smi {
        traffic_split: None,
    }
}

fn traefik_router() -> Router {
    Router::Traefik {
        traefik_service: None,
    }
}

fn owned(router: &Router, weight: i32) -> Value {
    router
        .desired(&inputs(), None, weight, &[])
        .expect("builds")
        .expect("an object")
}

#[test]
fn the_traffic_split_names_both_backends_with_complementary_weights() {
    assert_eq!(
        owned(&smi_router(), 20),
        json!({
            "apiVersion": "split.smi-spec.io/v1alpha4",
            "kind": "TrafficSplit",
            "metadata": {
                "name": "checkout", "namespace": "shop",
                "labels": {MANAGED_BY_LABEL: "sluice"}, "ownerReferences": [owner()],
            },
            "spec": {
                "service": "checkout",
                "backends": [{"service": "checkout", "weight": 80}, {"service": "checkout-canary", "weight": 20}],
            },
        })
    );
}

#[test]
fn the_traefik_service_names_both_services_with_complementary_weights() {
    assert_eq!(
        owned(&traefik_router(), 20),
        json!({
            "apiVersion": "traefik.io/v1alpha1",
            "kind": "TraefikService",
            "metadata": {
                "name": "checkout", "namespace": "shop",
                "labels": {MANAGED_BY_LABEL: "sluice"}, "ownerReferences": [owner()],
            },
            "spec": {"weighted": {"services": [
                {"name": "checkout", "port": 80, "weight": 80},
                {"name": "checkout-canary", "port": 80, "weight": 20},
            ]}},
        })
    );
}

#[test]
fn smi_and_traefik_round_trip_every_weight_and_validate_against_their_crds() {
    let cases = [
        (smi_router(), crd_schema("smi/trafficsplits.yaml")),
        (traefik_router(), crd_schema("traefik/traefikservices.yaml")),
    ];
    for (router, schema) in cases {
        for weight in ROUND_TRIP_WEIGHTS {
            let object = owned(&router, weight);
            assert_valid(&schema, &object, &format!("{} at {weight}", router.name()));
            let read = router.canary_weight(&inputs(), Some(&object), ReadyReplicas::default());
            assert_eq!(read, Some(weight), "{} at {weight}", router.name());
        }
    }
}

#[test]
fn a_named_traffic_split_or_traefik_service_uses_that_name() {
    let split = owned(
        &Router::Smi {
            traffic_split: Some("checkout-split".into()),
        },
        5,
    );
    assert_eq!(split["metadata"]["name"], "checkout-split");
    let weighted = owned(
        &Router::Traefik {
            traefik_service: Some("checkout-wrr".into()),
        },
        5,
    );
    assert_eq!(weighted["metadata"]["name"], "checkout-wrr");
}

#[test]
fn routers_without_per_request_matching_refuse_ab_matches() {
    for router in [
        smi_router(),
        traefik_router(),
        Router::Service,
        Router::ReplicaRatio,
    ] {
        let source = stable_service();
        let result = router.desired(&inputs(), Some(&source), 0, &ab_matches());
        assert!(
            matches!(result, Err(BuildRouteError::MatchesUnsupported { .. })),
            "{}",
            router.name()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Service selector

fn stable_service() -> Value {
    yaml(
        r#"
apiVersion: v1
kind: Service
metadata: {name: checkout, namespace: shop, resourceVersion: "5"}
spec:
  selector: {app: checkout, tier: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#,
    )
}

/// Server-side apply of a switch body on the Service: the atomic selector replaced, sluice's
/// annotation set or (absent from the body) removed.
fn applied_switch(live: &Value, patch: &Value) -> Value {
    let mut merged = live.clone();
    merged["spec"]["selector"] = patch["spec"]["selector"].clone();
    match patch["metadata"].get("annotations") {
        Some(annotations) => merged["metadata"]["annotations"] = annotations.clone(),
        None => {
            if let Some(meta) = merged["metadata"].as_object_mut() {
                meta.remove("annotations");
            }
        }
    }
    merged
}

fn switch(live: &Value, weight: i32) -> Value {
    Router::Service
        .desired(&inputs(), Some(live), weight, &[])
        .expect("builds")
        .expect("an object")
}

#[test]
fn the_service_switch_selects_canary_pods_and_remembers_the_stable_selector() {
    assert_eq!(
        switch(&stable_service(), 100),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "checkout", "namespace": "shop", "resourceVersion": "5",
                "annotations": {STABLE_SELECTOR_ANNOTATION: r#"{"app":"checkout","tier":"web"}"#},
            },
            "spec": {"selector": {"app": "checkout-canary", "tier": "web-canary"}},
        })
    );
}

#[test]
fn switching_back_restores_the_selector_the_user_wrote() {
    let switched = applied_switch(&stable_service(), &switch(&stable_service(), 100));
    let back = switch(&switched, 0);
    assert_eq!(
        back["spec"]["selector"],
        json!({"app": "checkout", "tier": "web"})
    );
    assert_eq!(back["metadata"].get("annotations"), None);
    assert_eq!(applied_switch(&switched, &back), stable_service());
}

#[test]
fn the_service_switch_round_trips_zero_and_hundred_and_refuses_other_weights() {
    for weight in [0, 100] {
        for start in [
            stable_service(),
            applied_switch(&stable_service(), &switch(&stable_service(), 100)),
        ] {
            let live = applied_switch(&start, &switch(&start, weight));
            let read =
                Router::Service.canary_weight(&inputs(), Some(&live), ReadyReplicas::default());
            assert_eq!(read, Some(weight));
            let typed: Service = serde_json::from_value(live.clone()).expect("a Service");
            assert_eq!(serde_json::to_value(&typed).expect("serialises"), live);
        }
    }
    for weight in [1, 50, 99] {
        assert!(matches!(
            Router::Service.desired(&inputs(), Some(&stable_service()), weight, &[]),
            Err(BuildRouteError::NotSwitchable { .. })
        ));
    }
}

#[test]
fn a_service_selecting_something_else_reads_back_as_unknown() {
    let mut edited = stable_service();
    edited["spec"]["selector"] = json!({"app": "other"});
    edited["metadata"]["annotations"] =
        json!({STABLE_SELECTOR_ANNOTATION: r#"{"app":"checkout","tier":"web"}"#});
    assert_eq!(
        Router::Service.canary_weight(&inputs(), Some(&edited), ReadyReplicas::default()),
        None
    );
}

#[test]
fn every_service_switch_body_is_a_valid_service_with_no_unknown_field() {
    for weight in [0, 100] {
        let body = switch(&stable_service(), weight);
        let typed: Service = serde_json::from_value(body.clone()).expect("a Service");
        assert_eq!(serde_json::to_value(&typed).expect("serialises"), body);
    }
}

// ---------------------------------------------------------------------------------------------
// none

#[test]
fn the_none_router_builds_nothing_and_reads_the_ready_replica_ratio() {
    assert_eq!(
        Router::ReplicaRatio
            .desired(&inputs(), None, 50, &[])
            .expect("builds"),
        None
    );
    let cases = [
        (3, 1, 25),
        (2, 1, 33),
        (1, 2, 67),
        (1, 1, 50),
        (4, 0, 0),
        (0, 3, 100),
        (0, 0, 0),
        (199, 1, 1),
    ];
    for (stable, canary, weight) in cases {
        assert_eq!(
            Router::ReplicaRatio.canary_weight(&inputs(), None, ReadyReplicas { stable, canary }),
            Some(weight),
            "{stable} stable, {canary} canary"
        );
    }
    assert_eq!(
        Router::ReplicaRatio.removal(&inputs(), None).ok(),
        Some(Removal::Nothing)
    );
}

// ---------------------------------------------------------------------------------------------
// Namespaces and preconditions

#[test]
fn edits_of_user_objects_are_conditional_on_the_resource_version_they_were_copied_from() {
    assert_eq!(
        gateway_patch(&http_route(), 10, &[])["metadata"]["resourceVersion"],
        "77"
    );
    assert_eq!(
        istio_patch(&virtual_service(), 10, &[])["metadata"]["resourceVersion"],
        "91"
    );
    assert_eq!(
        switch(&stable_service(), 100)["metadata"]["resourceVersion"],
        "5"
    );
}

#[test]
fn an_istio_destination_in_another_namespace_is_not_the_stable_service() {
    let mut vs = virtual_service();
    vs["spec"]["http"][0]["route"][0]["destination"]["host"] =
        json!("checkout.payments.svc.cluster.local");
    assert!(matches!(
        istio_router().desired(&inputs(), Some(&vs), 5, &[]),
        Err(BuildRouteError::NoStableBackend { .. })
    ));
}

#[test]
fn an_httproute_backend_in_another_namespace_is_not_the_stable_service() {
    let mut route = http_route();
    route["spec"]["rules"][0]["backendRefs"][0]["namespace"] = json!("payments");
    assert!(matches!(
        gateway_router().desired(&inputs(), Some(&route), 5, &[]),
        Err(BuildRouteError::NoStableBackend { .. })
    ));
}

#[test]
fn an_ingress_in_another_namespace_cannot_reach_the_stable_service() {
    let mut ingress = user_ingress();
    ingress["metadata"]["namespace"] = json!("edge");
    assert!(matches!(
        nginx_router().desired(&inputs(), Some(&ingress), 5, &[]),
        Err(BuildRouteError::NoStableBackend { .. })
    ));
}

#[test]
fn at_full_weight_the_stable_backend_stays_with_weight_zero_for_a_quick_way_back() {
    let patch = gateway_patch(&http_route(), 100, &[]);
    assert_eq!(
        patch["spec"]["rules"][0]["backendRefs"],
        json!([
            {"group": "", "kind": "Service", "name": "checkout", "port": 80, "weight": 0},
            {"group": "", "kind": "Service", "name": "checkout-canary", "port": 80, "weight": 100},
        ])
    );
    let vs = istio_patch(&virtual_service(), 100, &[]);
    assert_eq!(vs["spec"]["http"][0]["route"][0]["weight"], 0);
    assert_eq!(vs["spec"]["http"][0]["route"][1]["weight"], 100);
}

#[test]
fn the_owned_routers_keep_their_object_at_weight_zero_with_the_canary_at_zero() {
    let split = owned(&smi_router(), 0);
    assert_eq!(
        split["spec"]["backends"],
        json!([{"service": "checkout", "weight": 100}, {"service": "checkout-canary", "weight": 0}])
    );
    let ingress = nginx_object(0, &[]);
    assert_eq!(ingress["metadata"]["annotations"][ann::CANARY_WEIGHT], "0");
}

#[test]
fn a_header_match_to_the_canary_reads_back_as_matched_for_every_router_that_has_one() {
    let gateway = Router::GatewayApi {
        http_route: ObjectRef {
            name: "checkout".into(),
            namespace: None,
        },
    };
    for (router, with, without) in [
        (
            &gateway,
            gateway_patch(&http_route(), 0, &ab_matches()),
            gateway_patch(&http_route(), 0, &[]),
        ),
        (
            &istio_router(),
            istio_patch(&virtual_service(), 0, &ab_matches()),
            istio_patch(&virtual_service(), 0, &[]),
        ),
        (
            &nginx_router(),
            nginx_object(0, &ab_matches()[..1]),
            nginx_object(0, &[]),
        ),
    ] {
        assert!(router.canary_matched(&inputs(), Some(&with)), "{with}");
        assert!(
            !router.canary_matched(&inputs(), Some(&without)),
            "{without}"
        );
        assert!(!router.canary_matched(&inputs(), None));
    }
}
