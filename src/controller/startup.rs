//! Start-up checks, before any watch starts: are sluice's CRDs served, which hold mode to run
//! with, and is the hold policy installed when that mode needs it. Each failure is an error that
//! names what is missing and how to install it, so a misconfigured install fails loudly at start
//! instead of reconciling into a wall of 404s.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};

use crate::api::HoldMode;
use crate::api::names;

/// The `--hold` flag: how to keep new templates from rolling out by themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HoldSetting {
    /// The admission policy when the API server serves `MutatingAdmissionPolicy` v1, else paused.
    #[default]
    Auto,
    /// The shipped `MutatingAdmissionPolicy` pauses a held Deployment in the write that changes
    /// its template (Kubernetes 1.36+).
    AdmissionPolicy,
    /// Held Deployments stay at `spec.paused: true` at rest.
    Paused,
}

/// Name of the shipped policy and of its binding (deploy/admission-policy.yaml).
pub const HOLD_POLICY_NAME: &str = "sluice-hold-new-revisions";

const ADMISSION_GROUP_VERSION: &str = "admissionregistration.k8s.io/v1";
const POLICY_RESOURCE: &str = "mutatingadmissionpolicies";
const BINDING_RESOURCE: &str = "mutatingadmissionpolicybindings";

/// The resources `sluice controller` needs served under `sluice.dev/v1alpha1`.
const SLUICE_RESOURCES: &[&str] = &[
    "canaries",
    "canaries/status",
    "canarypolicies",
    "analysistemplates",
    "clusteranalysistemplates",
];

/// Why the controller refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "sluice's CRDs are not installed: the API server does not serve {missing}. Install them \
         with `sluice crds | kubectl apply --server-side -f -` (the same YAML is in crds/)"
    )]
    CrdsMissing { missing: String },
    #[error(
        "--hold=admission-policy needs MutatingAdmissionPolicy (admissionregistration.k8s.io/v1, \
         Kubernetes 1.36+), which this API server does not serve; run with --hold=paused"
    )]
    AdmissionPolicyApiMissing,
    #[error(
        "the hold policy is not installed: {missing} not found. Install it with \
         `kubectl apply -f deploy/admission-policy.yaml`, or run with --hold=paused"
    )]
    HoldPolicyMissing { missing: String },
    #[error("failed to ask the API server {what}")]
    Discovery {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// Resources served under `group_version`, or `None` when the group version is not served.
async fn served_resources(
    client: &Client,
    group_version: &str,
    what: &'static str,
) -> Result<Option<APIResourceList>, StartupError> {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => Ok(Some(list)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(source) => Err(StartupError::Discovery { what, source }),
    }
}

/// Fails unless every sluice resource is served.
pub async fn check_crds(client: &Client) -> Result<(), StartupError> {
    let group_version = format!("{}/{}", names::GROUP, names::VERSION);
    let served = served_resources(
        client,
        &group_version,
        "which sluice.dev resources it serves",
    )
    .await?
    .map(|list| {
        list.resources
            .into_iter()
            .map(|r| r.name)
            .collect::<Vec<_>>()
    })
    .unwrap_or_default();
    let missing: Vec<String> = SLUICE_RESOURCES
        .iter()
        .filter(|name| !served.iter().any(|s| s == *name))
        .map(|name| format!("{name}.{}", names::GROUP))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(StartupError::CrdsMissing {
            missing: missing.join(", "),
        })
    }
}

/// Picks the hold mode for `setting` and, for the admission-policy mode, checks that the shipped
/// policy and its binding exist.
pub async fn hold_mode(client: &Client, setting: HoldSetting) -> Result<HoldMode, StartupError> {
    if setting == HoldSetting::Paused {
        return Ok(HoldMode::PausedAtRest);
    }
    let served = served_resources(
        client,
        ADMISSION_GROUP_VERSION,
        "whether it serves MutatingAdmissionPolicy",
    )
    .await?
    .is_some_and(|list| list.resources.iter().any(|r| r.name == POLICY_RESOURCE));
    match (setting, served) {
        (HoldSetting::Auto, false) => return Ok(HoldMode::PausedAtRest),
        (HoldSetting::AdmissionPolicy, false) => {
            return Err(StartupError::AdmissionPolicyApiMissing);
        }
        (HoldSetting::Auto | HoldSetting::AdmissionPolicy, true) => {}
        (HoldSetting::Paused, _) => return Ok(HoldMode::PausedAtRest),
    }
    let mut missing = Vec::new();
    for (kind, plural) in [
        ("MutatingAdmissionPolicy", POLICY_RESOURCE),
        ("MutatingAdmissionPolicyBinding", BINDING_RESOURCE),
    ] {
        let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
        let api: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &ApiResource::from_gvk_with_plural(&gvk, plural),
        );
        match api.get_opt(HOLD_POLICY_NAME).await {
            Ok(Some(_)) => {}
            Ok(None) => missing.push(format!("{kind} {HOLD_POLICY_NAME}")),
            Err(source) => {
                return Err(StartupError::Discovery {
                    what: "for the hold policy",
                    source,
                });
            }
        }
    }
    if missing.is_empty() {
        Ok(HoldMode::AdmissionPolicy)
    } else {
        Err(StartupError::HoldPolicyMissing {
            missing: missing.join(" and "),
        })
    }
}
