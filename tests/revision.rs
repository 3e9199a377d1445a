//! Revision identity: the hash of a pod template survives re-serialisation (YAML or JSON, key
//! order, null or absent, empty or absent, what the API server adds) and changes with any real
//! change. A golden file pins the hashes of a small corpus of realistic templates, so a change of
//! the canonical form (which would start a canary for every workload after an upgrade) is seen.
//! Set `SLUICE_UPDATE_GOLDEN=1` to rewrite the golden file after a deliberate change.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sluice::core::revision::template_hash;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/revision");

fn load(file: &str) -> Value {
    let text = std::fs::read_to_string(format!("{DIR}/{file}")).expect("fixture");
    if file.ends_with(".json") {
        serde_json::from_str(&text).expect("json")
    } else {
        serde_saphyr::from_str(&text).expect("yaml")
    }
}

#[test]
fn the_corpus_hashes_match_the_golden_file() {
    let mut files: Vec<String> = std::fs::read_dir(DIR)
        .expect("dir")
        .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_owned))
        .filter(|n| n != "golden.yaml")
        .collect();
    files.sort();
    let actual: BTreeMap<String, String> = files
        .iter()
        .map(|f| (f.clone(), template_hash(&load(f))))
        .collect();
    let golden_path = format!("{DIR}/golden.yaml");
    if std::env::var_os("SLUICE_UPDATE_GOLDEN").is_some() {
        std::fs::write(
            &golden_path,
            serde_saphyr::to_string(&actual).expect("yaml"),
        )
        .expect("write golden");
    }
    let golden: BTreeMap<String, String> =
        serde_saphyr::from_str(&std::fs::read_to_string(&golden_path).expect("golden"))
            .expect("golden yaml");
    assert_eq!(actual, golden);
}

#[test]
fn a_template_read_back_from_the_api_server_has_the_revision_of_the_one_in_git() {
    assert_eq!(
        template_hash(&load("web.yaml")),
        template_hash(&load("web-from-api.json"))
    );
}

#[test]
fn a_new_image_is_a_new_revision() {
    assert_ne!(
        template_hash(&load("web.yaml")),
        template_hash(&load("web-new-image.yaml"))
    );
}

#[test]
fn a_revision_is_ten_lowercase_hex_characters() {
    let hash = template_hash(&load("checkout.yaml"));
    assert_eq!(hash.len(), 10);
    assert!(
        hash.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
}

#[test]
fn key_order_nulls_and_empty_collections_do_not_change_the_revision() {
    let plain = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}]}});
    let noisy = json!({
        "metadata": {"labels": {}, "annotations": null},
        "spec": {"volumes": [], "containers": [{"image": "x:1", "env": [], "name": "a", "resources": {"limits": {}}}]},
    });
    assert_eq!(template_hash(&plain), template_hash(&noisy));
}

#[test]
fn what_kubernetes_adds_to_a_template_is_ignored() {
    let plain =
        json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "a"}]}});
    let stamped = json!({
        "metadata": {"labels": {"app": "a", "pod-template-hash": "abc"}, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "a"}]},
    });
    assert_eq!(template_hash(&plain), template_hash(&stamped));
}

#[test]
fn list_order_and_label_values_are_real_changes() {
    let ab = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
    let ba = json!({"spec": {"containers": [{"name": "b"}, {"name": "a"}]}});
    assert_ne!(template_hash(&ab), template_hash(&ba));
    let v1 = json!({"metadata": {"labels": {"version": "1"}}});
    let v2 = json!({"metadata": {"labels": {"version": "2"}}});
    assert_ne!(template_hash(&v1), template_hash(&v2));
}
