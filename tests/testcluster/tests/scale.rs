//! A thousand objects through the server: concurrent creates, a watcher that sees every one,
//! and paged lists that return each exactly once.

// The whole file is test code: helpers outside `#[test]` panic on failure too.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;
use sluice_testcluster::TestCluster;
use sluice_testcluster::harness::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_objects_are_created_watched_and_listed_in_pages() {
    let tc = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .unwrap();
    let api: Api<ConfigMap> = Api::namespaced(tc.client(), "default");
    let (reader, writer) = reflector::store::<ConfigMap>();
    let task = tokio::spawn(
        reflector(
            writer,
            watcher(api.clone(), watcher::Config::default()).default_backoff(),
        )
        .applied_objects()
        .for_each(|_| async {}),
    );
    futures::stream::iter(0..1000)
        .map(|i| {
            let api = api.clone();
            async move {
                let cm: ConfigMap =
                    serde_json::from_value(json!({"metadata": {"name": format!("cm-{i:04}")}}))
                        .unwrap();
                api.create(&PostParams::default(), &cm).await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    wait_for(
        || async { reader.state().len() == 1000 },
        Duration::from_secs(30),
    )
    .await
    .unwrap();

    let mut names = BTreeSet::new();
    let mut lp = ListParams::default().limit(100);
    loop {
        let page = api.list(&lp).await.unwrap();
        assert!(page.items.len() <= 100);
        for cm in &page.items {
            assert!(
                names.insert(cm.metadata.name.clone().unwrap()),
                "listed twice"
            );
        }
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(names.len(), 1000);
    assert_eq!(tc.requests().unwrap().count("create", "configmaps"), 1000);
    task.abort();
    tc.stop().await;
}
