//! The `Canary` and `CanaryPolicy` custom resources: what a user writes to put a Deployment under
//! progressive delivery, and the status that is the whole memory of a rollout.
//!
//! These types are the user's documentation: every field's doc comment is what `kubectl explain`
//! shows. Every bound the core relies on is in the schema (ranges, anchored patterns, CEL rules
//! across fields) and is checked again by `core::validate`, because a schema is not always installed
//! the way it was generated. No I/O here.

// kube-derive's repeated `printcolumn(type_ = ...)` arguments read as duplicated attributes to clippy.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Duration;

/// Pattern of a Kubernetes object name (a DNS-1123 subdomain, kept to the label form sluice needs).
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Pattern of a metric or hook name: a DNS-1123 label.
pub const LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Pattern of an HTTP(S) URL.
pub const URL_PATTERN: &str = r"^https?://[^\s/$.?#][^\s]*$";

/// A progressive rollout of one Deployment: each new pod template runs beside the stable one as a
/// canary, receives traffic in steps through a router, is analysed with Prometheus at every
/// interval, and is promoted or rolled back.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Canary",
    namespaced,
    status = "CanaryStatus",
    shortname = "cn",
    category = "sluice",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Weight", type_ = "integer", json_path = ".status.canaryWeight"),
    printcolumn(name = "Revision", type_ = "string", json_path = ".status.revision"),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "A progressive rollout of one Deployment: new pod templates are canaried, analysed and promoted or rolled back."
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.policyRef) || has(self.router)", "message": "set router, or policyRef naming a CanaryPolicy that sets it", "fieldPath": ".router", "reason": "FieldValueRequired"},
]))]
pub struct CanarySpec {
    /// The Deployment this Canary rolls out. It keeps its name, labels and selector and serves as
    /// the stable version; sluice never writes its template, replicas or selector.
    pub target_ref: TargetRef,

    /// A CanaryPolicy to inherit from. Every top-level field set here overrides the policy's; within
    /// `analysis`, each field set here overrides the policy's one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<PolicyRef>,

    #[serde(flatten)]
    pub rollout: RolloutSpec,
}

/// A reusable rollout policy: a Canary spec without `targetRef`. Named by the
/// `sluice.dev/policy` annotation on a Deployment, or by `policyRef` in a Canary.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "CanaryPolicy",
    shortname = "cnp",
    category = "sluice",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "A reusable rollout policy (a Canary spec without targetRef), named by the sluice.dev/policy annotation or a Canary's policyRef."
)]
#[serde(rename_all = "camelCase")]
pub struct CanaryPolicySpec {
    #[serde(flatten)]
    pub rollout: RolloutSpec,
}

/// The part of a rollout that a policy can share: how traffic moves and how it is judged.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// The user's Service in front of the target's pods (the stable side). sluice creates
    /// `<name>-canary` beside it for the canary pods and never edits it, except with the `service`
    /// router, which switches its selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,

    /// How traffic is split between stable and canary. Exactly one router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterSpec>,

    /// How the rollout proceeds: weighted canary steps, a blue/green switch, or an A/B test.
    /// Defaults to canary steps of 10% up to 50%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategySpec>,

    /// How each step is judged: the interval, the failure threshold, deadlines and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,

    /// Webhooks called during the rollout: checks that count as analysis, gates that hold it, and
    /// notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub hooks: Option<Vec<HookSpec>>,

    /// Where to tell people about the rollout's lifecycle events (started, each step, promoted,
    /// rolled back, failed): a generic JSON webhook or a Slack incoming webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub notifications: Option<Vec<NotificationSpec>>,

    /// Wait for `kubectl sluice promote` once analysis has passed every step, instead of promoting
    /// by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual_promotion: Option<bool>,

    /// Promote without analysis once the canary is ready (metrics are still queried and shown but
    /// never fail the rollout). For emergencies; prefer `kubectl sluice promote --full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_analysis: Option<bool>,
}

/// The Deployment a Canary rolls out.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// API version of the target. Only `apps/v1` is supported.
    #[serde(default = "default_apps_v1")]
    #[schemars(extend("enum" = ["apps/v1"]))]
    pub api_version: String,
    /// Kind of the target. Only `Deployment` is supported.
    #[serde(default = "default_deployment")]
    #[schemars(extend("enum" = ["Deployment"]))]
    pub kind: String,
    /// Name of the Deployment, in the Canary's namespace.
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub name: String,
}

fn default_apps_v1() -> String {
    "apps/v1".to_owned()
}

