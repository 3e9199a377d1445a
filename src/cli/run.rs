//! The plugin's I/O: connect like kubectl, fetch the Canary and its target, watch them, write a
//! command to the status subresource, and run `analyze`'s queries. Each command is a short
//! pipeline over the pure parts (`view`, `render`, `wait`) and ends in an [`ExitCode`].
//!
//! The only write the plugin ever makes is `status.command`, by server-side apply on the
//! `status` subresource under [`names::PLUGIN_FIELD_MANAGER`]: never a controller-owned field,
//! never the spec. `analyze` writes nothing at all.

use std::io::Write;
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::args::{Cli, Command, CommandArgs, Global};
use super::exit::ExitCode;
use super::render::{self, Output};
use super::view::{
    AnalysisRow, CommandResult, CommandState, ListRow, StatusView, WaitSummary, target_revision,
};
use super::wait::{self, Assessment};
use crate::api::names;
use crate::api::{
    AnalysisTemplate, Canary, CanaryPolicy, ClusterAnalysisTemplate, CommandAction, RolloutSpec,
    TemplateSpec,
};
use crate::core;
use crate::core::validate::ResolvedMetric;
use crate::core::verdict::{self, Judgement};
use crate::dereference::{Dereference, dereference};
use crate::metrics::{Checked, DefaultProvider, InFlight, Runner};

/// Why `analyze` does not check a metric when neither it nor the Canary names a Prometheus.
const NO_PROMETHEUS: &str = "the Canary names no Prometheus (the controller's --prometheus-url \
                             applies); pass --prometheus-url";

/// Asking the cluster failed; every variant exits [`ExitCode::CouldNotAsk`].
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("failed to read kubeconfig {path}")]
    ReadKubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("failed to load the kubeconfig")]
    LoadKubeconfig(#[source] kube::config::KubeconfigError),
    #[error("failed to find a cluster to connect to")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("failed to create a Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("no Canary {name} in namespace {namespace}")]
    NotFound { namespace: String, name: String },
    #[error("failed to {action}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the Canary {name} names no revision yet and its target Deployment does not exist; pass --revision"
    )]
    NoRevision { name: String },
}

/// Runs one parsed command line, printing data on `out` and progress and errors on `err`.
pub async fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    match dispatch(cli, out, err).await {
        Ok(code) => code,
        Err(error) => {
            let _ = writeln!(err, "error: {}", error_chain(&error));
            ExitCode::CouldNotAsk
        }
    }
}

/// An error with its sources, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

