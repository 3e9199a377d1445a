//! The GitOps health checks shipped in `deploy/gitops/`, run the way Argo CD and Flux run them:
//! the Lua scripts in a Lua 5.1 interpreter (Argo CD embeds gopher-lua, a Lua 5.1) with the object
//! as the global `obj` and only the libraries Argo CD opens (base, package, table, and `os.time` /
//! `os.date` through `require`); the Flux CEL expressions with the object's top-level fields
//! as variables, after kstatus's `observedGeneration` rule, in Flux's order (`inProgress`,
//! `failed`, `current`, else InProgress).
//!
//! Two end-to-end tests drive a real rollout through the test cluster in each hold mode (Idle,
//! a running canary, waiting for promotion, paused by a person, promoted, a failing revision, an
//! invalid spec) and assert what each check says about the Canary and the Deployment read back
//! at that moment. With `SLUICE_UPDATE_FIXTURES=1` they also write those objects to
//! `tests/fixtures/gitops/`, which the quick table tests read without a cluster.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use mlua::{LuaOptions, LuaSerdeExt, StdLib};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_testcluster::prometheus::fake::{Answer, FakePrometheus};
use support::{Env, Hold, NAMESPACE, app_manifests, canary_resource, phase};

const CANARY_LUA: &str = include_str!("../deploy/gitops/argocd-canary-health.lua");
const DEPLOYMENT_LUA: &str = include_str!("../deploy/gitops/argocd-deployment-health.lua");
const FLUX_CHECKS: &str = include_str!("../deploy/gitops/flux-health-check.yaml");
const CANARY_KEY: &str = "resource.customizations.health.sluice.dev_Canary";
const DEPLOYMENT_KEY: &str = "resource.customizations.health.apps_Deployment";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn updating_fixtures() -> bool {
    std::env::var_os("SLUICE_UPDATE_FIXTURES").is_some()
}

// ---- Argo CD: the Lua scripts ---------------------------------------------------------------

/// What an Argo CD health script returned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ArgoHealth {
    status: String,
    message: String,
}

/// Runs an Argo CD health script on `object` as Argo CD does: the object is the global `obj`
/// (JSON null and absent fields are both `nil`), the script returns a table with `status` and
/// `message`.
fn argocd_health(script: &str, object: &Value) -> ArgoHealth {
    let lua = argocd_lua();
    let obj = lua
        .to_value_with(
            object,
            mlua::serde::SerializeOptions::new()
                .serialize_none_to_null(false)
                .serialize_unit_to_null(false),
        )
        .expect("object converts to Lua");
    lua.globals().set("obj", obj).expect("obj is set");
    let table: mlua::Table = lua
        .load(script)
        .eval()
        .unwrap_or_else(|e| panic!("the health script fails on {object}: {e}"));
    let status: String = table.get("status").expect("status is a string");
    let message: Option<String> = table.get("message").expect("message is a string or nil");
    assert!(
        [
            "Healthy",
            "Progressing",
            "Degraded",
            "Suspended",
            "Missing",
            "Unknown"
        ]
        .contains(&status.as_str()),
        "{status} is not an Argo CD health status"
    );
    ArgoHealth {
        status,
        message: message.unwrap_or_default(),
    }
}

/// A Lua 5.1 state with what Argo CD opens for a health script from `argocd-cm` (argo-cd
/// `util/lua/lua.go` and `oslib_safe.go`, on gopher-lua, a Lua 5.1): the base library (gopher-lua's
/// has no `coroutine`), package and table, and a "safe os" of `time` and `date` only. Argo CD
/// registers that one under the table library's name, so there is no global `os`: a script gets
/// it with `require("os")`. No string, math, io, debug or utf8 library, and strings have no
/// methods.
fn argocd_lua() -> mlua::Lua {
    let lua = mlua::Lua::new_with(
        StdLib::TABLE | StdLib::PACKAGE | StdLib::OS,
        LuaOptions::default(),
    )
    .expect("Lua starts");
    lua.load(
        r#"
        local safe_os = { time = os.time, date = os.date }
        os, package.loaded.os = nil, nil
        package.preload.os = function() return safe_os end
        coroutine, package.loaded.coroutine = nil, nil
        "#,
    )
    .exec()
    .expect("the Argo CD library set is made");
    lua
}