fn default_deployment() -> String {
    "Deployment".to_owned()
}

/// Names a CanaryPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRef {
    /// Name of the (cluster-scoped) CanaryPolicy.
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub name: String,
}

/// The stable Service and the port traffic is sent to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Name of the user's Service selecting the target's pods. Defaults to the target's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(LABEL_PATTERN))]
    pub name: Option<String>,
    /// The Service port routers send traffic to.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Exactly one router: the object whose weights sluice moves.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.gatewayAPI), has(self.nginx), has(self.istio), has(self.smi), has(self.traefik), has(self.service), has(self.none)].filter(x, x).size() == 1",
     "message": "exactly one of gatewayAPI, nginx, istio, smi, traefik, service or none must be set"},
]))]
pub struct RouterSpec {
    /// Gateway API: weights on the `HTTPRoute` rule that points at the stable Service; sluice adds
    /// and removes the canary backendRef.
    #[serde(
        rename = "gatewayAPI",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_api: Option<GatewayApiRouter>,
    /// NGINX Ingress: a controller-owned copy of the user's Ingress pointing at the canary Service,
    /// with the `nginx.ingress.kubernetes.io/canary*` annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nginx: Option<NginxRouter>,
    /// Istio: weighted destinations on a `VirtualService`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioRouter>,
    /// SMI: a `TrafficSplit` (Linkerd and other SMI meshes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smi: Option<SmiRouter>,
    /// Traefik: a weighted `TraefikService`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traefik: Option<TraefikRouter>,
    /// The Service's own selector: all traffic switches at once (blue/green without a mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRouter>,
    /// No router: canary pods share the stable Service and the split follows the replica ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub none: Option<NoRouter>,
}

/// A reference to an object in the Canary's namespace unless `namespace` is given.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub name: String,
    /// Namespace of the object; defaults to the Canary's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(LABEL_PATTERN))]
    pub namespace: Option<String>,
}

/// Gateway API router settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiRouter {
    /// The user's `HTTPRoute` (gateway.networking.k8s.io/v1) with a rule whose backendRefs point at
    /// the stable Service.
    pub http_route: ObjectRef,
}

/// NGINX Ingress router settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NginxRouter {
    /// The user's Ingress routing to the stable Service. sluice creates `<name>-canary` beside it.
    pub ingress: ObjectRef,
}

/// Istio router settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioRouter {
    /// The user's `VirtualService` whose HTTP route sends traffic to the stable Service.
    pub virtual_service: ObjectRef,
}

/// SMI router settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmiRouter {
    /// Name of the `TrafficSplit` sluice owns. Defaults to the Service's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub traffic_split: Option<String>,
}

/// Traefik router settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TraefikRouter {
    /// Name of the weighted `TraefikService` sluice owns. Defaults to the Service's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub traefik_service: Option<String>,
}

/// The Service router has no settings: it switches the stable Service's selector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ServiceRouter {}

/// The replica-ratio "router" has no settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct NoRouter {}

/// Exactly one strategy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.canary), has(self.blueGreen), has(self.abTesting)].filter(x, x).size() == 1",
     "message": "exactly one of canary, blueGreen or abTesting must be set"},
]))]
pub struct StrategySpec {
    /// Move traffic to the canary in weighted steps, each gated by analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStrategy>,
    /// Run the canary at full size with no traffic for `iterations` intervals of analysis, then
    /// switch all traffic at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStrategy>,
    /// Send only requests matching `match` to the canary for `iterations` intervals of analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab_testing: Option<AbTestingStrategy>,
}

/// Weighted canary steps: either `stepWeight` (+ `maxWeight`) or an explicit `stepWeights` list.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.stepWeight) != has(self.stepWeights)", "message": "set either stepWeight or stepWeights, not both"},
    {"rule": "!has(self.maxWeight) || has(self.stepWeight)", "message": "maxWeight applies to stepWeight; with stepWeights the last step is the maximum", "fieldPath": ".maxWeight"},
    {"rule": "!has(self.maxWeight) || !has(self.stepWeight) || self.maxWeight >= self.stepWeight", "message": "maxWeight must be at least stepWeight", "fieldPath": ".maxWeight"},
]))]
pub struct CanaryStrategy {
    /// Percentage of traffic added to the canary at each step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub step_weight: Option<i32>,
    /// Highest canary weight before promotion (default 50 with `stepWeight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_weight: Option<i32>,
    /// The canary weight of each step, strictly increasing, for example `[5, 10, 25, 50]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100), inner(range(min = 1, max = 100)))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(w, self.filter(v, v <= w).size() == self.filter(v, v < w).size() + 1) && self.isSorted()", "message": "stepWeights must be strictly increasing"},
    ]))]
    pub step_weights: Option<Vec<i32>>,
}