async fn dispatch(
    cli: Cli,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<ExitCode, AskError> {
    let connection = connect(&cli.global).await?;
    let session = Session {
        client: connection.client,
        namespace: cli.global.namespace.clone().unwrap_or(connection.namespace),
        user: connection.user,
        output: cli.global.output,
    };
    match cli.command {
        Command::List => session.list(cli.global.all_namespaces, out, err).await,
        Command::Status { name, watch } => session.status(&name, watch, out, err).await,
        Command::Wait {
            name,
            revision,
            timeout,
        } => session.wait(&name, revision, timeout, out, err).await,
        Command::Promote {
            name,
            full,
            command,
        } => {
            let what = if full {
                CommandAction::PromoteFull
            } else {
                CommandAction::Promote
            };
            session.command(&name, what, &command, out, err).await
        }
        Command::Abort { name, command } => {
            session
                .command(&name, CommandAction::Abort, &command, out, err)
                .await
        }
        Command::Retry { name, command } => {
            session
                .command(&name, CommandAction::Retry, &command, out, err)
                .await
        }
        Command::Pause { name, command } => {
            session
                .command(&name, CommandAction::Pause, &command, out, err)
                .await
        }
        Command::Resume { name, command } => {
            session
                .command(&name, CommandAction::Resume, &command, out, err)
                .await
        }
        Command::Skip { name, command } => {
            session
                .command(&name, CommandAction::Skip, &command, out, err)
                .await
        }
        Command::Analyze {
            name,
            prometheus_url,
        } => session.analyze(&name, prometheus_url, out, err).await,
    }
}

/// What [`connect`] found.
pub struct Connection {
    pub client: Client,
    /// The context's namespace (`default` when it names none).
    pub namespace: String,
    /// The kubeconfig user entry of the context, written as a command's `requestedBy`. A label
    /// for people reading status, not an authenticated identity (the audit log has that).
    pub user: Option<String>,
}

/// The user entry the context (`context`, else the current one) names.
fn kubeconfig_user(file: &kube::config::Kubeconfig, context: Option<&str>) -> Option<String> {
    let name = context
        .map(str::to_owned)
        .or_else(|| file.current_context.clone())?;
    file.contexts
        .iter()
        .find(|c| c.name == name)?
        .context
        .as_ref()?
        .user
        .clone()
}

/// A client and the default namespace, found the way kubectl finds them: `--kubeconfig`, else
/// `$KUBECONFIG` or `~/.kube/config`, else the in-cluster service account; `--context` picks
/// the context.
pub async fn connect(global: &Global) -> Result<Connection, AskError> {
    let context = global.context.as_deref();
    let options = kube::config::KubeConfigOptions {
        context: global.context.clone(),
        ..Default::default()
    };
    let user;
    let mut config = match &global.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                AskError::ReadKubeconfig {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            user = kubeconfig_user(&file, context);
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(AskError::LoadKubeconfig)?
        }
        None => {
            user = kube::config::Kubeconfig::read()
                .ok()
                .and_then(|file| kubeconfig_user(&file, context));
            if context.is_some() {
                kube::Config::from_kubeconfig(&options)
                    .await
                    .map_err(AskError::LoadKubeconfig)?
            } else {
                kube::Config::infer().await.map_err(AskError::Infer)?
            }
        }
    };
    // Names the plugin in the API server's audit log, apart from the controller.
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(concat!("kubectl-sluice/", env!("CARGO_PKG_VERSION"))),
    ));
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(AskError::Client)?;
    Ok(Connection {
        client,
        namespace,
        user,
    })
}

/// The latest of the Canary and its target, as the watch delivers them.
enum Seen {
    Canary(Option<Box<Canary>>),
    Target(Option<Box<Deployment>>),
    Error(String),
}

/// One named object's changes: `Some` when it is created or changes, `None` when it is deleted
/// or absent from a (re)list. Reconnects with kube-runtime's default backoff.
fn watch_one<K>(api: Api<K>, name: &str) -> BoxStream<'static, Result<Option<K>, String>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let fields = format!("metadata.name={name}");
    watcher(api, watcher::Config::default().fields(&fields))
        .default_backoff()
        .scan(false, |seen, event| {
            let item = match event {
                Ok(watcher::Event::Init) => {
                    *seen = false;
                    None
                }
                Ok(watcher::Event::InitApply(object)) => {
                    *seen = true;
                    Some(Ok(Some(object)))
                }
                Ok(watcher::Event::Apply(object)) => Some(Ok(Some(object))),
                Ok(watcher::Event::Delete(_)) => Some(Ok(None)),
                Ok(watcher::Event::InitDone) => (!*seen).then_some(Ok(None)),
                Err(error) => Some(Err(error.to_string())),
            };
            futures::future::ready(Some(item))
        })
        .filter_map(futures::future::ready)
        .boxed()
}

struct Session {
    client: Client,
    namespace: String,
    user: Option<String>,
    output: Output,
}

impl Session {
    fn canaries(&self) -> Api<Canary> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn get_canary(&self, name: &str) -> Result<Canary, AskError> {
        self.canaries()
            .get_opt(name)
            .await
            .map_err(|source| AskError::Api {
                action: format!("get Canary {}/{name}", self.namespace),
                source,
            })?
            .ok_or_else(|| AskError::NotFound {
                namespace: self.namespace.clone(),
                name: name.to_owned(),
            })
    }

    async fn get_target(&self, canary: &Canary) -> Result<Option<Deployment>, AskError> {
        let name = &canary.spec.target_ref.name;
        self.deployments()
            .get_opt(name)
            .await
            .map_err(|source| AskError::Api {
                action: format!("get Deployment {}/{name}", self.namespace),
                source,
            })
    }

