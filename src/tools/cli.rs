//! The `sluice` command line: clap definitions (their doc comments are the `--help` text) and
//! [`run`], which reads files, calls the tools and picks the exit code. Data goes to `out`, errors
//! to `err`, so tests can run it without a process.
//!
//! Exit codes: 0 success (all valid, expectation met), 1 a finding (invalid document, expectation
//! not met), 2 usage or read errors (clap's own usage errors also exit 2).

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use super::lint::{self, Source};
use super::simulate::{self, scenario::Scenario};

/// Everything went as asked.
pub const EXIT_OK: u8 = 0;
/// The tool ran and found a problem (an invalid document, an unmet expectation).
pub const EXIT_FINDING: u8 = 1;
/// The tool could not run: bad usage, a file that cannot be read or parsed.
pub const EXIT_USAGE: u8 = 2;

const ABOUT: &str = "sluice: progressive delivery for Kubernetes (canary and blue/green rollouts gated by Prometheus)";

const EXAMPLES: &str = "\
Examples:
  sluice crds | kubectl apply --server-side -f -
  sluice lint deploy/*.yaml
  sluice simulate examples/scenarios/error-rate-regression.yaml";

/// sluice: progressive delivery for Kubernetes.
///
/// The controller and its offline tools: print the CRDs, lint manifests before they reach a
/// cluster, and simulate a rollout on a simulated clock with the controller's real decision core.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = ABOUT, long_about, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every sluice CustomResourceDefinition as multi-document YAML.
    ///
    /// The output is what crds/ in the repository holds; apply it before starting the controller.
    #[command(after_help = "Example:\n  sluice crds | kubectl apply --server-side -f -")]
    Crds,

    /// Check manifests offline: Canary, CanaryPolicy, (Cluster)AnalysisTemplate and Deployments
    /// with sluice.dev/ annotations.
    ///
    /// Every document of every file (multi-document YAML or JSON) is checked for YAML syntax,
    /// unknown fields and types against the CRD schema (like kubectl --validate=strict), then
    /// against the controller's own rules. References (policyRef, templateRef) are followed among
    /// the files given. One line per problem, naming file, document, object, field and reason.
    /// Exits 0 when all are valid, 1 when any is invalid, 2 when a file cannot be read.
    #[command(
        after_help = "Examples:\n  sluice lint canary.yaml policy.yaml templates.yaml\n  kustomize build overlays/prod | sluice lint -"
    )]
    Lint(LintArgs),

    /// Play a rollout on a simulated clock with the controller's real decision core.
    ///
    /// A scenario file gives the Canary, the cluster's behaviour, metric values over time,
    /// Prometheus outages and commands (format: examples/scenarios/README.md). The timeline shows
    /// every step, weight, check (value, limit, verdict) and event, then the outcome and how long it
    /// took. With no file, runs the built-in healthy scenario. Exits 0 when the scenario's
    /// expectation holds (or it has none), 1 when it does not, 2 when the file cannot be read.
    #[command(
        after_help = "Examples:\n  sluice simulate\n  sluice simulate examples/scenarios/latency-regression.yaml\n  sluice simulate my-scenario.yaml -o json | jq .outcome"
    )]
    Simulate(SimulateArgs),

    /// Run the controller: watch Canaries and the Deployments they target, canary every new pod
    /// template, and promote or roll it back on the evidence of Prometheus.
    ///
    /// Connects with --kubeconfig, else $KUBECONFIG, ~/.kube/config or the in-cluster service
    /// account. Refuses to start, naming what is missing, when the CRDs are not installed or the
    /// chosen hold mode's policy is absent. Serves /metrics, /healthz and /readyz on
    /// --metrics-addr. Stops cleanly on SIGTERM or Ctrl-C.
    #[command(
        after_help = "Examples:\n  sluice controller --prometheus-url http://prometheus.monitoring:9090\n  sluice controller --namespace shop --hold paused --log-format json"
    )]
    Controller(ControllerArgs),

    /// Print the version of sluice and of the API it serves.
    Version,
}

/// Arguments of `sluice controller`.
#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// Kubeconfig file to connect with (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Watch only this namespace (default: all namespaces).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// How new pod templates are held: `auto` uses the admission policy when the API server serves
    /// MutatingAdmissionPolicy v1 (Kubernetes 1.36+), else keeps Deployments paused at rest.
    #[arg(long, value_enum, default_value_t = crate::controller::startup::HoldSetting::Auto)]
    pub hold: crate::controller::startup::HoldSetting,
    /// Prometheus for Canaries that name no provider, e.g. http://prometheus.monitoring:9090.
    #[arg(long, env = "SLUICE_PROMETHEUS_URL", value_name = "URL")]
    pub prometheus_url: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", value_name = "ADDR")]
    pub metrics_addr: std::net::SocketAddr,
    /// Canaries reconciled at the same time.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Hook and notification calls in flight at once, across all Canaries. A gate or check that
    /// cannot get a slot quickly is not called this time (it holds); an event or notification is
    /// dropped and counted in sluice_hook_calls_dropped.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_hooks: u16,
    /// Let hooks reach addresses in this CIDR although they are loopback, link-local, unspecified
    /// or cloud metadata addresses (refused by default). Repeatable, e.g. 127.0.0.1/32; a bare
    /// address means only itself.
    #[arg(long = "hook-allow-cidr", value_name = "CIDR", value_parser = allow_cidr)]
    pub hook_allow_cidr: Vec<ipnet::IpNet>,
    /// Log line format (stderr). The level comes from RUST_LOG (default info).
    #[arg(long, value_enum, default_value_t = crate::telemetry::LogFormat::Text)]
    pub log_format: crate::telemetry::LogFormat,
}

/// A CIDR such as `10.0.0.0/8`, or one address.
fn allow_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not a CIDR (e.g. 127.0.0.1/32) or an IP address"))
}

/// Arguments of `sluice lint`.
#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// Files to check; `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// Arguments of `sluice simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Scenario file (YAML); `-` reads standard input. Default: the built-in healthy scenario.
    #[arg(value_name = "SCENARIO")]
    pub scenario: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// How `simulate` prints its timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One line per event, then the outcome.
    Text,
    /// One JSON object: `events`, `steps` and `outcome`.
    Json,
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match cli.command {
        Command::Crds => crds(out, err),
        Command::Lint(args) => lint_files(&args, out, err),
        Command::Simulate(args) => simulate_file(&args, out, err),
        Command::Controller(args) => controller(args, err),
        Command::Version => {
            let written = writeln!(
                out,
                "sluice {} (API {}/{})",
                env!("CARGO_PKG_VERSION"),
                crate::api::names::GROUP,
                crate::api::names::VERSION
            );
            exit_code_after_write(written, err)
        }
    }
}

/// Runs the controller until SIGTERM or Ctrl-C; 0 on a clean stop, 1 when it cannot start.
fn controller(args: ControllerArgs, err: &mut dyn Write) -> u8 {
    crate::telemetry::init(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(err, "error: failed to start the async runtime: {error}");
            return EXIT_FINDING;
        }
    };
    let result = runtime.block_on(async move {
        let client = client(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
        let config = crate::controller::Config {
            namespace: args.namespace,
            hold: args.hold,
            prometheus_url: args.prometheus_url,
            metrics_addr: args.metrics_addr,
            concurrency: args.concurrency,
            hooks: crate::hooks::HookSettings {
                max_concurrent: usize::from(args.max_concurrent_hooks),
                allow: crate::hooks::AllowList::new(args.hook_allow_cidr),
            },
        };
        crate::controller::run(
            client,
            config,
            |addr| tracing::info!(%addr, "serving metrics"),
            shutdown_signal(),
        )
        .await
        .map_err(|error| error_chain(&error))
    });
    match result {
        Ok(()) => EXIT_OK,
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            EXIT_FINDING
        }
    }
}

/// A client from `kubeconfig` (and `context`), or inferred like kubectl does.
async fn client(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> Result<kube::Client, String> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("failed to read kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| format!("failed to load kubeconfig {}: {e}", path.display()))?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("failed to load the kubeconfig: {e}"))?,
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("failed to find a cluster to connect to: {e}"))?,
    };
    let mut config = config;
    // Names sluice in the API server's audit log and request accounting; kube-rs sends none.
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(concat!("sluice/", env!("CARGO_PKG_VERSION"))),
    ));
    // kube's retry of a 429 (after the server's Retry-After), 503 or 504, wrapped to count each
    // 429 (`sluice_api_throttled`). Outside kube's stack it needs a service it can clone: the
    // buffer (bounded, I5).
    config.default_retry = false;
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| format!("failed to create a Kubernetes client: {e}"))?;
    Ok(builder
        .with_layer(&tower::buffer::BufferLayer::new(CLIENT_BUFFER))
        .with_layer(&tower::retry::RetryLayer::new(
            crate::controller::metrics::CountThrottled::default(),
        ))
        .build())
}

/// Requests the controller's client queues for its connection pool (it takes them as they come).
const CLIENT_BUFFER: usize = 1024;

/// Resolves on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn crds(out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match crate::api::crds_yaml() {
        Ok(yaml) => exit_code_after_write(out.write_all(yaml.as_bytes()), err),
        Err(error) => {
            let _ = writeln!(err, "error: failed to render the CRDs: {error}");
            EXIT_USAGE
        }
    }
}

fn lint_files(args: &LintArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut sources = Vec::new();
    let mut unreadable = false;
    for path in &args.files {
        match read(path) {
            Ok(source) => sources.push(source),
            Err(message) => {
                let _ = writeln!(err, "error: {message}");
                unreadable = true;
            }
        }
    }
    let report = lint::lint(&sources);
    let mut text = String::new();
    for finding in &report.findings {
        text.push_str(&finding.to_string());
        text.push('\n');
    }
    text.push_str(&report.summary());
    text.push('\n');
    let written = exit_code_after_write(out.write_all(text.as_bytes()), err);
    if unreadable || written != EXIT_OK {
        EXIT_USAGE
    } else if report.is_valid() {
        EXIT_OK
    } else {
        EXIT_FINDING
    }
}

fn simulate_file(args: &SimulateArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let source = match &args.scenario {
        None => Source {
            name: "healthy.yaml (built in)".into(),
            text: simulate::HEALTHY.to_owned(),
        },
        Some(path) => match read(path) {
            Ok(source) => source,
            Err(message) => {
                let _ = writeln!(err, "error: {message}");
                return EXIT_USAGE;
            }
        },
    };
    let scenario = match Scenario::parse(&source.text) {
        Ok(scenario) => scenario,
        Err(error) => {
            let _ = writeln!(err, "error: {}: {error}", source.name);
            return EXIT_USAGE;
        }
    };
    let timeline = simulate::simulate(&scenario);
    let rendered = match args.output {
        Output::Text => simulate::render_text(&timeline),
        Output::Json => match serde_json::to_string_pretty(&timeline) {
            Ok(json) => json + "\n",
            Err(error) => {
                let _ = writeln!(err, "error: failed to render the timeline as JSON: {error}");
                return EXIT_USAGE;
            }
        },
    };
    let written = exit_code_after_write(out.write_all(rendered.as_bytes()), err);
    if written != EXIT_OK {
        return written;
    }
    match timeline.outcome.expectation_met {
        Some(false) => EXIT_FINDING,
        Some(true) | None => EXIT_OK,
    }
}

/// Reads a file, or standard input for `-`.
fn read(path: &std::path::Path) -> Result<Source, String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        return Ok(Source {
            name: "<stdin>".into(),
            text,
        });
    }
    std::fs::read_to_string(path)
        .map(|text| Source {
            name: path.display().to_string(),
            text,
        })
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn exit_code_after_write(result: std::io::Result<()>, err: &mut dyn Write) -> u8 {
    match result {
        Ok(()) => EXIT_OK,
        // A closed pipe (`sluice crds | head`) is not worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "error: failed to write output: {e}");
            EXIT_USAGE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn hook_flags_take_cidrs_or_bare_addresses_repeatedly() {
        let cli = Cli::try_parse_from([
            "sluice",
            "controller",
            "--hook-allow-cidr",
            "127.0.0.1/32",
            "--hook-allow-cidr",
            "fd00::1",
            "--max-concurrent-hooks",
            "4",
        ])
        .unwrap();
        let Command::Controller(args) = cli.command else {
            panic!("parsed as the controller command");
        };
        assert_eq!(
            args.hook_allow_cidr,
            vec![
                "127.0.0.1/32".parse::<ipnet::IpNet>().unwrap(),
                "fd00::1/128".parse().unwrap()
            ]
        );
        assert_eq!(args.max_concurrent_hooks, 4);
        assert!(
            Cli::try_parse_from(["sluice", "controller", "--hook-allow-cidr", "nope"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["sluice", "controller", "--max-concurrent-hooks", "0"]).is_err()
        );
    }

    #[test]
    fn version_names_the_api() {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let code = run(
            Cli {
                command: Command::Version,
            },
            &mut out,
            &mut err,
        );
        assert_eq!(code, EXIT_OK);
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("sluice.dev/v1alpha1"), "{text}");
    }
}
