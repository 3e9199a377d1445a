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

fn number(value: Option<f64>) -> String {
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
    let mut field = |name: &str, value: String| out.push_str(&format!("{name:<14}{value}\n"));
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
                    number(c.value),
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
            number(check.value),
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
                number(r.value),
                number(r.stable_value),
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
