//! The plugin's exit codes: one enum, one documented code per outcome, so a CI script can branch
//! on `kubectl sluice wait`'s answer without parsing text. The table in `wait --help` is
//! [`ExitCode::table`], the README's is [`ExitCode::markdown_table`]; tests keep the three in step.
//!
//! Usage errors (an unknown flag, a missing argument) exit 64 rather than clap's usual 2, which
//! would read as "failed by progress deadline". Pure; no I/O.

/// What a `kubectl sluice` invocation ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitCode {
    /// The command did what it was asked. For `wait` that means the bound revision was promoted
    /// and the stable Deployment serves it, which is why its outcome name is `Promoted`
    /// ([`ExitCode::PROMOTED`]).
    Success,
    /// The revision was rolled back because it was measured bad: failed checks (metrics or
    /// pre-rollout/rollout hooks) reached the threshold. Also a revision the controller holds as
    /// failed from an earlier attempt whose cause it no longer records (`Failed` reason
    /// `RolledBack`): it stays rejected until `kubectl sluice retry` or a new revision, and `wait`
    /// does not call it unmeasured without the controller saying so.
    FailedAnalysis,
    /// The revision was rolled back because its canary was not ready within the progress deadline.
    FailedProgressDeadline,
    /// A person aborted the revision (`kubectl sluice abort`).
    Aborted,
    /// The target's template moved on to a newer revision than the one waited for.
    Superseded,
    /// The Canary's spec cannot be acted on (the `InvalidSpec` condition says why).
    InvalidSpec,
    /// The timeout ran out while the revision was still rolling out or paused (by a person, or
    /// by `onUnknownDeadline: Pause` when its checks stayed Unknown); for commands: the
    /// controller did not acknowledge the command in time.
    TimedOut,
    /// Could not ask: the cluster was unreachable (at the start, or still when the timeout ran
    /// out), the kubeconfig unusable, or no such Canary.
    CouldNotAsk,
    /// The controller refused the command (wrong revision or phase); its message says why.
    Refused,
    /// The revision was rolled back without a verdict: its checks stayed Unknown (no data, NaN,
    /// Prometheus unreachable, a hook not called) until `unknownDeadline` (`Failed` reason
    /// `UnknownDeadlineExceeded`). Nothing measured it bad; fix the measuring, then retry it. With
    /// `onUnknownDeadline: Pause` there is no rollback: the rollout is paused and `wait` keeps
    /// waiting until its timeout ([`ExitCode::TimedOut`]).
    Unmeasured,
    /// The command line itself was wrong (unknown flag, missing argument).
    Usage,
}

impl ExitCode {
    /// `wait`'s answer when the revision it waited for was promoted: the same code as any other
    /// command's success (0), named for what it tells a CI script.
    pub const PROMOTED: ExitCode = ExitCode::Success;

    /// Every code, in the order of the documented table.
    pub const ALL: [ExitCode; 11] = [
        ExitCode::Success,
        ExitCode::FailedAnalysis,
        ExitCode::FailedProgressDeadline,
        ExitCode::Aborted,
        ExitCode::Superseded,
        ExitCode::InvalidSpec,
        ExitCode::TimedOut,
        ExitCode::CouldNotAsk,
        ExitCode::Refused,
        ExitCode::Unmeasured,
        ExitCode::Usage,
    ];

    /// The process exit code.
    pub const fn code(self) -> u8 {
        match self {
            ExitCode::Success => 0,
            ExitCode::FailedAnalysis => 1,
            ExitCode::FailedProgressDeadline => 2,
            ExitCode::Aborted => 3,
            ExitCode::Superseded => 4,
            ExitCode::InvalidSpec => 5,
            ExitCode::TimedOut => 6,
            ExitCode::CouldNotAsk => 7,
            ExitCode::Refused => 8,
            ExitCode::Unmeasured => 9,
            ExitCode::Usage => 64,
        }
    }