/// Blue/green settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStrategy {
    /// Number of passing analysis intervals before the switch.
    #[schemars(range(min = 1, max = 1000))]
    pub iterations: i32,
}

/// A/B testing settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbTestingStrategy {
    /// Number of passing analysis intervals before promotion.
    #[schemars(range(min = 1, max = 1000))]
    pub iterations: i32,
    /// Requests matching any of these go to the canary; all others to stable.
    #[serde(rename = "match")]
    #[schemars(length(min = 1, max = 8))]
    pub matches: Vec<HttpMatch>,
}

/// A request match: every listed header must match.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    /// Header conditions, all of which must hold.
    #[schemars(length(min = 1, max = 16))]
    pub headers: Vec<HeaderMatch>,
}

/// One header condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Header name, for example `x-canary`.
    #[schemars(length(min = 1, max = 256), pattern(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"))]
    pub name: String,
    /// Value to match.
    #[schemars(length(min = 1, max = 4096))]
    pub value: String,
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub match_type: HeaderMatchType,
}

/// How a header value is compared.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum HeaderMatchType {
    #[default]
    Exact,
    RegularExpression,
}

/// How each step is judged.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// Time between checks, and the least time a step lasts (default `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Failed checks (counted across the rollout) that roll the canary back (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub threshold: Option<i32>,
    /// How long the canary may take to become ready, and the stable Deployment to finish rolling out
    /// during promotion, before the revision is rolled back (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<Duration>,
    /// How long checks may stay Unknown (no data, NaN, Prometheus unreachable) while the step holds,
    /// before `onUnknownDeadline` happens (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_deadline: Option<Duration>,
    /// What happens when checks stayed Unknown for `unknownDeadline`: `Rollback` (default) or
    /// `Pause` (hold until a person acts). Never promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_unknown_deadline: Option<UnknownOutcome>,
    /// Where queries go. Defaults to the controller's `--prometheus-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderSpec>,
    /// The metrics checked at every interval; all must pass for a step to advance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub metrics: Option<Vec<MetricSpec>>,
}

/// The outcome when checks stay Unknown past the deadline.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum UnknownOutcome {
    #[default]
    Rollback,
    Pause,
}

/// A metrics backend.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    /// Prometheus (or a Prometheus-compatible API such as Thanos, Mimir or VictoriaMetrics).
    pub prometheus: PrometheusProvider,
}

/// Where and how to query Prometheus.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusProvider {
    /// Base URL, for example `http://prometheus.monitoring:9090`.
    #[schemars(length(min = 1, max = 2048), pattern(URL_PATTERN))]
    pub address: String,
    /// Per-query timeout (default `5s`); a timed-out query is Unknown, not Fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// A Secret in the Canary's namespace with `token` (bearer), or `username` and `password`
    /// (basic auth), and optionally `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

/// Names a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub name: String,
}

/// One metric: a query, a range it must stay in, and how missing data is treated.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.templateRef) != has(self.query)", "message": "set either templateRef or query, not both"},
    {"rule": "!has(self.min) || !has(self.max) || self.min <= self.max", "message": "min must not exceed max", "fieldPath": ".min"},
]))]
pub struct MetricSpec {
    /// Name of the metric, shown in status and events.
    #[schemars(length(min = 1, max = 63), pattern(LABEL_PATTERN))]
    pub name: String,
    /// A template with the query: an AnalysisTemplate in the Canary's namespace, or a
    /// ClusterAnalysisTemplate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<TemplateRef>,
    /// An inline PromQL query returning a single value. Variables: `{{ namespace }}`,
    /// `{{ target }}`, `{{ canary }}`, `{{ stable }}`, `{{ service }}`, `{{ interval }}`,
    /// `{{ revision }}`, `{{ workload }}` and `args`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8192))]
    pub query: Option<String>,
    /// The count query: how many requests the check's window holds, rendered like `query` (for
    /// example `sum(increase(http_requests_total{...}[{{ interval }}]))`). A check whose count is
    /// below `minSamples` is Unknown, not Pass or Fail. With `compare.method: TwoProportion` it is
    /// also the total the failure count (`query`) is divided by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8192))]
    pub total_query: Option<String>,
    /// Values for the template's arguments.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// The lowest passing value. Overrides the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The highest passing value. Overrides the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Fewest requests (as `totalQuery` counts them; with a comparison, on each side) for a
    /// verdict; fewer is Unknown. Overrides the template's and `compare.minSamples`. Default 50
    /// when the metric has a `totalQuery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_samples: Option<i64>,
    /// Range window substituted for `{{ interval }}` (default: the analysis interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// What a query that returns no data means: `Hold` (Unknown, the default), `Fail` or `Pass`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_no_data: Option<OnNoData>,
    /// Judge the canary against the stable side instead of (or as well as) the fixed range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<Comparison>,
}

