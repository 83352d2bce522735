//! What the controller sees: one consistent read of every key under the
//! store's root, decoded. Each activation of the controller reads the world
//! again and takes no input about what changed.

use std::collections::{BTreeMap, BTreeSet};

use petset_core::error::Result;
use petset_core::identity::HolderRecord;
use petset_core::store::{Store, Versioned, decode_or_skip};

use crate::placement::{Bound, NodeView};
use crate::records::{
    NodeRecord, PodRecord, PodStatusRecord, RevisionRecord, SetRecord, SetStatusRecord,
};

/// `(namespace, name)`.
pub type Name = (String, String);

/// Everything the controller decides on, at one revision.
#[derive(Debug, Default)]
pub struct World {
    /// The etcd revision read.
    pub revision: i64,
    /// Sets.
    pub sets: BTreeMap<Name, Versioned<SetRecord>>,
    /// Their status.
    pub statuses: BTreeMap<Name, Versioned<SetStatusRecord>>,
    /// Revisions per set.
    pub revisions: BTreeMap<Name, Vec<Versioned<RevisionRecord>>>,
    /// Pods.
    pub pods: BTreeMap<Name, Versioned<PodRecord>>,
    /// Pods' reported status.
    pub pod_status: BTreeMap<Name, PodStatusRecord>,
    /// Registered nodes.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Nodes whose lease lives, with the lease id.
    pub node_leases: BTreeMap<String, i64>,
    /// Identity holders: `(ns, set, ordinal)`.
    pub holders: BTreeMap<(String, String, u32), HolderRecord>,
}

impl World {
    /// Reads the world in one range read.
    pub async fn read(store: &Store) -> Result<World> {
        let root = format!("{}/", store.root());
        let (kvs, revision) = store.list_raw(&root).await?;
        let mut world = World {
            revision,
            ..World::default()
        };
        for kv in &kvs {
            let key = String::from_utf8_lossy(kv.key());
            // A record that does not decode is logged and left out, so
            // that one bad record stops nothing else.
            macro_rules! decode {
                ($t:ty) => {
                    match decode_or_skip::<$t>(kv) {
                        Some(v) => v,
                        None => continue,
                    }
                };
            }
            let parts: Vec<&str> = key[root.len()..].split('/').collect();
            let name = |i: usize, j: usize| (parts[i].to_string(), parts[j].to_string());
            match parts.as_slice() {
                ["statefulsets", _, _] => {
                    world.sets.insert(name(1, 2), decode!(SetRecord));
                }
                ["setstatus", _, _] => {
                    world.statuses.insert(name(1, 2), decode!(SetStatusRecord));
                }
                ["revisions", _, _, _] => {
                    let revision = decode!(RevisionRecord);
                    world
                        .revisions
                        .entry(name(1, 2))
                        .or_default()
                        .push(revision);
                }
                ["pods", _, _] => {
                    world.pods.insert(name(1, 2), decode!(PodRecord));
                }
                ["podstatus", _, _] => {
                    let status = decode!(PodStatusRecord);
                    world.pod_status.insert(name(1, 2), status.value);
                }
                ["nodes", node] => {
                    let record = decode!(NodeRecord);
                    world.nodes.insert(node.to_string(), record.value);
                }
                ["nodeleases", node] => {
                    let lease = decode!(i64);
                    world.node_leases.insert(node.to_string(), lease.value);
                }
                ["identities", ns, set, ordinal, "holder"] => {
                    if let Ok(ordinal) = ordinal.parse() {
                        let holder = decode!(HolderRecord);
                        world
                            .holders
                            .insert((ns.to_string(), set.to_string(), ordinal), holder.value);
                    }
                }
                _ => {}
            }
        }
        for revisions in world.revisions.values_mut() {
            revisions.sort_by_key(|r| r.value.revision);
        }
        Ok(world)
    }

    /// The pods of one set.
    pub fn pods_of<'a>(
        &'a self,
        ns: &'a str,
        set: &'a str,
    ) -> impl Iterator<Item = &'a Versioned<PodRecord>> + 'a {
        self.pods
            .range((ns.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == ns)
            .map(|(_, p)| p)
            .filter(move |p| p.value.set_name == set)
    }

    /// Whether a node's current registration lease lives.
    pub fn node_ready(&self, node: &str) -> bool {
        match (self.node_leases.get(node), self.nodes.get(node)) {
            (Some(lease), Some(record)) => *lease == record.lease_id,
            _ => false,
        }
    }

    /// Every node as placement sees it (its name is its hostname label).
    pub fn node_views(&self) -> Vec<NodeView> {
        self.nodes
            .values()
            .map(|n| {
                let mut labels = n.labels.clone();
                labels.insert(petset_core::selector::HOSTNAME_LABEL.into(), n.name.clone());
                NodeView {
                    name: n.name.clone(),
                    ready: self.node_ready(&n.name),
                    labels,
                    pods: n.capacity.pods,
                    cpu_milli: n.capacity.cpu_milli,
                    memory_bytes: n.capacity.memory_bytes,
                }
            })
            .collect()
    }

    /// Every pod as placement counts it, marked when it is of set `set`
    /// in `ns`.
    pub fn bound(&self, ns: &str, set: &str) -> Vec<Bound> {
        self.pods
            .values()
            .map(|p| {
                let (cpu_milli, memory_bytes) = crate::rules::requests(&p.value.spec);
                Bound {
                    node: p.value.node.clone(),
                    same_set: p.value.set_name == set && p.value.meta.namespace == ns,
                    cpu_milli,
                    memory_bytes,
                }
            })
            .collect()
    }

    /// The nodes that are Ready.
    pub fn ready_nodes(&self) -> BTreeSet<String> {
        self.nodes
            .keys()
            .filter(|n| self.node_ready(n))
            .cloned()
            .collect()
    }
}