    /// A stable machine-readable name of the outcome (the `outcome` field of `wait -o json`).
    /// Success is `Promoted`: `wait` is the command that names its outcome, and for `wait`
    /// success means promoted.
    pub const fn name(self) -> &'static str {
        match self {
            ExitCode::Success => "Promoted",
            ExitCode::FailedAnalysis => "FailedAnalysis",
            ExitCode::FailedProgressDeadline => "FailedProgressDeadline",
            ExitCode::Aborted => "Aborted",
            ExitCode::Superseded => "Superseded",
            ExitCode::InvalidSpec => "InvalidSpec",
            ExitCode::TimedOut => "TimedOut",
            ExitCode::CouldNotAsk => "CouldNotAsk",
            ExitCode::Refused => "Refused",
            ExitCode::Unmeasured => "Unmeasured",
            ExitCode::Usage => "Usage",
        }
    }

    /// What the code means, in one line.
    pub const fn meaning(self) -> &'static str {
        match self {
            ExitCode::Success => {
                "promoted: the stable Deployment serves the revision (other commands: done)"
            }
            ExitCode::FailedAnalysis => {
                "rolled back by analysis: failed checks or hooks (or held as failed from an earlier attempt)"
            }
            ExitCode::FailedProgressDeadline => {
                "rolled back: the canary was not ready within the progress deadline"
            }
            ExitCode::Aborted => "ended by a person (kubectl sluice abort, or the target deleted)",
            ExitCode::Superseded => {
                "superseded: the target's template moved on to a newer revision"
            }
            ExitCode::InvalidSpec => "invalid spec: see the Canary's InvalidSpec condition",
            ExitCode::TimedOut => {
                "timed out while still progressing or paused (commands: not acknowledged in time)"
            }
            ExitCode::CouldNotAsk => {
                "could not ask: cluster unreachable, bad kubeconfig, or no such Canary"
            }
            ExitCode::Refused => "the controller refused the command (wrong revision or phase)",
            ExitCode::Unmeasured => {
                "rolled back unmeasured: checks stayed Unknown until the unknown deadline"
            }
            ExitCode::Usage => "usage error: unknown flag or missing argument",
        }
    }

    /// The exit-code table as plain text, for `wait --help`.
    pub fn table() -> String {
        let mut out = String::from("Exit codes:\n");
        for code in Self::ALL {
            out.push_str(&format!("  {:>2}  {}\n", code.code(), code.meaning()));
        }
        out
    }

    /// The exit-code table as Markdown, as the README shows it.
    pub fn markdown_table() -> String {
        let mut out = String::from("| exit code | outcome | meaning |\n| --- | --- | --- |\n");
        for code in Self::ALL {
            out.push_str(&format!(
                "| {} | `{}` | {} |\n",
                code.code(),
                code.name(),
                code.meaning()
            ));
        }
        out
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code.code())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_outcome_has_its_own_code_and_name() {
        let codes: HashSet<u8> = ExitCode::ALL.iter().map(|c| c.code()).collect();
        let names: HashSet<&str> = ExitCode::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(codes.len(), ExitCode::ALL.len());
        assert_eq!(names.len(), ExitCode::ALL.len());
    }

    #[test]
    fn the_wait_outcomes_keep_their_documented_codes() {
        let table: Vec<(u8, &str)> = ExitCode::ALL.iter().map(|c| (c.code(), c.name())).collect();
        assert_eq!(
            table,
            vec![
                (0, "Promoted"),
                (1, "FailedAnalysis"),
                (2, "FailedProgressDeadline"),
                (3, "Aborted"),
                (4, "Superseded"),
                (5, "InvalidSpec"),
                (6, "TimedOut"),
                (7, "CouldNotAsk"),
                (8, "Refused"),
                (9, "Unmeasured"),
                (64, "Usage"),
            ]
        );
    }

    #[test]
    fn usage_errors_do_not_share_clap_s_code_with_an_outcome() {
        assert_ne!(ExitCode::Usage.code(), 2);
        assert!(
            ExitCode::ALL
                .iter()
                .all(|c| c == &ExitCode::Usage || c.code() < 64)
        );
    }

    #[test]
    fn the_help_table_lists_every_code_once() {
        let table = ExitCode::table();
        for code in ExitCode::ALL {
            let line = format!("  {:>2}  {}", code.code(), code.meaning());
            assert_eq!(table.matches(&line).count(), 1, "{line}");
        }
    }
}
