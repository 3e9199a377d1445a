//! The simulated cluster: the target Deployment, the canary Deployment, the router and
//! Prometheus, each behaving as in Kubernetes closely enough for the core's decisions to play out
//! (a paused Deployment does not roll, pods get ready after a delay, a stale resourceVersion is a
//! conflict). It applies the core's actions and answers its observations; it never decides.

use std::time::Duration;

use super::scenario::{ReadyAfter, Scenario, Segment};
use crate::api::{HoldMode, HookSpec};
use crate::core::{
    Action, HookResult, MetricResult, Observations, RouterState, Sample, TargetState,
    WorkloadState, validate::ResolvedMetric,
};

/// The target Deployment as Kubernetes would keep it.
#[derive(Clone, Debug)]
pub struct Target {
    pub resource_version: u64,
    pub generation: i64,
    /// Revision of `spec.template`.
    pub template: String,
    /// Revision the pods run when fully rolled.
    pub pods: String,
    pub paused: bool,
    pub labelled: bool,
    pub replicas: i32,
    /// How long rolling the template takes, and how far it got (only advances while unpaused).
    pub rollout_duration: Duration,
    pub rollout_progress: Duration,
}

/// The canary Deployment.
#[derive(Clone, Debug)]
pub struct CanaryPods {
    pub revision: String,
    pub replicas: i32,
    pub ready: i32,
    /// When every replica will be ready; `None` when they are, or never will be.
    pub ready_at: Option<Duration>,
}

/// Something observable the world did by itself at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Happening {
    CanaryReady { ready: i32 },
    TargetRolled { revision: String },
}

/// The whole simulated cluster at one instant.
#[derive(Clone, Debug)]
pub struct World {
    pub now: Duration,
    pub hold_mode: HoldMode,
    pub target: Target,
    pub canary: Option<CanaryPods>,
    pub route: Option<i32>,
    /// The route sends header-matched requests to the canary (A/B).
    pub matched: bool,
    ready_after: ReadyAfter,
    /// Checks run so far per metric and segment, for `values` lists.
    checks_in_segment: std::collections::BTreeMap<(String, usize), usize>,
}

impl World {
    pub fn new(scenario: &Scenario) -> Self {
        Self {
            now: Duration::ZERO,
            hold_mode: scenario.hold_mode,
            target: Target {
                resource_version: 1,
                generation: 1,
                template: scenario.target.revision.clone(),
                pods: scenario.target.revision.clone(),
                paused: false,
                labelled: false,
                replicas: scenario.target.replicas,
                rollout_duration: scenario.target.rollout_duration.as_std(),
                rollout_progress: Duration::ZERO,
            },
            canary: None,
            route: None,
            matched: false,
            ready_after: scenario.canary_pods.ready_after,
            checks_in_segment: Default::default(),
        }
    }

    /// Moves the clock to `to`, letting pods get ready and the target roll meanwhile.
    pub fn advance(&mut self, to: Duration) -> Vec<Happening> {
        let mut happened = Vec::new();
        let elapsed = to.saturating_sub(self.now);
        self.now = to;
        if let Some(canary) = &mut self.canary
            && canary.ready_at.is_some_and(|at| at <= to)
        {
            canary.ready = canary.replicas;
            canary.ready_at = None;
            happened.push(Happening::CanaryReady {
                ready: canary.ready,
            });
        }
        let target = &mut self.target;
        if !target.paused && target.pods != target.template {
            target.rollout_progress += elapsed;
            if target.rollout_progress >= target.rollout_duration {
                target.pods = target.template.clone();
                target.rollout_progress = Duration::ZERO;
                happened.push(Happening::TargetRolled {
                    revision: target.pods.clone(),
                });
            }
        }
        happened
    }

    /// The next time the world changes by itself, if it will.
    pub fn next_happening(&self) -> Option<Duration> {
        let ready = self.canary.as_ref().and_then(|c| c.ready_at);
        let target = &self.target;
        let rolled = (!target.paused && target.pods != target.template).then(|| {
            self.now
                + target
                    .rollout_duration
                    .saturating_sub(target.rollout_progress)
        });
        [ready, rolled].into_iter().flatten().min()
    }

    /// Invariant I1: no weight on a side with zero ready pods. The stable side always has ready
    /// pods here, so only the canary side can break it.
    pub fn weight_without_ready_pods(&self) -> Option<String> {
        let weight = self.route.filter(|w| *w > 0)?;
        let ready = self.canary.as_ref().map_or(0, |c| c.ready);
        (ready == 0).then(|| format!("{weight}% of traffic goes to a canary with no ready pods"))
    }

