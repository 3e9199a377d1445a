//! The `kubectl sluice` command line: clap definitions whose doc comments are the `--help` text.
//! Flags follow kubectl's: `-n/--namespace`, `-A/--all-namespaces`, `--context`, `--kubeconfig`,
//! `-o table|json|yaml`. No behaviour here.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::exit::ExitCode;
use super::render::Output;

const EXAMPLES: &str = "\
Examples:
  kubectl sluice list -A
  kubectl sluice status web -n shop --watch
  kubectl sluice wait web -n shop --timeout 15m -o json
  kubectl sluice promote web -n shop
  kubectl sluice abort web -n shop
  kubectl sluice analyze web -n shop --prometheus-url http://localhost:9090";

static WAIT_HELP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{}\nExamples:\n  kubectl set image deployment/web app=example/web:2 -n shop\n  kubectl sluice wait web -n shop --timeout 15m -o json",
        ExitCode::table()
    )
});

/// Drive sluice rollouts from kubectl.
///
/// sluice canaries every new pod template of a Deployment: it runs the new revision beside the
/// stable one, moves traffic to it in steps, checks Prometheus at every interval, and promotes
/// it or rolls it back. These commands show where a rollout stands, gate CI on its outcome
/// (`wait`), and send it commands (promote, abort, retry, pause, resume, skip) through the
/// Canary's status subresource. Data goes to stdout, progress and errors to stderr.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-sluice",
    bin_name = "kubectl sluice",
    version,
    after_help = EXAMPLES,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// kubectl's connection and output flags, accepted before or after the subcommand.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Namespace of the Canary (default: the kubeconfig context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// List Canaries in every namespace (`list` only).
    #[arg(short = 'A', long = "all-namespaces", global = true)]
    pub all_namespaces: bool,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Output format of the data printed on stdout.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List Canaries with their phase, weight, step and revisions.
    #[command(after_help = "Examples:\n  kubectl sluice list\n  kubectl sluice list -A -o json")]
    List,

    /// Show one Canary: phase, revisions, weight, step i of n, the last check of each metric
    /// (value, limit, verdict), hooks, the last command and the message.
    #[command(
        after_help = "Examples:\n  kubectl sluice status web -n shop\n  kubectl sluice status web --watch"
    )]
    Status {
        /// Name of the Canary.
        name: String,
        /// Keep watching and print one line each time something changes (Ctrl-C to stop).
        #[arg(short = 'w', long)]
        watch: bool,
    },

    /// Wait for the rollout of one revision to end, and exit with a code per outcome (the CI gate).
    ///
    /// Binds to the revision being rolled out: the target Deployment's current template hash
    /// (computed as the controller computes it), or --revision. A success left over from the
    /// previous release cannot satisfy it. Progress lines go to stderr; the summary to stdout
    /// (`-o json` for a JSON object with `outcome` and `exitCode`).
    #[command(after_help = WAIT_HELP.as_str())]
    Wait {
        /// Name of the Canary.
        name: String,
        /// The revision (pod-template hash) to wait for (default: the target's current template).
        #[arg(long)]
        revision: Option<String>,
        /// How long to wait before giving up with exit code 6 (for example 90s, 15m, 1h).
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },

    /// Pass the manual promotion gate of the current revision; with --full, promote it now,
    /// skipping the remaining steps and analysis.
    #[command(
        after_help = "Examples:\n  kubectl sluice promote web\n  kubectl sluice promote web --full"
    )]
    Promote {
        /// Name of the Canary.
        name: String,
        /// Promote now without the remaining steps and analysis.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        command: CommandArgs,
    },

    /// Roll the current revision back now: traffic returns to stable.
    #[command(after_help = "Example:\n  kubectl sluice abort web -n shop")]
    Abort {
        /// Name of the Canary.
        name: String,
        #[command(flatten)]
        command: CommandArgs,
    },

    /// Start the failed revision again, without editing the Deployment.
    #[command(after_help = "Example:\n  kubectl sluice retry web -n shop")]
    Retry {
        /// Name of the Canary.
        name: String,
        #[command(flatten)]
        command: CommandArgs,
    },

    /// Hold the rollout where it is; nothing moves until `resume`.
    #[command(after_help = "Example:\n  kubectl sluice pause web -n shop")]
    Pause {
        /// Name of the Canary.
        name: String,
        #[command(flatten)]
        command: CommandArgs,
    },

    /// Continue a paused rollout; the current step is checked again before it moves.
    #[command(after_help = "Example:\n  kubectl sluice resume web -n shop")]
    Resume {
        /// Name of the Canary.
        name: String,
        #[command(flatten)]
        command: CommandArgs,
    },

    /// Advance to the next step without waiting for the rest of its interval.
    #[command(after_help = "Example:\n  kubectl sluice skip web -n shop")]
    Skip {
        /// Name of the Canary.
        name: String,
        #[command(flatten)]
        command: CommandArgs,
    },

    /// Run every metric query of the Canary now against its Prometheus and show value, limit and
    /// verdict. Read-only: the rollout is not touched.
    #[command(
        after_help = "Examples:\n  kubectl -n monitoring port-forward svc/prometheus 9090 &\n  kubectl sluice analyze web -n shop --prometheus-url http://localhost:9090"
    )]
    Analyze {
        /// Name of the Canary.
        name: String,
        /// Prometheus address to use instead of the one the Canary names (which a laptop rarely
        /// reaches). Used without the Canary's Prometheus credentials.
        #[arg(long)]
        prometheus_url: Option<String>,
    },
}

/// Flags every command (promote, abort, ...) takes.
#[derive(Debug, Args, Clone)]
pub struct CommandArgs {
    /// The revision the command is for (default: the Canary's `status.revision`). The controller
    /// refuses a command naming another revision than the one it is rolling out.
    #[arg(long)]
    pub revision: Option<String>,
    /// How long to wait for the controller to acknowledge the command (exit 6 when it does not).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub ack_timeout: Duration,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kubectl_s_flags_are_accepted_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "kubectl-sluice",
            "wait",
            "web",
            "-n",
            "shop",
            "--context",
            "prod",
            "--kubeconfig",
            "/tmp/kc",
            "-o",
            "json",
            "--timeout",
            "90s",
        ])
        .expect("parses");
        assert_eq!(cli.global.namespace.as_deref(), Some("shop"));
        assert_eq!(cli.global.context.as_deref(), Some("prod"));
        assert_eq!(cli.global.output, Output::Json);
        let Command::Wait { timeout, .. } = cli.command else {
            panic!("not wait");
        };
        assert_eq!(timeout, Duration::from_secs(90));
    }

    #[test]
    fn wait_help_shows_the_exit_code_table() {
        let mut command = Cli::command();
        let help = command
            .find_subcommand_mut("wait")
            .expect("wait exists")
            .render_long_help()
            .to_string();
        assert!(help.contains(&ExitCode::table()), "{help}");
    }
}