    /// The Canary's and its target's changes, merged.
    fn watch(&self, canary: &Canary) -> BoxStream<'static, Seen> {
        let name = kube::ResourceExt::name_any(canary);
        let canaries = watch_one(self.canaries(), &name).map(|item| match item {
            Ok(found) => Seen::Canary(found.map(Box::new)),
            Err(error) => Seen::Error(error),
        });
        let targets =
            watch_one(self.deployments(), &canary.spec.target_ref.name).map(|item| match item {
                Ok(found) => Seen::Target(found.map(Box::new)),
                Err(error) => Seen::Error(error),
            });
        futures::stream::select(canaries, targets).boxed()
    }

    fn print(
        &self,
        out: &mut dyn Write,
        err: &mut dyn Write,
        text: Result<String, render::RenderError>,
    ) -> ExitCode {
        match text {
            Ok(text) => {
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
                ExitCode::Success
            }
            Err(error) => {
                let _ = writeln!(err, "error: {}", error_chain(&error));
                ExitCode::CouldNotAsk
            }
        }
    }

    async fn list(
        &self,
        all_namespaces: bool,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<ExitCode, AskError> {
        let api: Api<Canary> = if all_namespaces {
            Api::all(self.client.clone())
        } else {
            self.canaries()
        };
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|source| AskError::Api {
                action: "list Canaries".into(),
                source,
            })?;
        let mut rows: Vec<ListRow> = list.items.iter().map(ListRow::new).collect();
        rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(self.print(out, err, render::list(&rows, all_namespaces, self.output)))
    }

    async fn status(
        &self,
        name: &str,
        watch: bool,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<ExitCode, AskError> {
        let canary = self.get_canary(name).await?;
        let target = self.get_target(&canary).await?;
        let view = StatusView::new(&canary, target.as_ref());
        if !watch {
            return Ok(self.print(out, err, render::status(&view, self.output)));
        }
        // One line per change; JSON and YAML print the whole view each time it changes.
        let line = |view: &StatusView| match self.output {
            Output::Table => Ok(format!("{}\n", render::status_line(view))),
            Output::Json => serde_json::to_string(view)
                .map(|s| format!("{s}\n"))
                .map_err(render::RenderError::from),
            Output::Yaml => render::status(view, Output::Yaml).map(|s| format!("---\n{s}")),
        };
        let mut last = String::new();
        let mut stream = self.watch(&canary);
        let (mut canary, mut target) = (Some(canary), target);
        loop {
            let Some(current) = &canary else {
                let _ = writeln!(err, "Canary {}/{name} was deleted", self.namespace);
                return Ok(ExitCode::CouldNotAsk);
            };
            let next = match line(&StatusView::new(current, target.as_ref())) {
                Ok(next) => next,
                Err(error) => {
                    let _ = writeln!(err, "error: {}", error_chain(&error));
                    return Ok(ExitCode::CouldNotAsk);
                }
            };
            if next != last {
                let _ = out.write_all(next.as_bytes());
                let _ = out.flush();
                last = next;
            }
            match stream.next().await {
                None => return Ok(ExitCode::CouldNotAsk),
                Some(Seen::Canary(found)) => canary = found.map(|c| *c),
                Some(Seen::Target(found)) => target = found.map(|t| *t),
                Some(Seen::Error(error)) => {
                    let _ = writeln!(err, "watch error (retrying): {error}");
                }
            }
        }
    }

    async fn wait(
        &self,
        name: &str,
        revision: Option<String>,
        timeout: Duration,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<ExitCode, AskError> {
        let started = Instant::now();
        let canary = self.get_canary(name).await?;
        let target = self.get_target(&canary).await?;
        let bound = match revision
            .or_else(|| target.as_ref().and_then(target_revision))
            .or_else(|| canary.status.as_ref().and_then(|s| s.revision.clone()))
        {
            Some(bound) => bound,
            None => {
                return Err(AskError::NoRevision {
                    name: name.to_owned(),
                });
            }
        };
        let _ = writeln!(
            err,
            "waiting up to {} for revision {bound} of Canary {}/{name}",
            humantime::format_duration(timeout),
            self.namespace
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let mut stream = self.watch(&canary);
        let (mut canary, mut target) = (Some(canary), target);
        let mut last_line = String::new();
        // The watch's last error, cleared by the next object it delivers: a timeout while the
        // cluster cannot be reached is "could not ask", not "still progressing".
        let mut trouble: Option<String> = None;
        let outcome = loop {
            match wait::assess(canary.as_ref(), target.as_ref(), &bound) {
                Assessment::Done(outcome) => break outcome,
                Assessment::Progress(progress) => {
                    let line = progress.to_string();
                    if line != last_line {
                        let elapsed = started.elapsed().as_secs();
                        let _ = writeln!(err, "[{elapsed:>4}s] {line}");
                        last_line = line;
                    }
                }
            }
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_elapsed) => {
                    break match trouble {
                        Some(error) => wait::Outcome {
                            code: ExitCode::CouldNotAsk,
                            message: format!(
                                "lost contact with the cluster before the rollout ended: {error}"
                            ),
                        },
                        None => wait::Outcome {
                            code: ExitCode::TimedOut,
                            message: format!(
                                "still not done after {}: {last_line}",
                                humantime::format_duration(timeout)
                            ),
                        },
                    };
                }
                Ok(None) => {
                    break wait::Outcome {
                        code: ExitCode::CouldNotAsk,
                        message: "the watch ended".into(),
                    };
                }
                Ok(Some(Seen::Canary(found))) => {
                    canary = found.map(|c| *c);
                    trouble = None;
                }
                Ok(Some(Seen::Target(found))) => {
                    target = found.map(|t| *t);
                    trouble = None;
                }
                Ok(Some(Seen::Error(error))) => {
                    if trouble.as_ref() != Some(&error) {
                        let _ = writeln!(err, "watch error (retrying): {error}");
                    }
                    trouble = Some(error);
                }
            }
        };
        let _ = writeln!(
            err,
            "{}: {} (exit {})",
            outcome.code.name(),
            outcome.message,
            outcome.code.code()
        );
        let summary = WaitSummary {
            canary: name.to_owned(),
            namespace: self.namespace.clone(),
            revision: bound,
            outcome: outcome.code.name().to_owned(),
            exit_code: outcome.code.code(),
            message: outcome.message,
            elapsed_seconds: started.elapsed().as_secs(),
        };
        let printed = self.print(out, err, render::wait_summary(&summary, self.output));
        Ok(if printed == ExitCode::Success {
            outcome.code
        } else {
            printed
        })
    }

    async fn command(
        &self,
        name: &str,
        action: CommandAction,
        args: &CommandArgs,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<ExitCode, AskError> {
        let canary = self.get_canary(name).await?;
        let status = canary.status.clone().unwrap_or_default();
        let revision = match args.revision.clone().or_else(|| status.revision.clone()) {
            Some(revision) => revision,
            None => {
                let target = self.get_target(&canary).await?;
                target
                    .as_ref()
                    .and_then(target_revision)
                    .ok_or_else(|| AskError::NoRevision {
                        name: name.to_owned(),
                    })?
            }
        };
        // The controller tells commands apart by action, revision and the whole second they
        // were requested at; a repeat within the second of the last answer would read as
        // answered already, so it is dated one second later.
        let mut second = Timestamp::now().as_second();
        if let Some(ack) = &status.acknowledged_command {
            second = second.max(ack.requested_at.0.as_second() + 1);
        }
        let requested_at = Timestamp::from_second(second).unwrap_or_else(|_| Timestamp::now());
        let command = crate::api::Command {
            action,
            revision: revision.clone(),
            requested_at: Time(requested_at),
            requested_by: self.user.clone(),
        };
        let patch = json!({
            "apiVersion": format!("{}/{}", names::GROUP, names::VERSION),
            "kind": "Canary",
            "metadata": {"name": name},
            "status": {"command": command},
        });
        self.canaries()
            .patch_status(
                name,
                &PatchParams::apply(names::PLUGIN_FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| AskError::Api {
                action: format!(
                    "write the {action:?} command to Canary {}/{name}'s status",
                    self.namespace
                ),
                source,
            })?;
        let _ = writeln!(
            err,
            "{action:?} for revision {revision} sent; waiting up to {} for the controller",
            humantime::format_duration(args.ack_timeout)
        );

        let answered = |canary: &Canary| {
            canary
                .status
                .as_ref()
                .and_then(|s| s.acknowledged_command.as_ref())
                .filter(|ack| {
                    ack.action == action
                        && ack.revision == revision
                        && ack.requested_at.0.as_second() == second
                })
                .cloned()
        };
        let deadline = tokio::time::Instant::now() + args.ack_timeout;
        let mut stream = self.watch(&canary);
        let ack = loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) | Ok(None) => break None,
                Ok(Some(Seen::Canary(Some(current)))) => {
                    if let Some(ack) = answered(&current) {
                        break Some(ack);
                    }
                }
                Ok(Some(Seen::Canary(None))) => {
                    return Err(AskError::NotFound {
                        namespace: self.namespace.clone(),
                        name: name.to_owned(),
                    });
                }
                Ok(Some(Seen::Target(_))) => {}
                Ok(Some(Seen::Error(error))) => {
                    let _ = writeln!(err, "watch error (retrying): {error}");
                }
            }
        };
        let (state, message, code) = match &ack {
            None => (
                CommandState::Pending,
                Some(format!(
                    "the controller did not answer within {}; the command stays in status and may still be carried out",
                    humantime::format_duration(args.ack_timeout)
                )),
                ExitCode::TimedOut,
            ),
            Some(ack) if ack.accepted => (
                CommandState::Accepted,
                Some(ack.message.clone()),
                ExitCode::Success,
            ),
            Some(ack) => (
                CommandState::Refused,
                Some(ack.message.clone()),
                ExitCode::Refused,
            ),
        };
        if code != ExitCode::Success {
            let _ = writeln!(
                err,
                "{action:?} {}: {}",
                if code == ExitCode::Refused {
                    "refused"
                } else {
                    "not acknowledged"
                },
                message.clone().unwrap_or_default()
            );
        }
        let result = CommandResult {
            canary: name.to_owned(),
            namespace: self.namespace.clone(),
            action,
            revision,
            requested_at: jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", requested_at)
                .unwrap_or_default(),
            state,
            message,
        };
        let printed = self.print(out, err, render::command(&result, self.output));
        Ok(if printed == ExitCode::Success {
            code
        } else {
            printed
        })
    }

    async fn analyze(
        &self,
        name: &str,
        prometheus_url: Option<String>,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<ExitCode, AskError> {
        let canary = self.get_canary(name).await?;
        let target = self.get_target(&canary).await?;
        let dereferenced = dereference(self, &canary.spec, &self.namespace).await?;
        let resolved = match core::resolve(&canary.spec, &dereferenced) {
            Ok(resolved) => resolved,
            Err(errors) => {
                for error in errors {
                    let _ = writeln!(err, "invalid spec: {error}");
                }
                return Ok(ExitCode::InvalidSpec);
            }
        };
        let revision = canary
            .status
            .as_ref()
            .and_then(|s| s.revision.clone())
            .or_else(|| target.as_ref().and_then(target_revision))
            .unwrap_or_default();
        let default = match prometheus_url {
            Some(address) => DefaultProvider::Override(address),
            None => DefaultProvider::None(NO_PROMETHEUS),
        };
        let in_flight = InFlight::default();
        let runner = Runner::new(
            &self.client,
            &in_flight,
            &default,
            &self.namespace,
            name,
            &resolved,
            revision,
        );
        // One metric after the other; the controller checks them concurrently.
        let checked = runner.check_in_turn(&resolved.metrics).await;
        let rows: Vec<AnalysisRow> = resolved
            .metrics
            .iter()
            .zip(checked)
            .map(|(metric, checked)| analysis_row(metric, checked))
            .collect();
        if rows.is_empty() {
            let _ = writeln!(err, "Canary {}/{name} has no metrics", self.namespace);
        }
        Ok(self.print(out, err, render::analysis(&rows, self.output)))
    }
}

