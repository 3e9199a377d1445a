//! A Deployment-controller and kubelet stand-in that works through the Kubernetes API, so the same
//! code drives the in-process test server and a real cluster whose Deployments have no pods (one
//! without kube-controller-manager's Deployment controller: the two would fight).
//!
//! It keeps each Deployment's ReplicaSets and `status` the way kube-controller-manager does
//! (recording `12-deployment-paused`): ReplicaSets named `<deployment>-<pod-template-hash>` with the
//! `pod-template-hash` label and the `deployment.kubernetes.io/{revision,desired-replicas,
//! max-replicas}` annotations; rolling updates bounded by `maxSurge` / `maxUnavailable`; a paused
//! Deployment keeps serving its old revision and only scales; conditions `Available` and
//! `Progressing` with the real reasons and messages, including `ProgressDeadlineExceeded`.
//! There are no pods and no endpoints: a revision's pods "become ready" `readiness_delay` after its
//! ReplicaSet was scaled up, unless the revision is never ready (an image containing `crashloop`, or
//! the test's own predicate).
//!
//! The decision is the pure [`next_status`] (Deployment, ReplicaSets, now, config in; status and
//! ReplicaSet changes out); [`spawn`] is the thin adapter that watches, lists, and writes. Time comes
//! from a [`Clock`], so tests drive rollouts with a [`ManualClock`] instead of sleeping.
//!
//! Must not create pods or endpoints, and must not touch anything but ReplicaSets it owns and the
//! `status` of Deployments in its scope.
//!
//! Simplifications: the pod-template hash is a stable SHA-256-based hash of the template, encoded
//! like the real one but not equal to it; `minReadySeconds`, proportional scaling of several active
//! ReplicaSets while paused, and `revisionHistoryLimit` clean-up are not modelled; `Recreate`
//! scales old ReplicaSets to zero and the new one up in the same step.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec, ReplicaSetStatus,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const TEMPLATE_HASH: &str = "pod-template-hash";
/// When the stand-in last scaled a ReplicaSet up (its clock), so readiness can be timed.
pub const SCALED_AT: &str = "kubelet.testcluster.sluice.dev/scaled-at";
/// How many of the ReplicaSet's pods were ready just before that scale-up.
pub const READY_BEFORE: &str = "kubelet.testcluster.sluice.dev/ready-before";
const FIELD_MANAGER: &str = "kube-controller-manager";

/// A test's own rule for revisions whose pods never become ready.
pub type NeverReady = Arc<dyn Fn(&PodTemplateSpec) -> bool + Send + Sync>;

/// How the stand-in's pods behave.
#[derive(Clone)]
pub struct Config {
    /// How long after a ReplicaSet is scaled up its new pods count as ready (and available).
    pub readiness_delay: Duration,
    /// Revisions that never become ready, besides any whose image contains `crashloop`.
    pub never_ready: Option<NeverReady>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            readiness_delay: Duration::from_secs(1),
            never_ready: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("readiness_delay", &self.readiness_delay)
            .field("never_ready", &self.never_ready.is_some())
            .finish()
    }
}

/// Whether pods of this template can ever become ready.
pub fn is_never_ready(template: &PodTemplateSpec, config: &Config) -> bool {
    let crashloop = template.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .any(|c| c.image.as_deref().is_some_and(|i| i.contains("crashloop")))
    });
    crashloop || config.never_ready.as_ref().is_some_and(|p| p(template))
}

/// What the stand-in asks the API server to do to ReplicaSets.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplicaSetChange {
    /// Create this ReplicaSet (a new revision).
    Create(Box<ReplicaSet>),
    /// Set `spec.replicas` and merge these annotations.
    Scale {
        name: String,
        replicas: i32,
        annotations: BTreeMap<String, String>,
    },
    /// Write the ReplicaSet's `status` (what its pods would report).
    Status {
        name: String,
        status: ReplicaSetStatus,
    },
}

/// Which revision of a Deployment is serving, as a test asks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The pod-template hash of the newest revision with a ready pod (or the newest revision).
    pub template_hash: String,
    /// Its `deployment.kubernetes.io/revision`.
    pub revision: u64,
    /// Its container images, in order.
    pub images: Vec<String>,
    /// Ready pods of that revision.
    pub ready_replicas: i32,
    /// Whether every pod the Deployment wants is ready on that revision and no other has pods.
    pub ready: bool,
    /// Pods per revision hash, oldest revision first.
    pub replicas_by_revision: Vec<(String, i32)>,
}

