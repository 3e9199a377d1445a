//! `sluice simulate` over the shipped scenarios, through the library (asserting what the timeline
//! shows) and through the real binary (text, JSON parsed back, exit codes).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use sluice::api::Verdict;
use sluice::tools::simulate::scenario::{Outcome, Scenario};
use sluice::tools::simulate::{Timeline, What, render_text, simulate};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scenario_text(name: &str) -> String {
    std::fs::read_to_string(root().join("examples/scenarios").join(name))
        .expect("scenario readable")
}

fn run(name: &str) -> (Scenario, Timeline) {
    let scenario = Scenario::parse(&scenario_text(name)).expect("scenario parses");
    let timeline = simulate(&scenario);
    (scenario, timeline)
}

fn seconds(d: Option<sluice::api::Duration>, default: u64) -> f64 {
    d.map_or(default as f64, |d| d.as_std().as_secs_f64())
}

fn analysis(scenario: &Scenario) -> sluice::api::AnalysisSpec {
    scenario
        .canary
        .spec
        .rollout
        .analysis
        .clone()
        .expect("scenario sets analysis")
}

/// (time, verdict) of every check in the timeline.
fn checks(timeline: &Timeline) -> Vec<(f64, Verdict)> {
    timeline
        .events
        .iter()
        .filter_map(|e| {
            if let What::Check { verdict, .. } = &e.what {
                Some((e.at_seconds, *verdict))
            } else {
                None
            }
        })
        .collect()
}

fn revision_arrival(timeline: &Timeline) -> f64 {
    timeline
        .events
        .iter()
        .find(|e| matches!(&e.what, What::Scenario { message } if message.starts_with("new revision")))
        .map(|e| e.at_seconds)
        .expect("a new revision arrives")
}

fn sluice(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("sluice runs")
}