// ---- Flux: the CEL expressions --------------------------------------------------------------

/// One `healthCheckExprs` entry of a Flux Kustomization.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FluxCheck {
    api_version: String,
    kind: String,
    current: String,
    #[serde(default)]
    in_progress: Option<String>,
    #[serde(default)]
    failed: Option<String>,
}

/// kstatus's verdicts, as Flux reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kstatus {
    InProgress,
    Failed,
    Current,
}

fn flux_checks() -> Vec<FluxCheck> {
    serde_saphyr::from_str(FLUX_CHECKS).expect("flux-health-check.yaml parses")
}

fn flux_canary_check() -> FluxCheck {
    let checks = flux_checks();
    assert_eq!(checks.len(), 1, "one entry, for Canary");
    checks.into_iter().next().expect("one entry")
}

/// Flux's evaluation of one object (fluxcd/pkg `runtime/cel` StatusEvaluator): InProgress when
/// `status.observedGeneration` is present and differs from `metadata.generation`; then the first
/// of `inProgress`, `failed`, `current` that is true; InProgress when none is. The object's
/// top-level fields are the variables. An expression that cannot be evaluated is an error.
fn flux_health(check: &FluxCheck, object: &Value) -> Result<Kstatus, String> {
    if let (Some(observed), Some(generation)) = (
        object["status"]["observedGeneration"].as_i64(),
        object["metadata"]["generation"].as_i64(),
    ) && observed != generation
    {
        return Ok(Kstatus::InProgress);
    }
    let mut context = cel::Context::default();
    for (name, value) in object.as_object().into_iter().flatten() {
        context.add_variable_from_value(name.as_str(), json_to_cel(value));
    }
    for (expression, verdict) in [
        (check.in_progress.as_deref(), Kstatus::InProgress),
        (check.failed.as_deref(), Kstatus::Failed),
        (Some(check.current.as_str()), Kstatus::Current),
    ] {
        let Some(expression) = expression else {
            continue;
        };
        let program = cel::Program::compile(expression)
            .map_err(|e| format!("{expression:?} does not parse: {e}"))?;
        match program.execute(&context) {
            Ok(cel::Value::Bool(true)) => return Ok(verdict),
            Ok(cel::Value::Bool(false)) => {}
            Ok(other) => return Err(format!("{expression:?} is not a boolean: {other:?}")),
            Err(e) => return Err(format!("{expression:?} cannot be evaluated: {e}")),
        }
    }
    Ok(Kstatus::InProgress)
}

/// JSON as Flux hands it to CEL (unstructured): integers are `int`, objects are string-keyed maps.
fn json_to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(map) => cel::Value::Map(cel::objects::Map {
            map: Arc::new(
                map.iter()
                    .map(|(k, v)| {
                        (
                            cel::objects::Key::String(Arc::new(k.clone())),
                            json_to_cel(v),
                        )
                    })
                    .collect(),
            ),
        }),
    }
}

// ---- What all three checks say about one moment ---------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdicts {
    argocd_canary: String,
    flux_canary: Kstatus,
    argocd_deployment: String,
}

fn verdicts(canary: &Value, deployment: &Value) -> Verdicts {
    Verdicts {
        argocd_canary: argocd_health(CANARY_LUA, canary).status,
        flux_canary: flux_health(&flux_canary_check(), canary)
            .unwrap_or_else(|e| panic!("Flux cannot judge the Canary: {e}")),
        argocd_deployment: argocd_health(DEPLOYMENT_LUA, deployment).status,
    }
}

fn expect(argocd_canary: &str, flux_canary: Kstatus, argocd_deployment: &str) -> Verdicts {
    Verdicts {
        argocd_canary: argocd_canary.to_owned(),
        flux_canary,
        argocd_deployment: argocd_deployment.to_owned(),
    }
}

