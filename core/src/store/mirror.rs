//! A local copy of one key range, kept in step with etcd by a watch, and
//! the reflector under it that passes the range's changes on in order.
//!
//! # Expected flow
//! 1. List the range (in pages, at one revision) and remember the
//!    revision the list saw.
//! 2. Watch from that revision + 1, passing on every put and delete.
//! 3. When the watch stream breaks (etcd restarted, network cut), watch
//!    again from the last revision passed on + 1: nothing is missed.
//! 4. When etcd answers that this revision is compacted away, go back to 1:
//!    the events in between are gone, so only a fresh list is correct.
//!
//! # Guarantees
//! - [`reflect`] passes on a whole watch response or nothing of it, in
//!   revision order; an [`Update::Listed`] replaces everything before it
//!   (kube-runtime's watcher: Init, then events).
//! - Readers of a [`Mirror`] see a whole revision or nothing of it: each
//!   update is applied under one write lock.
//! - [`Mirror::changed`] fires after each applied change, so a reader can
//!   wait for "at least revision N" without polling.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Event, EventType, KeyValue, WatchOptions};
use tokio::sync::{mpsc, watch};

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
        tokio::spawn(mirror(
            prefix.clone(),
            reflect(store, prefix.clone()),
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

/// What a reflector passes on, in order.
#[derive(Debug, Clone)]
pub enum Update {
    /// Every key under the prefix at `revision`: the first list, and a list
    /// again after a compaction. It replaces everything passed on before.
    Listed {
        /// The keys and values.
        kvs: Vec<KeyValue>,
        /// The revision the list read.
        revision: i64,
    },
    /// One watch response: its puts and deletes, in order.
    Changed {
        /// The events.
        events: Vec<Event>,
        /// The revision of the last of them.
        revision: i64,
    },
    /// Every change up to `revision` has been passed on (a progress
    /// notification).
    Progress(i64),
}

impl Update {
    /// The revision the receiver is at once it applied this update.
    pub fn revision(&self) -> i64 {
        match self {
            Update::Listed { revision, .. } | Update::Changed { revision, .. } => *revision,
            Update::Progress(revision) => *revision,
        }
    }
}

/// Lists and watches every key under `prefix`, passing each change on in
/// order (see the module's flow) until the receiver is dropped.
pub fn reflect(store: &Store, prefix: impl Into<String>) -> mpsc::Receiver<Update> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(run(store.clone(), prefix.into(), tx));
    rx
}

async fn run(store: Store, prefix: String, updates: mpsc::Sender<Update>) {
    let mut backoff = Backoff::default();
    let mut resume_from: Option<i64> = None;
    loop {
        let from = match resume_from {
            Some(from) => from,
            None => match store.list_raw(&prefix).await {
                Ok((kvs, revision)) => {
                    if updates
                        .send(Update::Listed { kvs, revision })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    backoff.reset();
                    revision + 1
                }
                Err(error) => {
                    tracing::warn!(%prefix, %error, "listing for the mirror failed; retrying");
                    tokio::select! {
                        () = backoff.wait() => continue,
                        () = updates.closed() => return,
                    }
                }
            },
        };
        match follow(&store, &prefix, from, &updates).await {
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
        if updates.is_closed() {
            return;
        }
    }
}

/// Watches `prefix` from revision `from`, passing on what arrives, until
/// the stream ends or the receiver is gone; answers where to resume.
pub async fn follow(
    store: &Store,
    prefix: &str,
    from: i64,
    updates: &mpsc::Sender<Update>,
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
            () = updates.closed() => return Ok(Resume::From(next)),
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
        let update = if let Some(last) = response.events().last().and_then(|e| e.kv()) {
            next = last.mod_revision() + 1;
            Update::Changed {
                revision: last.mod_revision(),
                events: response.events().to_vec(),
            }
        } else if !response.created()
            && let Some(revision) = response.header().map(|h| h.revision())
        {
            // A progress notification: every event up to the header's
            // revision has been sent.
            next = next.max(revision + 1);
            Update::Progress(next - 1)
        } else {
            continue;
        };
        if updates.send(update).await.is_err() {
            return Ok(Resume::From(next));
        }
    }
}

impl Snapshot {
    /// Applies one update from [`reflect`] for the range `prefix`.
    fn apply(&mut self, prefix: &str, update: Update) {
        apply_update(
            &mut self.entries,
            &mut self.revision,
            prefix,
            update,
            |kv| Some(Bytes::copy_from_slice(kv.value())),
        );
    }
}

/// Applies one update from [`reflect`] for the range `prefix` to a copy of
/// it (`entries` at `revision`), each stored value made by `value`; a key
/// whose value it cannot make is left out, and so is its old value.
fn apply_update<V>(
    entries: &mut BTreeMap<String, V>,
    revision: &mut i64,
    prefix: &str,
    update: Update,
    value: impl Fn(&KeyValue) -> Option<V>,
) {
    match update {
        Update::Listed { kvs, revision: at } => {
            *entries = kvs
                .iter()
                .filter_map(|kv| Some((strip(prefix, kv.key()), value(kv)?)))
                .collect();
            *revision = at;
        }
        Update::Changed {
            events,
            revision: at,
        } => {
            for event in &events {
                let Some(kv) = event.kv() else { continue };
                let key = strip(prefix, kv.key());
                entries.remove(&key);
                if event.event_type() == EventType::Put
                    && let Some(v) = value(kv)
                {
                    entries.insert(key, v);
                }
            }
            *revision = at;
        }
        Update::Progress(at) => *revision = (*revision).max(at),
    }
}

/// Applies `updates` to the mirror's copy until every reader is gone.
async fn mirror(
    prefix: String,
    mut updates: mpsc::Receiver<Update>,
    snapshot: Weak<RwLock<Snapshot>>,
    changed: watch::Sender<i64>,
) {
    loop {
        let update = tokio::select! {
            update = updates.recv() => update,
            () = changed.closed() => return,
        };
        let (Some(update), Some(shared)) = (update, snapshot.upgrade()) else {
            return;
        };
        let revision = update.revision();
        shared
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply(&prefix, update);
        drop(shared);
        let _ = changed.send(revision);
    }
}

/// A key with the mirrored prefix removed.
pub fn strip(prefix: &str, key: &[u8]) -> String {
    let key = String::from_utf8_lossy(key);
    key.strip_prefix(prefix).unwrap_or(&key).to_string()
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

/// A decoded copy of every key under one prefix, each value decoded once
/// when it changes (a value that does not decode is logged and left out),
/// with the revisions that conditional writes compare on.
#[derive(Debug)]
pub struct Decoded<T> {
    snapshot: Arc<RwLock<DecodedSnapshot<T>>>,
    listed: watch::Receiver<bool>,
    revision: watch::Receiver<i64>,
}

impl<T> Clone for Decoded<T> {
    fn clone(&self) -> Self {
        Decoded {
            snapshot: self.snapshot.clone(),
            listed: self.listed.clone(),
            revision: self.revision.clone(),
        }
    }
}

/// A [`Decoded`] copy at one revision.
#[derive(Debug)]
pub struct DecodedSnapshot<T> {
    /// The etcd revision this copy reflects; 0 until the first list.
    pub revision: i64,
    /// Keys (with the prefix removed) and their decoded values.
    pub entries: BTreeMap<String, super::Versioned<T>>,
}

impl<T: serde::de::DeserializeOwned + Send + Sync + 'static> Decoded<T> {
    /// Starts following every key under `prefix`; the watch ends when the
    /// last clone is dropped.
    pub fn spawn(store: &Store, prefix: impl Into<String>) -> Decoded<T> {
        let prefix = prefix.into();
        let snapshot = Arc::new(RwLock::new(DecodedSnapshot {
            revision: 0,
            entries: BTreeMap::new(),
        }));
        let (listed_tx, listed) = watch::channel(false);
        let (revision_tx, revision) = watch::channel(0);
        let mut updates = reflect(store, prefix.clone());
        let weak = Arc::downgrade(&snapshot);
        tokio::spawn(async move {
            while let Some(update) = updates.recv().await {
                let Some(shared) = weak.upgrade() else { return };
                let first = matches!(update, Update::Listed { .. });
                let now = {
                    let mut copy = shared.write().unwrap_or_else(|p| p.into_inner());
                    let copy = &mut *copy;
                    apply_update(
                        &mut copy.entries,
                        &mut copy.revision,
                        &prefix,
                        update,
                        super::decode_or_skip::<T>,
                    );
                    copy.revision
                };
                if first {
                    listed_tx.send_replace(true);
                }
                revision_tx.send_if_modified(|r| std::mem::replace(r, now) != now);
            }
        });
        Decoded {
            snapshot,
            listed,
            revision,
        }
    }
}

impl<T> Decoded<T> {
    /// A receiver that sees the copy's revision after each change (and
    /// after the first list).
    pub fn changed(&self) -> watch::Receiver<i64> {
        self.revision.clone()
    }

    /// The copy now, once the prefix has been listed; `None` before.
    /// Hold the guard briefly: the watch waits on it.
    pub fn read(&self) -> Option<RwLockReadGuard<'_, DecodedSnapshot<T>>> {
        if !*self.listed.borrow() {
            return None;
        }
        Some(
            self.snapshot
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}