/// Names an analysis template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    /// Name of the template.
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub name: String,
    /// `AnalysisTemplate` or `ClusterAnalysisTemplate`. When omitted, an AnalysisTemplate in the
    /// Canary's namespace is used if one exists, else the ClusterAnalysisTemplate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TemplateKind>,
}

/// The two template kinds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TemplateKind {
    AnalysisTemplate,
    ClusterAnalysisTemplate,
}

/// What a query returning no data means.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OnNoData {
    /// Unknown: the step holds until data arrives or `unknownDeadline` passes.
    #[default]
    Hold,
    /// A failed check.
    Fail,
    /// A passing check (for error counters that have no series until the first error).
    Pass,
}

/// Canary-versus-stable comparison. The query is evaluated twice, with `{{ workload }}` set to
/// the canary's workload name and then to the stable's.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.method != 'Difference' || has(self.maxDifference)", "message": "method Difference needs maxDifference", "fieldPath": ".maxDifference"},
    {"rule": "self.method != 'Ratio' || has(self.maxRatio)", "message": "method Ratio needs maxRatio", "fieldPath": ".maxRatio"},
]))]
pub struct Comparison {
    /// `Difference`: canary ≤ stable + maxDifference. `Ratio`: canary ≤ stable × maxRatio.
    /// `TwoProportion`: a one-sided two-proportion z-test on failure counts (`query`) over totals
    /// (`totalQuery`); fails when the canary's failure proportion is higher with `confidence`.
    pub method: ComparisonMethod,
    /// Largest allowed canary − stable, for `Difference`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_difference: Option<f64>,
    /// Largest allowed canary ÷ stable, for `Ratio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0))]
    pub max_ratio: Option<f64>,
    /// Confidence for `TwoProportion` (default 0.95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.5, max = 0.9999))]
    pub confidence: Option<f64>,
    /// Fewest requests on each side (as `totalQuery` counts them) for a verdict; fewer is
    /// Unknown (default 50). The metric's own `minSamples` wins over this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_samples: Option<i64>,
}

/// The comparison methods.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ComparisonMethod {
    #[default]
    Difference,
    Ratio,
    TwoProportion,
}

/// A webhook called during the rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookSpec {
    /// Name of the hook, shown in status.
    #[schemars(length(min = 1, max = 63), pattern(LABEL_PATTERN))]
    pub name: String,
    /// When it is called and what its answer means.
    #[serde(rename = "type")]
    pub hook_type: HookType,
    /// URL that receives a POST with the canary, namespace, revision, phase, weight and metadata.
    #[schemars(length(min = 1, max = 2048), pattern(URL_PATTERN))]
    pub url: String,
    /// Per-call timeout (default `10s`, never more than half the analysis interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retries after a failed call, with backoff (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 5))]
    pub retries: Option<i32>,
    /// Extra fields sent in the body's `metadata`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Hook types.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HookType {
    /// Before any traffic moves; a failure counts as a failed check.
    PreRollout,
    /// At every step, e.g. a load test; a failure counts as a failed check.
    #[default]
    Rollout,
    /// A gate before the rollout starts: holds (without counting failures) until it answers 2xx.
    ConfirmRollout,
    /// A gate before promotion: holds (without counting failures) until it answers 2xx.
    ConfirmPromotion,
    /// After promotion; informational.
    PostRollout,
    /// After a rollback; informational.
    Rollback,
    /// On every lifecycle event; informational.
    Event,
}

impl HookType {
    /// The name used in the spec (`pre-rollout`, `confirm-promotion`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            HookType::PreRollout => "pre-rollout",
            HookType::Rollout => "rollout",
            HookType::ConfirmRollout => "confirm-rollout",
            HookType::ConfirmPromotion => "confirm-promotion",
            HookType::PostRollout => "post-rollout",
            HookType::Rollback => "rollback",
            HookType::Event => "event",
        }
    }
}

