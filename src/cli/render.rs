//! Pure renderers: a view in, the text `kubectl sluice` prints out. Tables for people; JSON and
//! YAML print the view's own fields, so scripts see the same data the table shows.
//!
//! Must not fetch or decide anything; the views are built in `view`.

use serde::Serialize;

use super::view::{AnalysisRow, CommandResult, ListRow, StatusView, WaitSummary};
use crate::api::Verdict;

/// `-o`: how data is printed on stdout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// Pretty-printed JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Serialising a view failed (a value YAML or JSON cannot hold).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("failed to render JSON")]
    Json(#[from] serde_json::Error),
    #[error("failed to render YAML")]
    Yaml(#[from] serde_saphyr::ser::Error),
}

/// JSON or YAML of `value`; `None` for `table`, which each view renders its own way.
fn structured<T: Serialize>(value: &T, output: Output) -> Result<Option<String>, RenderError> {
    match output {
        Output::Table => Ok(None),
        Output::Json => Ok(Some(format!("{}\n", serde_json::to_string_pretty(value)?))),
        Output::Yaml => Ok(Some(serde_saphyr::to_string(value)?)),
    }
}

/// Aligned columns, two spaces apart, headers in capitals (as kubectl prints them).
pub fn columns(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let width = widths.get(i).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

fn number_or_dash(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn verdict(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "Pass",
        Verdict::Fail => "Fail",
        Verdict::Unknown => "Unknown",
    }
}

/// `list`: one row per Canary; the NAMESPACE column only with `-A`.
pub fn list(rows: &[ListRow], all_namespaces: bool, output: Output) -> Result<String, RenderError> {
    if let Some(text) = structured(&rows, output)? {
        return Ok(text);
    }
    let mut headers = Vec::new();
    if all_namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "NAME", "PHASE", "WEIGHT", "STEP", "REVISION", "STABLE", "MESSAGE",
    ]);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut cells = Vec::new();
            if all_namespaces {
                cells.push(row.namespace.clone());
            }
            cells.extend([
                row.name.clone(),
                row.phase.clone(),
                format!("{}%", row.weight),
                row.step
                    .map_or_else(|| "-".to_owned(), |s| format!("{}/{}", s.index, s.count)),
                or_dash(row.revision.as_deref()),
                or_dash(row.stable_revision.as_deref()),
                or_dash(row.message.as_deref()),
            ]);
            cells
        })
        .collect();
    Ok(columns(&headers, &cells))
}

/// `status`: the Canary at a glance, then its checks, hooks and last command.
pub fn status(view: &StatusView, output: Output) -> Result<String, RenderError> {
    if let Some(text) = structured(view, output)? {
        return Ok(text);
    }
    let mut out = String::new();
    let mut field = |name: &str, value: String| out.push_str(&format!("{name:<16}{value}\n"));
    field(
        "Canary:",
        format!(
            "{}/{} (Deployment {})",
            view.namespace, view.name, view.target
        ),
    );
    field("Phase:", view.phase.clone());
    field(
        "Revision:",
        format!(
            "{} (stable {}, target template {})",
            or_dash(view.revision.as_deref()),
            or_dash(view.stable_revision.as_deref()),
            or_dash(view.target_revision.as_deref())
        ),
    );
    if let Some(failed) = &view.failed_revision {
        field("Failed:", failed.clone());
    }
    field("Weight:", format!("{}%", view.weight));
    if let Some(step) = view.step {
        field("Step:", format!("{} of {}", step.index, step.count));
    }
    field("Failed checks:", view.failed_checks.to_string());
    if view.paused {
        field("Paused:", "yes (kubectl sluice resume)".to_owned());
    }
    field("Message:", or_dash(view.message.as_deref()));
    if let Some(command) = &view.command {
        field(
            "Command:",
            format!(
                "{:?} for {} at {}: {:?}{}",
                command.action,
                command.revision,
                command.requested_at,
                command.state,
                command
                    .message
                    .as_ref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            ),
        );
    }
    if !view.checks.is_empty() {
        out.push_str("\nChecks:\n");
        let rows: Vec<Vec<String>> = view
            .checks
            .iter()
            .map(|c| {
                vec![
                    c.metric.clone(),
                    c.revision.clone(),
                    number_or_dash(c.value),
                    or_dash(c.limit.as_deref()),
                    verdict(c.verdict).to_owned(),
                    c.time.clone(),
                ]
            })
            .collect();
        out.push_str(&indent(&columns(
            &["METRIC", "REVISION", "VALUE", "LIMIT", "VERDICT", "TIME"],
            &rows,
        )));
    }
    if !view.hooks.is_empty() {
        out.push_str("\nHooks:\n");
        let rows: Vec<Vec<String>> = view
            .hooks
            .iter()
            .map(|h| {
                vec![
                    h.name.clone(),
                    h.revision.clone(),
                    if h.passed { "passed" } else { "failed" }.to_owned(),
                    or_dash(h.message.as_deref()),
                ]
            })
            .collect();
        out.push_str(&indent(&columns(
            &["HOOK", "REVISION", "RESULT", "MESSAGE"],
            &rows,
        )));
    }
    Ok(out)
}

