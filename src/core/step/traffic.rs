//! The writes that move traffic or hold the target: the target's label and `paused`, the route,
//! the canary's size, and keeping them where the rollout needs them.

use super::Machine;
use super::predicates::{canary_replicas, first_weight, step_weight};
use crate::api::Phase;
use crate::core::router::Router;
use crate::core::validate::{Resolved, Strategy};
use crate::core::{Action, EventReason, TargetState};

impl Machine<'_> {
    /// Writes label and `paused` in one conditional apply, only when they differ, and at most once
    /// per decision (a second write with the same resourceVersion would fail with 409).
    pub(super) fn set_target(&mut self, target: &TargetState, labelled: bool, paused: bool) {
        let written = self
            .actions
            .iter()
            .any(|a| matches!(a, Action::SetTarget { .. }));
        if written || (target.labelled == labelled && target.paused == paused) {
            return;
        }
        self.actions.push(Action::SetTarget {
            resource_version: target.resource_version.clone(),
            labelled,
            paused,
            starts_clock: None,
        });
    }

    fn route(&mut self, resolved: &Resolved, weight: i32) {
        match &resolved.router {
            Router::ReplicaRatio => {}
            Router::GatewayApi { .. }
            | Router::Nginx { .. }
            | Router::Istio { .. }
            | Router::Smi { .. }
            | Router::Traefik { .. }
            | Router::Service => {
                let matches = match &resolved.strategy {
                    Strategy::AbTesting { matches, .. } if weight < 100 => matches.clone(),
                    Strategy::AbTesting { .. }
                    | Strategy::Canary { .. }
                    | Strategy::BlueGreen { .. } => Vec::new(),
                };
                self.actions.push(Action::SetRoute {
                    canary_weight: weight,
                    matches,
                    starts_clock: None,
                });
            }
        }
    }

    /// Sends all traffic back to stable: weight 0 and, for A/B, no header match either (a match
    /// left in place would keep sending its requests to a canary that is being scaled down).
    pub(super) fn route_to_stable(&mut self, resolved: &Resolved) {
        match &resolved.router {
            Router::ReplicaRatio => {}
            Router::GatewayApi { .. }
            | Router::Nginx { .. }
            | Router::Istio { .. }
            | Router::Smi { .. }
            | Router::Traefik { .. }
            | Router::Service => self.actions.push(Action::SetRoute {
                canary_weight: 0,
                matches: Vec::new(),
                starts_clock: None,
            }),
        }
    }

    pub(super) fn scale_down(&mut self) {
        if self
            .observed
            .canary
            .as_ref()
            .is_some_and(|c| c.replicas > 0)
        {
            self.actions.push(Action::ScaleCanary {
                replicas: 0,
                starts_clock: None,
            });
        }
    }

    /// Moves the canary to `weight`: sizes it, then routes (or, with no router, sizes it to the
    /// replica ratio). Callers have checked that the canary is ready (I1).
    pub(super) fn set_traffic(&mut self, resolved: &Resolved, target: &TargetState, weight: i32) {
        let replicas = canary_replicas(resolved, target, weight);
        let current = self.observed.canary.as_ref().map_or(0, |c| c.replicas);
        match &resolved.router {
            Router::ReplicaRatio => {
                if current != replicas {
                    self.actions.push(Action::ScaleCanary {
                        replicas,
                        starts_clock: None,
                    });
                }
            }
            Router::GatewayApi { .. }
            | Router::Nginx { .. }
            | Router::Istio { .. }
            | Router::Smi { .. }
            | Router::Traefik { .. }
            | Router::Service => {
                if current < replicas {
                    self.actions.push(Action::ScaleCanary {
                        replicas,
                        starts_clock: None,
                    });
                }
                self.route(resolved, weight);
            }
        }
        self.status.canary_weight = weight;
    }

    /// The template of a canary phase must stay held; anything else is a race to correct at once.
    pub(super) fn keep_held(&mut self, target: &TargetState) {
        if !target.paused || !target.labelled {
            self.set_target(target, true, true);
            if !target.paused {
                self.event(
                    true,
                    EventReason::TemplateNotHeld,
                    format!(
                        "the target was unpaused while revision {} is analysed; pausing it again",
                        target.revision
                    ),
                );
            }
        }
    }

    pub(super) fn ensure_canary(&mut self, resolved: &Resolved, target: &TargetState) {
        let revision = self.revision();
        let stale =
            self.observed.canary.as_ref().is_none_or(|c| {
                c.revision.as_deref() != Some(revision.as_str()) || c.replicas == 0
            });
        if stale {
            self.actions.push(Action::ApplyCanary {
                revision,
                replicas: canary_replicas(resolved, target, first_weight(resolved)),
                starts_clock: None,
            });
        }
    }

    /// Keeps the canary at its share of the target's capacity when the target's replicas change
    /// mid-step (an HPA, a person, a scale to zero): sized for the weight the step carries, as
    /// [`canary_replicas`] sizes it. Only its replicas change, never the weight or the step's
    /// clock. Left to the decision's own sizing when it already resizes the canary (a new step,
    /// a rollback), and to the next decision when it leaves the steps.
    pub(super) fn follow_target_size(&mut self, resolved: &Resolved, target: &TargetState) {
        let resized = self.actions.iter().any(|a| {
            matches!(
                a,
                Action::ScaleCanary { .. } | Action::ApplyCanary { .. } | Action::DeleteCanary
            )
        });
        if resized || self.phase() != Phase::Progressing {
            return;
        }
        let Some(canary) = &self.observed.canary else {
            return;
        };
        let replicas = canary_replicas(resolved, target, step_weight(resolved, &self.status));
        if canary.replicas > 0 && canary.replicas != replicas {
            self.actions.push(Action::ScaleCanary {
                replicas,
                starts_clock: None,
            });
        }
    }
}