/// `analyze`'s row for one check: the core's verdict on its samples, or Unknown with the reason
/// no query was sent.
fn analysis_row(metric: &ResolvedMetric, checked: Checked) -> AnalysisRow {
    let (query, judgement) = match checked {
        Checked::Ran(result) => {
            let judgement = verdict::judge(metric, &result);
            (result.query, judgement)
        }
        Checked::NotRun { query, reason, .. } => (
            query,
            Judgement {
                verdict: crate::api::Verdict::Unknown,
                value: None,
                stable_value: None,
                limit: None,
                reason,
            },
        ),
    };
    AnalysisRow {
        metric: metric.name.clone(),
        query,
        value: judgement.value,
        stable_value: judgement.stable_value,
        limit: judgement.limit,
        verdict: judgement.verdict,
        reason: judgement.reason,
    }
}

/// The plugin dereferences with one GET per object, as the person running it (the viewer role
/// grants `get` on policies and templates).
impl Dereference for Session {
    type Error = AskError;

    async fn policy(&self, name: &str) -> Result<Option<RolloutSpec>, AskError> {
        let api: Api<CanaryPolicy> = Api::all(self.client.clone());
        let found = api.get_opt(name).await.map_err(|source| AskError::Api {
            action: format!("get CanaryPolicy {name}"),
            source,
        })?;
        Ok(found.map(|policy| policy.spec.rollout))
    }