/// `status --watch`: one line per change.
pub fn status_line(view: &StatusView) -> String {
    let mut line = format!(
        "{} {} revision {} weight {}%",
        view.name,
        view.phase,
        or_dash(view.revision.as_deref()),
        view.weight
    );
    if let Some(step) = view.step {
        line.push_str(&format!(" step {}/{}", step.index, step.count));
    }
    if let Some(check) = view.checks.last() {
        line.push_str(&format!(
            " last check {}={} {} {}",
            check.metric,
            number_or_dash(check.value),
            or_dash(check.limit.as_deref()),
            verdict(check.verdict)
        ));
    }
    if let Some(message) = &view.message {
        line.push_str(&format!(": {message}"));
    }
    line
}

/// `analyze`: each metric's value, limit and verdict just now.
pub fn analysis(rows: &[AnalysisRow], output: Output) -> Result<String, RenderError> {
    if let Some(text) = structured(&rows, output)? {
        return Ok(text);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.metric.clone(),
                number_or_dash(r.value),
                number_or_dash(r.stable_value),
                or_dash(r.limit.as_deref()),
                verdict(r.verdict).to_owned(),
                r.reason.clone(),
            ]
        })
        .collect();
    Ok(columns(
        &["METRIC", "VALUE", "STABLE", "LIMIT", "VERDICT", "REASON"],
        &cells,
    ))
}

/// `wait`: the summary (table: one line).
pub fn wait_summary(summary: &WaitSummary, output: Output) -> Result<String, RenderError> {
    if let Some(text) = structured(summary, output)? {
        return Ok(text);
    }
    Ok(format!(
        "{}/{} revision {}: {} (exit {}): {}\n",
        summary.namespace,
        summary.canary,
        summary.revision,
        summary.outcome,
        summary.exit_code,
        summary.message
    ))
}

