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
//! The decision is the pure [`next_status`] (Deployment, ReplicaSets, readiness timing, now, config
//! in; status, ReplicaSet changes and readiness timing out); [`spawn`] is the thin adapter: watch
//! caches in, writes out (an idle, settled cluster costs no requests, a write is not repeated
//! against the same cached version, and a Deployment is not synced while the ReplicaSet cache has
//! not yet shown a ReplicaSet the stand-in created for it, see `Memory::decide`). Time comes from
//! a [`Clock`], so tests drive rollouts with a [`ManualClock`] instead of sleeping.
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

/// When the stand-in last scaled a ReplicaSet up, by its clock, so its new pods' readiness can be
/// timed. Kept by the stand-in, not in the API, so ReplicaSets carry only what the real controller
/// writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaledUp {
    pub at: Timestamp,
    /// Pods of the ReplicaSet that were ready just before the scale-up.
    pub ready_before: i32,
}

/// [`ScaledUp`] per ReplicaSet name, for one Deployment's ReplicaSets.
pub type Readiness = BTreeMap<String, ScaledUp>;

/// One sync's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The Deployment status to write (only if it differs from the stored one).
    pub status: DeploymentStatus,
    pub changes: Vec<ReplicaSetChange>,
    /// The readiness timing to pass to the next sync.
    pub readiness: Readiness,
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
    scaled_up: Option<ScaledUp>,
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