    /// A new template lands on the target (a GitOps sync or `kubectl apply`).
    pub fn new_template(&mut self, revision: &str) {
        let target = &mut self.target;
        target.template = revision.to_owned();
        target.generation += 1;
        target.resource_version += 1;
        target.rollout_progress = Duration::ZERO;
        // The admission policy pauses a labelled Deployment in the very write that changes its
        // template.
        if self.hold_mode == HoldMode::AdmissionPolicy && target.labelled {
            target.paused = true;
        }
    }

    /// What the controller would observe from its caches.
    pub fn observe(&self) -> Observations {
        let target = &self.target;
        let rolled = target.pods == target.template;
        let updated = if rolled {
            target.replicas
        } else {
            let fraction = target.rollout_progress.as_secs_f64()
                / target.rollout_duration.as_secs_f64().max(1e-9);
            // Whole pods only: a pod is updated once it is replaced.
            (f64::from(target.replicas) * fraction).floor() as i32
        };
        Observations {
            generation: 1,
            hold_mode: self.hold_mode,
            target: Some(TargetState {
                resource_version: target.resource_version.to_string(),
                generation: target.generation,
                observed_generation: target.generation,
                revision: target.template.clone(),
                paused: target.paused,
                labelled: target.labelled,
                replicas: target.replicas,
                status_replicas: target.replicas + i32::from(!rolled && !target.paused),
                updated_replicas: updated,
                ready_replicas: target.replicas,
                available_replicas: target.replicas,
            }),
            canary: self.canary.as_ref().map(|c| WorkloadState {
                revision: Some(c.revision.clone()),
                replicas: c.replicas,
                ready_replicas: c.ready,
                available_replicas: c.ready,
            }),
            router: RouterState {
                canary_weight: self.route,
                matched: self.matched,
                missing: false,
            },
            ..Observations::default()
        }
    }

    /// Carries out one action. `Err` is the conflict an API server would answer; the controller
    /// stops executing the decision there.
    pub fn apply(&mut self, action: &Action) -> Result<bool, String> {
        match action {
            Action::SetTarget {
                resource_version,
                labelled,
                paused,
                ..
            } => {
                let target = &mut self.target;
                if *resource_version != target.resource_version.to_string() {
                    return Err(format!(
                        "409 Conflict: the target changed since the decision (resourceVersion {} is now {})",
                        resource_version, target.resource_version
                    ));
                }
                let changed = target.labelled != *labelled || target.paused != *paused;
                if target.paused != *paused {
                    target.generation += 1;
                }
                target.labelled = *labelled;
                target.paused = *paused;
                if changed {
                    target.resource_version += 1;
                }
                Ok(changed)
            }
            Action::ApplyCanary {
                revision, replicas, ..
            } => {
                let same = self
                    .canary
                    .as_ref()
                    .is_some_and(|c| &c.revision == revision);
                if !same {
                    self.canary = Some(CanaryPods {
                        revision: revision.clone(),
                        replicas: 0,
                        ready: 0,
                        ready_at: None,
                    });
                }
                Ok(self.scale(*replicas) || !same)
            }
            Action::ScaleCanary { replicas, .. } => Ok(self.scale(*replicas)),
            Action::ApplyCanaryService | Action::RemoveFinalizer => Ok(false),
            Action::SetRoute {
                canary_weight,
                matches,
                ..
            } => {
                let changed =
                    self.route != Some(*canary_weight) || self.matched == matches.is_empty();
                self.route = Some(*canary_weight);
                self.matched = !matches.is_empty();
                Ok(changed)
            }
            Action::RemoveRoute => {
                self.matched = false;
                Ok(self.route.take().is_some())
            }
            Action::DeleteCanary => Ok(self.canary.take().is_some()),
        }
    }

    fn scale(&mut self, replicas: i32) -> bool {
        let now = self.now;
        let ready_after = self.ready_after;
        let Some(canary) = &mut self.canary else {
            return false;
        };
        if canary.replicas == replicas {
            return false;
        }
        canary.replicas = replicas;
        if replicas <= canary.ready {
            canary.ready = replicas;
            canary.ready_at = None;
        } else {
            canary.ready_at = match ready_after {
                ReadyAfter::After(delay) => Some(now + delay.as_std()),
                ReadyAfter::Never => None,
            };
        }
        true
    }

