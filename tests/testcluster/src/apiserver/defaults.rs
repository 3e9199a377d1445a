//! Defaulting of built-in types as kube-apiserver does it (the values the recordings show), and
//! the Go zero-value skeletons the field manager compares a new object against on create. Pure.

use serde_json::{Value, json};

fn set_default(obj: &mut Value, key: &str, v: Value) {
    if let Some(m) = obj.as_object_mut()
        && !m.contains_key(key)
    {
        m.insert(key.to_string(), v);
    }
}

fn default_container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or_default().to_string();
    let last = image.rsplit('/').next().unwrap_or_default();
    let pull = if !last.contains(':') || last.ends_with(":latest") {
        "Always"
    } else {
        "IfNotPresent"
    };
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    set_default(c, "resources", json!({}));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "imagePullPolicy", json!(pull));
}

/// Pod template spec defaults (Deployments, ReplicaSets, Pods).
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            cs.iter_mut().for_each(default_container);
        }
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
}

/// Applies the built-in defaults for `group/plural`; `next_cluster_ip` hands out Service IPs.
pub fn apply_builtin_defaults(
    group: &str,
    plural: &str,
    obj: &mut Value,
    next_cluster_ip: &mut dyn FnMut() -> String,
) {
    match (group, plural) {
        ("apps", "deployments") | ("apps", "replicasets") => {
            let spec = &mut obj["spec"];
            if !spec.is_object() {
                *spec = json!({});
            }
            set_default(spec, "replicas", json!(1));
            if plural == "deployments" {
                set_default(spec, "strategy", json!({}));
                let st = &mut spec["strategy"];
                set_default(st, "type", json!("RollingUpdate"));
                if st["type"] == "RollingUpdate" {
                    set_default(st, "rollingUpdate", json!({}));
                    set_default(&mut st["rollingUpdate"], "maxUnavailable", json!("25%"));
                    set_default(&mut st["rollingUpdate"], "maxSurge", json!("25%"));
                }
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
            }
            if let Some(tspec) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                default_pod_spec(tspec);
            }
            set_default(
                obj,
                "status",
                if plural == "replicasets" {
                    json!({"replicas": 0})
                } else {
                    json!({})
                },
            );
        }
        ("", "pods") => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
            }
            set_default(
                obj,
                "status",
                json!({"phase": "Pending", "qosClass": "BestEffort"}),
            );
        }
        ("", "services") => {
            set_default(obj, "spec", json!({}));
            let spec = &mut obj["spec"];
            let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
            set_default(spec, "type", json!(ty));
            if ty != "ExternalName" {
                if spec.get("clusterIP").is_none() {
                    let ip = next_cluster_ip();
                    spec["clusterIP"] = json!(ip);
                    spec["clusterIPs"] = json!([ip]);
                }
                set_default(spec, "ipFamilies", json!(["IPv4"]));
                set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
            }
            set_default(spec, "sessionAffinity", json!("None"));
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    set_default(p, "protocol", json!("TCP"));
                    let port = p["port"].clone();
                    set_default(p, "targetPort", port);
                }
            }
            set_default(obj, "status", json!({"loadBalancer": {}}));
        }
        ("", "namespaces") => {
            set_default(obj, "spec", json!({"finalizers": ["kubernetes"]}));
            set_default(obj, "status", json!({"phase": "Active"}));
            let name = obj["metadata"]["name"].clone();
            let labels = &mut obj["metadata"]["labels"];
            if !labels.is_object() {
                *labels = json!({});
            }
            set_default(labels, "kubernetes.io/metadata.name", name);
        }
        ("networking.k8s.io", "ingresses") => {
            set_default(obj, "status", json!({"loadBalancer": {}}));
        }
        ("events.k8s.io", "events") => {
            set_default(obj, "deprecatedSource", json!({}));
            set_default(obj, "deprecatedFirstTimestamp", Value::Null);
            set_default(obj, "deprecatedLastTimestamp", Value::Null);
        }
        ("", "secrets") => set_default(obj, "type", json!("Opaque")),
        _ => {}
    }
}

/// The object the field manager treats as "before" on create: the Go zero value of the type,
/// serialised, so fields that always exist (non-pointer structs, non-omitempty lists) are not new.
pub fn zero_value(group: &str, plural: &str) -> Value {
    let meta = json!({"creationTimestamp": null});
    let pod_template =
        json!({"metadata": {"creationTimestamp": null}, "spec": {"containers": null}});
    match (group, plural) {
        ("apps", "deployments") => {
            json!({"metadata": meta, "spec": {"selector": null, "template": pod_template, "strategy": {}}, "status": {}})
        }
        ("apps", "replicasets") => {
            json!({"metadata": meta, "spec": {"selector": null, "template": pod_template}, "status": {"replicas": 0}})
        }
        ("", "pods") => json!({"metadata": meta, "spec": {"containers": null}, "status": {}}),
        ("", "services") | ("networking.k8s.io", "ingresses") => {
            json!({"metadata": meta, "spec": {}, "status": {"loadBalancer": {}}})
        }
        ("", "namespaces") => json!({"metadata": meta, "spec": {}, "status": {}}),
        ("coordination.k8s.io", "leases") => json!({"metadata": meta, "spec": {}}),
        ("events.k8s.io", "events") => {
            json!({"metadata": meta, "eventTime": null, "regarding": {}, "deprecatedSource": {}, "deprecatedFirstTimestamp": null, "deprecatedLastTimestamp": null})
        }
        ("", "events") => {
            json!({"metadata": meta, "involvedObject": {}, "source": {}, "firstTimestamp": null, "lastTimestamp": null, "eventTime": null, "reportingComponent": "", "reportingInstance": ""})
        }
        ("rbac.authorization.k8s.io", "roles") | ("rbac.authorization.k8s.io", "clusterroles") => {
            json!({"metadata": meta, "rules": null})
        }
        ("rbac.authorization.k8s.io", _) => {
            json!({"metadata": meta, "roleRef": {"apiGroup": "", "kind": "", "name": ""}})
        }
        ("admissionregistration.k8s.io", _) | ("apiextensions.k8s.io", _) => {
            json!({"metadata": meta, "spec": {}})
        }
        ("", _) => json!({"metadata": meta}),
        // Custom resources are unstructured: nothing exists before create.
        _ => json!({}),
    }
}