/// Ready pods of a ReplicaSet at `now`. A ReplicaSet the stand-in has no timing for (it was
/// restarted, or another controller made it) is timed from its creation.
fn ready_pods(rs: &ReplicaSet, readiness: &Readiness, now: Timestamp, config: &Config) -> i32 {
    let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    if is_never_ready(&template, config) {
        return 0;
    }
    let name = rs.metadata.name.clone().unwrap_or_default();
    let scaled = readiness.get(&name).copied().or_else(|| {
        rs.metadata.creation_timestamp.as_ref().map(|t| ScaledUp {
            at: t.0,
            ready_before: 0,
        })
    });
    let Some(scaled) = scaled else {
        return replicas;
    };
    let delay =
        jiff::SignedDuration::try_from(config.readiness_delay).unwrap_or(jiff::SignedDuration::MAX);
    if scaled
        .at
        .checked_add(delay)
        .is_ok_and(|ready_at| now >= ready_at)
    {
        replicas
    } else {
        scaled.ready_before.min(replicas)
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
    // metav1.Time has whole seconds: a finer time would never read back equal.
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
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

/// One sync of the Deployment controller: the status to write, the ReplicaSet changes to make, and
/// the readiness timing to remember. `readiness` is what the previous sync returned.
pub fn next_status(
    deployment: &Deployment,
    replicasets: &[ReplicaSet],
    readiness: &Readiness,
    now: Timestamp,
    config: &Config,
) -> Decision {
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
            ready: ready_pods(rs, readiness, now, config),
            scaled: false,
            scaled_up: rs
                .metadata
                .name
                .as_ref()
                .and_then(|n| readiness.get(n))
                .copied(),
            annotations: annotations_of(rs),
            original: Some(rs.clone()),
        })
        .collect();
    sets.sort_by_key(|s| s.revision);
    let max_revision = sets.iter().map(|s| s.revision).max().unwrap_or(0);
    let mut new_index = sets.iter().position(|s| s.hash == hash);

    let scale = |rs: &mut Rs, replicas: i32| {
        if replicas > rs.replicas || rs.original.is_none() {
            rs.scaled_up = Some(ScaledUp {
                at: now,
                ready_before: rs.ready,
            });
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
                    scaled_up: None,
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
    let readiness = sets
        .iter()
        .filter_map(|rs| rs.scaled_up.map(|up| (rs.name.clone(), up)))
        .collect();
    Decision {
        status,
        changes,
        readiness,
    }
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
    readiness: &Readiness,
    now: Timestamp,
    config: &Config,
) -> Option<Served> {
    let mut owned: Vec<&ReplicaSet> = replicasets
        .iter()
        .filter(|rs| owned_by(rs, deployment))
        .collect();
    owned.sort_by_key(|rs| revision_of(rs));
    let ready_of = |rs: &ReplicaSet| {
        ready_pods(rs, readiness, now, config)
            .min(rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))
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
    passes: Arc<std::sync::atomic::AtomicU64>,
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

    /// How many sync passes have finished, so a test can wait for the stand-in to have looked.
    pub fn passes(&self) -> u64 {
        self.passes.load(std::sync::atomic::Ordering::SeqCst)
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

/// Why one sync pass failed (logged; the next pass retries the write).
#[derive(Debug, thiserror::Error)]
enum SyncError {
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
    let passes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let task = tokio::spawn(run(
        client,
        options,
        served.clone(),
        wake.clone(),
        passes.clone(),
    ));
    Handle {
        served,
        wake,
        passes,
        task,
    }
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
    passes: Arc<std::sync::atomic::AtomicU64>,
) {
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    // Watches fill caches and wake the loop; a pass reads only the caches, so a settled cluster
    // costs no requests (sluice's request budgets are measured on this server).
    let mut streams = Vec::new();
    let mut deployment_stores = Vec::new();
    for (_, api) in apis::<Deployment>(&client, &options.scope) {
        let (reader, writer) = reflector::store();
        streams.push(
            reflector(writer, watcher(api, watcher::Config::default()))
                .backoff(crate::QuickBackoff::default())
                .map(|_| ())
                .boxed(),
        );
        deployment_stores.push(reader);
    }
    let mut replicaset_stores = Vec::new();
    for (_, api) in apis::<ReplicaSet>(&client, &options.scope) {
        let (reader, writer) = reflector::store();
        streams.push(
            reflector(writer, watcher(api, watcher::Config::default()))
                .backoff(crate::QuickBackoff::default())
                .map(|_| ())
                .boxed(),
        );
        replicaset_stores.push(reader);
    }
    let waker = wake.clone();
    let watching = tokio::spawn(async move {
        let mut events = futures::stream::select_all(streams);
        while events.next().await.is_some() {
            waker.notify_one();
        }
    });
    let _stop_watching = AbortOnDrop(watching);
    for store in &deployment_stores {
        if store.wait_until_ready().await.is_err() {
            return;
        }
    }
    for store in &replicaset_stores {
        if store.wait_until_ready().await.is_err() {
            return;
        }
    }
    let mut memory = Memory::default();
    loop {
        let deployments: Vec<Arc<Deployment>> =
            deployment_stores.iter().flat_map(|s| s.state()).collect();
        let replicasets: Vec<Arc<ReplicaSet>> =
            replicaset_stores.iter().flat_map(|s| s.state()).collect();
        let cache = Cache {
            deployments,
            replicasets,
        };
        if let Err(error) = sync_all(&client, &options, &cache, &served, &mut memory).await {
            tracing::debug!(error = %error, "kubelet stand-in sync failed; retrying");
        }
        passes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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

/// What the watches have shown of the cluster.
struct Cache {
    deployments: Vec<Arc<Deployment>>,
    replicasets: Vec<Arc<ReplicaSet>>,
}

/// What the stand-in remembers between passes.
#[derive(Default)]
struct Memory {
    timings: HashMap<(String, String), Readiness>,
    /// ReplicaSets this stand-in created that its cache has not shown yet, by (namespace, name).
    created: std::collections::HashSet<(String, String)>,
    /// Writes whose effect the caches have not shown yet, by (what, namespace, name): the
    /// object's resourceVersion when sent and the body sent. The same write against the same
    /// cached version is not sent twice.
    sent: HashMap<(&'static str, String, String), (Option<String>, String)>,
}

impl Memory {
    /// One Deployment's sync on what the caches show, or `None` when the ReplicaSet cache has not
    /// yet shown a ReplicaSet this stand-in created for it (then nothing is written this pass).
    ///
    /// The real controller (`getNewReplicaSet`) creates the new ReplicaSet when its lister shows
    /// none, and only a create that succeeds sets Progressing to `NewReplicaSetCreated`, in the
    /// same sync that `syncRolloutStatus` then moves on to `ReplicaSetUpdated` (recording 12, steps
    /// 2 and 13). When its lister is behind its own create, the create answers AlreadyExists, the
    /// lister lookup misses, and the sync ends in an error before any status is written. Deciding
    /// on such a cache would set `NewReplicaSetCreated` again over `ReplicaSetUpdated`, and no
    /// later sync makes progress to move it back while pods are not ready.
    fn decide(
        &mut self,
        deployment: &Deployment,
        replicasets: &[ReplicaSet],
        now: Timestamp,
        config: &Config,
    ) -> Option<Decision> {
        let ns = deployment.metadata.namespace.clone().unwrap_or_default();
        let name = deployment.metadata.name.clone().unwrap_or_default();
        for rs in replicasets {
            let rs_name = rs.metadata.name.clone().unwrap_or_default();
            self.created.remove(&(ns.clone(), rs_name));
        }
        let key = (ns.clone(), name);
        let known = self.timings.get(&key).cloned().unwrap_or_default();
        let decision = next_status(deployment, replicasets, &known, now, config);
        let behind = decision.changes.iter().any(|change| match change {
            ReplicaSetChange::Create(rs) => {
                let rs_name = rs.metadata.name.clone().unwrap_or_default();
                self.created.contains(&(ns.clone(), rs_name))
            }
            _ => false,
        });
        if behind {
            return None;
        }
        // Remembered before writing, so a failed write does not lose when pods started.
        self.timings.insert(key, decision.readiness.clone());
        Some(decision)
    }

    /// Whether this write is new, and if so remembers it as sent.
    fn first_time(
        &mut self,
        what: &'static str,
        namespace: &str,
        name: &str,
        version: Option<&String>,
        body: &serde_json::Value,
    ) -> bool {
        let key = (what, namespace.to_string(), name.to_string());
        let entry = (version.cloned(), body.to_string());
        if self.sent.get(&key) == Some(&entry) {
            return false;
        }
        self.sent.insert(key, entry);
        true
    }

    fn forget(&mut self, what: &'static str, namespace: &str, name: &str) {
        self.sent
            .remove(&(what, namespace.to_string(), name.to_string()));
    }
}

fn in_scope(namespace: &str, scope: &Scope) -> bool {
    match scope {
        Scope::AllNamespaces => true,
        Scope::Namespaces(names) => names.iter().any(|n| n == namespace),
    }
}

async fn sync_all(
    client: &kube::Client,
    options: &Options,
    cache: &Cache,
    served_map: &ServedMap,
    memory: &mut Memory,
) -> Result<(), SyncError> {
    use kube::api::{Patch, PatchParams, PostParams};
    let now = options.clock.now();
    // Deployments that are gone serve nothing.
    let present: std::collections::HashSet<(&str, &str)> = cache
        .deployments
        .iter()
        .map(|d| {
            (
                d.metadata.namespace.as_deref().unwrap_or_default(),
                d.metadata.name.as_deref().unwrap_or_default(),
            )
        })
        .collect();
    served_map
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|(ns, name), _| present.contains(&(ns.as_str(), name.as_str())));
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    // ReplicaSets by the Deployment that controls them, grouped once per pass: cloning every
    // ReplicaSet of the namespace for each Deployment made a pass quadratic (minutes at 1,000
    // Deployments).
    let mut sets_by_owner: HashMap<(String, String), Vec<ReplicaSet>> = HashMap::new();
    for rs in &cache.replicasets {
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        let owners = rs.metadata.owner_references.iter().flatten();
        for owner in owners.filter(|r| r.kind == "Deployment" && r.controller == Some(true)) {
            sets_by_owner
                .entry((ns.clone(), owner.name.clone()))
                .or_default()
                .push(ReplicaSet::clone(rs));
        }
    }
    'deployments: for deployment in &cache.deployments {
        let ns = deployment.metadata.namespace.clone().unwrap_or_default();
        if !in_scope(&ns, &options.scope) || deployment.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = deployment.metadata.name.clone().unwrap_or_default();
        let same_ns: Vec<ReplicaSet> = sets_by_owner
            .remove(&(ns.clone(), name.clone()))
            .unwrap_or_default();
        let Some(Decision {
            status,
            changes,
            readiness,
        }) = memory.decide(deployment, &same_ns, now, &options.config)
        else {
            // The ReplicaSet cache is behind this stand-in's own create: its watch event wakes
            // the next pass.
            continue;
        };
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
        let version_of = |rs_name: &str| {
            same_ns
                .iter()
                .find(|rs| rs.metadata.name.as_deref() == Some(rs_name))
                .and_then(|rs| rs.metadata.resource_version.clone())
        };
        for change in changes {
            match change {
                ReplicaSetChange::Create(rs) => {
                    let rs_name = rs.metadata.name.clone().unwrap_or_default();
                    match rs_api.create(&PostParams::default(), &rs).await {
                        Ok(_) => {
                            memory.created.insert((ns.clone(), rs_name));
                        }
                        // AlreadyExists while the cache shows no such ReplicaSet: as the real
                        // controller, end this Deployment's sync without writing its status.
                        Err(kube::Error::Api(s)) if s.code == 409 => continue 'deployments,
                        Err(e) => return Err(write_error("ReplicaSet", &rs_name)(e)),
                    }
                }
                ReplicaSetChange::Scale {
                    name: rs_name,
                    replicas,
                    annotations,
                } => {
                    let patch = serde_json::json!({"metadata": {"annotations": annotations}, "spec": {"replicas": replicas}});
                    let version = version_of(&rs_name);
                    if !memory.first_time("scale", &ns, &rs_name, version.as_ref(), &patch) {
                        continue;
                    }
                    if let Err(e) = rs_api.patch(&rs_name, &params, &Patch::Merge(&patch)).await {
                        memory.forget("scale", &ns, &rs_name);
                        return Err(write_error("ReplicaSet", &rs_name)(e));
                    }
                }
                ReplicaSetChange::Status {
                    name: rs_name,
                    status,
                } => {
                    let patch = serde_json::json!({"status": with_nulls(&status, &["readyReplicas", "availableReplicas"])});
                    let version = version_of(&rs_name);
                    if !memory.first_time("rs-status", &ns, &rs_name, version.as_ref(), &patch) {
                        continue;
                    }
                    if let Err(e) = rs_api
                        .patch_status(&rs_name, &params, &Patch::Merge(&patch))
                        .await
                    {
                        memory.forget("rs-status", &ns, &rs_name);
                        return Err(write_error("ReplicaSet status", &rs_name)(e));
                    }
                }
            }
        }
        // A server that drops `terminatingReplicas` (its feature gate off) must not make every
        // pass look like a change.
        let stored = deployment.status.clone().unwrap_or_default();
        let comparable = DeploymentStatus {
            terminating_replicas: stored.terminating_replicas,
            ..status.clone()
        };
        if deployment.status.is_none() || stored != comparable {
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
            let version = deployment.metadata.resource_version.as_ref();
            if memory.first_time("status", &ns, &name, version, &patch) {
                let api: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), &ns);
                if let Err(e) = api
                    .patch_status(&name, &params, &Patch::Merge(&patch))
                    .await
                {
                    memory.forget("status", &ns, &name);
                    return Err(write_error("Deployment status", &name)(e));
                }
            }
        }
        if let Some(s) = served(deployment, &same_ns, &readiness, now, &options.config) {
            served_map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((ns.clone(), name.clone()), s);
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