/// The moments the end-to-end tests capture, and what each check must say at each, in both hold
/// modes. A held Deployment with a template sluice has not promoted is Progressing whatever the
/// Canary says (the Deployment alone cannot tell a running canary from a rolled-back one).
fn expected(moment: &str) -> Verdicts {
    match moment {
        "idle" => expect("Healthy", Kstatus::Current, "Healthy"),
        "progressing" => expect("Progressing", Kstatus::InProgress, "Progressing"),
        "waiting-promotion" => expect("Progressing", Kstatus::InProgress, "Progressing"),
        "paused" => expect("Suspended", Kstatus::InProgress, "Progressing"),
        "succeeded" => expect("Healthy", Kstatus::Current, "Healthy"),
        "failed" => expect("Degraded", Kstatus::Failed, "Progressing"),
        "invalid" => expect("Degraded", Kstatus::Failed, "Progressing"),
        other => panic!("no expectation for moment {other}"),
    }
}

const MOMENTS: &[&str] = &[
    "idle",
    "progressing",
    "waiting-promotion",
    "paused",
    "succeeded",
    "failed",
    "invalid",
];
const MODES: &[&str] = &["admission-policy", "paused-at-rest"];

// ---- Fixtures ----------------------------------------------------------------------------------

/// One captured moment: the Canary and its target Deployment as read from the cluster.
#[derive(Debug, serde::Serialize, Deserialize)]
struct Fixture {
    canary: Value,
    deployment: Value,
}

fn fixture_path(mode: &str, moment: &str) -> PathBuf {
    repo_path(&format!("tests/fixtures/gitops/{mode}-{moment}.yaml"))
}

