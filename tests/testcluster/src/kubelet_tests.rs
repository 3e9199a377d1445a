//! The Deployment controller stand-in's decisions, run against an in-memory "server" that applies
//! its changes the way the API would, with a hand-moved clock.

use super::*;
use serde_json::{Value, json};

fn t0() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().expect("timestamp")
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A Deployment as the server stores it (defaults from recording 12's create response).
fn deployment(image: &str, replicas: i32) -> Deployment {
    let body = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "rec-dep", "uid": "d-uid", "generation": 1, "labels": {"app": "web"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": image}]}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
            "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600}});
    serde_json::from_value(body).expect("deployment")
}

/// The cluster as the stand-in sees it: one Deployment and the ReplicaSets it made.
struct World {
    deployment: Deployment,
    replicasets: Vec<ReplicaSet>,
    readiness: Readiness,
    config: Config,
}

impl World {
    fn new(deployment: Deployment, config: Config) -> Self {
        World {
            deployment,
            replicasets: Vec::new(),
            readiness: Readiness::new(),
            config,
        }
    }

    /// Syncs until the stand-in has nothing more to write, as it does reacting to its own writes.
    fn settle(&mut self, now: Timestamp) {
        for _ in 0..20 {
            let Decision {
                status,
                changes,
                readiness,
            } = next_status(
                &self.deployment,
                &self.replicasets,
                &self.readiness,
                now,
                &self.config,
            );
            self.readiness = readiness;
            let unchanged = changes.is_empty() && self.deployment.status.as_ref() == Some(&status);
            self.deployment.status = Some(status);
            for change in changes {
                self.apply(change);
            }
            if unchanged {
                return;
            }
        }
        panic!("the stand-in did not settle");
    }

    fn apply(&mut self, change: ReplicaSetChange) {
        match change {
            ReplicaSetChange::Create(rs) => {
                let mut rs = *rs;
                rs.metadata.generation = Some(1);
                self.replicasets.push(rs);
            }
            ReplicaSetChange::Scale {
                name,
                replicas,
                annotations,
            } => {
                let rs = self.rs_mut(&name);
                let spec = rs.spec.as_mut().expect("spec");
                if spec.replicas != Some(replicas) {
                    rs.metadata.generation = rs.metadata.generation.map(|g| g + 1);
                }
                spec.replicas = Some(replicas);
                rs.metadata.annotations = Some(annotations);
            }
            ReplicaSetChange::Status { name, status } => self.rs_mut(&name).status = Some(status),
        }
    }

    fn rs_mut(&mut self, name: &str) -> &mut ReplicaSet {
        self.replicasets
            .iter_mut()
            .find(|rs| rs.metadata.name.as_deref() == Some(name))
            .expect("known ReplicaSet")
    }

    /// A spec write: the server bumps the generation.
    fn edit(&mut self, f: impl FnOnce(&mut k8s_openapi::api::apps::v1::DeploymentSpec)) {
        f(self.deployment.spec.as_mut().expect("spec"));
        self.deployment.metadata.generation = self.deployment.metadata.generation.map(|g| g + 1);
    }

    fn status(&self) -> Value {
        serde_json::to_value(self.deployment.status.as_ref().expect("status")).expect("json")
    }

    fn reasons(&self) -> Vec<(String, String)> {
        self.status()["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .map(|c| {
                (
                    c["type"].as_str().unwrap_or_default().to_string(),
                    c["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    fn replicasets_json(&self) -> Vec<Value> {
        self.replicasets
            .iter()
            .map(|rs| serde_json::to_value(rs).expect("json"))
            .collect()
    }
}

fn never_ready_config() -> Config {
    Config {
        readiness_delay: secs(5),
        never_ready: Some(Arc::new(|_| true)),
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn recording_12_with_no_ready_pods_is_reproduced_step_by_step() {
    let mut world = World::new(
        deployment("registry.example/web:1.0", 2),
        never_ready_config(),
    );
    world.settle(t0());
    // step 2
    let status = world.status();
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["replicas"], 2);
    assert_eq!(status["updatedReplicas"], 2);
    assert_eq!(status["unavailableReplicas"], 2);
    assert!(status.get("readyReplicas").is_none() && status.get("availableReplicas").is_none());
    assert_eq!(
        world.reasons(),
        pairs(&[
            ("Available", "MinimumReplicasUnavailable"),
            ("Progressing", "ReplicaSetUpdated")
        ])
    );
    // step 3
    let sets = world.replicasets_json();
    assert_eq!(sets.len(), 1);
    let first_name = sets[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let hash = sets[0]["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .expect("hash")
        .to_string();
    assert_eq!(first_name, format!("web-{hash}"));
    assert_eq!(sets[0]["metadata"]["labels"]["app"], "web");
    assert_eq!(
        sets[0]["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"],
        "2"
    );
    assert_eq!(
        sets[0]["metadata"]["annotations"]["deployment.kubernetes.io/max-replicas"],
        "3"
    );
    assert_eq!(
        sets[0]["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    assert_eq!(
        sets[0]["metadata"]["annotations"],
        json!({"deployment.kubernetes.io/desired-replicas": "2",
               "deployment.kubernetes.io/max-replicas": "3",
               "deployment.kubernetes.io/revision": "1"}),
        "only the annotations the real controller writes"
    );
    assert_eq!(sets[0]["spec"]["replicas"], 2);
    assert_eq!(
        sets[0]["metadata"]["ownerReferences"][0]["kind"],
        "Deployment"
    );
    assert_eq!(
        status["conditions"][1]["message"],
        format!("ReplicaSet \"{first_name}\" is progressing.")
    );

    // steps 4-5: pause
    world.edit(|s| s.paused = Some(true));
    world.settle(t0());
    assert_eq!(world.status()["observedGeneration"], 2);
    assert_eq!(
        world.reasons(),
        pairs(&[
            ("Available", "MinimumReplicasUnavailable"),
            ("Progressing", "DeploymentPaused")
        ])
    );

    // steps 6-8: a new template while paused makes no ReplicaSet
    world.edit(|s| {
        s.template.spec.as_mut().expect("pod spec").containers[0].image =
            Some("registry.example/web:2.0".into());
    });
    world.settle(t0());
    let status = world.status();
    assert_eq!(status["observedGeneration"], 3);
    assert!(status.get("updatedReplicas").is_none());
    assert_eq!(world.replicasets.len(), 1);

    // steps 9-10: scaling still works on the old ReplicaSet
    world.edit(|s| s.replicas = Some(3));
    world.settle(t0());
    let sets = world.replicasets_json();
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0]["spec"]["replicas"], 3);
    assert_eq!(
        sets[0]["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"],
        "3"
    );
    assert_eq!(
        sets[0]["metadata"]["annotations"]["deployment.kubernetes.io/max-replicas"],
        "4"
    );

    // steps 11-13: unpaused, revision 2 appears with one surge pod
    world.edit(|s| s.paused = Some(false));
    world.settle(t0());
    let sets = world.replicasets_json();
    assert_eq!(sets.len(), 2);
    assert_eq!(
        sets[1]["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
    assert_eq!(sets[1]["spec"]["replicas"], 1);
    assert_eq!(sets[0]["spec"]["replicas"], 3);
    let status = world.status();
    assert_eq!(status["observedGeneration"], 5);
    assert_eq!(status["replicas"], 4);
    assert_eq!(status["updatedReplicas"], 1);
    assert_eq!(status["unavailableReplicas"], 4);
    assert_eq!(
        world.reasons(),
        pairs(&[
            ("Available", "MinimumReplicasUnavailable"),
            ("Progressing", "ReplicaSetUpdated")
        ])
    );
    assert_eq!(
        status["conditions"][1]["message"],
        format!(
            "ReplicaSet \"{}\" is progressing.",
            sets[1]["metadata"]["name"].as_str().expect("name")
        )
    );
}

#[test]
fn pods_become_ready_after_the_readiness_delay_and_the_rollout_completes() {
    let config = Config {
        readiness_delay: secs(5),
        never_ready: None,
    };
    let mut world = World::new(deployment("web:1.0", 4), config.clone());
    world.settle(t0());
    assert_eq!(world.status()["availableReplicas"], Value::Null);
    world.settle(t0() + secs(5));
    assert_eq!(world.status()["availableReplicas"], 4);
    assert_eq!(
        world.reasons(),
        pairs(&[
            ("Available", "MinimumReplicasAvailable"),
            ("Progressing", "NewReplicaSetAvailable")
        ])
    );
    let served_v1 = served(
        &world.deployment,
        &world.replicasets,
        &world.readiness,
        t0() + secs(5),
        &config,
    )
    .expect("served");
    assert_eq!(served_v1.images, vec!["web:1.0".to_string()]);
    assert!(served_v1.ready);

    world.edit(|s| {
        s.template.spec.as_mut().expect("pod spec").containers[0].image = Some("web:2.0".into())
    });
    let mut now = t0() + secs(10);
    world.settle(now);
    let mid = served(
        &world.deployment,
        &world.replicasets,
        &world.readiness,
        now,
        &config,
    )
    .expect("served");
    assert_eq!(
        mid.images,
        vec!["web:1.0".to_string()],
        "the new revision is not ready yet"
    );
    let mut steps = 0;
    while !served(
        &world.deployment,
        &world.replicasets,
        &world.readiness,
        now,
        &config,
    )
    .is_some_and(|s| s.ready && s.images == ["web:2.0"])
    {
        steps += 1;
        assert!(steps < 20, "the rollout never completed");
        now += secs(5);
        world.settle(now);
    }
    assert!(
        steps >= 2,
        "a 4-replica rolling update with 25% surge takes several readiness rounds"
    );
    assert_eq!(
        world.reasons(),
        pairs(&[
            ("Available", "MinimumReplicasAvailable"),
            ("Progressing", "NewReplicaSetAvailable")
        ])
    );
    let status = world.status();
    assert_eq!(
        (
            status["replicas"].clone(),
            status["updatedReplicas"].clone()
        ),
        (json!(4), json!(4))
    );
    assert_eq!(world.replicasets_json()[0]["spec"]["replicas"], 0);
}

#[test]
fn a_paused_deployment_keeps_serving_its_old_revision_until_resumed() {
    let config = Config {
        readiness_delay: secs(1),
        never_ready: None,
    };
    let mut world = World::new(deployment("web:1.0", 2), config.clone());
    world.settle(t0());
    world.settle(t0() + secs(1));
    world.edit(|s| {
        s.paused = Some(true);
        s.template.spec.as_mut().expect("pod spec").containers[0].image = Some("web:2.0".into());
    });
    world.settle(t0() + secs(100));
    let s = served(
        &world.deployment,
        &world.replicasets,
        &world.readiness,
        t0() + secs(100),
        &config,
    )
    .expect("served");
    assert_eq!(
        (s.images.clone(), s.revision, s.ready),
        (vec!["web:1.0".to_string()], 1, true)
    );
    assert_eq!(world.replicasets.len(), 1);

    world.edit(|s| s.paused = Some(false));
    let Decision { status, .. } = next_status(
        &world.deployment,
        &world.replicasets,
        &world.readiness,
        t0() + secs(101),
        &config,
    );
    let progressing = status
        .conditions
        .expect("conditions")
        .into_iter()
        .find(|c| c.type_ == "Progressing")
        .expect("progressing");
    // The resumed condition is replaced in the same sync: the new ReplicaSet's first surge pod is
    // progress, as in recording 12's step 13.
    assert_eq!(progressing.reason.as_deref(), Some("ReplicaSetUpdated"));
}

#[test]
fn a_crashlooping_revision_never_becomes_ready_and_exceeds_its_progress_deadline() {
    let config = Config {
        readiness_delay: secs(1),
        never_ready: None,
    };
    let mut world = World::new(deployment("web:1.0", 2), config.clone());
    world.edit(|s| s.progress_deadline_seconds = Some(30));
    world.settle(t0());
    world.settle(t0() + secs(1));
    world.edit(|s| {
        s.template.spec.as_mut().expect("pod spec").containers[0].image =
            Some("web:crashloop".into())
    });
    world.settle(t0() + secs(2));
    world.settle(t0() + secs(20));
    // No pod of the new revision gets ready and no old one may go: no progress after creation.
    assert_eq!(
        world.reasons()[1],
        (
            "Progressing".to_string(),
            "NewReplicaSetCreated".to_string()
        )
    );
    world.settle(t0() + secs(40));
    assert_eq!(
        world.reasons(),
        pairs(&[
            ("Available", "MinimumReplicasAvailable"),
            ("Progressing", "ProgressDeadlineExceeded")
        ])
    );
    let s = served(
        &world.deployment,
        &world.replicasets,
        &world.readiness,
        t0() + secs(40),
        &config,
    )
    .expect("served");
    assert_eq!(
        s.images,
        vec!["web:1.0".to_string()],
        "the old revision still serves"
    );
    assert!(!s.ready, "the broken revision still has pods");
}

#[test]
fn a_test_predicate_marks_chosen_revisions_never_ready() {
    let config = Config {
        readiness_delay: secs(1),
        never_ready: Some(Arc::new(|t: &PodTemplateSpec| {
            t.spec
                .as_ref()
                .is_some_and(|s| s.containers[0].image.as_deref() == Some("web:bad"))
        })),
    };
    let bad = deployment("web:bad", 1);
    assert!(is_never_ready(
        &bad.spec.clone().expect("spec").template,
        &config
    ));
    let good = deployment("web:good", 1);
    assert!(!is_never_ready(
        &good.spec.clone().expect("spec").template,
        &config
    ));
    let mut world = World::new(bad, config);
    world.settle(t0());
    world.settle(t0() + secs(60));
    assert_eq!(world.status()["unavailableReplicas"], 1);
}

#[test]
fn the_template_hash_is_stable_ignores_its_own_label_and_follows_the_image() {
    let a = deployment("web:1.0", 1).spec.expect("spec").template;
    let mut labelled = a.clone();
    labelled
        .metadata
        .as_mut()
        .expect("meta")
        .labels
        .as_mut()
        .expect("labels")
        .insert("pod-template-hash".into(), "x".into());
    let b = deployment("web:2.0", 1).spec.expect("spec").template;
    assert_eq!(template_hash(&a), template_hash(&a.clone()));
    assert_eq!(template_hash(&a), template_hash(&labelled));
    assert_ne!(template_hash(&a), template_hash(&b));
    assert!(
        template_hash(&a)
            .chars()
            .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
    );
}

#[test]
fn the_manual_clock_moves_only_when_told() {
    let clock = ManualClock::new(t0());
    assert_eq!(clock.now(), t0());
    clock.advance(secs(3));
    assert_eq!(clock.now(), t0() + secs(3));
}

#[test]
fn rolling_back_to_an_old_template_reuses_its_replicaset_under_the_next_revision() {
    let config = Config {
        readiness_delay: secs(1),
        never_ready: None,
    };
    let mut world = World::new(deployment("web:1.0", 2), config);
    let mut now = t0();
    world.settle(now);
    for image in ["web:2.0", "web:1.0"] {
        world.edit(|s| {
            s.template.spec.as_mut().expect("pod spec").containers[0].image = Some(image.into());
        });
        for _ in 0..10 {
            now += secs(1);
            world.settle(now);
        }
    }
    let sets = world.replicasets_json();
    assert_eq!(
        sets.len(),
        2,
        "no third ReplicaSet for a template seen before"
    );
    let v1 = sets
        .iter()
        .find(|rs| rs["spec"]["template"]["spec"]["containers"][0]["image"] == "web:1.0")
        .expect("v1 ReplicaSet");
    assert_eq!(
        v1["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    assert_eq!(v1["spec"]["replicas"], 2);
    assert_eq!(
        world.reasons(),
        pairs(&[
            ("Available", "MinimumReplicasAvailable"),
            ("Progressing", "NewReplicaSetAvailable")
        ])
    );
}

/// Recording 12, steps 11-13, as the adapter meets them when its ReplicaSet cache lags behind its
/// Deployment cache (a loaded machine): the sync that sees its own status write but not yet the
/// ReplicaSet it created must write nothing, as the real controller's sync ends on AlreadyExists.
/// Deciding on that cache set `NewReplicaSetCreated` over `ReplicaSetUpdated` for good (the
/// replay's step-13 flake).
#[test]
fn a_sync_whose_replicaset_cache_lags_its_own_create_writes_nothing() {
    let config = never_ready_config();
    let mut world = World::new(deployment("registry.example/web:1.0", 2), config.clone());
    world.settle(t0());
    world.edit(|s| s.paused = Some(true));
    world.settle(t0());
    world.edit(|s| {
        s.template.spec.as_mut().expect("pod spec").containers[0].image =
            Some("registry.example/web:2.0".into());
    });
    world.settle(t0());
    world.edit(|s| s.replicas = Some(3));
    world.settle(t0());
    world.edit(|s| s.paused = Some(false));

    let mut memory = Memory::default();
    let before_create = world.replicasets.clone();
    // The first sync creates revision 2 and, in the same sync, reports it progressing.
    let first = memory
        .decide(&world.deployment, &before_create, t0(), &config)
        .expect("caches are current");
    let created: Vec<String> = first
        .changes
        .iter()
        .filter_map(|c| match c {
            ReplicaSetChange::Create(rs) => rs.metadata.name.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 1, "{:?}", first.changes);
    let new_name = created[0].clone();
    memory
        .created
        .insert(("rec-dep".to_string(), new_name.clone()));
    world.deployment.status = Some(first.status.clone());
    for change in first.changes {
        world.apply(change);
    }
    assert_eq!(
        world.reasons(),
        pairs(&[
            ("Available", "MinimumReplicasUnavailable"),
            ("Progressing", "ReplicaSetUpdated")
        ])
    );
    let timings = memory.timings.clone();

    // The Deployment cache shows that status, the ReplicaSet cache not yet the create. Deciding on
    // it would create again and say NewReplicaSetCreated; the stand-in writes nothing instead.
    let later = t0() + jiff::SignedDuration::from_secs(1);
    let naive = next_status(
        &world.deployment,
        &before_create,
        &timings[&("rec-dep".to_string(), "web".to_string())],
        later,
        &config,
    );
    let naive_reason = get_condition(
        naive.status.conditions.as_deref().unwrap_or_default(),
        "Progressing",
    )
    .and_then(|c| c.reason.clone());
    assert_eq!(naive_reason.as_deref(), Some("NewReplicaSetCreated"));
    assert!(
        memory
            .decide(&world.deployment, &before_create, later, &config)
            .is_none()
    );
    assert_eq!(
        memory.timings, timings,
        "a skipped sync keeps when pods started"
    );

    // Once the cache shows it, the sync has nothing to change: ReplicaSetUpdated stays.
    let caught_up = memory
        .decide(&world.deployment, &world.replicasets, later, &config)
        .expect("caches are current");
    assert!(memory.created.is_empty());
    assert!(
        !caught_up.changes.iter().any(|c| matches!(
            c,
            ReplicaSetChange::Create(_) | ReplicaSetChange::Scale { .. }
        )),
        "{:?}",
        caught_up.changes
    );
    assert_eq!(Some(&caught_up.status), world.deployment.status.as_ref());
}