/// A stable hash of a pod template, encoded with the alphabet the real controller uses.
///
/// Not the value kube-controller-manager computes (that is FNV over Go's struct dump); any stable
/// hash serves, since only this stand-in compares it.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let mut template = template.clone();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(TEMPLATE_HASH);
    }
    let bytes = serde_json::to_vec(&template).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    n.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// One ReplicaSet as the decision sees it, with the changes decided so far.
#[derive(Debug, Clone)]
struct Rs {
    name: String,
    hash: String,
    revision: u64,
    replicas: i32,
    ready: i32,
    scaled: bool,
    annotations: BTreeMap<String, String>,
    original: Option<ReplicaSet>,
}

fn annotations_of(rs: &ReplicaSet) -> BTreeMap<String, String> {
    rs.metadata.annotations.clone().unwrap_or_default()
}

fn revision_of(rs: &ReplicaSet) -> u64 {
    annotations_of(rs)
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Ready pods of a ReplicaSet at `now`.
fn ready_pods(rs: &ReplicaSet, now: Timestamp, config: &Config) -> i32 {
    let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    if is_never_ready(&template, config) {
        return 0;
    }
    let annotations = annotations_of(rs);
    let scaled_at = annotations
        .get(SCALED_AT)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .or_else(|| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let Some(scaled_at) = scaled_at else {
        return replicas;
    };
    let delay =
        jiff::SignedDuration::try_from(config.readiness_delay).unwrap_or(jiff::SignedDuration::MAX);
    if scaled_at
        .checked_add(delay)
        .is_ok_and(|ready_at| now >= ready_at)
    {
        replicas
    } else {
        let before = annotations
            .get(READY_BEFORE)
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        before.min(replicas)
    }
}

fn owned_by(rs: &ReplicaSet, deployment: &Deployment) -> bool {
    let uid = deployment.metadata.uid.as_deref();
    rs.metadata.owner_references.as_ref().is_some_and(|refs| {
        refs.iter().any(|r| {
            r.kind == "Deployment"
                && r.controller == Some(true)
                && (uid.is_none() || uid == Some(r.uid.as_str()))
                && Some(r.name.as_str()) == deployment.metadata.name.as_deref()
        })
    })
}

fn resolve(value: Option<&IntOrString>, default: &str, desired: i32, round_up: bool) -> i32 {
    let fallback = IntOrString::String(default.to_string());
    match value.unwrap_or(&fallback) {
        IntOrString::Int(i) => *i,
        IntOrString::String(s) => {
            let pct: f64 = s.trim_end_matches('%').parse().unwrap_or(0.0);
            let exact = pct * f64::from(desired) / 100.0;
            (if round_up {
                exact.ceil()
            } else {
                exact.floor()
            }) as i32
        }
    }
}

/// `(maxSurge, maxUnavailable)` as `deploymentutil.ResolveFenceposts` computes them.
fn fenceposts(deployment: &Deployment, desired: i32) -> (i32, i32) {
    let strategy = deployment.spec.as_ref().and_then(|s| s.strategy.as_ref());
    if strategy.and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return (0, desired.max(1));
    }
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    let surge = resolve(
        rolling.and_then(|r| r.max_surge.as_ref()),
        "25%",
        desired,
        true,
    );
    let unavailable = resolve(
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        "25%",
        desired,
        false,
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn get_condition<'c>(
    conditions: &'c [DeploymentCondition],
    type_: &str,
) -> Option<&'c DeploymentCondition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// `deploymentutil.SetDeploymentCondition`: same status and reason is a no-op; same status keeps
/// the transition time; the condition moves to the end.
fn set_condition(conditions: &mut Vec<DeploymentCondition>, mut new: DeploymentCondition) {
    if let Some(current) = get_condition(conditions, &new.type_) {
        if current.status == new.status && current.reason == new.reason {
            return;
        }
        if current.status == new.status {
            new.last_transition_time = current.last_transition_time.clone();
        }
    }
    conditions.retain(|c| c.type_ != new.type_);
    conditions.push(new);
}

/// One sync of the Deployment controller: the status to write and the ReplicaSet changes to make.
pub fn next_status(
    deployment: &Deployment,
    replicasets: &[ReplicaSet],
    now: Timestamp,
    config: &Config,
) -> (DeploymentStatus, Vec<ReplicaSetChange>) {
    let spec = deployment.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1);
    let paused = spec.paused == Some(true);
    let (max_surge, max_unavailable) = fenceposts(deployment, desired);
    let hash = template_hash(&spec.template);
    let old_status = deployment.status.clone().unwrap_or_default();
    let mut conditions = old_status.conditions.clone().unwrap_or_default();
    let has_deadline = spec.progress_deadline_seconds != Some(i32::MAX);

    let mut sets: Vec<Rs> = replicasets
        .iter()
        .filter(|rs| owned_by(rs, deployment))
        .map(|rs| Rs {
            name: rs.metadata.name.clone().unwrap_or_default(),
            hash: rs
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(TEMPLATE_HASH).cloned())
                .unwrap_or_default(),
            revision: revision_of(rs),
            replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            ready: ready_pods(rs, now, config),
            scaled: false,
            annotations: annotations_of(rs),
            original: Some(rs.clone()),
        })
        .collect();
    sets.sort_by_key(|s| s.revision);
    let max_revision = sets.iter().map(|s| s.revision).max().unwrap_or(0);
    let mut new_index = sets.iter().position(|s| s.hash == hash);

    let scale = |rs: &mut Rs, replicas: i32| {
        if replicas > rs.replicas {
            rs.annotations
                .insert(SCALED_AT.to_string(), now.to_string());
            rs.annotations
                .insert(READY_BEFORE.to_string(), rs.ready.to_string());
        }
        rs.replicas = replicas;
        rs.annotations
            .insert(DESIRED_REPLICAS.to_string(), desired.to_string());
        rs.annotations
            .insert(MAX_REPLICAS.to_string(), (desired + max_surge).to_string());
        rs.scaled = true;
    };

    if paused {
        // `sync`: no new ReplicaSet; the one active (or latest) ReplicaSet follows spec.replicas.
        let active: Vec<usize> = (0..sets.len()).filter(|&i| sets[i].replicas > 0).collect();
        let target = match active.as_slice() {
            [] => sets.len().checked_sub(1),
            [only] => Some(*only),
            _ => None,
        };
        if let Some(i) = target
            && sets[i].replicas != desired
        {
            scale(&mut sets[i], desired);
        }
        if has_deadline {
            let timed_out = get_condition(&conditions, "Progressing")
                .is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
            let paused_cond = get_condition(&conditions, "Progressing")
                .is_some_and(|c| c.reason.as_deref() == Some("DeploymentPaused"));
            if !timed_out && !paused_cond {
                let c = condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused".into(),
                    now,
                );
                set_condition(&mut conditions, c);
            }
        }
    } else {
        if has_deadline
            && get_condition(&conditions, "Progressing")
                .is_some_and(|c| c.reason.as_deref() == Some("DeploymentPaused"))
        {
            let c = condition(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
                now,
            );
            set_condition(&mut conditions, c);
        }
        let total: i32 = sets.iter().map(|s| s.replicas).sum();
        let new_replicas_for = |current_new: i32, total: i32| -> i32 {
            let max_total = desired + max_surge;
            if total >= max_total {
                current_new
            } else {
                current_new + (max_total - total).min(desired - current_new).max(0)
            }
        };
        match new_index {
            None => {
                let name = format!(
                    "{}-{hash}",
                    deployment.metadata.name.clone().unwrap_or_default()
                );
                let mut rs = Rs {
                    name: name.clone(),
                    hash: hash.clone(),
                    revision: max_revision + 1,
                    replicas: 0,
                    ready: 0,
                    scaled: false,
                    annotations: BTreeMap::from([(
                        REVISION.to_string(),
                        (max_revision + 1).to_string(),
                    )]),
                    original: None,
                };
                let replicas = if max_surge == 0 && sets.iter().any(|s| s.replicas > 0) {
                    0
                } else {
                    new_replicas_for(0, total)
                };
                scale(&mut rs, replicas);
                if replicas == 0 {
                    rs.annotations
                        .insert(SCALED_AT.to_string(), now.to_string());
                    rs.annotations
                        .insert(READY_BEFORE.to_string(), "0".to_string());
                }
                sets.push(rs);
                new_index = Some(sets.len() - 1);
                if has_deadline {
                    let c = condition(
                        "Progressing",
                        "True",
                        "NewReplicaSetCreated",
                        format!("Created new replica set {name:?}"),
                        now,
                    );
                    set_condition(&mut conditions, c);
                }
            }
            Some(i) => {
                if sets[i].revision < max_revision {
                    // A rollback to an older template takes the next revision number.
                    sets[i].revision = max_revision + 1;
                    sets[i]
                        .annotations
                        .insert(REVISION.to_string(), (max_revision + 1).to_string());
                    sets[i].scaled = true;
                }
                let current = sets[i].replicas;
                if current > desired {
                    scale(&mut sets[i], desired);
                } else if current < desired {
                    let others: i32 = sets.iter().map(|s| s.replicas).sum::<i32>() - current;
                    let target = if max_surge == 0 && others > 0 {
                        current
                    } else {
                        new_replicas_for(current, others + current)
                    };
                    if target != current {
                        scale(&mut sets[i], target);
                    }
                }
            }
        }
        if let Some(n) = new_index {
            scale_down_old(&mut sets, n, desired, max_unavailable, &scale);
        }
    }

    // calculateStatus
    let new_set = new_index.map(|i| &sets[i]);
    let total: i32 = sets.iter().map(|s| s.replicas).sum();
    let ready: i32 = sets.iter().map(|s| s.ready.min(s.replicas)).sum();
    let available = ready;
    let updated = new_set.map_or(0, |s| s.replicas);
    let nonzero = |v: i32| (v != 0).then_some(v);
    let mut status = DeploymentStatus {
        observed_generation: deployment.metadata.generation,
        replicas: nonzero(total),
        updated_replicas: nonzero(updated),
        ready_replicas: nonzero(ready),
        available_replicas: nonzero(available),
        unavailable_replicas: nonzero((total - available).max(0)),
        terminating_replicas: Some(0),
        collision_count: old_status.collision_count,
        conditions: None,
    };
    let available_condition = if available >= desired - max_unavailable {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            now,
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            now,
        )
    };
    set_condition(&mut conditions, available_condition);

    if !paused
        && has_deadline
        && let Some(new_set) = new_set
    {
        sync_rollout_conditions(
            &mut conditions,
            &status,
            &old_status,
            &spec,
            new_set,
            desired,
            deployment,
            now,
        );
    }
    status.conditions = (!conditions.is_empty()).then_some(conditions);

    let changes = replicaset_changes(deployment, &spec, &sets);
    (status, changes)
}