/// A notification target: lifecycle events are POSTed to it in the background, never holding the
/// rollout, and dropped (and counted) when too many are in flight.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.url) != has(self.urlSecretRef)", "message": "set either url or urlSecretRef, not both"},
]))]
pub struct NotificationSpec {
    /// Name of the notification target.
    #[schemars(length(min = 1, max = 63), pattern(LABEL_PATTERN))]
    pub name: String,
    /// URL that receives the POST. Slack incoming-webhook URLs are credentials: use
    /// `urlSecretRef` for those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), pattern(URL_PATTERN))]
    pub url: Option<String>,
    /// A key of a Secret in the Canary's namespace holding the URL (read at each send; sluice
    /// needs `get` on that Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// `generic` (default): a JSON object with canary, namespace, revision, phase, weight, event,
    /// message and time. `slack`: Slack's incoming-webhook body, `{"text": ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<NotificationFormat>,
    /// Only these events are sent (default: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 5))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub events: Option<Vec<LifecycleEvent>>,
}

/// Names one key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub name: String,
    /// Key in the Secret's data (default `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: Option<String>,
}

/// The body a notification target receives.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotificationFormat {
    /// A JSON object: canary, namespace, revision, phase, weight, event, message, time.
    #[default]
    Generic,
    /// Slack's incoming-webhook format: `{"text": ...}`.
    Slack,
}

/// The lifecycle events a notification can be sent for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum LifecycleEvent {
    /// A canary of a new revision started.
    Started,
    /// Traffic moved: the first weight, each next step, or a blue/green switch.
    Step,
    /// The revision was promoted.
    Promoted,
    /// The revision was rolled back.
    RolledBack,
    /// Something needs a person: a failed check, an invalid spec, a deadline passed while Unknown
    /// or while promoting.
    Failed,
}

impl LifecycleEvent {
    pub const fn as_str(self) -> &'static str {
        match self {
            LifecycleEvent::Started => "Started",
            LifecycleEvent::Step => "Step",
            LifecycleEvent::Promoted => "Promoted",
            LifecycleEvent::RolledBack => "RolledBack",
            LifecycleEvent::Failed => "Failed",
        }
    }
}

/// Where a rollout stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// First sight of the Canary: labelling (and, when held paused at rest, pausing) the target.
    #[default]
    Initializing,
    /// Under control with nothing to roll out yet.
    Idle,
    /// A canary of a new revision is running and being analysed.
    Progressing,
    /// Every step passed; waiting for `kubectl sluice promote` or a confirm-promotion gate.
    WaitingPromotion,
    /// The stable Deployment is rolling to the new revision.
    Promoting,
    /// The current revision was promoted.
    Succeeded,
    /// The current revision was rolled back; the target stays held on its stable revision.
    Failed,
    /// A person paused the rollout; nothing moves until `resume`.
    Paused,
    /// The spec cannot be acted on; see the InvalidSpec condition. Live traffic is left as it was.
    Invalid,
}

