//! `kubectl sluice`: the kubectl plugin for sluice rollouts. kubectl finds it on PATH by its name.
//!
//! This build only describes itself; the commands (list, status, wait, promote, abort, retry,
//! pause, resume, analyze) come with the plugin's own work item.

use clap::Parser;

/// Drive sluice rollouts from kubectl.
///
/// sluice canaries every new pod template of a Deployment: it runs the new revision beside the
/// stable one, moves traffic to it in steps, checks Prometheus at every interval, and promotes it
/// or rolls it back. Until the plugin's commands land, use `kubectl get canaries` (short name `cn`)
/// and `kubectl describe canary NAME` to follow a rollout.
#[derive(Parser, Debug)]
#[command(name = "kubectl sluice", version, arg_required_else_help = true)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
