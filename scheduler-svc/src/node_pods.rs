//! Each node's pods, for the agents' `WatchNodePods` streams: one watch of
//! `pods/` for the whole replica, indexed by node, so that a change costs
//! one decode and wakes only the stream of the pod's node, however many
//! pods and nodes there are.
//!
//! # Guarantees
//! - A node's list is never offered before the first list of `pods/` was
//!   applied: an agent never sees an empty list that only means "not read
//!   yet" (it would stop every pod).
//! - A node's version changes after every applied update that changed one
//!   of its pods (a pod moving between nodes changes both), and after every
//!   list again (compaction).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use etcd_client::EventType;
use petset_core::store::mirror::{Update, reflect, strip};
use petset_core::store::{Store, Versioned, decode_or_skip};
use tokio::sync::watch;

use crate::records::{Keys, PodRecord};

/// `<namespace>/<pod>`.
type PodKey = String;

#[derive(Debug, Default)]
struct Index {
    /// Pods by node, then by key.
    by_node: BTreeMap<String, BTreeMap<PodKey, Versioned<PodRecord>>>,
    /// Each pod's node.
    node_of: BTreeMap<PodKey, String>,
    /// A version per node that has (had) a subscriber or a pod.
    versions: BTreeMap<String, watch::Sender<u64>>,
}

impl Index {
    fn bump(&mut self, node: &str) {
        self.versions
            .entry(node.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .send_modify(|v| *v += 1);
    }

    fn remove(&mut self, key: &str) -> Option<String> {
        let node = self.node_of.remove(key)?;
        if let Some(pods) = self.by_node.get_mut(&node) {
            pods.remove(key);
            if pods.is_empty() {
                self.by_node.remove(&node);
            }
        }
        Some(node)
    }

    fn insert(&mut self, key: PodKey, pod: Versioned<PodRecord>) -> String {
        let node = pod.value.node.clone();
        self.node_of.insert(key.clone(), node.clone());
        self.by_node
            .entry(node.clone())
            .or_default()
            .insert(key, pod);
        node
    }

    fn apply(&mut self, prefix: &str, update: Update) {
        match update {
            Update::Listed { kvs, .. } => {
                let versions = std::mem::take(&mut self.versions);
                *self = Index {
                    versions,
                    ..Index::default()
                };
                for kv in &kvs {
                    if let Some(pod) = decode_or_skip::<PodRecord>(kv) {
                        self.insert(strip(prefix, kv.key()), pod);
                    }
                }
                let nodes: Vec<String> = self.versions.keys().cloned().collect();
                for node in nodes {
                    self.bump(&node);
                }
            }
            Update::Changed { events, .. } => {
                for event in &events {
                    let Some(kv) = event.kv() else { continue };
                    let key = strip(prefix, kv.key());
                    if let Some(node) = self.remove(&key) {
                        self.bump(&node);
                    }
                    if event.event_type() == EventType::Put
                        && let Some(pod) = decode_or_skip::<PodRecord>(kv)
                    {
                        let node = self.insert(key, pod);
                        self.bump(&node);
                    }
                }
            }
            Update::Progress(_) => {}
        }
    }
}

/// Every node's pods, kept by one watch.
#[derive(Debug, Clone)]
pub struct NodePods {
    index: Arc<Mutex<Index>>,
    listed: watch::Receiver<bool>,
}

impl NodePods {
    /// Starts following `pods/` in `store`; the watch ends when the last
    /// clone is dropped.
    pub fn spawn(store: &Store) -> NodePods {
        let prefix = Keys(store).pods(None);
        let index = Arc::new(Mutex::new(Index::default()));
        let (listed_tx, listed) = watch::channel(false);
        let mut updates = reflect(store, prefix.clone());
        let weak = Arc::downgrade(&index);
        tokio::spawn(async move {
            while let Some(update) = updates.recv().await {
                let Some(index) = weak.upgrade() else { return };
                let first = matches!(update, Update::Listed { .. });
                index.lock().expect("not poisoned").apply(&prefix, update);
                if first {
                    listed_tx.send_replace(true);
                }
            }
        });
        NodePods { index, listed }
    }

    /// Waits until `pods/` has been listed, then answers a receiver whose
    /// value changes whenever `node`'s pods do.
    pub async fn subscribe(&self, node: &str) -> watch::Receiver<u64> {
        let _ = self.listed.clone().wait_for(|listed| *listed).await;
        let mut index = self.index.lock().expect("not poisoned");
        index
            .versions
            .entry(node.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// `node`'s pods now, by `<namespace>/<pod>`.
    pub fn pods(&self, node: &str) -> Vec<Versioned<PodRecord>> {
        let index = self.index.lock().expect("not poisoned");
        index
            .by_node
            .get(node)
            .map(|pods| pods.values().cloned().collect())
            .unwrap_or_default()
    }
}