impl Phase {
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Initializing => "Initializing",
            Phase::Idle => "Idle",
            Phase::Progressing => "Progressing",
            Phase::WaitingPromotion => "WaitingPromotion",
            Phase::Promoting => "Promoting",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Paused => "Paused",
            Phase::Invalid => "Invalid",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The observed state of a rollout. Its analysis clock and step live here, so a restarted
/// controller resumes the same step, neither skipping nor repeating it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// Where the rollout stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The Canary generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pod-template hash of the revision being (or last) rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Pod-template hash of the revision the stable Deployment serves (the last promoted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// The last revision rolled back; it is not started again unless `retry` names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_revision: Option<String>,
    /// Percentage of traffic currently routed to the canary.
    #[serde(default)]
    pub canary_weight: i32,
    /// Index of the current step (0-based).
    #[serde(default)]
    pub step_index: i32,
    /// Number of steps in the plan.
    #[serde(default)]
    pub step_count: i32,
    /// When the current step (or the promotion) started: the moment the write that started it (the
    /// route's new weight, the target's release) was acknowledged by the API server. Steps never
    /// advance before an interval has passed since then. Microsecond precision.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::status_time::optional"
    )]
    #[schemars(with = "Option<Time>")]
    pub step_started_at: Option<Time>,
    /// When the current revision's canary was created; the progress deadline counts from here.
    /// Microsecond precision.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::status_time::optional"
    )]
    #[schemars(with = "Option<Time>")]
    pub revision_started_at: Option<Time>,
    /// When the last check ran. Microsecond precision.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::status_time::optional"
    )]
    #[schemars(with = "Option<Time>")]
    pub last_check_at: Option<Time>,
    /// Failed checks so far for this revision.
    #[serde(default)]
    pub failed_checks: i32,
    /// Since when checks have been Unknown without a break. Microsecond precision.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::status_time::optional"
    )]
    #[schemars(with = "Option<Time>")]
    pub unknown_since: Option<Time>,
    /// Passing analysis intervals so far (blue/green and A/B).
    #[serde(default)]
    pub iterations: i32,
    /// The hold mode the controller runs with: `AdmissionPolicy` or `PausedAtRest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_mode: Option<HoldMode>,
    /// Set by `kubectl sluice pause`; nothing moves until `resume`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// The last checks (newest last, at most 20): metric, query, values, limit and verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<CheckRecord>,
    /// The last result of each hook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookRecord>,
    /// Metric queries the metrics provider refused as invalid (Prometheus `bad_data`), each kept
    /// until the metric's query changes: the spec stays `InvalidSpec` meanwhile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub rejected_queries: Vec<RejectedQuery>,
    /// A command from `kubectl sluice` (written under its own field manager), for one revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    /// The controller's answer to the last command it saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_command: Option<CommandAck>,
    /// Ready, Progressing, Promoted, Failed and InvalidSpec, each naming the revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// A human-readable summary of the current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How the controller keeps a new template from rolling out by itself.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum HoldMode {
    /// A MutatingAdmissionPolicy pauses a labelled Deployment in the write that changes its
    /// template; at rest the Deployment is unpaused.
    #[default]
    AdmissionPolicy,
    /// The Deployment is kept at `spec.paused: true` whenever no promotion is running.
    PausedAtRest,
}

/// A metric query the provider refused as invalid.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RejectedQuery {
    /// The metric's name.
    pub metric: String,
    /// The metric's query (with its `{{ ... }}` variables) and, after a blank line, its count
    /// query: a change to either lifts the refusal.
    pub query: String,
    /// What the provider said.
    pub reason: String,
}

/// One analysis check of one metric.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckRecord {
    /// Metric name.
    pub metric: String,
    /// Revision checked.
    pub revision: String,
    /// Step index the check belonged to.
    pub step: i32,
    /// The query as sent, after templating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The canary's value (absent for no data or NaN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The stable side's value, in comparison mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_value: Option<f64>,
    /// The limit the value was held to, e.g. `<= 0.05` or `<= stable + 0.01`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// Pass, Fail or Unknown.
    pub verdict: Verdict,
    /// Why, in words (the test, the counts, the error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the check ran (the `lastCheckAt` of its check). Microsecond precision.
    #[serde(with = "super::status_time::required")]
    #[schemars(with = "Time")]
    pub time: Time,
}

/// The three-valued result of a check.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Verdict {
    Pass,
    Fail,
    /// Could not measure: no data, NaN, several series, or the provider unreachable or slow.
    #[default]
    Unknown,
}

/// The last result of a hook.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookRecord {
    /// Hook name.
    pub name: String,
    /// Revision it was called for.
    pub revision: String,
    /// Step it was called at.
    #[serde(default)]
    pub step: i32,
    /// Whether it answered 2xx.
    pub passed: bool,
    /// HTTP status or error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it answered.
    pub time: Time,
}

/// A command from a person, bound to one revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Command {
    /// What to do.
    pub action: CommandAction,
    /// The revision it is for; a command naming another revision is refused.
    #[schemars(length(min = 1, max = 64))]
    pub revision: String,
    /// When it was issued; identifies the command.
    pub requested_at: Time,
    /// Who issued it, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

/// Commands of `kubectl sluice`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum CommandAction {
    /// Pass the manual promotion gate (or the current step with `skip`).
    #[default]
    Promote,
    /// Promote now, skipping the remaining steps and analysis.
    PromoteFull,
    /// Roll back now.
    Abort,
    /// Start the failed revision again.
    Retry,
    /// Hold the rollout where it is.
    Pause,
    /// Continue a paused rollout.
    Resume,
    /// Advance to the next step without waiting for its interval (analysis of the step still ran).
    Skip,
}

/// The controller's answer to a command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandAck {
    /// The command answered.
    pub action: CommandAction,
    /// The revision the command named.
    pub revision: String,
    /// The command's `requestedAt`.
    pub requested_at: Time,
    /// Whether it was carried out.
    pub accepted: bool,
    /// Why it was refused, or what it did.
    pub message: String,
}
