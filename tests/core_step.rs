//! The behaviour specification of the decision core: one YAML fixture per transition under
//! `tests/fixtures/core/`, each a Canary (spec and status) a user could write, what the controller
//! observed, and a fixed `now`, with the expected actions, phase, status fields, conditions and
//! event reasons. Every fixture runs in both hold modes; `byMode` states where they differ.
//!
//! Fixtures are deep-merged over `_base.yaml` (objects merge key by key; anything else replaces),
//! so each one only states what matters to its transition.

use jiff::Timestamp;
use serde_json::{Map, Value};
use sluice::api::{Canary, HoldMode};
use sluice::core::{self, Action, Decision, Observations};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/core");
const MODES: [HoldMode; 2] = [HoldMode::AdmissionPolicy, HoldMode::PausedAtRest];

fn load(name: &str) -> Value {
    let path = format!("{DIR}/{name}.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (k, v) in over {
                merge(base.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (base, over) => *base = over.clone(),
    }
}

fn mode_name(mode: HoldMode) -> &'static str {
    match mode {
        HoldMode::AdmissionPolicy => "AdmissionPolicy",
        HoldMode::PausedAtRest => "PausedAtRest",
    }
}

/// `expected` holds in `actual`: every key of an expected object is present and matches (null
/// meaning absent), lists match element by element, numbers by value.
fn subset(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let av = a.get(k).unwrap_or(&Value::Null);
                subset(ev, av, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                subset(ev, av, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => Ok(()),
        (e, a) if e == a => Ok(()),
        (e, a) => Err(format!("{path}: expected {e}, got {a}")),
    }
}

fn run(name: &str) {
    let base = load("_base");
    let fixture = load(name);
    for mode in MODES {
        let mode_key = mode_name(mode);
        let mut case = Value::Object(Map::new());
        for layer in [&base, &fixture] {
            let mut layer = layer.clone();
            let by_mode = layer
                .as_object_mut()
                .and_then(|o| o.remove("byMode"))
                .and_then(|b| b.get(mode_key).cloned());
            merge(&mut case, &layer);
            if let Some(by_mode) = by_mode {
                merge(&mut case, &by_mode);
            }
        }
        check(name, mode, &case);
    }
}

fn check(name: &str, mode: HoldMode, case: &Value) {
    let ctx = format!("{name} [{}]", mode_name(mode));
    let canary: Canary = serde_json::from_value(case["canary"].clone())
        .unwrap_or_else(|e| panic!("{ctx}: canary: {e}"));
    let mut observed: Observations = serde_json::from_value(case["observed"].clone())
        .unwrap_or_else(|e| panic!("{ctx}: observed: {e}"));
    observed.hold_mode = mode;
    let now: Timestamp = case["now"]
        .as_str()
        .unwrap_or_else(|| panic!("{ctx}: now"))
        .parse()
        .unwrap_or_else(|e| panic!("{ctx}: now: {e}"));
    let status = canary.status.clone().unwrap_or_default();
    let resolution = core::resolve(&canary.spec, &observed.dereferenced);
    let decision = core::step(&resolution, &status, &observed, now);
    let expect = &case["expect"];

    general_rules(&ctx, &decision, &observed);

    if let Some(phase) = expect.get("phase") {
        let actual = serde_json::to_value(decision.status.phase).unwrap_or_default();
        assert_eq!(
            &actual, phase,
            "{ctx}: phase; message: {:?}",
            decision.status.message
        );
    }
    if let Some(actions) = expect.get("actions") {
        let actual = serde_json::to_value(&decision.actions).unwrap_or_default();
        assert_eq!(
            &actual, actions,
            "{ctx}: actions\n  got:      {actual}\n  expected: {actions}\n  message: {:?}",
            decision.status.message
        );
    }
    if let Some(events) = expect.get("events") {
        let actual: Vec<String> = decision
            .events
            .iter()
            .map(|e| {
                if e.warning {
                    format!("Warning {}", e.reason)
                } else {
                    e.reason.to_string()
                }
            })
            .collect();
        assert_eq!(
            serde_json::to_value(&actual).unwrap_or_default(),
            *events,
            "{ctx}: events {:?}",
            decision.events
        );
    }
    if let Some(fields) = expect.get("status") {
        let actual = serde_json::to_value(&decision.status).unwrap_or_default();
        if let Err(e) = subset(fields, &actual, "status") {
            panic!("{ctx}: {e}\n  status: {actual}");
        }
    }
    if let Some(Value::Object(conditions)) = expect.get("conditions") {
        for (type_, want) in conditions {
            let want = want.as_str().unwrap_or_default();
            let found = decision
                .status
                .conditions
                .iter()
                .find(|c| &c.type_ == type_)
                .unwrap_or_else(|| panic!("{ctx}: no {type_} condition"));
            let actual = if want.contains('/') {
                format!("{}/{}", found.status, found.reason)
            } else {
                found.status.clone()
            };
            assert_eq!(actual, want, "{ctx}: condition {type_}: {found:?}");
        }
    }
    if let Some(contains) = expect.get("messageContains").and_then(Value::as_str) {
        let message = decision.status.message.clone().unwrap_or_default();
        assert!(
            message.contains(contains),
            "{ctx}: message {message:?} lacks {contains:?}"
        );
    }
    if let Some(requeue) = expect.get("requeueAfter") {
        let actual = serde_json::to_value(&decision).unwrap_or_default()["requeueAfter"].clone();
        assert_eq!(&actual, requeue, "{ctx}: requeueAfter");
    }
    if let Some(due) = expect.get("due") {
        let actual = serde_json::to_value(core::due(&resolution, &status, &observed, now))
            .unwrap_or_default();
        if let Err(e) = subset(due, &actual, "due") {
            panic!("{ctx}: {e}");
        }
    }
}

/// What every decision must satisfy, whatever the fixture.
fn general_rules(ctx: &str, decision: &Decision, observed: &Observations) {
    let message = decision.status.message.clone().unwrap_or_default();
    assert!(
        !message.is_empty() && !message.contains('\n'),
        "{ctx}: message {message:?}"
    );
    let set_targets: Vec<&Action> = decision
        .actions
        .iter()
        .filter(|a| matches!(a, Action::SetTarget { .. }))
        .collect();
    assert!(
        set_targets.len() <= 1,
        "{ctx}: several SetTarget {set_targets:?}"
    );
    for action in set_targets {
        if let Action::SetTarget {
            resource_version, ..
        } = action
        {
            let observed_rv = observed
                .target
                .as_ref()
                .map(|t| t.resource_version.as_str());
            assert_eq!(Some(resource_version.as_str()), observed_rv, "{ctx}: I6");
        }
    }
    assert_eq!(
        decision.status.observed_generation,
        Some(observed.generation),
        "{ctx}"
    );
    assert_eq!(decision.status.hold_mode, Some(observed.hold_mode), "{ctx}");
    for condition in &decision.status.conditions {
        assert!(
            condition.message.starts_with("revision ")
                || condition.message.starts_with("no revision"),
            "{ctx}: condition {} does not name the revision: {:?}",
            condition.type_,
            condition.message
        );
        assert_eq!(
            condition.observed_generation,
            Some(observed.generation),
            "{ctx}"
        );
    }
    assert!(
        decision.status.analysis.len() <= 20,
        "{ctx}: analysis log unbounded"
    );
}

macro_rules! fixtures {
    ($($name:ident),* $(,)?) => {
        const FIXTURES: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*
    };
}

#[test]
fn every_fixture_file_has_a_test() {
    let mut files: Vec<String> = std::fs::read_dir(DIR)
        .expect("fixture dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter_map(|n| n.strip_suffix(".yaml").map(str::to_owned))
        .filter(|n| n != "_base")
        .collect();
    files.sort();
    let mut listed: Vec<String> = FIXTURES.iter().map(|s| (*s).to_owned()).collect();
    listed.sort();
    assert_eq!(files, listed);
}

fixtures! {
first_sight_adopts_the_template_as_stable_and_labels_the_target,
    a_route_already_at_the_next_step_after_a_restart_is_that_step_taken_once,
    a_first_check_waits_until_its_query_window_lies_inside_the_step,
    checks_of_a_step_never_read_overlapping_windows,
    a_query_the_provider_refuses_is_an_invalid_spec_not_an_unknown,
    a_refused_query_stays_invalid_until_the_query_changes,
    a_changed_query_lifts_the_refusal,
    a_missing_target_waits_with_ready_false,
    at_rest_converges_a_stray_canary_and_route_to_the_rest_state,
    a_failed_revision_stays_held_in_both_modes,
    a_new_revision_starts_a_canary_beside_the_stable_one,
    a_new_template_that_was_not_held_is_paused_at_once_with_a_warning,
    no_traffic_moves_before_the_canary_is_ready,
    a_canary_not_ready_by_the_progress_deadline_rolls_back_traffic_first,
    a_ready_canary_gets_the_first_step_weight,
    a_confirm_rollout_gate_holds_without_counting_failures,
    a_passing_confirm_rollout_gate_lets_traffic_start,
    a_failing_pre_rollout_hook_counts_as_a_failed_check,
    a_failing_rollout_hook_counts_as_a_failed_check,
    a_rollout_hook_that_was_not_called_leaves_the_check_unknown,
    a_passing_check_advances_to_the_next_step_and_clears_unknown,
    no_step_advances_before_its_interval,
    no_metrics_is_a_passing_check,
    a_failing_check_below_the_threshold_holds_and_counts,
    a_failing_check_at_the_threshold_rolls_back_traffic_first,
    an_unknown_check_holds_and_records_since_when,
    unknown_past_the_deadline_rolls_back,
    unknown_past_the_deadline_pauses_when_configured,
    the_last_step_passing_with_manual_promotion_waits_for_a_person,
    a_promote_command_for_this_revision_starts_promotion,
    a_command_for_another_revision_is_refused_and_never_applied_later,
    a_command_answered_once_is_not_answered_again_when_its_time_has_fractional_seconds,
    the_last_step_passing_promotes_by_releasing_the_target,
    a_confirm_promotion_gate_holds_promotion,
    a_passing_confirm_promotion_gate_promotes,
    promotion_waits_until_the_target_is_fully_on_the_new_revision,
    a_finished_promotion_routes_to_stable_reholds_and_scales_down,
    a_promotion_past_the_progress_deadline_warns_and_keeps_waiting,
    blue_green_starts_the_canary_at_full_size,
    blue_green_analyses_with_no_traffic,
    blue_green_switches_all_traffic_after_its_iterations,
    ab_testing_sends_only_matching_requests_to_the_canary,
    ab_testing_promotes_after_its_iterations,
    ab_testing_promotion_removes_the_header_match,
    ab_testing_rollback_removes_the_header_match_first,
    replica_ratio_steps_scale_the_canary_instead_of_routing,
    a_newer_revision_mid_canary_sends_traffic_to_stable_first_then_restarts,
    a_template_change_during_promotion_is_held_and_treated_as_new,
    a_template_back_at_stable_ends_the_canary,
    abort_rolls_back_traffic_first,
    retry_starts_the_failed_revision_again,
    pause_holds_everything_where_it_is,
    a_paused_rollout_asks_for_no_checks,
    resume_continues_with_a_fresh_step_clock,
    skip_advances_one_step_now,
    promote_full_skips_the_remaining_steps_and_analysis,
    deleting_the_canary_opts_the_target_out,
    deleting_without_a_target_only_cleans_up,
    an_invalid_spec_moves_nothing_and_says_which_field,
    a_fixed_spec_clears_invalid_spec_and_continues,
    a_missing_policy_is_an_invalid_spec,
    a_policy_supplies_what_the_canary_leaves_out,
    router_read_back_drift_is_corrected_before_any_check,
    router_read_back_drift_while_waiting_for_promotion_is_put_back,
    a_canary_losing_its_ready_pods_gets_its_traffic_withdrawn,
    an_ab_canary_losing_its_ready_pods_gets_its_header_match_withdrawn,
    an_ab_canary_ready_again_gets_its_header_match_back_with_a_fresh_clock,
    a_target_unpaused_mid_canary_is_paused_again,
    post_rollout_hooks_are_called_after_promotion,
    post_rollout_hooks_are_called_only_once,
    a_failing_rollback_hook_is_told_not_acted_on,
    the_analysis_log_keeps_the_last_twenty_checks,
    a_step_weights_edit_mid_step_keeps_the_weight_the_step_started_with,
    after_a_step_weights_edit_the_next_step_is_the_first_above_the_weight_held,
    a_step_weights_edit_below_the_weight_held_promotes_after_the_step,
    an_interval_lengthened_mid_step_makes_the_step_last_the_new_interval,
    an_interval_shortened_mid_step_ends_the_step_at_the_new_interval,
    a_threshold_raised_mid_rollout_judges_the_next_failed_check,
    a_threshold_lowered_to_the_failed_checks_waits_for_the_next_failure,
    a_stable_side_with_no_ready_pods_holds_the_step_and_moves_no_traffic,
    a_stable_side_with_no_ready_pods_gets_no_first_step,
    the_canary_follows_the_targets_replicas_at_the_weight_it_carries,
    a_target_deleted_mid_rollout_fails_it_and_removes_only_what_sluice_made,
    a_target_deleted_at_rest_removes_what_sluice_made_and_waits,
}
