//! The table of resources the server serves: the built-in types sluice touches, and every custom
//! resource whose CustomResourceDefinition is stored. Lookup by group/version/plural; no I/O.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

/// One served resource (one group/version/plural).
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Declares a `status` subresource: main writes ignore status, `/status` writes ignore the rest.
    pub has_status: bool,
    /// The server sets and bumps `metadata.generation` on spec changes.
    pub has_generation: bool,
    /// Served from a CRD: validated through `crate::schema`, deletes answer with a Status.
    pub custom: bool,
    /// The CRD version's `openAPIV3Schema`, if any.
    pub schema: Option<Value>,
    /// The CRD version's `additionalPrinterColumns`.
    pub printer_columns: Vec<Value>,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage key: versions of one group/plural share their objects.
    pub fn storage_key(&self) -> (String, String) {
        (self.group.clone(), self.plural.clone())
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    has_status: bool,
    has_generation: bool,
) -> ResourceInfo {
    ResourceInfo {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: if ["deployments", "replicasets", "services"].contains(&plural) {
            vec!["all".into()]
        } else {
            vec![]
        },
        has_status,
        has_generation,
        custom: false,
        schema: None,
        printer_columns: vec![],
    }
}

/// The built-in resources; `with_admission_policies` false emulates a cluster older than 1.36.
pub fn builtins(with_admission_policies: bool) -> Vec<ResourceInfo> {
    let mut v = vec![
        builtin(
            "",
            "v1",
            "namespaces",
            "Namespace",
            false,
            &["ns"],
            true,
            false,
        ),
        builtin(
            "",
            "v1",
            "configmaps",
            "ConfigMap",
            true,
            &["cm"],
            false,
            false,
        ),
        builtin("", "v1", "secrets", "Secret", true, &[], false, false),
        builtin("", "v1", "services", "Service", true, &["svc"], true, false),
        builtin(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            true,
            &["sa"],
            false,
            false,
        ),
        builtin("", "v1", "events", "Event", true, &["ev"], false, false),
        builtin("", "v1", "pods", "Pod", true, &["po"], true, false),
        builtin(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            true,
            &["ev"],
            false,
            false,
        ),
        builtin(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            true,
            &["deploy"],
            true,
            true,
        ),
        builtin(
            "apps",
            "v1",
            "replicasets",
            "ReplicaSet",
            true,
            &["rs"],
            true,
            true,
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "ingresses",
            "Ingress",
            true,
            &["ing"],
            true,
            true,
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            &[],
            false,
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "Role",
            true,
            &[],
            false,
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
            &[],
            false,
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
            &[],
            false,
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
            false,
            false,
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
            true,
        ),
    ];
    if with_admission_policies {
        v.push(builtin(
            "admissionregistration.k8s.io",
            "v1",
            "mutatingadmissionpolicies",
            "MutatingAdmissionPolicy",
            false,
            &[],
            false,
            true,
        ));
        v.push(builtin(
            "admissionregistration.k8s.io",
            "v1",
            "mutatingadmissionpolicybindings",
            "MutatingAdmissionPolicyBinding",
            false,
            &[],
            false,
            true,
        ));
    }
    v
}

/// The resources one CRD object declares (one per served version).
pub fn from_crd(crd: &Value) -> Vec<ResourceInfo> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let names = &spec["names"];
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for ver in spec["versions"].as_array().into_iter().flatten() {
        if ver["served"] == Value::Bool(false) {
            continue;
        }
        out.push(ResourceInfo {
            group: group.into(),
            version: ver["name"].as_str().unwrap_or_default().into(),
            plural: names["plural"].as_str().unwrap_or_default().into(),
            singular: names["singular"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| names["kind"].as_str().unwrap_or_default().to_lowercase()),
            kind: names["kind"].as_str().unwrap_or_default().into(),
            namespaced: spec["scope"] != "Cluster",
            short_names: strs(&names["shortNames"]),
            categories: strs(&names["categories"]),
            has_status: ver["subresources"]["status"].is_object(),
            has_generation: true,
            custom: true,
            schema: ver["schema"].get("openAPIV3Schema").cloned(),
            printer_columns: ver["additionalPrinterColumns"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        });
    }
    out
}

/// All served resources, indexed for the request path.
#[derive(Debug, Default, Clone)]
pub struct ResourceTable {
    by_gvr: HashMap<(String, String, String), Arc<ResourceInfo>>,
    /// CRD name -> the (group, version, plural) it serves.
    crds: HashMap<String, Vec<(String, String, String)>>,
}

impl ResourceTable {
    pub fn new(with_admission_policies: bool) -> Self {
        let mut t = Self::default();
        for r in builtins(with_admission_policies) {
            t.insert(r);
        }
        t
    }

    fn insert(&mut self, r: ResourceInfo) {
        self.by_gvr.insert(
            (r.group.clone(), r.version.clone(), r.plural.clone()),
            Arc::new(r),
        );
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.by_gvr
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    /// Any version of a group/plural (for storage-level operations such as garbage collection).
    pub fn any_version(&self, group: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.by_gvr
            .values()
            .find(|r| r.group == group && r.plural == plural)
            .cloned()
    }

    /// Resolves `apiVersion` + `kind` (used for owner references).
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceInfo>> {
        let (group, version) = split_api_version(api_version);
        self.by_gvr
            .values()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
            .cloned()
    }

    pub fn install_crd(&mut self, crd: &Value) {
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.remove_crd(&name);
        let mut keys = Vec::new();
        for r in from_crd(crd) {
            keys.push((r.group.clone(), r.version.clone(), r.plural.clone()));
            self.insert(r);
        }
        self.crds.insert(name, keys);
    }

    /// Returns the storage keys (group, plural) the CRD served.
    pub fn remove_crd(&mut self, name: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for k in self.crds.remove(name).unwrap_or_default() {
            self.by_gvr.remove(&k);
            out.push((k.0, k.2));
        }
        out
    }

    pub fn all(&self) -> Vec<Arc<ResourceInfo>> {
        let mut v: Vec<_> = self.by_gvr.values().cloned().collect();
        v.sort_by(|a, b| (&a.group, &a.version, &a.plural).cmp(&(&b.group, &b.version, &b.plural)));
        v
    }
}

pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}