/// `syncRolloutStatus`: NewReplicaSetAvailable, ReplicaSetUpdated, or ProgressDeadlineExceeded.
#[allow(clippy::too_many_arguments)]
fn sync_rollout_conditions(
    conditions: &mut Vec<DeploymentCondition>,
    status: &DeploymentStatus,
    old_status: &DeploymentStatus,
    spec: &k8s_openapi::api::apps::v1::DeploymentSpec,
    new_set: &Rs,
    desired: i32,
    deployment: &Deployment,
    now: Timestamp,
) {
    let n = |v: Option<i32>| v.unwrap_or(0);
    let current = get_condition(conditions, "Progressing").cloned();
    let complete_already = n(status.replicas) == n(status.updated_replicas)
        && current
            .as_ref()
            .is_some_and(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable"));
    if complete_already {
        return;
    }
    let complete = n(status.updated_replicas) == desired
        && n(status.replicas) == desired
        && n(status.available_replicas) == desired
        && status.observed_generation >= deployment.metadata.generation;
    let progressing = n(status.updated_replicas) > n(old_status.updated_replicas)
        || n(status.ready_replicas) > n(old_status.ready_replicas)
        || n(status.replicas) - n(status.updated_replicas)
            < n(old_status.replicas) - n(old_status.updated_replicas)
        || n(status.available_replicas) > n(old_status.available_replicas);
    let deadline =
        jiff::SignedDuration::from_secs(i64::from(spec.progress_deadline_seconds.unwrap_or(600)));
    let timed_out = current.as_ref().is_some_and(|c| {
        c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            || c.last_update_time
                .as_ref()
                .and_then(|t| t.0.checked_add(deadline).ok())
                .is_some_and(|deadline_at| deadline_at < now)
    });
    let name = &new_set.name;
    if complete {
        let c = condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet {name:?} has successfully progressed."),
            now,
        );
        set_condition(conditions, c);
    } else if progressing {
        let mut c = condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet {name:?} is progressing."),
            now,
        );
        if let Some(current) = current.as_ref().filter(|c| c.status == "True") {
            c.last_transition_time = current.last_transition_time.clone();
        }
        conditions.retain(|c| c.type_ != "Progressing");
        conditions.push(c);
    } else if timed_out {
        let c = condition(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            format!("ReplicaSet {name:?} has timed out progressing."),
            now,
        );
        set_condition(conditions, c);
    }
}

