//! Directory watchers (`WatchDir`, `CreateWatcher`, `GetWatcherEvents`,
//! `RemoveWatcher`), by polling: the guest agent has no inotify relay, so a
//! watcher lists the directory every [`POLL`] and reports what appeared,
//! went, or changed size, time or mode since the last listing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nook::FileStat;
use serde_json::{json, Value};

use crate::connect::{end_stream, envelope, Code, RpcError};
use crate::envd::{session_error, StreamCall};
use crate::filesystem::{guest_path, snapshot_tree};
use crate::sandboxes::{random_hex, Sandbox};

/// How often a watcher lists its directory.
const POLL: Duration = Duration::from_millis(250);
/// Events a non-streaming watcher keeps until they are fetched.
const MAX_PENDING: usize = 10_000;

type Tree = BTreeMap<String, FileStat>;

/// What changed from `old` to `new`, as `FilesystemEvent`s.
fn diff(old: &Tree, new: &Tree) -> Vec<Value> {
    let ev = |name: &str, t: &str| json!({ "name": name, "type": t });
    let mut out = Vec::new();
    for (name, st) in new {
        match old.get(name) {
            None => out.push(ev(name, "EVENT_TYPE_CREATE")),
            Some(o) if o.size != st.size || o.mtime != st.mtime => {
                out.push(ev(name, "EVENT_TYPE_WRITE"))
            }
            Some(o) if o.mode != st.mode => out.push(ev(name, "EVENT_TYPE_CHMOD")),
            Some(_) => {}
        }
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        out.push(ev(name, "EVENT_TYPE_REMOVE"));
    }
    out
}

/// One listing of the watched directory, off the async threads.
async fn list(
    home: PathBuf,
    sb: Arc<Sandbox>,
    dir: String,
    recursive: bool,
) -> Result<Tree, RpcError> {
    tokio::task::spawn_blocking(move || {
        let c = sb.client(&home).map_err(session_error)?;
        let st = c.stat(&dir).map_err(session_error)?;
        if st.kind != nook::FileKind::Dir {
            return Err(RpcError::new(
                Code::InvalidArgument,
                format!("{dir} is not a directory"),
            ));
        }
        Ok(snapshot_tree(&c, &dir, recursive)?.into_iter().collect())
    })
    .await
    .map_err(|e| RpcError::new(Code::Internal, e.to_string()))?
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WatchDirRequest {
    pub path: String,
    pub recursive: bool,
}

/// `WatchDir`: a start event, then events as they are seen, until the
/// client goes or its timeout passes.
pub async fn watch_dir(call: StreamCall, home: PathBuf, sb: Arc<Sandbox>, req: WatchDirRequest) {
    let dir = guest_path(&req.path);
    let mut tree = match list(home.clone(), sb.clone(), dir.clone(), req.recursive).await {
        Ok(t) => t,
        Err(e) => return call.fail(e).await,
    };
    if call
        .tx
        .send(envelope(&json!({ "start": {} })))
        .await
        .is_err()
    {
        return;
    }
    let deadline = call
        .timeout_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    loop {
        tokio::time::sleep(POLL).await;
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            let _ = call.tx.send(end_stream(None)).await;
            return;
        }
        let new = match list(home.clone(), sb.clone(), dir.clone(), req.recursive).await {
            Ok(t) => t,
            Err(e) => return call.fail(e).await,
        };
        for ev in diff(&tree, &new) {
            if call
                .tx
                .send(envelope(&json!({ "filesystem": ev })))
                .await
                .is_err()
            {
                return;
            }
        }
        if call.tx.is_closed() {
            return;
        }
        tree = new;
    }
}

/// A sandbox's non-streaming watchers: their pending events by id.
#[derive(Debug, Default)]
pub struct Watchers(Arc<Mutex<HashMap<String, VecDeque<Value>>>>);

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Value>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `CreateWatcher`: polls `dir` until the watcher is removed.
    pub async fn create(
        &self,
        home: PathBuf,
        sb: Arc<Sandbox>,
        dir: String,
        recursive: bool,
    ) -> Result<Value, RpcError> {
        let mut tree = list(home.clone(), sb.clone(), dir.clone(), recursive).await?;
        let id = random_hex(8);
        self.lock().insert(id.clone(), VecDeque::new());
        let map = self.0.clone();
        let wid = id.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLL).await;
                if !map
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&wid)
                {
                    return;
                }
                let Ok(new) = list(home.clone(), sb.clone(), dir.clone(), recursive).await else {
                    return;
                };
                let evs = diff(&tree, &new);
                tree = new;
                let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
                let Some(q) = m.get_mut(&wid) else { return };
                for ev in evs {
                    if q.len() < MAX_PENDING {
                        q.push_back(ev);
                    }
                }
            }
        });
        Ok(json!({ "watcherId": id }))
    }

    /// `GetWatcherEvents`: the events seen since the last call.
    pub fn events(&self, id: &str) -> Result<Value, RpcError> {
        let mut m = self.lock();
        let q = m
            .get_mut(id)
            .ok_or_else(|| RpcError::new(Code::NotFound, format!("no watcher {id}")))?;
        let events: Vec<Value> = q.drain(..).collect();
        Ok(json!({ "events": events }))
    }

    /// `RemoveWatcher`.
    pub fn remove(&self, id: &str) -> Result<Value, RpcError> {
        self.lock()
            .remove(id)
            .map(|_| json!({}))
            .ok_or_else(|| RpcError::new(Code::NotFound, format!("no watcher {id}")))
    }

    /// Stops every watcher.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(size: u64, mtime: i64, mode: u32) -> FileStat {
        FileStat {
            name: String::new(),
            kind: nook::FileKind::File,
            size,
            mode,
            mtime,
            link_target: None,
        }
    }

    #[test]
    fn diff_reports_creates_writes_chmods_and_removes() {
        let old: Tree = [
            ("a".into(), st(1, 1, 0o644)),
            ("b".into(), st(1, 1, 0o644)),
            ("c".into(), st(1, 1, 0o644)),
        ]
        .into_iter()
        .collect();
        let new: Tree = [
            ("a".into(), st(2, 1, 0o644)),
            ("b".into(), st(1, 1, 0o600)),
            ("d".into(), st(0, 1, 0o644)),
        ]
        .into_iter()
        .collect();
        let evs = diff(&old, &new);
        let got: Vec<(String, String)> = evs
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().into(),
                    e["type"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a".to_string(), "EVENT_TYPE_WRITE".to_string()),
                ("b".into(), "EVENT_TYPE_CHMOD".into()),
                ("d".into(), "EVENT_TYPE_CREATE".into()),
                ("c".into(), "EVENT_TYPE_REMOVE".into()),
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }
}