    /// Runs every metric's check now, as Prometheus would answer it.
    pub fn checks(&mut self, scenario: &Scenario, metrics: &[ResolvedMetric]) -> Vec<MetricResult> {
        let down = scenario
            .outages
            .iter()
            .any(|o| o.from.as_std() <= self.now && self.now < o.to.as_std());
        metrics
            .iter()
            .map(|metric| {
                if down {
                    let error =
                        || Sample::Error("Prometheus unreachable (simulated outage)".into());
                    return MetricResult {
                        metric: metric.name.clone(),
                        query: metric.query.clone(),
                        canary: error(),
                        stable: metric.compare.as_ref().map(|_| error()),
                        canary_total: metric.total_query.as_ref().map(|_| error()),
                        stable_total: metric.total_query.as_ref().map(|_| error()),
                    };
                }
                let segments = scenario.metrics.get(&metric.name);
                let current = segments.and_then(|s| {
                    s.iter()
                        .enumerate()
                        .rev()
                        .find(|(_, seg)| seg.at.as_std() <= self.now)
                });
                let Some((index, segment)) = current else {
                    return MetricResult {
                        metric: metric.name.clone(),
                        query: metric.query.clone(),
                        canary: Sample::NoData,
                        stable: None,
                        canary_total: None,
                        stable_total: None,
                    };
                };
                let count = self
                    .checks_in_segment
                    .entry((metric.name.clone(), index))
                    .or_default();
                let canary = sample_of(segment, *count, self.now);
                *count += 1;
                MetricResult {
                    metric: metric.name.clone(),
                    query: metric.query.clone(),
                    canary,
                    stable: segment.stable.map(Sample::Value),
                    canary_total: segment.canary_total.map(Sample::Value),
                    stable_total: segment.stable_total.map(Sample::Value),
                }
            })
            .collect()
    }
}

fn sample_of(segment: &Segment, check: usize, now: Duration) -> Sample {
    if let Some(value) = segment.value {
        return Sample::Value(value);
    }
    if let Some(values) = &segment.values
        && let Some(last) = values.last()
    {
        return Sample::Value(*values.get(check).unwrap_or(last));
    }
    if let Some(ramp) = segment.ramp {
        let over = ramp.over.as_std().as_secs_f64();
        let elapsed = now.saturating_sub(segment.at.as_std()).as_secs_f64();
        let fraction = if over > 0.0 {
            (elapsed / over).min(1.0)
        } else {
            1.0
        };
        let value = ramp.from + (ramp.to - ramp.from) * fraction;
        // Six decimals: what a person writes in a limit, without float noise in the timeline.
        return Sample::Value((value * 1e6).round() / 1e6);
    }
    if segment.nan {
        return Sample::NaN;
    }
    Sample::NoData
}

/// Every hook the core asked for answers 2xx: hooks are not part of the scenario format yet.
pub fn hook_results(asked: &[String], hooks: &[HookSpec]) -> Vec<HookResult> {
    asked
        .iter()
        .filter_map(|name| hooks.iter().find(|h| &h.name == name))
        .map(|hook| HookResult {
            name: hook.name.clone(),
            hook_type: hook.hook_type,
            passed: true,
            message: "200 OK (simulated)".into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> World {
        let scenario = Scenario::parse(crate::tools::simulate::HEALTHY).expect("healthy parses");
        World::new(&scenario)
    }

    #[test]
    fn weight_on_a_canary_without_ready_pods_breaks_i1() {
        let mut world = world();
        world
            .apply(&Action::ApplyCanary {
                revision: "abc".into(),
                replicas: 1,
                starts_clock: None,
            })
            .expect("applied");
        world
            .apply(&Action::SetRoute {
                canary_weight: 10,
                matches: Vec::new(),
                starts_clock: None,
            })
            .expect("applied");
        assert!(world.weight_without_ready_pods().is_some());
        world.advance(Duration::from_secs(20));
        assert_eq!(world.weight_without_ready_pods(), None);
    }

    #[test]
    fn a_stale_resource_version_is_a_conflict() {
        let mut world = world();
        let stale = world.target.resource_version.to_string();
        world.new_template("abc");
        let result = world.apply(&Action::SetTarget {
            resource_version: stale,
            labelled: true,
            paused: false,
            starts_clock: None,
        });
        assert!(result.is_err());
        assert!(!world.target.labelled);
    }

    #[test]
    fn a_paused_target_does_not_roll_and_an_unpaused_one_rolls_over_its_duration() {
        let mut world = world();
        let rv = world.target.resource_version.to_string();
        world
            .apply(&Action::SetTarget {
                resource_version: rv,
                labelled: true,
                paused: false,
                starts_clock: None,
            })
            .expect("applied");
        world.new_template("abc");
        assert!(
            world.target.paused,
            "the admission policy pauses a labelled target"
        );
        world.advance(Duration::from_secs(600));
        assert_ne!(world.target.pods, "abc");
        let rv = world.target.resource_version.to_string();
        world
            .apply(&Action::SetTarget {
                resource_version: rv,
                labelled: true,
                paused: false,
                starts_clock: None,
            })
            .expect("applied");
        assert_eq!(world.next_happening(), Some(Duration::from_secs(660)));
        world.advance(Duration::from_secs(660));
        assert_eq!(world.target.pods, "abc");
    }
}