/// A command's answer.
pub fn command(result: &CommandResult, output: Output) -> Result<String, RenderError> {
    if let Some(text) = structured(result, output)? {
        return Ok(text);
    }
    Ok(format!(
        "{:?} of {}/{} revision {}: {:?}{}\n",
        result.action,
        result.namespace,
        result.canary,
        result.revision,
        result.state,
        result
            .message
            .as_ref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    ))
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::api::Canary;
    use crate::cli::view::{CommandState, StepView};

    fn progressing() -> Canary {
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "web", "namespace": "shop", "generation": 1},
            "spec": {"targetRef": {"name": "web"}, "router": {"none": {}}},
            "status": {
                "phase": "Progressing", "observedGeneration": 1,
                "revision": "bbbbbbbbbb", "stableRevision": "aaaaaaaaaa",
                "canaryWeight": 20, "stepIndex": 0, "stepCount": 2, "failedChecks": 1,
                "message": "revision bbbbbbbbbb at 20%",
                "analysis": [
                    {"metric": "error-rate", "revision": "bbbbbbbbbb", "step": 0, "value": 0.2,
                     "limit": "<= 0.05", "verdict": "Fail", "time": "2026-01-01T00:00:01Z"},
                    {"metric": "latency", "revision": "bbbbbbbbbb", "step": 0,
                     "verdict": "Unknown", "reason": "no data", "time": "2026-01-01T00:00:01Z"},
                    {"metric": "error-rate", "revision": "bbbbbbbbbb", "step": 0, "value": 0.01,
                     "limit": "<= 0.05", "verdict": "Pass", "time": "2026-01-01T00:00:02Z"}
                ],
                "hooks": [{"name": "load", "revision": "bbbbbbbbbb", "step": 0, "passed": true,
                           "message": "HTTP 200", "time": "2026-01-01T00:00:02Z"}],
                "command": {"action": "Pause", "revision": "bbbbbbbbbb",
                            "requestedAt": "2026-01-01T00:00:03Z"},
                "acknowledgedCommand": {"action": "Pause", "revision": "bbbbbbbbbb",
                            "requestedAt": "2026-01-01T00:00:03Z", "accepted": false,
                            "message": "Pause does not apply in phase Idle"}
            }
        }))
        .expect("fixture parses")
    }

    #[test]
    fn status_shows_the_last_check_of_each_metric_with_value_limit_and_verdict() {
        let view = StatusView::new(&progressing(), None);
        assert_eq!(view.step, Some(StepView { index: 1, count: 2 }));
        assert_eq!(
            status(&view, Output::Table).expect("renders"),
            "\
Canary:         shop/web (Deployment web)
Phase:          Progressing
Revision:       bbbbbbbbbb (stable aaaaaaaaaa, target template -)
Weight:         20%
Step:           1 of 2
Failed checks:  1
Message:        revision bbbbbbbbbb at 20%
Command:        Pause for bbbbbbbbbb at 2026-01-01T00:00:03Z: Refused (Pause does not apply in phase Idle)

Checks:
  METRIC      REVISION    VALUE  LIMIT    VERDICT  TIME
  error-rate  bbbbbbbbbb  0.01   <= 0.05  Pass     2026-01-01T00:00:02Z
  latency     bbbbbbbbbb  -      -        Unknown  2026-01-01T00:00:01Z

Hooks:
  HOOK  REVISION    RESULT  MESSAGE
  load  bbbbbbbbbb  passed  HTTP 200
"
        );
    }

    #[test]
    fn json_and_yaml_carry_the_same_fields_as_the_table() {
        let view = StatusView::new(&progressing(), None);
        let json: Value =
            serde_json::from_str(&status(&view, Output::Json).expect("renders")).expect("json");
        assert_eq!(json["phase"], "Progressing");
        assert_eq!(json["weight"], 20);
        assert_eq!(json["step"], json!({"index": 1, "count": 2}));
        assert_eq!(json["checks"][0]["value"], 0.01);
        assert_eq!(json["checks"][0]["verdict"], "Pass");
        assert_eq!(json["command"]["state"], "Refused");
        let yaml: Value =
            serde_saphyr::from_str(&status(&view, Output::Yaml).expect("renders")).expect("yaml");
        assert_eq!(yaml, json);
    }

    #[test]
    fn a_command_is_pending_until_the_acknowledgement_names_the_same_second() {
        let mut canary = progressing();
        let status = canary.status.as_mut().expect("status");
        status.command.as_mut().expect("command").requested_at.0 =
            jiff::Timestamp::from_second(1_767_225_604).expect("time");
        let view = StatusView::new(&canary, None);
        assert_eq!(view.command.map(|c| c.state), Some(CommandState::Pending));
    }

    #[test]
    fn list_shows_the_namespace_column_only_for_all_namespaces() {
        let rows = vec![ListRow::new(&progressing())];
        assert_eq!(
            list(&rows, false, Output::Table).expect("renders"),
            "\
NAME  PHASE        WEIGHT  STEP  REVISION    STABLE      MESSAGE
web   Progressing  20%     1/2   bbbbbbbbbb  aaaaaaaaaa  revision bbbbbbbbbb at 20%
"
        );
        assert!(
            list(&rows, true, Output::Table)
                .expect("renders")
                .starts_with("NAMESPACE  NAME")
        );
    }

    #[test]
    fn the_watch_line_names_phase_weight_step_and_last_check() {
        let view = StatusView::new(&progressing(), None);
        assert_eq!(
            status_line(&view),
            "web Progressing revision bbbbbbbbbb weight 20% step 1/2 last check latency=- - Unknown: revision bbbbbbbbbb at 20%"
        );
    }

    #[test]
    fn the_wait_summary_in_json_names_the_outcome_and_its_exit_code() {
        let summary = WaitSummary {
            canary: "web".into(),
            namespace: "shop".into(),
            revision: "bbbbbbbbbb".into(),
            outcome: "Superseded".into(),
            exit_code: 4,
            message: "moved on".into(),
            elapsed_seconds: 3,
        };
        let json: Value =
            serde_json::from_str(&wait_summary(&summary, Output::Json).expect("json"))
                .expect("parses");
        assert_eq!(
            json,
            json!({"canary": "web", "namespace": "shop", "revision": "bbbbbbbbbb",
                   "outcome": "Superseded", "exitCode": 4, "message": "moved on",
                   "elapsedSeconds": 3})
        );
    }
}
