//! `AnalysisTemplate` (namespaced) and `ClusterAnalysisTemplate`: named, parameterised metric
//! queries with default limits, referenced from a Canary's metrics. `analysis-templates/` ships
//! ClusterAnalysisTemplates for common exporters. No I/O here.

// kube-derive's repeated `printcolumn(type_ = ...)` arguments read as duplicated attributes to clippy.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::canary::{Comparison, LABEL_PATTERN, OnNoData, ProviderSpec};

/// A named PromQL query with default limits, usable by Canaries in its namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "AnalysisTemplate",
    namespaced,
    shortname = "at",
    category = "sluice",
    printcolumn(
        name = "Description",
        type_ = "string",
        json_path = ".spec.description"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "A named, parameterised PromQL query with default limits, for Canaries in its namespace."
)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTemplateSpec {
    #[serde(flatten)]
    pub template: TemplateSpec,
}

/// A named PromQL query with default limits, usable by Canaries in every namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "ClusterAnalysisTemplate",
    shortname = "cat",
    category = "sluice",
    printcolumn(
        name = "Description",
        type_ = "string",
        json_path = ".spec.description"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "A named, parameterised PromQL query with default limits, for Canaries in every namespace."
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterAnalysisTemplateSpec {
    #[serde(flatten)]
    pub template: TemplateSpec,
}

/// The body shared by both template kinds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.min) || !has(self.max) || self.min <= self.max", "message": "min must not exceed max", "fieldPath": ".min"},
]))]
pub struct TemplateSpec {
    /// What the query measures and what it assumes about the metrics (exporter, labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Where the query goes; a Canary's provider (or the controller's default) when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderSpec>,
    /// PromQL returning a single value. Variables: `{{ namespace }}`, `{{ target }}`,
    /// `{{ canary }}`, `{{ stable }}`, `{{ service }}`, `{{ interval }}`, `{{ revision }}`,
    /// `{{ workload }}` and the `args` below, each substituted escaped.
    #[schemars(length(min = 1, max = 8192))]
    pub query: String,
    /// The count query: how many requests the check's window holds. A check whose count is
    /// below `minSamples` is Unknown. For the `TwoProportion` comparison it is also the total,
    /// `query` being the failure count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8192))]
    pub total_query: Option<String>,
    /// Arguments the query uses as `{{ args.NAME }}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub args: Vec<TemplateArg>,
    /// Default lowest passing value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Default highest passing value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Default fewest requests (as `totalQuery` counts them) for a verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_samples: Option<i64>,
    /// Default meaning of no data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_no_data: Option<OnNoData>,
    /// Default comparison against stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<Comparison>,
}

/// One template argument.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateArg {
    /// Name, used as `{{ args.NAME }}`.
    #[schemars(length(min = 1, max = 63), pattern(LABEL_PATTERN))]
    pub name: String,
    /// Value when the metric gives none; without a default the argument is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// What the argument is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}
