//! The `sluice` binary: the controller and its offline tools. Thin on purpose: parsing, running
//! and exit codes live in `sluice::tools::cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = sluice::tools::cli::Cli::parse();
    let code = sluice::tools::cli::run(cli, &mut std::io::stdout().lock(), &mut std::io::stderr());
    ExitCode::from(code)
}