    async fn template(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<TemplateSpec>, AskError> {
        let api: Api<AnalysisTemplate> = Api::namespaced(self.client.clone(), namespace);
        let found = api.get_opt(name).await.map_err(|source| AskError::Api {
            action: format!("get AnalysisTemplate {name}"),
            source,
        })?;
        Ok(found.map(|template| template.spec.template))
    }

    async fn cluster_template(&self, name: &str) -> Result<Option<TemplateSpec>, AskError> {
        let api: Api<ClusterAnalysisTemplate> = Api::all(self.client.clone());
        let found = api.get_opt(name).await.map_err(|source| AskError::Api {
            action: format!("get ClusterAnalysisTemplate {name}"),
            source,
        })?;
        Ok(found.map(|template| template.spec.template))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::render::Output;

    const KUBECONFIG: &str = "\
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: 'http://127.0.0.1:1'}
contexts:
- name: staging
  context: {cluster: local, user: alice, namespace: shop}
- name: prod
  context: {cluster: local, user: bob, namespace: payments}
current-context: staging
users:
- name: alice
  user: {}
- name: bob
  user: {}
";

    fn global(kubeconfig: &std::path::Path, context: Option<&str>) -> Global {
        Global {
            namespace: None,
            all_namespaces: false,
            context: context.map(str::to_owned),
            kubeconfig: Some(kubeconfig.to_owned()),
            output: Output::Table,
        }
    }

    #[tokio::test]
    async fn the_context_picks_the_default_namespace_and_the_user_as_kubectl_does() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config");
        std::fs::write(&path, KUBECONFIG).expect("written");

        let current = connect(&global(&path, None)).await.expect("connects");
        assert_eq!(current.namespace, "shop");
        assert_eq!(current.user.as_deref(), Some("alice"));

        let prod = connect(&global(&path, Some("prod")))
            .await
            .expect("connects");
        assert_eq!(prod.namespace, "payments");
        assert_eq!(prod.user.as_deref(), Some("bob"));
    }

    #[tokio::test]
    async fn an_unknown_context_is_an_error_naming_the_kubeconfig() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config");
        std::fs::write(&path, KUBECONFIG).expect("written");
        let Err(error) = connect(&global(&path, Some("nope"))).await else {
            panic!("connected with a context that does not exist");
        };
        assert!(
            error_chain(&error).contains("nope"),
            "{}",
            error_chain(&error)
        );
    }
}
