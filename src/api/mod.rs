//! The API: custom resource types (kube-derive + schemars), the one `Duration` type, and every
//! name sluice writes in a cluster. Everything else depends on this module; it depends on nothing
//! of sluice's and does no I/O.

pub mod canary;
pub mod duration;
pub mod names;
pub mod status_time;
pub mod template;

pub use canary::*;
pub use duration::{Duration, DurationError};
pub use template::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD sluice defines, in install order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Canary::crd(),
        CanaryPolicy::crd(),
        AnalysisTemplate::crd(),
        ClusterAnalysisTemplate::crd(),
    ]
}

/// Every CRD as multi-document YAML: the content of `crds/` and the output of `sluice crds`.
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}