#[test]
fn every_shipped_scenario_reaches_its_expected_outcome() {
    let mut names: Vec<String> = std::fs::read_dir(root().join("examples/scenarios"))
        .expect("scenarios directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 7, "{names:?}");
    for name in names {
        let (scenario, timeline) = run(&name);
        assert!(scenario.expect.is_some(), "{name} states its expectation");
        assert_eq!(
            timeline.outcome.violations,
            0,
            "{name}:\n{}",
            render_text(&timeline)
        );
        assert_eq!(
            timeline.outcome.expectation_met,
            Some(true),
            "{name}:\n{}",
            render_text(&timeline)
        );
    }
}

#[test]
fn a_healthy_canary_passes_every_step_and_is_promoted() {
    let (_, timeline) = run("healthy.yaml");
    assert_eq!(
        timeline.outcome.outcome,
        Outcome::Promoted,
        "{}",
        render_text(&timeline)
    );
    let weights: Vec<i32> = timeline
        .steps
        .iter()
        .map(|s| s.weight)
        .filter(|w| *w > 0)
        .collect();
    assert_eq!(
        weights,
        vec![10, 20, 30, 40, 50],
        "{}",
        render_text(&timeline)
    );
    let all = checks(&timeline);
    assert!(!all.is_empty());
    assert!(all.iter().all(|(_, v)| *v == Verdict::Pass), "{all:?}");
    assert!(
        timeline
            .outcome
            .summary
            .starts_with("Promoted revision 5d8f9c2a1b after 5 step(s) in "),
        "{}",
        timeline.outcome.summary
    );
}

#[test]
fn regressions_roll_back_within_threshold_intervals_of_the_first_bad_check() {
    for name in ["error-rate-regression.yaml", "latency-regression.yaml"] {
        let (scenario, timeline) = run(name);
        let text = render_text(&timeline);
        assert_eq!(
            timeline.outcome.outcome,
            Outcome::RolledBack,
            "{name}:\n{text}"
        );
        let analysis = analysis(&scenario);
        let threshold = f64::from(analysis.threshold.expect("threshold set"));
        let interval = seconds(analysis.interval, 60);
        let first_bad = checks(&timeline)
            .into_iter()
            .find(|(_, v)| *v == Verdict::Fail)
            .map(|(at, _)| at)
            .expect("a failed check");
        let took = timeline.outcome.at_seconds - first_bad;
        assert!(
            took <= threshold * interval,
            "{name}: rolled back {took}s after the first bad check, more than {threshold} x {interval}s:\n{text}"
        );
        // Traffic ends on stable.
        assert_eq!(
            timeline.steps.last().map(|s| s.weight),
            Some(0),
            "{name}:\n{text}"
        );
    }
}

#[test]
fn an_outage_that_recovers_holds_the_step_and_the_rollout_is_promoted() {
    let (_, timeline) = run("prometheus-outage-recovers.yaml");
    let text = render_text(&timeline);
    assert_eq!(timeline.outcome.outcome, Outcome::Promoted, "{text}");
    let all = checks(&timeline);
    assert!(
        all.iter().any(|(_, v)| *v == Verdict::Unknown),
        "the outage shows as Unknown:\n{text}"
    );
    assert!(
        all.iter().all(|(_, v)| *v != Verdict::Fail),
        "Unknown is not Fail:\n{text}"
    );
}

#[test]
fn an_outage_that_persists_rolls_back_at_the_unknown_deadline() {
    let (scenario, timeline) = run("prometheus-outage-persists.yaml");
    let text = render_text(&timeline);
    assert_eq!(timeline.outcome.outcome, Outcome::RolledBack, "{text}");
    let analysis = analysis(&scenario);
    let deadline = seconds(analysis.unknown_deadline, 300);
    let interval = seconds(analysis.interval, 60);
    let all = checks(&timeline);
    assert!(
        all.iter().all(|(_, v)| *v != Verdict::Fail),
        "Unknown is not Fail:\n{text}"
    );
    let first_unknown = all
        .iter()
        .find(|(_, v)| *v == Verdict::Unknown)
        .map(|(at, _)| *at)
        .expect("an Unknown check");
    let held = timeline.outcome.at_seconds - first_unknown;
    assert!(
        held >= deadline && held <= deadline + interval,
        "rolled back {held}s after the first Unknown check; the deadline is {deadline}s:\n{text}"
    );
}

#[test]
fn pods_that_never_get_ready_get_no_traffic_and_roll_back_at_the_progress_deadline() {
    let (scenario, timeline) = run("pods-never-ready.yaml");
    let text = render_text(&timeline);
    assert_eq!(timeline.outcome.outcome, Outcome::RolledBack, "{text}");
    assert!(
        timeline.steps.iter().all(|s| s.weight == 0),
        "no weight on a side with no ready pods (I1):\n{text}"
    );
    let analysis = analysis(&scenario);
    let deadline = seconds(analysis.progress_deadline, 600);
    let interval = seconds(analysis.interval, 60);
    let waited = timeline.outcome.at_seconds - revision_arrival(&timeline);
    assert!(
        waited >= deadline && waited <= deadline + interval,
        "rolled back {waited}s after the revision arrived; the deadline is {deadline}s:\n{text}"
    );
}

#[test]
fn blue_green_switches_all_traffic_at_once_after_its_iterations() {
    let (scenario, timeline) = run("blue-green.yaml");
    let text = render_text(&timeline);
    assert_eq!(timeline.outcome.outcome, Outcome::Promoted, "{text}");
    let iterations = scenario
        .canary
        .spec
        .rollout
        .strategy
        .as_ref()
        .and_then(|s| s.blue_green.as_ref())
        .map(|b| b.iterations)
        .expect("a blue/green scenario");
    let metrics = analysis(&scenario).metrics.map_or(0, |m| m.len());
    let passed = checks(&timeline)
        .iter()
        .filter(|(_, v)| *v == Verdict::Pass)
        .count();
    assert!(
        passed >= iterations as usize * metrics,
        "{passed} passing checks:\n{text}"
    );
    let weights: Vec<i32> = timeline
        .steps
        .iter()
        .map(|s| s.weight)
        .filter(|w| *w > 0)
        .collect();
    assert_eq!(
        weights.first(),
        Some(&100),
        "one switch of all traffic:\n{text}"
    );
}

#[test]
fn an_hour_long_rollout_is_simulated_without_waiting() {
    let text = scenario_text("healthy.yaml")
        .replace(
            "stepWeight: 10\n        maxWeight: 50",
            "stepWeight: 1\n        maxWeight: 60",
        )
        .replace("within: 15m", "within: 2h");
    let scenario = Scenario::parse(&text).expect("scenario parses");
    let started = Instant::now();
    let timeline = simulate(&scenario);
    let took = started.elapsed();
    assert_eq!(
        timeline.outcome.outcome,
        Outcome::Promoted,
        "{}",
        render_text(&timeline)
    );
    assert!(
        timeline.outcome.duration_seconds >= 3600.0,
        "{}",
        timeline.outcome.summary
    );
    // Waiting would take the simulated hour itself: a tenth of it is out of reach for anything
    // that sleeps through the steps, and far beyond a debug build on a loaded machine (seconds).
    // How fast it is belongs to the benchmark, not to this test.
    assert!(
        took.as_secs_f64() < timeline.outcome.duration_seconds / 10.0,
        "took {took:?} to simulate {}s",
        timeline.outcome.duration_seconds
    );
}

#[test]
fn the_binary_runs_the_built_in_healthy_scenario_from_any_directory() {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("simulate")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("sluice runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("outcome: Promoted revision 5d8f9c2a1b after 5 step(s) in "),
        "{stdout}"
    );
}

#[test]
fn the_binary_prints_the_timeline_as_json() {
    let output = sluice(&[
        "simulate",
        "examples/scenarios/error-rate-regression.yaml",
        "-o",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON output");
    assert_eq!(json["outcome"]["outcome"], "RolledBack");
    assert_eq!(json["outcome"]["expectationMet"], true);
    let events = json["events"].as_array().expect("events array");
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "check" && e["verdict"] == "Fail"),
        "{events:#?}"
    );
    assert!(json["steps"].as_array().is_some_and(|s| !s.is_empty()));
}

#[test]
fn the_binary_exits_1_when_the_expectation_does_not_hold() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("wrong.yaml");
    let text = scenario_text("healthy.yaml").replace("outcome: Promoted", "outcome: RolledBack");
    std::fs::write(&path, text).expect("scenario written");
    let output = sluice(&["simulate", path.to_str().expect("utf-8 path")]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("NOT MET"));
}