/// `reconcileOldReplicaSets`: first unhealthy old pods, then old pods above `minAvailable`.
fn scale_down_old(
    sets: &mut [Rs],
    new: usize,
    desired: i32,
    max_unavailable: i32,
    scale: &dyn Fn(&mut Rs, i32),
) {
    let min_available = desired - max_unavailable;
    let all: i32 = sets.iter().map(|s| s.replicas).sum();
    let new_unavailable = sets[new].replicas - sets[new].ready.min(sets[new].replicas);
    let max_scaled_down = all - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return;
    }
    let mut cleaned = 0;
    for i in (0..sets.len()).filter(|&i| i != new) {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = sets[i].replicas - sets[i].ready.min(sets[i].replicas);
        if sets[i].replicas == 0 || unhealthy == 0 {
            continue;
        }
        let down = unhealthy.min(max_scaled_down - cleaned);
        let target = sets[i].replicas - down;
        scale(&mut sets[i], target);
        cleaned += down;
    }
    let available: i32 = sets.iter().map(|s| s.ready.min(s.replicas)).sum();
    if available <= min_available {
        return;
    }
    let mut budget = available - min_available;
    for i in (0..sets.len()).filter(|&i| i != new) {
        if budget <= 0 {
            break;
        }
        let down = sets[i].replicas.min(budget);
        if down > 0 {
            let target = sets[i].replicas - down;
            scale(&mut sets[i], target);
            budget -= down;
        }
    }
}

