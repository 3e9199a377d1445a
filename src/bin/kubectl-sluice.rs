//! `kubectl sluice`: the kubectl plugin for sluice rollouts. kubectl finds it on PATH by its name.
//! Everything but parsing and the exit code lives in `sluice::cli`.

use std::io::Write;

use clap::Parser;
use clap::error::ErrorKind;
use sluice::cli::{Cli, ExitCode, run};

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // Help and version are answers, not errors; usage errors get their own code (64)
            // so they never read as a `wait` outcome.
            return match error.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::Success.into(),
                _ => ExitCode::Usage.into(),
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: failed to start the runtime: {error}"
            );
            return ExitCode::CouldNotAsk.into();
        }
    };
    let code = runtime.block_on(async {
        let mut out = std::io::stdout();
        let mut err = std::io::stderr();
        run(cli, &mut out, &mut err).await
    });
    code.into()
}
