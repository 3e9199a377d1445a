//! Pure builders and readers for the workloads sluice runs beside the user's: the canary
//! Deployment `<target>-canary`, the canary Service `<service>-canary`, the server-side-apply body
//! that holds or releases the target, and the readings of Deployments the core decides on.
//!
//! Everything here is a function from objects to objects. This module must not call a client,
//! read the clock, or decide when to act: the core decides (`core::step`), the controller's
//! executor applies what is built here under field manager `sluice`.
//!
//! Label rewriting is the one idea shared by every builder: for every key the stable Service
//! selects on, the canary pods carry `<value>-canary` instead of `<value>` ([`canary_label_value`]),
//! so the user's Service never sends traffic to canary pods by accident and `<service>-canary`
//! selects only them. With the `none` router the canary shares the stable Service, so its pod labels
//! are kept ([`PodLabels::Shared`]).

mod deployment;
mod service;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::api::names::{CANARY_SUFFIX, GROUP, MANAGED_BY_LABEL, MANAGED_BY_VALUE, VERSION};

pub use deployment::{
    CANARY_ROLE_LABEL, CANARY_ROLE_VALUE, canary_deployment, is_rolled_out, target_hold_patch,
    target_state, workload_state,
};
pub use service::{STABLE_SELECTOR_ANNOTATION, canary_service, is_in_place, stable_selector_of};

/// Longest value a label may have.
const LABEL_VALUE_MAX: usize = 63;

/// The Canary that owns what sluice creates: every built object carries an ownerReference to it,
/// so deleting the Canary garbage-collects them even if the finalizer never ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryIdentity {
    pub name: String,
    pub namespace: String,
    /// `metadata.uid` of the Canary; an ownerReference without it is rejected by the API server.
    pub uid: String,
}

impl CanaryIdentity {
    /// The ownerReference every object sluice creates carries. `blockOwnerDeletion` is left unset:
    /// it would need RBAC on `canaries/finalizers`, and sluice's own finalizer already orders the
    /// clean-up.
    pub fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: format!("{GROUP}/{VERSION}"),
            kind: "Canary".to_owned(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }
}

/// How the canary pods are labelled relative to the stable Service's selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodLabels {
    /// Routed providers: every selected label is rewritten to its canary value, so only
    /// `<service>-canary` selects the canary pods.
    Separate,
    /// The `none` router: the canary pods keep the selected labels and share the stable Service;
    /// the split follows the replica ratio.
    Shared,
}

/// The labels sluice puts on every object it creates.
pub fn managed_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned())])
}

/// The canary form of a selected label value: `checkout` becomes `checkout-canary`. A value too
/// long for the suffix is shortened first (labels are at most 63 characters) and still ends in the
/// suffix, so it never equals a stable value.
pub fn canary_label_value(value: &str) -> String {
    if value.is_empty() {
        // A label value must start with an alphanumeric character.
        return CANARY_SUFFIX.trim_start_matches('-').to_owned();
    }
    let room = LABEL_VALUE_MAX - CANARY_SUFFIX.len();
    let mut kept: &str = value;
    if kept.len() > room {
        let mut end = room;
        while !kept.is_char_boundary(end) {
            end -= 1;
        }
        kept = kept[..end].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    }
    format!("{kept}{CANARY_SUFFIX}")
}

/// The selector of `<service>-canary`: the stable selector with every value in its canary form.
pub fn canary_selector(stable_selector: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    stable_selector
        .iter()
        .map(|(key, value)| (key.clone(), canary_label_value(value)))
        .collect()
}

/// Why a workload object could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildWorkloadError {
    /// The object read from the cluster lacks a field every stored object has.
    #[error("failed to build the canary {kind} from {kind} {name:?}: it has no {field}")]
    MissingField {
        kind: &'static str,
        name: String,
        field: &'static str,
    },
}

#[cfg(test)]
mod tests;
