//! The test's entry point: [`TestCluster::start`] runs the in-process API server (or, when
//! `SLUICE_E2E_KUBECONFIG` is set, connects to that real cluster instead), writes a kubeconfig,
//! installs the workspace's CRDs, and hands out a `kube::Client`, fault injection, request counts
//! and compaction. Faults, compaction and accounting report [`HarnessError::Unsupported`] on a
//! real cluster so tests can skip those parts.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::Value;

use crate::accounting::{RequestCounts, Write};
use crate::apiserver::{ApiServer, ServerOptions};
use crate::faults::Faults;

/// The environment variable naming a real cluster's kubeconfig for end-to-end runs.
pub const E2E_KUBECONFIG_ENV: &str = "SLUICE_E2E_KUBECONFIG";

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("failed to start the test API server")]
    StartServer(#[source] std::io::Error),
    #[error("failed to write the kubeconfig")]
    WriteKubeconfig(#[source] std::io::Error),
    #[error("failed to read {path}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to parse YAML: {0}")]
    ParseYaml(String),
    #[error("failed to build a kube client from {path}")]
    Kubeconfig {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("failed to apply {kind} {name}")]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("{0} is not supported against a real cluster")]
    Unsupported(&'static str),
    #[error("condition not met within {0:?}")]
    Timeout(Duration),
}

/// Options for [`TestCluster`].
#[derive(Debug, Clone, Default)]
pub struct TestClusterBuilder {
    opts: ServerOptions,
    skip_default_crds: bool,
    extra_crd_dirs: Vec<PathBuf>,
}

impl TestClusterBuilder {
    /// Start without MutatingAdmissionPolicy(Binding), like a cluster older than 1.36.
    pub fn without_admission_policies(mut self) -> Self {
        self.opts.admission_policies = false;
        self
    }

    /// Keep at most `n` watch events for resuming watches.
    pub fn watch_history(mut self, n: usize) -> Self {
        self.opts.history = n;
        self
    }

    /// Do not install the workspace's and upstream CRDs at start.
    pub fn without_default_crds(mut self) -> Self {
        self.skip_default_crds = true;
        self
    }

    /// Also install the CRDs under `dir`.
    pub fn crds_from(mut self, dir: impl Into<PathBuf>) -> Self {
        self.extra_crd_dirs.push(dir.into());
        self
    }

    pub async fn start(self) -> Result<TestCluster, HarnessError> {
        if let Ok(path) = std::env::var(E2E_KUBECONFIG_ENV)
            && !path.is_empty()
        {
            return TestCluster::connect_with(PathBuf::from(path), &self).await;
        }
        let server = ApiServer::start(self.opts.clone())
            .await
            .map_err(HarnessError::StartServer)?;
        let dir = tempfile::tempdir().map_err(HarnessError::WriteKubeconfig)?;
        let kubeconfig = crate::kubeconfig::write(dir.path(), &server.url())
            .map_err(HarnessError::WriteKubeconfig)?;
        let client = client_from(&kubeconfig).await?;
        let url = server.url();
        let tc = TestCluster {
            server: Some(server),
            kubeconfig,
            _dir: Some(dir),
            client,
            url,
        };
        let mut dirs = if self.skip_default_crds {
            vec![]
        } else {
            default_crd_dirs()
        };
        dirs.extend(self.extra_crd_dirs.iter().cloned());
        for d in dirs {
            tc.install_crds_from(&d).await?;
        }
        Ok(tc)
    }
}

/// When the test cluster committed each resourceVersion; see [`TestCluster::commit_clock`].
#[derive(Clone)]
pub struct CommitClock {
    shared: Arc<crate::apiserver::Shared>,
}

impl CommitClock {
    /// When the change with resourceVersion `rv` was committed (the last 65,536 are kept).
    pub fn committed_at(&self, rv: u64) -> Option<std::time::SystemTime> {
        self.shared.lock().committed_at(rv)
    }
}

/// A running test cluster. Dropping it stops the server.
pub struct TestCluster {
    server: Option<ApiServer>,
    kubeconfig: PathBuf,
    _dir: Option<tempfile::TempDir>,
    client: kube::Client,
    url: String,
}

async fn client_from(path: &Path) -> Result<kube::Client, HarnessError> {
    let err = |e: Box<dyn std::error::Error + Send + Sync>| HarnessError::Kubeconfig {
        path: path.to_path_buf(),
        source: e,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(Box::new(e)))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| err(Box::new(e)))?;
    kube::Client::try_from(cfg).map_err(|e| err(Box::new(e)))
}

