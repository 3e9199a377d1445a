//! Names sluice writes or reads in a cluster that more than one part of it (or a person) needs: API
//! group and version, field managers, finalizer, labels, annotations, condition types and the NGINX
//! canary annotations. The core, the controller and the plugin read them from here; the shipped
//! manifests are YAML and spell them out (`tests/deploy.rs` checks the admission policy's label
//! against [`CANARY_LABEL`]), as do most tests.
//!
//! Not every name is here: the CRD derives spell the group out; event and condition reasons are
//! spelled where they are decided (mostly in the core); names one module owns stay in it (the
//! canary pods' role label and the template-applied annotation in `workload::deployment`, the
//! stable-selector annotation in `workload::service`, the hold policy's name in
//! `controller::startup`).

/// API group of every sluice custom resource.
pub const GROUP: &str = "sluice.dev";
/// The one served version.
pub const VERSION: &str = "v1alpha1";

/// Field manager of the controller for every server-side apply it makes.
pub const FIELD_MANAGER: &str = "sluice";
/// Field manager of `kubectl sluice` for the commands it writes to a Canary's status.
pub const PLUGIN_FIELD_MANAGER: &str = "kubectl-sluice";

/// Finalizer the controller puts on a Canary so deletion returns traffic to stable first.
pub const FINALIZER: &str = "sluice.dev/finalizer";

/// Label on a Deployment under sluice's control; its value is the Canary's name. The shipped
/// `MutatingAdmissionPolicy` selects on it.
pub const CANARY_LABEL: &str = "sluice.dev/canary";
/// Label on objects sluice created; its value is [`MANAGED_BY_VALUE`] (the owning Canary is in the
/// object's owner references).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] on objects sluice created.
pub const MANAGED_BY_VALUE: &str = "sluice";
/// Label on a Canary that sluice wrote for a Deployment's `sluice.dev/policy` annotation (value
/// `"true"`); such a Canary is owned by the Deployment and deleted when the annotation goes.
pub const FROM_ANNOTATIONS_LABEL: &str = "sluice.dev/from-annotations";
/// Label on canary pods carrying the revision (pod-template hash) they run.
pub const REVISION_LABEL: &str = "sluice.dev/revision";

/// Annotation that opts a Deployment in, naming a `CanaryPolicy`.
pub const POLICY_ANNOTATION: &str = "sluice.dev/policy";
/// Scalar overrides by annotation on an opted-in Deployment.
pub const STEP_WEIGHT_ANNOTATION: &str = "sluice.dev/step-weight";
pub const MAX_WEIGHT_ANNOTATION: &str = "sluice.dev/max-weight";
pub const INTERVAL_ANNOTATION: &str = "sluice.dev/interval";
pub const THRESHOLD_ANNOTATION: &str = "sluice.dev/threshold";
pub const ROUTER_ANNOTATION: &str = "sluice.dev/router";
pub const SERVICE_ANNOTATION: &str = "sluice.dev/service";
/// Every annotation sluice reads on a Deployment, for `lint` to flag misspellings.
pub const DEPLOYMENT_ANNOTATIONS: &[&str] = &[
    POLICY_ANNOTATION,
    STEP_WEIGHT_ANNOTATION,
    MAX_WEIGHT_ANNOTATION,
    INTERVAL_ANNOTATION,
    THRESHOLD_ANNOTATION,
    ROUTER_ANNOTATION,
    SERVICE_ANNOTATION,
];

/// Suffix of the controller-owned canary Deployment and Service names.
pub const CANARY_SUFFIX: &str = "-canary";

/// Condition types on a Canary.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const PROGRESSING: &str = "Progressing";
    pub const PROMOTED: &str = "Promoted";
    pub const FAILED: &str = "Failed";
    pub const INVALID_SPEC: &str = "InvalidSpec";
}

/// NGINX Ingress canary annotations.
pub mod nginx {
    pub const CANARY: &str = "nginx.ingress.kubernetes.io/canary";
    pub const CANARY_WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";
    pub const CANARY_BY_HEADER: &str = "nginx.ingress.kubernetes.io/canary-by-header";
    pub const CANARY_BY_HEADER_VALUE: &str = "nginx.ingress.kubernetes.io/canary-by-header-value";
    pub const CANARY_BY_HEADER_PATTERN: &str =
        "nginx.ingress.kubernetes.io/canary-by-header-pattern";
}

/// The canary Deployment's (and Service's) name for a target (or Service) name.
pub fn canary_name(name: &str) -> String {
    format!("{name}{CANARY_SUFFIX}")
}