fn replicaset_changes(
    deployment: &Deployment,
    spec: &k8s_openapi::api::apps::v1::DeploymentSpec,
    sets: &[Rs],
) -> Vec<ReplicaSetChange> {
    let mut changes = Vec::new();
    for rs in sets {
        match &rs.original {
            None => changes.push(ReplicaSetChange::Create(Box::new(new_replicaset(
                deployment, spec, rs,
            )))),
            Some(original) => {
                if rs.scaled {
                    changes.push(ReplicaSetChange::Scale {
                        name: rs.name.clone(),
                        replicas: rs.replicas,
                        annotations: rs.annotations.clone(),
                    });
                }
                let ready = rs.ready.min(rs.replicas);
                let status = ReplicaSetStatus {
                    replicas: rs.replicas,
                    fully_labeled_replicas: Some(rs.replicas),
                    ready_replicas: (ready != 0).then_some(ready),
                    available_replicas: (ready != 0).then_some(ready),
                    terminating_replicas: Some(0),
                    observed_generation: original.metadata.generation,
                    conditions: None,
                };
                if original.status.as_ref() != Some(&status) && !rs.scaled {
                    changes.push(ReplicaSetChange::Status {
                        name: rs.name.clone(),
                        status,
                    });
                }
            }
        }
    }
    changes
}

fn new_replicaset(
    deployment: &Deployment,
    spec: &k8s_openapi::api::apps::v1::DeploymentSpec,
    rs: &Rs,
) -> ReplicaSet {
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    let mut labels = meta.labels.clone().unwrap_or_default();
    labels.insert(TEMPLATE_HASH.to_string(), rs.hash.clone());
    meta.labels = Some(labels.clone());
    let mut selector: LabelSelector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(TEMPLATE_HASH.to_string(), rs.hash.clone());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(rs.name.clone()),
            namespace: deployment.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(rs.annotations.clone()),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".to_string(),
                kind: "Deployment".to_string(),
                name: deployment.metadata.name.clone().unwrap_or_default(),
                uid: deployment.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(rs.replicas),
            selector,
            template: Some(template),
            min_ready_seconds: spec.min_ready_seconds,
        }),
        status: None,
    }
}