/// `<workspace>/crds` and `<repo>/../shared/upstream-crds`, where they exist.
pub fn default_crd_dirs() -> Vec<PathBuf> {
    // CARGO_MANIFEST_DIR is tests/testcluster; the workspace root is two levels up.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    [root.join("crds"), root.join("../shared/upstream-crds")]
        .into_iter()
        .filter(|p| p.is_dir())
        .collect()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

/// Parses multi-document YAML into JSON values (empty documents dropped).
pub fn parse_yaml_documents(text: &str) -> Result<Vec<Value>, HarnessError> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| HarnessError::ParseYaml(e.to_string()))?;
    Ok(docs.into_iter().filter(|d| d.is_object()).collect())
}

type CrdCache = std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<Vec<Value>>>>;

/// CRDs parsed once per process: the upstream files are large and every test starts a cluster.
fn crds_in(dir: &Path) -> Result<Arc<Vec<Value>>, HarnessError> {
    static CACHE: OnceLock<CrdCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().expect("crd cache poisoned").get(dir) {
        return Ok(v.clone());
    }
    let mut files = Vec::new();
    yaml_files(dir, &mut files);
    let mut crds = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| HarnessError::ReadFile {
            path: f.clone(),
            source: e,
        })?;
        for d in parse_yaml_documents(&text)? {
            if d["kind"] == "CustomResourceDefinition" {
                crds.push(d);
            }
        }
    }
    let v = Arc::new(crds);
    cache
        .lock()
        .expect("crd cache poisoned")
        .insert(dir.to_path_buf(), v.clone());
    Ok(v)
}

