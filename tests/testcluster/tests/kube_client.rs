//! kube-rs 5 against the test cluster: a watcher-fed reflector stays in sync through writes, cut
//! watch streams and a 410 after compaction; server-side apply of status through `patch_status`;
//! a stale `replace` is refused with 409.

// The whole file is test code: helpers outside `#[test]` panic on failure too.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;
use sluice_testcluster::TestCluster;
use sluice_testcluster::harness::wait_for;

fn cm(name: &str, v: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": v}})).unwrap()
}

async fn names_are(reader: &reflector::Store<ConfigMap>, want: &[(&str, &str)]) -> bool {
    let got: BTreeSet<(String, String)> = reader
        .state()
        .iter()
        .map(|c| {
            (
                c.metadata.name.clone().unwrap_or_default(),
                c.data
                    .as_ref()
                    .and_then(|d| d.get("v").cloned())
                    .unwrap_or_default(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    got == want
}

#[tokio::test]
async fn a_reflector_stays_in_sync_through_writes_cut_watches_and_a_410_after_compaction() {
    let tc = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(tc.client(), "default");
    api.create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();

    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = reflector(
        writer,
        watcher(api.clone(), watcher::Config::default()).default_backoff(),
    )
    .applied_objects()
    .for_each(|_| async {});
    let task = tokio::spawn(stream);
    let t = Duration::from_secs(10);

    wait_for(|| names_are(&reader, &[("a", "1")]), t)
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("b", "1"))
        .await
        .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    wait_for(|| names_are(&reader, &[("a", "2"), ("b", "1")]), t)
        .await
        .unwrap();
    api.delete("b", &DeleteParams::default()).await.unwrap();
    wait_for(|| names_are(&reader, &[("a", "2")]), t)
        .await
        .unwrap();

    // A cut stream: the watcher re-watches from its last resourceVersion and sees later writes.
    tc.faults().unwrap().cut_watches();
    api.create(&PostParams::default(), &cm("c", "1"))
        .await
        .unwrap();
    wait_for(|| names_are(&reader, &[("a", "2"), ("c", "1")]), t)
        .await
        .unwrap();

    // Compaction then a cut: the re-watch gets 410 Expired and the watcher lists again.
    let lists_before = tc.requests().unwrap().count("list", "configmaps");
    tc.compact().unwrap();
    tc.faults().unwrap().cut_watches();
    wait_for(
        || async { tc.requests().unwrap().count("list", "configmaps") > lists_before },
        t,
    )
    .await
    .unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    api.create(&PostParams::default(), &cm("d", "1"))
        .await
        .unwrap();
    wait_for(|| names_are(&reader, &[("c", "1"), ("d", "1")]), t)
        .await
        .unwrap();

    task.abort();
    tc.stop().await;
}

fn deployment() -> Deployment {
    serde_json::from_value(
        json!({"metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]}}}}),
    )
    .unwrap()
}

#[tokio::test]
async fn status_server_side_apply_through_patch_status_sets_status_and_leaves_spec() {
    let tc = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .unwrap();
    let api: Api<Deployment> = Api::namespaced(tc.client(), "default");
    api.create(&PostParams::default(), &deployment())
        .await
        .unwrap();
    let status = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "status": {"observedGeneration": 1, "replicas": 2,
            "conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"}]},
        "spec": {"replicas": 9}});
    let d = api
        .patch_status(
            "web",
            &PatchParams::apply("rollout-controller").force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    let st = d.status.clone().unwrap();
    assert_eq!(st.replicas, Some(2));
    assert_eq!(st.conditions.unwrap()[0].type_, "Available");
    assert_eq!(
        d.spec.unwrap().replicas,
        Some(2),
        "a status write must not touch spec"
    );
    assert_eq!(d.metadata.generation, Some(1));
    let mf = d.metadata.managed_fields.unwrap();
    let mine = mf
        .iter()
        .find(|e| e.manager.as_deref() == Some("rollout-controller"))
        .unwrap();
    assert_eq!(mine.operation.as_deref(), Some("Apply"));
    assert_eq!(mine.subresource.as_deref(), Some("status"));
    tc.stop().await;
}

#[tokio::test]
async fn a_replace_with_a_stale_resource_version_is_refused_with_409() {
    let tc = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .unwrap();
    let api: Api<Deployment> = Api::namespaced(tc.client(), "default");
    let created = api
        .create(&PostParams::default(), &deployment())
        .await
        .unwrap();
    let mut first = created.clone();
    first.spec.as_mut().unwrap().replicas = Some(3);
    let replaced = api
        .replace("web", &PostParams::default(), &first)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));
    let mut stale = created;
    stale.spec.as_mut().unwrap().replicas = Some(4);
    match api.replace("web", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 409);
            assert_eq!(s.reason, "Conflict");
        }
        other => panic!("expected a 409 Conflict, got {other:?}"),
    }
    tc.stop().await;
}

#[tokio::test]
async fn kube_runtimes_finalizer_helper_adds_cleans_up_and_releases() {
    use kube::runtime::controller::Action;
    use kube::runtime::finalizer::{Event, finalizer};
    use std::sync::Arc;
    let tc = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(tc.client(), "default");
    api.create(&PostParams::default(), &cm("f", "1"))
        .await
        .unwrap();
    let run = |event_seen: Arc<std::sync::Mutex<Vec<&'static str>>>| {
        let api = api.clone();
        async move {
            let obj = Arc::new(api.get("f").await.unwrap());
            finalizer(&api, "sluice.dev/test", obj, |ev| async move {
                event_seen.lock().unwrap().push(match ev {
                    Event::Apply(_) => "apply",
                    Event::Cleanup(_) => "cleanup",
                });
                Ok::<_, std::convert::Infallible>(Action::await_change())
            })
            .await
            .unwrap();
        }
    };
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    run(seen.clone()).await; // adds the finalizer (JSON patch with a test of a missing path)
    let held = api.get("f").await.unwrap();
    assert_eq!(
        held.metadata.finalizers,
        Some(vec!["sluice.dev/test".to_string()])
    );
    run(seen.clone()).await; // reconciles
    api.delete("f", &DeleteParams::default()).await.unwrap();
    assert!(
        api.get("f")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    run(seen.clone()).await; // cleans up and removes the finalizer
    assert_eq!(*seen.lock().unwrap(), vec!["apply", "cleanup"]);
    match api.get("f").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("expected the object to be gone, got {other:?}"),
    }
    tc.stop().await;
}

#[tokio::test]
async fn the_scale_subresource_reads_and_writes_replicas() {
    let tc = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .unwrap();
    let api: Api<Deployment> = Api::namespaced(tc.client(), "default");
    api.create(&PostParams::default(), &deployment())
        .await
        .unwrap();
    let s = api.get_scale("web").await.unwrap();
    assert_eq!(s.spec.unwrap().replicas, Some(2));
    assert_eq!(s.status.unwrap().selector.as_deref(), Some("app=web"));
    let s = api
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(s.spec.unwrap().replicas, Some(5));
    let d = api.get("web").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(5));
    assert_eq!(d.metadata.generation, Some(2));
    tc.stop().await;
}
