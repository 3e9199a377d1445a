//! Custom resources: a CRD created through the API is served at once (with its status
//! subresource), the upstream CRDs are installed at start, and a cluster started without
//! MutatingAdmissionPolicy serves no such resource.

// The whole file is test code: helpers outside `#[test]` panic on failure too.
#![allow(clippy::unwrap_used)]

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};
use sluice_testcluster::TestCluster;

fn widget_crd() -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                    "status": {"type": "object", "properties": {"phase": {"type": "string"}}}}}}}]}})
}

#[tokio::test]
async fn a_crd_created_through_the_api_is_served_with_its_status_subresource() {
    let tc = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .unwrap();
    let client = tc.client();
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let crd: DynamicObject = serde_json::from_value(widget_crd()).unwrap();
    let created = crds.create(&PostParams::default(), &crd).await.unwrap();
    let conditions = created.data["status"]["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True")
    );

    let (ar, caps) = kube::discovery::pinned_kind(
        &client,
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
    )
    .await
    .unwrap();
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let w: DynamicObject =
        serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {"size": 1}, "status": {"phase": "ignored"}}))
        .unwrap();
    let w = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert!(
        w.data.get("status").is_none(),
        "status is not set through the main resource"
    );
    assert_eq!(w.metadata.generation, Some(1));

    let status =
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "status": {"phase": "Ready"}});
    let w = widgets
        .patch_status(
            "w",
            &PatchParams::apply("widget-controller"),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    assert_eq!(w.data["status"]["phase"], "Ready");
    assert_eq!(
        w.metadata.generation,
        Some(1),
        "a status write does not bump generation"
    );

    let w = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}, "status": {"phase": "x"}})),
        )
        .await
        .unwrap();
    assert_eq!(w.metadata.generation, Some(2));
    assert_eq!(
        w.data["status"]["phase"], "Ready",
        "status in a main-resource write is ignored"
    );

    // Deleting the CRD stops serving it.
    crds.delete("widgets.example.com", &Default::default())
        .await
        .unwrap();
    assert!(widgets.get("w").await.is_err());
    tc.stop().await;
}

#[tokio::test]
async fn upstream_crds_are_installed_at_start() {
    let tc = TestCluster::start().await.unwrap();
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    let (ar, _) = kube::discovery::pinned_kind(&tc.client(), &gvk)
        .await
        .unwrap();
    assert_eq!(ar.plural, "httproutes");
    tc.stop().await;
}

#[tokio::test]
async fn an_older_cluster_serves_no_mutating_admission_policies() {
    let tc = TestCluster::builder()
        .without_default_crds()
        .without_admission_policies()
        .start()
        .await
        .unwrap();
    let body: Value = reqwest::get(format!("{}/apis/admissionregistration.k8s.io/v1", tc.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["reason"], "NotFound");
    let tc2 = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .unwrap();
    let body: Value = reqwest::get(format!(
        "{}/apis/admissionregistration.k8s.io/v1",
        tc2.url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let names: Vec<&str> = body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(names.contains(&"mutatingadmissionpolicies"), "{names:?}");
    tc.stop().await;
    tc2.stop().await;
}

#[tokio::test]
async fn an_event_written_through_events_v1_is_read_through_core_v1() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::events::v1::Event;
    let tc = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .unwrap();
    let api: Api<Event> = Api::namespaced(tc.client(), "default");
    let ev: Event = serde_json::from_value(json!({"metadata": {"generateName": "web-"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "sluice.dev/controller",
        "reportingInstance": "sluice-0", "action": "Promote", "reason": "Promoted", "type": "Normal",
        "note": "revision abc promoted",
        "regarding": {"apiVersion": "sluice.dev/v1alpha1", "kind": "Canary", "namespace": "default", "name": "web"}}))
    .unwrap();
    api.create(&PostParams::default(), &ev).await.unwrap();
    let core: Api<CoreEvent> = Api::namespaced(tc.client(), "default");
    let list = core.list(&Default::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let e = &list.items[0];
    assert_eq!(e.message.as_deref(), Some("revision abc promoted"));
    assert_eq!(e.involved_object.name.as_deref(), Some("web"));
    assert_eq!(
        e.reporting_component.as_deref(),
        Some("sluice.dev/controller")
    );
    tc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_through_a_kubeconfig_works_like_a_real_cluster_and_reports_test_hooks_unsupported()
 {
    // The local server stands in for "a real cluster" reached through SLUICE_E2E_KUBECONFIG.
    let local = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .unwrap();
    let remote = TestCluster::connect(local.kubeconfig_path()).await.unwrap();
    assert!(!remote.is_local());
    assert!(matches!(
        remote.faults(),
        Err(sluice_testcluster::HarnessError::Unsupported(_))
    ));
    assert!(matches!(
        remote.compact(),
        Err(sluice_testcluster::HarnessError::Unsupported(_))
    ));
    assert!(matches!(
        remote.requests(),
        Err(sluice_testcluster::HarnessError::Unsupported(_))
    ));
    // The CRDs were applied through the API.
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    kube::discovery::pinned_kind(&remote.client(), &gvk)
        .await
        .unwrap();
    let applied = remote
        .apply_yaml("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: default}\ndata: {a: '1'}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n")
        .await
        .unwrap();
    assert_eq!(applied.len(), 2);
    assert_eq!(applied[0]["data"]["a"], "1");
    assert!(
        local
            .requests()
            .unwrap()
            .count("patch", "customresourcedefinitions")
            > 0
    );
    remote.stop().await;
    local.stop().await;
}
