//! The decision core stays pure: no file under `src/core/` may name a kube client, the kube
//! runtime, tokio, reqwest, the system clock or the network. Deciding in pure functions is what
//! makes the fixture tables and the property tests a full specification of behaviour.

const FORBIDDEN: &[&str] = &[
    "kube::Client",
    "kube::Api",
    "kube::runtime",
    "kube_runtime",
    "kube_client",
    "tokio",
    "reqwest",
    "std::time::SystemTime",
    "SystemTime",
    "std::time::Instant",
    "Instant::now",
    "Timestamp::now",
    "Zoned::now",
    "std::net",
];

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/core") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_file_under_src_core_touches_a_client_the_network_or_the_clock() {
    let core = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    rust_files(&core, &mut files);
    assert!(
        files.len() >= 5,
        "expected the core's modules, found {files:?}"
    );
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        for (n, line) in text.lines().enumerate() {
            // Doc comments may name what the module must not do.
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for word in FORBIDDEN {
                if code.contains(word) {
                    found.push(format!("{}:{}: {word}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the core must stay pure:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scan_would_notice_a_forbidden_name() {
    let line = "    let now = jiff::Timestamp::now();";
    assert!(FORBIDDEN.iter().any(|w| line.contains(w)));
}
