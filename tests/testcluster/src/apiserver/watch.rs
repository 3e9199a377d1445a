//! Watch streams: one JSON event per line over a chunked response, resumed from a
//! resourceVersion out of the store's history, with bookmarks, `sendInitialEvents` streaming
//! lists, `timeoutSeconds`, and the 410 Expired ERROR event for compacted resourceVersions. Ends
//! on injected watch cuts and on server shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use futures::SinkExt;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::errors::ApiError;
use super::resources::ResourceInfo;
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{EventKind, WatchEvent};
use super::{Shared, json_response};

struct Filter {
    key: (String, String),
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn selects(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The event type this watch reports for `ev`, if any: a MODIFIED object that enters the
    /// selector is ADDED for this watch, one that leaves it is DELETED, as the real server does.
    fn translate(&self, ev: &WatchEvent) -> Option<&'static str> {
        if ev.key != self.key || self.namespace.as_ref().is_some_and(|n| *n != ev.namespace) {
            return None;
        }
        let now = self.selects(&ev.object);
        match ev.kind {
            EventKind::Added | EventKind::Deleted => now.then_some(ev.kind.as_str()),
            EventKind::Modified => {
                let before = ev.prev.as_ref().is_some_and(|p| self.selects(p));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }
    }
}

fn line(v: &Value) -> Result<Bytes, Infallible> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Ok(Bytes::from(b))
}

fn event_json(ri: &ResourceInfo, ty: &str, obj: &Value) -> Value {
    let mut o = super::events::convert_for(ri, obj).unwrap_or_else(|| obj.clone());
    o["apiVersion"] = json!(ri.api_version());
    json!({"type": ty, "object": o})
}

fn bookmark(ri: &ResourceInfo, rv: u64, initial_end: bool) -> Value {
    let mut md = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {"kind": ri.kind, "apiVersion": ri.api_version(), "metadata": md}})
}

fn streaming(rx: futures::channel::mpsc::Receiver<Result<Bytes, Infallible>>) -> Response {
    let mut r = Response::new(Body::from_stream(rx));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A watch answered as for a resourceVersion the server no longer has: one ERROR event, 410
/// Expired, and the end of the stream (the client lists again).
pub fn expired(shared: &Shared) -> Response {
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, Infallible>>(1);
    let rv = shared.lock().current_rv();
    let e = ApiError::expired(rv.saturating_sub(1), rv);
    let ev = json!({"type": "ERROR", "object": e.body});
    tokio::spawn(async move {
        let _ = tx.send(line(&ev)).await;
    });
    streaming(rx)
}

pub fn serve_watch(
    shared: Arc<Shared>,
    ri: Arc<ResourceInfo>,
    namespace: Option<String>,
    query: &HashMap<String, String>,
) -> Response {
    let labels = match LabelSelector::parse(
        query
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    ) {
        Ok(l) => l,
        Err(e) => return json_response(400, &ApiError::bad_request(e).body),
    };
    let fields = match FieldSelector::parse(
        query
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    ) {
        Ok(f) => f,
        Err(e) => return json_response(400, &ApiError::bad_request(e).body),
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let send_initial = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let filter = Filter {
        key: ri.storage_key(),
        namespace,
        labels,
        fields,
    };
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, Infallible>>(64);

    if shared.faults.take_gone_watch() {
        return expired(&shared);
    }

    // Under one lock: the starting point, the backlog, and the live subscription.
    let rv_param = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or_default();
    let (mut backlog, mut live, start_rv) = {
        let store = shared.lock();
        let live = store.subscribe();
        let current = store.current_rv();
        let mut backlog: Vec<Value> = Vec::new();
        let from = if send_initial || rv_param.is_empty() || rv_param == "0" {
            let mut objs: Vec<Arc<Value>> = store.all_of(&filter.key);
            objs.retain(|o| {
                filter
                    .namespace
                    .as_ref()
                    .is_none_or(|n| o["metadata"]["namespace"].as_str() == Some(n))
                    && filter.labels.matches(o)
                    && filter.fields.matches(o)
            });
            backlog.extend(objs.iter().map(|o| event_json(&ri, "ADDED", o)));
            if send_initial {
                backlog.push(bookmark(&ri, current, true));
            }
            current
        } else {
            let Ok(from) = rv_param.parse::<u64>() else {
                return json_response(
                    400,
                    &ApiError::bad_request(format!("invalid resource version: {rv_param}")).body,
                );
            };
            match store.events_since(&filter.key, from) {
                Ok(evs) => {
                    backlog.extend(evs.iter().filter_map(|e| {
                        filter.translate(e).map(|ty| event_json(&ri, ty, &e.object))
                    }));
                    current
                }
                Err(e) => {
                    let ev = json!({"type": "ERROR", "object": e.body});
                    drop(store);
                    tokio::spawn(async move {
                        let _ = tx.send(line(&ev)).await;
                    });
                    return streaming(rx);
                }
            }
        };
        (std::mem::take(&mut backlog), live, from)
    };

    let mut cut = shared.faults.cut_watches.subscribe();
    cut.mark_unchanged();
    let mut resets = shared.faults.resets.subscribe();
    resets.mark_unchanged();
    let mut held = shared.faults.held_watches.subscribe();
    let plural = ri.plural.clone();
    let is_held = move |held: &tokio::sync::watch::Receiver<std::collections::BTreeSet<String>>| {
        held.borrow().contains(&plural)
    };
    let shutdown = super::stopped(shared.shutdown.subscribe());
    tokio::spawn(async move {
        tokio::pin!(shutdown);
        for ev in backlog.drain(..) {
            if tx.send(line(&ev)).await.is_err() {
                return;
            }
        }
        let mut last_rv = start_rv;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        // Live events held back by an injected lag, with their resourceVersions.
        let mut pending: Vec<(u64, Value)> = Vec::new();
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = cut.changed() => return,
                // Writing makes the connection notice an injected reset.
                _ = resets.changed() => {
                    if tx.send(line(&bookmark(&ri, last_rv, false))).await.is_err() {
                        return;
                    }
                }
                _ = &mut shutdown => return,
                Ok(()) = held.changed() => {
                    if !is_held(&held) {
                        for (rv, ev) in pending.drain(..) {
                            last_rv = rv;
                            if tx.send(line(&ev)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    if bookmarks && tx.send(line(&bookmark(&ri, last_rv, false))).await.is_err() {
                        return;
                    }
                }
                ev = live.recv() => match ev {
                    Ok(ev) => {
                        let ty = if ev.rv > last_rv { filter.translate(&ev) } else { None };
                        let Some(ty) = ty else {
                            // A bookmark must not move past events still held back.
                            if ev.key == filter.key && pending.is_empty() {
                                last_rv = last_rv.max(ev.rv);
                            }
                            continue;
                        };
                        if is_held(&held) {
                            pending.push((ev.rv, event_json(&ri, ty, &ev.object)));
                            continue;
                        }
                        last_rv = ev.rv;
                        if tx.send(line(&event_json(&ri, ty, &ev.object))).await.is_err() {
                            return;
                        }
                    }
                    // A watcher that falls this far behind is ended; the client re-watches.
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                }
            }
        }
    });
    streaming(rx)
}
