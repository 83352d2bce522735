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
//! - [`NodePods::changes`] gives a stream exactly the pods written since it
//!   last asked (by mod revision) and those gone: across a re-list, pods
//!   that did not change are not sent again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use etcd_client::EventType;
use petset_core::store::mirror::{Update, reflect, strip};
use petset_core::store::{Store, Versioned, decode_or_skip};
use tokio::sync::watch;

use crate::records::{Keys, PodRecord};

/// `<namespace>/<pod>`.
pub type PodKey = String;

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

    /// What changed among `node`'s pods since `sent` (the key and mod
    /// revision of each pod as last sent), which is brought up to date:
    /// the pods added or written since, and the keys of those gone.
    pub fn changes(
        &self,
        node: &str,
        sent: &mut HashMap<PodKey, i64>,
    ) -> (Vec<Versioned<PodRecord>>, Vec<PodKey>) {
        let index = self.index.lock().expect("not poisoned");
        let empty = BTreeMap::new();
        let now = index.by_node.get(node).unwrap_or(&empty);
        let changed: Vec<Versioned<PodRecord>> = now
            .iter()
            .filter(|(key, pod)| sent.get(*key) != Some(&pod.mod_revision))
            .map(|(_, pod)| pod.clone())
            .collect();
        let removed: Vec<PodKey> = sent
            .keys()
            .filter(|key| !now.contains_key(*key))
            .cloned()
            .collect();
        for key in &removed {
            sent.remove(key);
        }
        for (key, pod) in now {
            sent.insert(key.clone(), pod.mod_revision);
        }
        (changed, removed)
    }
}

#[cfg(test)]
mod tests {
    use petset_core::meta::MetaInput;
    use petset_proto::v1;

    use super::*;

    fn pod(name: &str, node: &str, mod_revision: i64) -> Versioned<PodRecord> {
        let meta = MetaInput {
            namespace: "default".into(),
            name: name.into(),
            ..MetaInput::default()
        }
        .create();
        Versioned {
            value: PodRecord {
                meta,
                set_name: "web".into(),
                ordinal: 0,
                node: node.into(),
                incarnation: 1,
                revision: "web-1".into(),
                spec: Default::default(),
                deletion: None,
                trace: None,
            },
            mod_revision,
            create_revision: mod_revision,
            lease: 0,
        }
    }

    fn node_pods(pods: &[Versioned<PodRecord>]) -> NodePods {
        let mut index = Index::default();
        for p in pods {
            index.insert(format!("default/{}", p.value.meta.name), p.clone());
        }
        NodePods {
            index: Arc::new(Mutex::new(index)),
            listed: watch::channel(true).1,
        }
    }

    fn names(pods: &[Versioned<PodRecord>]) -> Vec<&str> {
        pods.iter().map(|p| p.value.meta.name.as_str()).collect()
    }

    #[test]
    fn a_decoded_pod_keeps_no_spare_room_in_its_lists() {
        let mut record = pod("web-0", "a", 1).value;
        record.spec.containers = vec![v1::Container {
            name: "app".into(),
            command: vec!["sleep".into(), "3600".into()],
            ..Default::default()
        }];
        let decoded: PodRecord =
            serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!(decoded, record);
        assert_eq!(decoded.spec.containers.capacity(), 1);
        assert_eq!(decoded.spec.containers[0].command.capacity(), 2);
    }

    #[test]
    fn changes_are_what_was_written_or_went_away_since_the_last_ask() {
        let cache = node_pods(&[
            pod("web-0", "a", 10),
            pod("web-1", "a", 11),
            pod("web-2", "b", 12),
        ]);
        let mut sent = HashMap::new();
        let (pods, removed) = cache.changes("a", &mut sent);
        assert_eq!((names(&pods), removed.len()), (vec!["web-0", "web-1"], 0));
        let (pods, removed) = cache.changes("a", &mut sent);
        assert!(pods.is_empty() && removed.is_empty(), "nothing changed");

        // web-1 rewritten, web-0 deleted, web-2 moved from b to a.
        {
            let mut index = cache.index.lock().unwrap();
            index.remove("default/web-0");
            index.insert("default/web-1".into(), pod("web-1", "a", 20));
            index.remove("default/web-2");
            index.insert("default/web-2".into(), pod("web-2", "a", 21));
        }
        let (pods, removed) = cache.changes("a", &mut sent);
        assert_eq!(names(&pods), vec!["web-1", "web-2"]);
        assert_eq!(removed, vec!["default/web-0".to_string()]);
        let mut on_b = HashMap::from([("default/web-2".to_string(), 12)]);
        let (pods, removed) = cache.changes("b", &mut on_b);
        assert_eq!(
            (pods.len(), removed),
            (0, vec!["default/web-2".to_string()])
        );
    }
}