fn read_fixture(mode: &str, moment: &str) -> Fixture {
    let path = fixture_path(mode, moment);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (regenerate with SLUICE_UPDATE_FIXTURES=1)",
            path.display()
        )
    });
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Drops what only makes a fixture long (managed fields, kubectl's last-applied copy).
fn trimmed(mut object: Value) -> Value {
    if let Some(metadata) = object["metadata"].as_object_mut() {
        metadata.remove("managedFields");
        if let Some(annotations) = metadata
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
        {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    object
}

fn write_fixture(mode: &str, moment: &str, canary: &Value, deployment: &Value) {
    let fixture = Fixture {
        canary: trimmed(canary.clone()),
        deployment: trimmed(deployment.clone()),
    };
    let text = serde_saphyr::to_string(&fixture).expect("fixture serialises");
    let path = fixture_path(mode, moment);
    std::fs::create_dir_all(path.parent().expect("fixture dir")).expect("fixture dir");
    std::fs::write(&path, format!("# Captured by tests/gitops_health.rs (SLUICE_UPDATE_FIXTURES=1): {mode} hold, {moment}.\n{text}"))
        .expect("fixture written");
}

// ---- Quick tests: fixtures and shipped files -----------------------------------------------

#[test]
fn every_captured_moment_reads_as_expected_in_argo_cd_and_flux() {
    for mode in MODES {
        for moment in MOMENTS {
            let fixture = read_fixture(mode, moment);
            assert_eq!(
                verdicts(&fixture.canary, &fixture.deployment),
                expected(moment),
                "{mode} hold, {moment}"
            );
        }
    }
}

#[test]
fn the_fixture_directory_holds_exactly_the_captured_moments() {
    let mut found: Vec<String> = std::fs::read_dir(repo_path("tests/fixtures/gitops"))
        .expect("fixture dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    found.sort();
    let mut wanted: Vec<String> = MODES
        .iter()
        .flat_map(|mode| {
            MOMENTS
                .iter()
                .map(move |moment| format!("{mode}-{moment}.yaml"))
        })
        .collect();
    wanted.sort();
    assert_eq!(found, wanted);
}

#[test]
fn a_held_at_rest_deployment_is_healthy_with_a_message_naming_its_canary() {
    let fixture = read_fixture("paused-at-rest", "idle");
    assert_eq!(fixture.deployment["spec"]["paused"], true, "paused at rest");
    let health = argocd_health(DEPLOYMENT_LUA, &fixture.deployment);
    assert_eq!(health.status, "Healthy");
    assert!(health.message.contains("Canary web"), "{}", health.message);
}

#[test]
fn a_paused_deployment_that_sluice_does_not_manage_is_still_suspended() {
    let mut deployment = read_fixture("paused-at-rest", "idle").deployment;
    deployment["metadata"]["labels"]
        .as_object_mut()
        .expect("labels")
        .remove("sluice.dev/canary");
    let health = argocd_health(DEPLOYMENT_LUA, &deployment);
    assert_eq!(
        health,
        ArgoHealth {
            status: "Suspended".into(),
            message: "Deployment is paused".into()
        }
    );
}

#[test]
fn an_unmanaged_deployment_gets_argo_cds_built_in_verdicts() {
    let base = read_fixture("admission-policy", "idle").deployment;
    let mut unlabelled = base.clone();
    unlabelled["metadata"]["labels"]
        .as_object_mut()
        .expect("labels")
        .remove("sluice.dev/canary");
    assert_eq!(argocd_health(DEPLOYMENT_LUA, &unlabelled).status, "Healthy");

    let mut rolling = unlabelled.clone();
    rolling["status"]["updatedReplicas"] = json!(1);
    assert_eq!(
        argocd_health(DEPLOYMENT_LUA, &rolling),
        ArgoHealth {
            status: "Progressing".into(),
            message: "Waiting for rollout to finish: 1 out of 2 new replicas have been updated..."
                .into()
        }
    );

    let mut unobserved = unlabelled.clone();
    unobserved["metadata"]["generation"] = json!(99);
    assert_eq!(
        argocd_health(DEPLOYMENT_LUA, &unobserved).status,
        "Progressing"
    );

    let mut stuck = unlabelled.clone();
    stuck["status"]["conditions"] = json!([{
        "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
    }]);
    assert_eq!(
        argocd_health(DEPLOYMENT_LUA, &stuck),
        ArgoHealth {
            status: "Degraded".into(),
            message: "Deployment \"web\" exceeded its progress deadline".into()
        }
    );

    let mut terminating = unlabelled;
    terminating["status"]["replicas"] = json!(3);
    assert_eq!(
        argocd_health(DEPLOYMENT_LUA, &terminating).status,
        "Progressing"
    );
}

#[test]
fn a_canary_status_from_an_older_generation_is_progressing_in_both_tools() {
    let mut canary = read_fixture("admission-policy", "idle").canary;
    let generation = canary["metadata"]["generation"]
        .as_i64()
        .expect("generation");
    canary["metadata"]["generation"] = json!(generation + 1);
    assert_eq!(argocd_health(CANARY_LUA, &canary).status, "Progressing");
    assert_eq!(
        flux_health(&flux_canary_check(), &canary),
        Ok(Kstatus::InProgress)
    );
}

#[test]
fn a_canary_without_a_status_is_progressing_in_argo_cd_and_not_yet_judged_by_flux() {
    let mut canary = read_fixture("admission-policy", "idle").canary;
    canary.as_object_mut().expect("object").remove("status");
    assert_eq!(argocd_health(CANARY_LUA, &canary).status, "Progressing");
    assert!(
        flux_health(&flux_canary_check(), &canary).is_err(),
        "Flux cannot evaluate an expression on an absent status and keeps waiting"
    );
}

#[test]
fn a_succeeded_canary_is_healthy_only_once_its_current_revision_is_stable_and_promoted() {
    let promoted = read_fixture("admission-policy", "succeeded").canary;
    assert_eq!(argocd_health(CANARY_LUA, &promoted).status, "Healthy");

    let mut not_stable = promoted.clone();
    not_stable["status"]["stableRevision"] = json!("an-older-revision");
    let mut not_promoted = promoted;
    for condition in not_promoted["status"]["conditions"]
        .as_array_mut()
        .expect("conditions")
    {
        if condition["type"] == "Promoted" {
            condition["status"] = json!("False");
        }
    }
    for canary in [not_stable, not_promoted] {
        assert_eq!(argocd_health(CANARY_LUA, &canary).status, "Progressing");
        assert_eq!(
            flux_health(&flux_canary_check(), &canary),
            Ok(Kstatus::InProgress)
        );
    }
}

#[test]
fn every_phase_has_a_verdict_in_both_tools() {
    let base = read_fixture("admission-policy", "waiting-promotion").canary;
    let table = [
        ("Initializing", "Progressing", Kstatus::InProgress),
        ("Progressing", "Progressing", Kstatus::InProgress),
        ("WaitingPromotion", "Progressing", Kstatus::InProgress),
        ("Promoting", "Progressing", Kstatus::InProgress),
        ("Paused", "Suspended", Kstatus::InProgress),
        ("Failed", "Degraded", Kstatus::Failed),
        ("Invalid", "Degraded", Kstatus::Failed),
        ("Idle", "Healthy", Kstatus::Current),
    ];
    for (phase, argocd, flux) in table {
        let mut canary = base.clone();
        canary["status"]["phase"] = json!(phase);
        assert_eq!(argocd_health(CANARY_LUA, &canary).status, argocd, "{phase}");
        assert_eq!(
            flux_health(&flux_canary_check(), &canary),
            Ok(flux),
            "{phase}"
        );
    }
}

#[test]
fn the_flux_entry_names_the_canary_kind_and_sets_all_three_expressions() {
    let check = flux_canary_check();
    assert_eq!(check.api_version, "sluice.dev/v1alpha1");
    assert_eq!(check.kind, "Canary");
    assert!(check.in_progress.is_some() && check.failed.is_some());
    for expression in [
        check.current.as_str(),
        check.in_progress.as_deref().unwrap_or_default(),
        check.failed.as_deref().unwrap_or_default(),
    ] {
        assert!(
            !expression.contains(".?"),
            "optional field syntax is left out: the interpreter here cannot check it"
        );
        cel::Program::compile(expression).unwrap_or_else(|e| panic!("{expression}: {e}"));
    }
}

/// Argo CD runs health scripts in gopher-lua, which speaks Lua 5.1, as the tests do. Running them
/// refuses newer syntax only where it is loaded and missing libraries only on the branches a
/// fixture reaches; this also reads every line: none of the syntax Lua 5.1 lacks, and no call
/// into a library Argo CD does not open (string methods need the string library too).
#[test]
fn the_argocd_scripts_use_only_lua_5_1_and_the_libraries_argo_cd_opens() {
    for (name, script) in [("canary", CANARY_LUA), ("deployment", DEPLOYMENT_LUA)] {
        for (number, line) in script.lines().enumerate() {
            let code = line.split("--").next().unwrap_or_default();
            for newer in [
                "goto ", "//", "<const>", "<close>", "&", "|", "<<", ">>", "::",
            ] {
                assert!(
                    !code.contains(newer),
                    "{name} script line {}: {newer:?} is not Lua 5.1",
                    number + 1
                );
            }
            for unloaded in ["string.", "math.", "io.", "os.", "utf8.", "):"] {
                assert!(
                    !code.contains(unloaded),
                    "{name} script line {}: Argo CD does not load what {unloaded:?} needs",
                    number + 1
                );
            }
            assert!(
                !code.replace("~=", "").contains('~'),
                "{name} script line {}: bitwise ~ is not Lua 5.1",
                number + 1
            );
        }
    }
}

/// The interpreter the checks run in is the one Argo CD has: Lua 5.1 syntax only, and only the
/// libraries Argo CD opens, so a script Argo CD cannot run fails here first.
#[test]
fn the_test_interpreter_refuses_what_argo_cds_lua_5_1_cannot_run() {
    let lua = argocd_lua();
    let version: String = lua.globals().get("_VERSION").unwrap();
    assert_eq!(version, "Lua 5.1");
    for newer in [
        "return 7 // 2",
        "goto done\n::done::",
        "return 6 & 3",
        "return 6 | 3",
        "return 6 ~ 3",
        "return ~6",
        "return 1 << 2",
        "return 4 >> 1",
        "local x <const> = 1",
        "local f <close> = nil",
    ] {
        assert!(
            lua.load(newer).into_function().is_err(),
            "{newer:?} loads, but Lua 5.1 has no such syntax"
        );
    }
    for missing in [
        "string",
        "math",
        "io",
        "debug",
        "utf8",
        "coroutine",
        "bit32",
        "os",
    ] {
        let value: mlua::Value = lua.globals().get(missing).unwrap();
        assert!(value.is_nil(), "Argo CD opens no global {missing:?}");
    }
    for fails in [
        "return ('web'):upper()",
        "return #utf8.char(72)",
        "return require('string')",
        "return require('os').exit",
    ] {
        let result = lua.load(fails).eval::<mlua::Value>();
        assert!(
            matches!(result, Err(_) | Ok(mlua::Value::Nil)),
            "{fails:?} runs, but not in Argo CD"
        );
    }
    let available: bool = lua
        .load("local os = require('os') return type(os.time()) == 'number' and type(os.date) == 'function' and type(table.insert) == 'function' and type(ipairs) == 'function'")
        .eval()
        .unwrap();
    assert!(available, "what Argo CD does open is there");
}

/// The ConfigMap patch, as it must read: both scripts embedded byte for byte.
fn argocd_cm_patch() -> String {
    let indent = |script: &str| -> String {
        script
            .lines()
            .map(|line| {
                if line.is_empty() {
                    "\n".to_owned()
                } else {
                    format!("    {line}\n")
                }
            })
            .collect()
    };
    format!(
        "# Argo CD health checks for sluice: merge into the argocd-cm ConfigMap (see README.md here).\n\
         # Generated from the .lua files beside it; tests/gitops_health.rs checks they match\n\
         # (regenerate with SLUICE_UPDATE_FIXTURES=1 cargo nextest run --test gitops_health).\n\
         apiVersion: v1\n\
         kind: ConfigMap\n\
         metadata:\n  name: argocd-cm\n  namespace: argocd\n\
         data:\n  {CANARY_KEY}: |\n{}  {DEPLOYMENT_KEY}: |\n{}",
        indent(CANARY_LUA),
        indent(DEPLOYMENT_LUA)
    )
}

#[test]
fn the_argocd_cm_patch_embeds_both_scripts_byte_for_byte() {
    let path = repo_path("deploy/gitops/argocd-cm-patch.yaml");
    if updating_fixtures() {
        std::fs::write(&path, argocd_cm_patch()).expect("patch written");
    }
    let text = std::fs::read_to_string(&path).expect("argocd-cm-patch.yaml");
    let patch: Value = serde_saphyr::from_str(&text).expect("the patch is YAML");
    assert_eq!(patch["kind"], "ConfigMap");
    assert_eq!(patch["metadata"]["name"], "argocd-cm");
    assert_eq!(patch["data"][CANARY_KEY].as_str(), Some(CANARY_LUA));
    assert_eq!(patch["data"][DEPLOYMENT_KEY].as_str(), Some(DEPLOYMENT_LUA));
}

/// The README's install command for Argo CD, run with kubectl against the test cluster: it adds
/// both keys to an existing argocd-cm and keeps what was there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_argocd_install_command_adds_both_checks_to_argocd_cm() {
    if !Path::new("/usr/bin/kubectl").exists() {
        eprintln!("skipping: no /usr/bin/kubectl");
        return;
    }
    let command = "kubectl -n argocd patch configmap argocd-cm --patch-file deploy/gitops/argocd-cm-patch.yaml";
    for readme in ["README.md", "deploy/gitops/README.md"] {
        let text = std::fs::read_to_string(repo_path(readme)).expect("README");
        assert!(text.contains(command), "{readme} shows: {command}");
    }
    let cluster = sluice_testcluster::TestCluster::start()
        .await
        .expect("test cluster");
    cluster
        .apply_yaml(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: argocd}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: argocd-cm, namespace: argocd}\n\
             data: {url: 'https://argocd.example.com'}\n",
        )
        .await
        .expect("argocd-cm");
    let mut args: Vec<String> = command.split(' ').skip(1).map(str::to_owned).collect();
    args.insert(0, cluster.kubeconfig_path().display().to_string());
    args.insert(0, "--kubeconfig".to_owned());
    let output = tokio::process::Command::new("/usr/bin/kubectl")
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl patch: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(cluster.client(), "argocd");
    let data: BTreeMap<String, String> = configmaps
        .get("argocd-cm")
        .await
        .expect("argocd-cm")
        .data
        .expect("data");
    assert_eq!(data.get(CANARY_KEY).map(String::as_str), Some(CANARY_LUA));
    assert_eq!(
        data.get(DEPLOYMENT_KEY).map(String::as_str),
        Some(DEPLOYMENT_LUA)
    );
    assert_eq!(
        data.get("url").map(String::as_str),
        Some("https://argocd.example.com"),
        "existing settings are kept"
    );
}

/// Both of the README's Flux Kustomizations carry the shipped entry unchanged; the one for the
/// paused-at-rest hold waits on the Canary only.
#[test]
fn the_readme_flux_examples_carry_the_shipped_entry() {
    let readme = std::fs::read_to_string(repo_path("deploy/gitops/README.md")).expect("README");
    let shipped: Value = serde_saphyr::from_str(FLUX_CHECKS).expect("shipped entry");
    let examples: Vec<Value> = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("```").map(|(block, _)| block))
        .filter(|block| block.contains("kind: Kustomization"))
        .map(|block| serde_saphyr::from_str(block).expect("the example is YAML"))
        .collect();
    assert_eq!(examples.len(), 2, "one example per hold mode");
    for example in &examples {
        assert_eq!(example["spec"]["healthCheckExprs"], shipped);
    }
    assert_eq!(examples[0]["spec"]["wait"], true);
    assert_eq!(examples[1]["spec"]["wait"], false);
    assert_eq!(
        examples[1]["spec"]["healthChecks"],
        json!([{"apiVersion": "sluice.dev/v1alpha1", "kind": "Canary", "name": "web", "namespace": "shop"}])
    );
}

