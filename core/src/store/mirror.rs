//! A local copy of one key range, kept in step with etcd by a watch.
//!
//! # Expected flow
//! 1. List the range and remember the revision the list saw.
//! 2. Watch from that revision + 1, applying every put and delete.
//! 3. When the watch stream breaks (etcd restarted, network cut), watch
//!    again from the last revision applied + 1: nothing is missed.
//! 4. When etcd answers that this revision is compacted away, go back to 1:
//!    the events in between are gone, so only a fresh list is correct.
//!
//! # Guarantees
//! - Readers see a whole revision or nothing of it: each watch response is
//!   applied under one write lock.
//! - [`Mirror::changed`] fires after each applied change, so a reader can
//!   wait for "at least revision N" without polling.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{EventType, WatchOptions};
use tokio::sync::watch;

use super::{Store, etcd_error};
use crate::error::Result;

/// The mirrored range at one revision.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The etcd revision this copy reflects; 0 until the first list.
    pub revision: i64,
    /// Keys (with the mirrored prefix removed) and their raw values.
    pub entries: BTreeMap<String, Bytes>,
}

/// A watch-fed copy of every key under one prefix.
#[derive(Debug, Clone)]
pub struct Mirror {
    prefix: String,
    snapshot: Arc<RwLock<Snapshot>>,
    changed: watch::Receiver<i64>,
}

/// What resuming a watch found.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// The stream ended or broke; resume from this revision.
    From(i64),
    /// The revision was compacted away; list again.
    Compacted,
}

impl Mirror {
    /// Starts mirroring every key under `prefix`. The background task ends
    /// when the last clone of the mirror is dropped.
    pub fn spawn(store: &Store, prefix: impl Into<String>) -> Mirror {
        let prefix = prefix.into();
        let snapshot = Arc::new(RwLock::new(Snapshot::default()));
        let (changed_tx, changed) = watch::channel(0);
        tokio::spawn(run(
            store.clone(),
            prefix.clone(),
            Arc::downgrade(&snapshot),
            changed_tx,
        ));
        Mirror {
            prefix,
            snapshot,
            changed,
        }
    }

    /// The mirrored prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Reads the current copy. Hold the guard briefly: writers wait on it.
    pub fn read(&self) -> RwLockReadGuard<'_, Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A receiver of the revision applied last; it changes after each
    /// applied change.
    pub fn changed(&self) -> watch::Receiver<i64> {
        self.changed.clone()
    }

    /// Waits until the copy reflects at least `revision`.
    pub async fn wait_for_revision(&self, revision: i64) {
        let mut changed = self.changed.clone();
        let _ = changed.wait_for(|applied| *applied >= revision).await;
    }
}

async fn run(
    store: Store,
    prefix: String,
    snapshot: Weak<RwLock<Snapshot>>,
    changed: watch::Sender<i64>,
) {
    let mut backoff = Backoff::default();
    let mut resume_from: Option<i64> = None;
    loop {
        let Some(shared) = snapshot.upgrade() else {
            return;
        };
        let from = match resume_from {
            Some(from) => from,
            None => match list(&store, &prefix).await {
                Ok(fresh) => {
                    let revision = fresh.revision;
                    *shared.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                    let _ = changed.send(revision);
                    backoff.reset();
                    revision + 1
                }
                Err(error) => {
                    tracing::warn!(%prefix, %error, "listing for the mirror failed; retrying");
                    drop(shared);
                    backoff.wait().await;
                    continue;
                }
            },
        };
        drop(shared);
        match follow(&store, &prefix, from, &snapshot, &changed).await {
            Ok(Resume::From(next)) => {
                if next == from {
                    backoff.wait().await;
                } else {
                    backoff.reset();
                }
                resume_from = Some(next);
            }
            Ok(Resume::Compacted) => {
                tracing::info!(%prefix, from, "watch revision compacted; listing again");
                resume_from = None;
            }
            Err(error) => {
                tracing::warn!(%prefix, %error, "watch failed; resuming");
                resume_from = Some(from);
                backoff.wait().await;
            }
        }
        if changed.is_closed() {
            return;
        }
    }
}

async fn list(store: &Store, prefix: &str) -> Result<Snapshot> {
    let (kvs, revision) = store.list_raw(prefix).await?;
    let entries = kvs
        .iter()
        .map(|kv| (strip(prefix, kv.key()), Bytes::copy_from_slice(kv.value())))
        .collect();
    Ok(Snapshot { revision, entries })
}

fn strip(prefix: &str, key: &[u8]) -> String {
    let key = String::from_utf8_lossy(key);
    key.strip_prefix(prefix).unwrap_or(&key).to_string()
}

/// Watches `prefix` from revision `from`, applying what arrives, until the
/// stream ends; answers where to resume.
pub async fn follow(
    store: &Store,
    prefix: &str,
    from: i64,
    snapshot: &Weak<RwLock<Snapshot>>,
    changed: &watch::Sender<i64>,
) -> Result<Resume> {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(from)
        .with_progress_notify();
    let mut stream = store
        .client()
        .watch(prefix, Some(options))
        .await
        .map_err(etcd_error)?;
    let mut next = from;
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            // Every reader is gone: stop watching.
            () = changed.closed() => return Ok(Resume::From(next)),
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => return Ok(Resume::From(next)),
            Err(error) => {
                tracing::debug!(%prefix, %error, "watch stream broke");
                return Ok(Resume::From(next));
            }
        };
        if response.compact_revision() > 0 {
            return Ok(Resume::Compacted);
        }
        if response.canceled() {
            return Ok(Resume::From(next));
        }
        let Some(shared) = snapshot.upgrade() else {
            return Ok(Resume::From(next));
        };
        if let Some(last) = response.events().last().and_then(|e| e.kv()) {
            let mut guard = shared.write().unwrap_or_else(|p| p.into_inner());
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let key = strip(prefix, kv.key());
                match event.event_type() {
                    EventType::Put => {
                        guard
                            .entries
                            .insert(key, Bytes::copy_from_slice(kv.value()));
                    }
                    EventType::Delete => {
                        guard.entries.remove(&key);
                    }
                }
            }
            next = last.mod_revision() + 1;
            guard.revision = last.mod_revision();
        } else if !response.created() {
            // A progress notification: every event up to the header's
            // revision has been sent.
            if let Some(revision) = response.header().map(|h| h.revision()) {
                next = next.max(revision + 1);
                let mut guard = shared.write().unwrap_or_else(|p| p.into_inner());
                guard.revision = guard.revision.max(revision);
            }
        }
        let revision = next - 1;
        let _ = changed.send(revision);
    }
}

/// Exponential back-off between retries: 100 ms doubling to 5 s.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
    }

    fn reset(&mut self) {
        *self = Backoff::default();
    }
}
