//! `sluice controller`'s start-up checks against the test cluster: the CRDs must be served, the
//! hold mode follows what the API server serves, and the admission-policy mode refuses to start
//! without the shipped policy, naming what is missing.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use sluice::api::HoldMode;
use sluice::controller::startup::{HoldSetting, StartupError, check_crds, hold_mode};
use sluice_testcluster::TestCluster;

const HOLD_POLICY: &str = include_str!("../deploy/admission-policy.yaml");

#[tokio::test]
async fn crds_installed_from_the_crds_directory_pass_the_check() {
    let cluster = TestCluster::start().await.unwrap();
    check_crds(&cluster.client()).await.unwrap();
}

#[tokio::test]
async fn missing_crds_are_named_with_the_command_that_installs_them() {
    let cluster = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .unwrap();
    if !cluster.is_local() {
        eprintln!("skipped: a real cluster cannot be started without CRDs");
        return;
    }
    let error = check_crds(&cluster.client()).await.unwrap_err();
    assert!(
        matches!(error, StartupError::CrdsMissing { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("canaries.sluice.dev"), "{message}");
    assert!(
        message.contains("sluice crds | kubectl apply --server-side -f -"),
        "{message}"
    );
}

#[tokio::test]
async fn auto_picks_the_admission_policy_when_served_and_installed() {
    let cluster = TestCluster::start().await.unwrap();
    if !cluster.is_local() {
        eprintln!("skipped: depends on what the real cluster serves");
        return;
    }
    let error = hold_mode(&cluster.client(), HoldSetting::Auto)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StartupError::HoldPolicyMissing { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("deploy/admission-policy.yaml"),
        "{error}"
    );

    cluster.apply_yaml(HOLD_POLICY).await.unwrap();
    let mode = hold_mode(&cluster.client(), HoldSetting::Auto)
        .await
        .unwrap();
    assert_eq!(mode, HoldMode::AdmissionPolicy);
    let mode = hold_mode(&cluster.client(), HoldSetting::AdmissionPolicy)
        .await
        .unwrap();
    assert_eq!(mode, HoldMode::AdmissionPolicy);
}

#[tokio::test]
async fn auto_falls_back_to_paused_at_rest_on_clusters_without_the_policy_api() {
    let cluster = TestCluster::builder()
        .without_admission_policies()
        .start()
        .await
        .unwrap();
    if !cluster.is_local() {
        eprintln!("skipped: depends on what the real cluster serves");
        return;
    }
    let client = cluster.client();
    assert_eq!(
        hold_mode(&client, HoldSetting::Auto).await.unwrap(),
        HoldMode::PausedAtRest
    );
    assert_eq!(
        hold_mode(&client, HoldSetting::Paused).await.unwrap(),
        HoldMode::PausedAtRest
    );
    let error = hold_mode(&client, HoldSetting::AdmissionPolicy)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StartupError::AdmissionPolicyApiMissing),
        "{error:?}"
    );
}