// ---- End to end: a rollout through the test cluster -------------------------------------------

fn canary_manifest(prometheus: &str) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Canary
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  targetRef: {{name: web}}
  service: {{port: 8080}}
  router: {{gatewayAPI: {{httpRoute: {{name: web}}}}}}
  strategy: {{canary: {{stepWeights: [50]}}}}
  manualPromotion: true
  analysis:
    interval: 2s
    threshold: 1
    provider: {{prometheus: {{address: "{prometheus}"}}}}
    metrics:
    - {{name: error-rate, query: 'sum(rate(errors{{pod=~"{{{{ workload }}}}-.*"}}[{{{{ interval }}}}]))', max: 0.05}}
"#
    )
}

/// Writes a `kubectl sluice` command to the Canary's status, as the plugin does.
async fn command(env: &Env, action: &str, revision: &str) {
    let canaries: Api<DynamicObject> =
        Api::namespaced_with(env.client(), NAMESPACE, &canary_resource());
    let body = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Canary", "metadata": {"name": "web"},
        "status": {"command": {
            "action": action, "revision": revision,
            "requestedAt": jiff::Timestamp::now().to_string(), "requestedBy": "e2e",
        }},
    });
    canaries
        .patch_status(
            "web",
            &PatchParams::apply("kubectl-sluice"),
            &Patch::Apply(&body),
        )
        .await
        .unwrap_or_else(|e| panic!("{action} command: {e}"));
}