impl TestCluster {
    /// Starts a test cluster with the default options (or connects to `SLUICE_E2E_KUBECONFIG`).
    pub async fn start() -> Result<TestCluster, HarnessError> {
        Self::builder().start().await
    }

    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder::default()
    }

    /// Connects to an existing cluster through `kubeconfig` (what `start()` does when
    /// `SLUICE_E2E_KUBECONFIG` is set), installing the default CRDs there.
    pub async fn connect(kubeconfig: impl Into<PathBuf>) -> Result<TestCluster, HarnessError> {
        Self::connect_with(kubeconfig.into(), &TestClusterBuilder::default()).await
    }

    async fn connect_with(
        path: PathBuf,
        b: &TestClusterBuilder,
    ) -> Result<TestCluster, HarnessError> {
        let client = client_from(&path).await?;
        let kc =
            kube::config::Kubeconfig::read_from(&path).map_err(|e| HarnessError::Kubeconfig {
                path: path.clone(),
                source: Box::new(e),
            })?;
        let url = kc
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.server.clone())
            .unwrap_or_default();
        let tc = TestCluster {
            server: None,
            kubeconfig: path,
            _dir: None,
            client,
            url,
        };
        let mut dirs = if b.skip_default_crds {
            vec![]
        } else {
            default_crd_dirs()
        };
        dirs.extend(b.extra_crd_dirs.iter().cloned());
        for d in dirs {
            tc.install_crds_from(&d).await?;
        }
        Ok(tc)
    }

    /// True when running against the in-process server (faults, compaction and counts work).
    pub fn is_local(&self) -> bool {
        self.server.is_some()
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    fn server(&self, what: &'static str) -> Result<&ApiServer, HarnessError> {
        self.server.as_ref().ok_or(HarnessError::Unsupported(what))
    }

    /// Server-side applies every document of `yaml` (field manager `testcluster`, forced).
    pub async fn apply_yaml(&self, yaml: &str) -> Result<Vec<Value>, HarnessError> {
        let mut out = Vec::new();
        for doc in parse_yaml_documents(yaml)? {
            out.push(self.apply_value(doc).await?);
        }
        Ok(out)
    }

    async fn apply_value(&self, doc: Value) -> Result<Value, HarnessError> {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let fail = |e: kube::Error| HarnessError::Apply {
            kind: kind.clone(),
            name: name.clone(),
            source: e,
        };
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.clone()),
        };
        let gvk = GroupVersionKind::gvk(&group, &version, &kind);
        let (ar, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(fail)?;
        let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
            let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
            Api::namespaced_with(self.client.clone(), ns, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        };
        let pp = PatchParams::apply("testcluster").force();
        let obj = api
            .patch(&name, &pp, &Patch::Apply(&doc))
            .await
            .map_err(fail)?;
        serde_json::to_value(obj).map_err(|e| HarnessError::ParseYaml(e.to_string()))
    }

    /// Installs every CustomResourceDefinition in the YAML files under `dir` (recursively).
    pub async fn install_crds_from(&self, dir: &Path) -> Result<usize, HarnessError> {
        let crds = crds_in(dir)?;
        match &self.server {
            Some(s) => {
                let mut st = s.shared.lock();
                for c in crds.iter() {
                    st.seed_crd(c.clone());
                }
            }
            None => {
                for c in crds.iter() {
                    self.apply_value(c.clone()).await?;
                }
            }
        }
        Ok(crds.len())
    }

    /// Polls `cond` every 20 ms until it is true or `timeout` passes.
    pub async fn wait_for<F, Fut>(&self, cond: F, timeout: Duration) -> Result<(), HarnessError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        wait_for(cond, timeout).await
    }

    /// The request counts since start (or the last reset).
    pub fn requests(&self) -> Result<RequestCounts, HarnessError> {
        Ok(self
            .server("request accounting")?
            .shared
            .accounting
            .snapshot())
    }

    /// The request counts of one client program (the name part of its User-Agent: `sluice` for
    /// `sluice/0.1.0`; `unknown` for clients that send none, such as kube-rs by default).
    pub fn requests_from(&self, client: &str) -> Result<RequestCounts, HarnessError> {
        Ok(self
            .server("request accounting")?
            .shared
            .accounting
            .snapshot_of(client))
    }

    /// The write requests of one client program (as [`Self::requests_from`] names it) since
    /// start or the last reset, oldest first, with name, time and body (the last 4096 writes).
    pub fn writes_from(&self, client: &str) -> Result<Vec<Write>, HarnessError> {
        Ok(self
            .server("request accounting")?
            .shared
            .accounting
            .writes_of(client))
    }

    /// The server's clock of commits: when each resourceVersion was written (on this server's
    /// clock, before the write was answered or watched). `None` on a real cluster.
    pub fn commit_clock(&self) -> Option<CommitClock> {
        self.server.as_ref().map(|server| CommitClock {
            shared: server.shared.clone(),
        })
    }

    pub fn reset_requests(&self) -> Result<(), HarnessError> {
        self.server("request accounting")?.shared.accounting.reset();
        Ok(())
    }

    pub fn faults(&self) -> Result<Faults, HarnessError> {
        Ok(Faults {
            state: self.server("fault injection")?.shared.faults.clone(),
        })
    }

    /// Drops the watch history: watches from older resourceVersions get 410 Expired.
    pub fn compact(&self) -> Result<(), HarnessError> {
        self.server("compaction")?.shared.lock().compact();
        Ok(())
    }

    /// Stops the server and waits for its tasks.
    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }
}

/// Polls `cond` every 20 ms until it is true or `timeout` passes.
pub async fn wait_for<F, Fut>(mut cond: F, timeout: Duration) -> Result<(), HarnessError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(HarnessError::Timeout(timeout));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