/// Which revision a Deployment serves, from its ReplicaSets at `now`.
pub fn served(
    deployment: &Deployment,
    replicasets: &[ReplicaSet],
    now: Timestamp,
    config: &Config,
) -> Option<Served> {
    let mut owned: Vec<&ReplicaSet> = replicasets
        .iter()
        .filter(|rs| owned_by(rs, deployment))
        .collect();
    owned.sort_by_key(|rs| revision_of(rs));
    let ready_of = |rs: &ReplicaSet| {
        ready_pods(rs, now, config).min(rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))
    };
    let chosen = owned
        .iter()
        .rev()
        .find(|rs| ready_of(rs) > 0)
        .or_else(|| owned.last())?;
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let ready_replicas = ready_of(chosen);
    let hash_of = |rs: &ReplicaSet| {
        rs.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(TEMPLATE_HASH).cloned())
            .unwrap_or_default()
    };
    let replicas_by_revision: Vec<(String, i32)> = owned
        .iter()
        .map(|rs| {
            (
                hash_of(rs),
                rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            )
        })
        .collect();
    let others_empty = owned
        .iter()
        .filter(|rs| rs.metadata.name != chosen.metadata.name)
        .all(|rs| rs.spec.as_ref().and_then(|s| s.replicas) == Some(0));
    let images = chosen
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.as_ref())
        .map(|s| {
            s.containers
                .iter()
                .filter_map(|c| c.image.clone())
                .collect()
        })
        .unwrap_or_default();
    Some(Served {
        template_hash: hash_of(chosen),
        revision: revision_of(chosen),
        images,
        ready_replicas,
        ready: ready_replicas >= desired && others_empty,
        replicas_by_revision,
    })
}

/// Where the stand-in's time comes from.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock a test moves by hand.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Arc::new(Mutex::new(start)))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let by = jiff::SignedDuration::try_from(by).unwrap_or(jiff::SignedDuration::ZERO);
        *now = now.checked_add(by).unwrap_or(*now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Which namespaces the stand-in looks after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    AllNamespaces,
    Namespaces(Vec<String>),
}

/// How to run the adapter.
#[derive(Clone)]
pub struct Options {
    pub config: Config,
    pub scope: Scope,
    pub clock: Arc<dyn Clock>,
    /// How often to re-sync without events (readiness and deadlines move with time).
    pub resync: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: Config::default(),
            scope: Scope::AllNamespaces,
            clock: Arc::new(SystemClock),
            resync: Duration::from_millis(100),
        }
    }
}

type ServedMap = Arc<Mutex<HashMap<(String, String), Served>>>;

