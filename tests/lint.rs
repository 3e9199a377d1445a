//! `sluice lint` through the library and through the real binary: every shipped example is valid,
//! every kind of mistake is reported with the field it is about, and exit codes follow the table
//! (0 valid, 1 invalid, 2 unreadable).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sluice::tools::lint::{Severity, Source, lint};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn source(path: &Path) -> Source {
    Source {
        name: path
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned(),
        text: std::fs::read_to_string(path).expect("fixture readable"),
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("directory readable")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn sluice(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("sluice runs")
}

#[test]
fn every_shipped_example_is_valid_together_and_alone() {
    let files = yaml_files(&root().join("examples"));
    assert!(files.len() >= 4, "examples/ holds the documented manifests");
    let all: Vec<Source> = files.iter().map(|p| source(p)).collect();
    let report = lint(&all);
    assert!(report.is_valid(), "{:#?}", report.findings);
    assert_eq!(report.skipped, 0, "every example is a sluice manifest");
    // Together, every reference is among the files: nothing is left unchecked.
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.severity == Severity::Error || !f.message.contains("not among the files")),
        "{:#?}",
        report.findings
    );
    for file in &files {
        let alone = lint(&[source(file)]);
        assert!(
            alone.is_valid(),
            "{}: {:#?}",
            file.display(),
            alone.findings
        );
    }
}

#[test]
fn each_bad_fixture_is_rejected_with_the_field_its_header_names() {
    let files = yaml_files(&root().join("tests/fixtures/lint"));
    assert!(files.len() >= 13, "one fixture per kind of error");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("fixture readable");
        // Each fixture's first line says what lint must report: "# ... report `EXPECTED`."
        let expected = text
            .lines()
            .next()
            .and_then(|line| line.split('`').nth(1))
            .unwrap_or_else(|| panic!("{} names its expected finding", file.display()));
        let report = lint(&[source(&file)]);
        assert!(!report.is_valid(), "{} must be invalid", file.display());
        let lines: Vec<String> = report.errors().map(ToString::to_string).collect();
        assert!(
            lines.iter().any(|line| line.contains(expected)),
            "{}: expected a line with {expected:?}, got {lines:#?}",
            file.display()
        );
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(
            lines
                .iter()
                .all(|line| line.starts_with(&format!("{name} (document 1): "))),
            "every line names the file and document: {lines:#?}"
        );
    }
}

#[test]
fn a_canary_is_checked_against_a_policy_given_beside_it() {
    let canary = Source {
        name: "canary.yaml".into(),
        text: "apiVersion: sluice.dev/v1alpha1\nkind: Canary\nmetadata: {name: web, namespace: shop}\nspec:\n  targetRef: {name: web}\n  policyRef: {name: no-router}\n".into(),
    };
    // Alone, the merged spec cannot be known: a note, not an error.
    let alone = lint(std::slice::from_ref(&canary));
    assert!(alone.is_valid(), "{:#?}", alone.findings);
    assert!(alone.findings.iter().any(|f| f.severity == Severity::Note
        && f.message.contains("\"no-router\" is not among the files")));
    // With the policy beside it, the merge is checked: neither names a router.
    let policy = Source {
        name: "policy.yaml".into(),
        text: "apiVersion: sluice.dev/v1alpha1\nkind: CanaryPolicy\nmetadata: {name: no-router}\nspec:\n  service: {port: 80}\n".into(),
    };
    let both = lint(&[canary, policy]);
    let lines: Vec<String> = both.errors().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        vec![
            "canary.yaml (document 1): Canary shop/web: spec.router: a router is required (set it here or in the CanaryPolicy)"
        ]
    );
}

#[test]
fn documents_of_other_kinds_are_skipped_with_a_note() {
    let report = lint(&[Source {
        name: "mixed.yaml".into(),
        text: "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n---\napiVersion: sluice.dev/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: t, namespace: shop}\nspec: {query: up}\n".into(),
    }]);
    assert!(report.is_valid());
    assert_eq!((report.documents, report.skipped), (2, 1));
    assert!(
        report.findings[0]
            .to_string()
            .starts_with("mixed.yaml (document 1): Service web: note: skipped")
    );
}

#[test]
fn the_binary_exits_0_for_valid_files() {
    let output = sluice(&[
        "lint",
        "examples/canary.yaml",
        "examples/analysis-template.yaml",
    ]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("2 document(s) checked: 2 valid"),
        "{stdout}"
    );
}

#[test]
fn the_binary_exits_1_for_an_invalid_file_and_prints_the_finding() {
    let output = sluice(&["lint", "tests/fixtures/lint/unknown-field.yaml"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("unknown-field.yaml (document 1): Canary shop/checkout: spec.strategy.canary.stepWeigths: unknown field"),
        "{stdout}"
    );
}

#[test]
fn the_binary_exits_2_for_a_missing_file_and_says_so_on_stderr() {
    let output = sluice(&["lint", "examples/canary.yaml", "does/not/exist.yaml"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot read does/not/exist.yaml"),
        "{stderr}"
    );
}

#[test]
fn the_binary_exits_2_without_files() {
    let output = sluice(&["lint"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

#[test]
fn the_binary_reads_standard_input_for_a_dash() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["lint", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice runs");
    let text = std::fs::read_to_string(root().join("tests/fixtures/lint/threshold-zero.yaml"))
        .expect("fixture readable");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(text.as_bytes())
        .expect("stdin written");
    let output = child.wait_with_output().expect("sluice finishes");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("<stdin> (document 1): Canary shop/checkout: spec.analysis.threshold"),
        "{stdout}"
    );
}

#[test]
fn crds_prints_the_generated_crds_that_the_repository_holds() {
    let output = sluice(&["crds"]);
    assert_eq!(output.status.code(), Some(0));
    let expected = sluice::api::crds_yaml().expect("CRDs render");
    assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
    assert_eq!(
        expected.matches("kind: CustomResourceDefinition").count(),
        4
    );
}

#[test]
fn help_explains_each_command_with_an_example() {
    let output = sluice(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["crds", "lint", "simulate", "version"] {
        assert!(help.contains(command), "{help}");
    }
    for command in ["lint", "simulate", "crds"] {
        let output = sluice(&[command, "--help"]);
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(
            help.contains(&format!("sluice {command}")),
            "{command}: {help}"
        );
    }
}

#[test]
fn a_broken_document_does_not_hide_the_others_and_json_is_read_too() {
    let report = lint(&[
        Source {
            name: "multi.yaml".into(),
            text: "apiVersion: sluice.dev/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: a, namespace: shop}\nspec: {query: [unclosed\n---\napiVersion: sluice.dev/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: b, namespace: shop}\nspec: {query: up, min: 2, max: 1}\n".into(),
        },
        Source {
            name: "template.json".into(),
            text: r#"{"apiVersion": "sluice.dev/v1alpha1", "kind": "ClusterAnalysisTemplate", "metadata": {"name": "c"}, "spec": {"query": "up", "onNoData": "Maybe"}}"#.into(),
        },
    ]);
    let lines: Vec<String> = report.errors().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with("multi.yaml (document 1): invalid YAML at line "),
        "{lines:#?}"
    );
    assert_eq!(
        lines[1],
        "multi.yaml (document 2): AnalysisTemplate shop/b: spec.min: min 2 exceeds max 1"
    );
    assert!(
        lines[2].starts_with("template.json (document 1): ClusterAnalysisTemplate c: spec.onNoData: unsupported value \"Maybe\""),
        "{lines:#?}"
    );
}
