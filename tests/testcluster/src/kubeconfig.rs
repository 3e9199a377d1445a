//! Writes a kubeconfig file pointing at the test server, for kube-rs, kubectl and the sluice
//! binaries. Plain HTTP on loopback, no credentials.

use std::path::{Path, PathBuf};

/// The kubeconfig text for a server at `url` with `namespace` as the context's default.
pub fn render(url: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: testcluster
  cluster:
    server: {url}
contexts:
- name: testcluster
  context:
    cluster: testcluster
    user: testcluster
    namespace: {namespace}
current-context: testcluster
preferences: {{}}
users:
- name: testcluster
  user: {{}}
"
    )
}

/// Writes `kubeconfig` into `dir` and returns its path.
pub fn write(dir: &Path, url: &str) -> std::io::Result<PathBuf> {
    let path = dir.join("kubeconfig");
    std::fs::write(&path, render(url, "default"))?;
    Ok(path)
}