/// The running stand-in; dropping it stops it.
pub struct Handle {
    served: ServedMap,
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Which revision `namespace/name` serves, as of the last sync.
    pub fn serving(&self, namespace: &str, name: &str) -> Option<Served> {
        let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        served
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Asks for a sync now (after moving a [`ManualClock`], say).
    pub fn resync(&self) {
        self.wake.notify_one();
    }

    /// Polls until `namespace/name` serves something `accept`s, or `timeout` passes.
    pub async fn wait_serving(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
        accept: impl Fn(&Served) -> bool,
    ) -> Option<Served> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.serving(namespace, name).filter(|s| accept(s)) {
                return Some(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            self.resync();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why one sync pass failed (logged; the next pass retries).
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("failed to list {what} in {namespace:?}")]
    List {
        what: &'static str,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to write {what} {namespace}/{name}")]
    Write {
        what: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Starts the stand-in on `client`'s cluster.
pub fn spawn(client: kube::Client, options: Options) -> Handle {
    let served: ServedMap = Arc::default();
    let wake = Arc::new(tokio::sync::Notify::new());
    let task = tokio::spawn(run(client, options, served.clone(), wake.clone()));
    Handle { served, wake, task }
}

fn apis<K>(client: &kube::Client, scope: &Scope) -> Vec<(String, kube::Api<K>)>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match scope {
        Scope::AllNamespaces => vec![(String::new(), kube::Api::all(client.clone()))],
        Scope::Namespaces(names) => names
            .iter()
            .map(|n| (n.clone(), kube::Api::namespaced(client.clone(), n)))
            .collect(),
    }
}

async fn run(
    client: kube::Client,
    options: Options,
    served: ServedMap,
    wake: Arc<tokio::sync::Notify>,
) {
    use kube::runtime::{WatchStreamExt, watcher};
    // Watches only wake the loop; each pass lists, so decisions see consistent, fresh state.
    let mut streams = Vec::new();
    for (_, api) in apis::<Deployment>(&client, &options.scope) {
        streams.push(
            watcher(api, watcher::Config::default())
                .default_backoff()
                .map(|_| ())
                .boxed(),
        );
    }
    for (_, api) in apis::<ReplicaSet>(&client, &options.scope) {
        streams.push(
            watcher(api, watcher::Config::default())
                .default_backoff()
                .map(|_| ())
                .boxed(),
        );
    }
    let waker = wake.clone();
    let watching = tokio::spawn(async move {
        let mut events = futures::stream::select_all(streams);
        while events.next().await.is_some() {
            waker.notify_one();
        }
    });
    let _stop_watching = AbortOnDrop(watching);
    loop {
        if let Err(error) = sync_all(&client, &options, &served).await {
            tracing::debug!(error = %error, "kubelet stand-in sync failed; retrying");
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(options.resync) => {}
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn sync_all(
    client: &kube::Client,
    options: &Options,
    served_map: &ServedMap,
) -> Result<(), SyncError> {
    use kube::api::{ListParams, Patch, PatchParams, PostParams};
    let now = options.clock.now();
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    for ((namespace, deployments), (_, replicasets)) in apis::<Deployment>(client, &options.scope)
        .into_iter()
        .zip(apis::<ReplicaSet>(client, &options.scope))
    {
        let list_error = |what| {
            let namespace = namespace.clone();
            move |source| SyncError::List {
                what,
                namespace,
                source,
            }
        };
        let deployment_list = deployments
            .list(&ListParams::default())
            .await
            .map_err(list_error("Deployments"))?;
        let rs_list = replicasets
            .list(&ListParams::default())
            .await
            .map_err(list_error("ReplicaSets"))?;
        for deployment in &deployment_list.items {
            let ns = deployment.metadata.namespace.clone().unwrap_or_default();
            let name = deployment.metadata.name.clone().unwrap_or_default();
            let same_ns: Vec<ReplicaSet> = rs_list
                .items
                .iter()
                .filter(|rs| rs.metadata.namespace.as_deref() == Some(ns.as_str()))
                .cloned()
                .collect();
            let (status, changes) = next_status(deployment, &same_ns, now, &options.config);
            let rs_api: kube::Api<ReplicaSet> = kube::Api::namespaced(client.clone(), &ns);
            let write_error = |what: &'static str, name: &str| {
                let (namespace, name) = (ns.clone(), name.to_string());
                move |source| SyncError::Write {
                    what,
                    namespace,
                    name,
                    source,
                }
            };
            for change in changes {
                match change {
                    ReplicaSetChange::Create(rs) => {
                        let rs_name = rs.metadata.name.clone().unwrap_or_default();
                        match rs_api.create(&PostParams::default(), &rs).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(s)) if s.code == 409 => {}
                            Err(e) => return Err(write_error("ReplicaSet", &rs_name)(e)),
                        }
                    }
                    ReplicaSetChange::Scale {
                        name: rs_name,
                        replicas,
                        annotations,
                    } => {
                        let patch = serde_json::json!({"metadata": {"annotations": annotations}, "spec": {"replicas": replicas}});
                        rs_api
                            .patch(&rs_name, &params, &Patch::Merge(&patch))
                            .await
                            .map_err(write_error("ReplicaSet", &rs_name))?;
                    }
                    ReplicaSetChange::Status {
                        name: rs_name,
                        status,
                    } => {
                        let patch = serde_json::json!({"status": with_nulls(&status, &["readyReplicas", "availableReplicas"])});
                        rs_api
                            .patch_status(&rs_name, &params, &Patch::Merge(&patch))
                            .await
                            .map_err(write_error("ReplicaSet status", &rs_name))?;
                    }
                }
            }
            if deployment.status.as_ref() != Some(&status) {
                let fields = [
                    "observedGeneration",
                    "replicas",
                    "updatedReplicas",
                    "readyReplicas",
                    "availableReplicas",
                    "unavailableReplicas",
                    "conditions",
                ];
                let patch = serde_json::json!({"status": with_nulls(&status, &fields)});
                let api: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), &ns);
                api.patch_status(&name, &params, &Patch::Merge(&patch))
                    .await
                    .map_err(write_error("Deployment status", &name))?;
            }
            if let Some(s) = served(deployment, &same_ns, now, &options.config) {
                served_map
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((ns.clone(), name.clone()), s);
            }
        }
    }
    Ok(())
}

/// The status as a merge patch that also clears the listed fields when they are now absent.
fn with_nulls<T: serde::Serialize>(status: &T, fields: &[&str]) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        for field in fields {
            map.entry(field.to_string())
                .or_insert(serde_json::Value::Null);
        }
    }
    value
}

#[cfg(test)]
#[path = "kubelet_tests.rs"]
mod tests;