struct Rollout {
    env: Env,
    mode: &'static str,
}

impl Rollout {
    async fn wait_for(&self, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
        self.env
            .eventually(what, Duration::from_secs(40), || async {
                self.env.canary("web").await.filter(|c| accept(c))
            })
            .await
    }

    async fn deployment(&self) -> Value {
        serde_json::to_value(self.env.deployment("web").await.expect("target")).expect("json")
    }

    /// Reads the Canary and the Deployment and asserts what every check says about them. The
    /// Deployment's status follows the stand-in's pods, so it is polled until the checks agree
    /// (or the timeout says what they said last).
    async fn assert_moment(&self, moment: &str, accept: impl Fn(&Value) -> bool) -> Value {
        let want = expected(moment);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let (got, canary, deployment) = loop {
            let canary = self
                .wait_for(&format!("the Canary at {moment}"), &accept)
                .await;
            let deployment = self.deployment().await;
            let got = verdicts(&canary, &deployment);
            if got == want {
                if updating_fixtures() {
                    write_fixture(self.mode, moment, &canary, &deployment);
                }
                return canary;
            }
            if tokio::time::Instant::now() > deadline {
                break (got, canary, deployment);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        panic!(
            "{} hold, {moment}: expected {want:?}, got {got:?}\nCanary says {:?}\nDeployment says {:?}\nCanary: {canary}\nDeployment: {deployment}",
            self.mode,
            argocd_health(CANARY_LUA, &canary),
            argocd_health(DEPLOYMENT_LUA, &deployment),
        );
    }
}

async fn every_moment_of_a_rollout_reads_right_in_argo_cd_and_flux(hold: Hold) {
    let mode = match hold {
        Hold::AdmissionPolicy => "admission-policy",
        Hold::PausedAtRest => "paused-at-rest",
    };
    let mut env = Env::start(hold).await;
    let prometheus = FakePrometheus::start().await.expect("fake prometheus");
    prometheus.set_default(Answer::value(0.0));
    env.apply(&app_manifests("web", "registry.local/web:1", 2))
        .await;
    env.apply(&canary_manifest(&prometheus.url())).await;
    env.start_controller(&[]);
    let rollout = Rollout { env, mode };

    rollout.assert_moment("idle", |c| phase(c) == "Idle").await;

    // Revision 2: analysed at 50%, then held for a person's promotion.
    rollout.env.set_image("web", "registry.local/web:2").await;
    // Each step lasts at least the 2 s interval (I4): long enough to be seen.
    rollout
        .assert_moment("progressing", |c| {
            phase(c) == "Progressing" && c["status"]["canaryWeight"] == 50
        })
        .await;
    let waiting = rollout
        .assert_moment("waiting-promotion", |c| phase(c) == "WaitingPromotion")
        .await;
    let revision = waiting["status"]["revision"]
        .as_str()
        .expect("revision")
        .to_owned();

    command(&rollout.env, "Pause", &revision).await;
    rollout
        .assert_moment("paused", |c| phase(c) == "Paused")
        .await;
    command(&rollout.env, "Resume", &revision).await;
    rollout
        .wait_for("the resumed canary to wait for promotion again", |c| {
            phase(c) == "WaitingPromotion"
                && c["status"]["acknowledgedCommand"]["action"] == "Resume"
        })
        .await;
    command(&rollout.env, "Promote", &revision).await;
    rollout
        .assert_moment("succeeded", |c| {
            phase(c) == "Succeeded" && c["status"]["stableRevision"] == revision.as_str()
        })
        .await;

    // Revision 3 measures badly and is rolled back.
    prometheus.set_default(Answer::value(1.0));
    rollout.env.set_image("web", "registry.local/web:3").await;
    rollout
        .assert_moment("failed", |c| {
            phase(c) == "Failed" && c["status"]["revision"] != revision.as_str()
        })
        .await;

    // A spec naming a CanaryPolicy that does not exist.
    let canaries: Api<DynamicObject> =
        Api::namespaced_with(rollout.env.client(), NAMESPACE, &canary_resource());
    canaries
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"policyRef": {"name": "missing"}}})),
        )
        .await
        .expect("policyRef set");
    rollout
        .assert_moment("invalid", |c| phase(c) == "Invalid")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_moment_of_a_rollout_reads_right_in_argo_cd_and_flux_with_the_admission_policy_hold()
{
    every_moment_of_a_rollout_reads_right_in_argo_cd_and_flux(Hold::AdmissionPolicy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_moment_of_a_rollout_reads_right_in_argo_cd_and_flux_with_the_paused_at_rest_hold() {
    every_moment_of_a_rollout_reads_right_in_argo_cd_and_flux(Hold::PausedAtRest).await;
}
