//! A scripted webhook server for the hook tests: real HTTP (axum) on 127.0.0.1 with a random
//! port. Each path answers what the test set (a status, or never), and every call is recorded
//! with its JSON body and when it arrived. Dropping it stops the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use serde_json::Value;

/// What a path answers.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    Status(u16),
    /// Never answers (the request hangs until the client gives up).
    Hang,
}

/// One recorded call.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
struct Script {
    answers: Mutex<HashMap<String, Answer>>,
    calls: Mutex<Vec<Received>>,
}

pub struct HookServer {
    addr: std::net::SocketAddr,
    script: Arc<Script>,
    task: tokio::task::JoinHandle<()>,
}

impl HookServer {
    /// Starts the server; every path answers 200 until told otherwise.
    pub async fn start() -> HookServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("hook server binds");
        let addr = listener.local_addr().expect("local addr");
        let script = Arc::new(Script::default());
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(script.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HookServer { addr, script, task }
    }

    /// The URL of `path` (starting with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn answer(&self, path: &str, answer: Answer) {
        self.script
            .answers
            .lock()
            .expect("answers")
            .insert(path.to_owned(), answer);
    }

    /// Every call to `path` so far, oldest first.
    pub fn calls(&self, path: &str) -> Vec<Received> {
        self.script
            .calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|c| c.path == path)
            .cloned()
            .collect()
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(script): State<Arc<Script>>, uri: Uri, body: Bytes) -> StatusCode {
    let path = uri.path().to_owned();
    script.calls.lock().expect("calls").push(Received {
        path: path.clone(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        at: Instant::now(),
    });
    let answer = script
        .answers
        .lock()
        .expect("answers")
        .get(&path)
        .copied()
        .unwrap_or(Answer::Status(200));
    match answer {
        Answer::Status(code) => StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
        Answer::Hang => std::future::pending().await,
    }
}