#[test]
fn the_binary_exits_2_for_a_missing_or_malformed_scenario() {
    let output = sluice(&["simulate", "does/not/exist.yaml"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let output = sluice(&["simulate", "examples/canary.yaml"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("failed to parse the scenario"));
    let output = sluice(&["simulate", "-o", "xml"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

fn healthy_with(extra_timeline: &str) -> Scenario {
    let text = scenario_text("healthy.yaml").replace(
        "timeline:\n  - at: 1m\n    revision: 5d8f9c2a1b\n",
        &format!("timeline:\n  - at: 1m\n    revision: 5d8f9c2a1b\n{extra_timeline}"),
    );
    let text = text.replace("expect:\n  outcome: Promoted\n  within: 15m\n", "");
    Scenario::parse(&text).expect("scenario parses")
}

#[test]
fn an_abort_command_rolls_the_current_revision_back() {
    let timeline = simulate(&healthy_with("  - at: 3m\n    command: Abort\n"));
    let text = render_text(&timeline);
    assert_eq!(timeline.outcome.outcome, Outcome::RolledBack, "{text}");
    assert!(
        timeline.outcome.at_seconds < 4.0 * 60.0,
        "the abort acts at once:\n{text}"
    );
    assert_eq!(timeline.outcome.failed_checks, 0, "{text}");
}

#[test]
fn a_newer_revision_mid_rollout_supersedes_the_running_one_and_is_promoted() {
    let timeline = simulate(&healthy_with("  - at: 3m30s\n    revision: 9e8d7c6b5a\n"));
    let text = render_text(&timeline);
    assert_eq!(timeline.outcome.outcome, Outcome::Promoted, "{text}");
    assert_eq!(
        timeline.outcome.revision.as_deref(),
        Some("9e8d7c6b5a"),
        "{text}"
    );
    assert!(
        timeline
            .outcome
            .summary
            .starts_with("Promoted revision 9e8d7c6b5a after 5 step(s)"),
        "the newer revision runs every step itself: {text}"
    );
}

#[test]
fn manual_promotion_waits_for_the_promote_command() {
    let manual = |extra: &str| {
        let text = scenario_text("healthy.yaml")
            .replace(
                "    strategy:\n",
                "    manualPromotion: true\n    strategy:\n",
            )
            .replace("expect:\n  outcome: Promoted\n  within: 15m\n", "")
            .replace(
                "timeline:\n  - at: 1m\n    revision: 5d8f9c2a1b\n",
                &format!("timeline:\n  - at: 1m\n    revision: 5d8f9c2a1b\n{extra}"),
            );
        simulate(&Scenario::parse(&text).expect("scenario parses"))
    };
    let waiting = manual("");
    assert_eq!(
        waiting.outcome.outcome,
        Outcome::WaitingPromotion,
        "{}",
        render_text(&waiting)
    );
    let promoted = manual("  - at: 30m\n    command: Promote\n");
    assert_eq!(
        promoted.outcome.outcome,
        Outcome::Promoted,
        "{}",
        render_text(&promoted)
    );
    assert!(
        promoted.outcome.at_seconds >= 30.0 * 60.0,
        "not before the command"
    );
}

#[test]
fn a_canary_that_uses_a_policy_and_a_template_is_simulated_with_both() {
    let text = r#"
name: policy-and-template
canary:
  apiVersion: sluice.dev/v1alpha1
  kind: Canary
  metadata: {name: web, namespace: shop}
  spec:
    targetRef: {name: web}
    policyRef: {name: web-standard}
policy:
  apiVersion: sluice.dev/v1alpha1
  kind: CanaryPolicy
  metadata: {name: web-standard}
  spec:
    service: {port: 80}
    router: {nginx: {ingress: {name: web}}}
    strategy: {canary: {stepWeight: 25, maxWeight: 50}}
    analysis:
      interval: 30s
      threshold: 1
      metrics:
        - name: error-rate
          templateRef: {name: http-error-rate}
templates:
  - apiVersion: sluice.dev/v1alpha1
    kind: AnalysisTemplate
    metadata: {name: http-error-rate, namespace: shop}
    spec:
      query: sum(rate(http_requests_total{code=~"5.."}[{{ interval }}]))
      max: 0.01
metrics:
  error-rate:
    - at: 0s
      value: 0.001
    - at: 2m
      value: 0.5
timeline:
  - at: 1m
    revision: 5d8f9c2a1b
expect:
  outcome: RolledBack
"#;
    let timeline = simulate(&Scenario::parse(text).expect("scenario parses"));
    let rendered = render_text(&timeline);
    // The template's max (0.01) judges the values: the first check after 2m fails, and the
    // policy's threshold of 1 rolls back at once.
    assert_eq!(timeline.outcome.outcome, Outcome::RolledBack, "{rendered}");
    assert_eq!(timeline.outcome.failed_checks, 1, "{rendered}");
    assert!(rendered.contains("limit <= 0.01"), "{rendered}");
}

#[test]
fn an_invalid_canary_ends_invalid_and_moves_no_traffic() {
    let text = scenario_text("healthy.yaml")
        .replace(
            "stepWeight: 10\n        maxWeight: 50",
            "stepWeight: 30\n        maxWeight: 20",
        )
        .replace("outcome: Promoted", "outcome: Invalid");
    let timeline = simulate(&Scenario::parse(&text).expect("scenario parses"));
    let rendered = render_text(&timeline);
    assert_eq!(timeline.outcome.outcome, Outcome::Invalid, "{rendered}");
    assert!(timeline.steps.iter().all(|s| s.weight == 0), "{rendered}");
}

#[test]
fn a_template_landing_during_promotion_when_paused_at_rest_is_held_and_analysed() {
    let text = scenario_text("healthy.yaml")
        .replace("holdMode: AdmissionPolicy", "holdMode: PausedAtRest")
        .replace(
            "    revision: 5d8f9c2a1b\n",
            "    revision: 5d8f9c2a1b\n  - at: 6m40s\n    revision: 9e8d7c6b5a\n",
        );
    let timeline = simulate(&Scenario::parse(&text).expect("scenario parses"));
    let rendered = render_text(&timeline);
    assert_eq!(timeline.outcome.outcome, Outcome::Promoted, "{rendered}");
    assert_eq!(
        timeline.outcome.revision.as_deref(),
        Some("9e8d7c6b5a"),
        "{rendered}"
    );
    // The only rollout of the stable Deployment is the analysed one, after its own five steps.
    let rolled: Vec<(f64, &str)> = timeline
        .events
        .iter()
        .filter_map(|e| {
            if let What::Cluster { message } = &e.what {
                message
                    .strip_prefix("target rolled out revision ")
                    .map(|r| (e.at_seconds, r))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(rolled.len(), 1, "{rendered}");
    assert_eq!(rolled[0].1, "9e8d7c6b5a", "{rendered}");
    assert_eq!(timeline.outcome.steps, 5, "{rendered}");
}
