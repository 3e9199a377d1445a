//! The plugin's documentation stays true: the README's exit-code table is the one the code
//! returns, the README names every subcommand, and the real binary's `--help` lists each.

use std::process::Command;

use clap::CommandFactory;
use sluice::cli::{Cli, ExitCode};

const README: &str = include_str!("../README.md");

#[test]
fn the_readme_exit_code_table_is_the_one_the_plugin_returns() {
    assert!(
        README.contains(&ExitCode::markdown_table()),
        "README's CI gate table differs from ExitCode::markdown_table():\n{}",
        ExitCode::markdown_table()
    );
}

#[test]
fn the_readme_and_the_help_name_every_subcommand() {
    let section = README
        .split("## kubectl sluice")
        .nth(1)
        .and_then(|rest| rest.split("\n## CI gate").next())
        .expect("a kubectl sluice section");
    let help = Command::new(env!("CARGO_BIN_EXE_kubectl-sluice"))
        .arg("--help")
        .output()
        .expect("runs");
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    for sub in Cli::command().get_subcommands() {
        let name = sub.get_name();
        if name == "help" {
            continue;
        }
        assert!(
            section.contains(&format!("`kubectl sluice {name} "))
                || section.contains(&format!(" `{name} NAME`")),
            "README does not document `{name}`"
        );
        assert!(
            help.contains(&format!("  {name} ")),
            "--help does not list {name}"
        );
    }
}

#[test]
fn a_usage_error_exits_64_with_the_message_on_stderr() {
    let output = Command::new(env!("CARGO_BIN_EXE_kubectl-sluice"))
        .args(["status"])
        .output()
        .expect("runs");
    assert_eq!(
        output.status.code(),
        Some(i32::from(ExitCode::Usage.code()))
    );
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("NAME"));
}
