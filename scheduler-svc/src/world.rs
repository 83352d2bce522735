//! What the controller sees: every key under the store's root, decoded, at
//! one revision. The leader keeps it in step with etcd through one watch
//! (an informer's cache: [`World::apply`] takes each update of
//! [`petset_core::store::mirror::reflect`] and answers which sets it
//! touched); a one-off [`World::read`] lists it whole.
//!
//! # Guarantees
//! - After each update the world is what etcd held at
//!   [`World::revision`]: a whole watch response is applied or none of it.
//! - A value that does not decode is logged and left out (and a key whose
//!   new value does not decode is dropped), so that one bad record stops
//!   nothing else.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{EventType, KeyValue};
use petset_core::error::Result;
use petset_core::identity::HolderRecord;
use petset_core::store::mirror::Update;
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

/// The sets an update touched: those to plan again.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    /// Every set (the world was listed again, or a node changed).
    pub all: bool,
    /// These sets.
    pub sets: BTreeSet<Name>,
}

impl Touched {
    /// Every set.
    pub fn all() -> Touched {
        Touched {
            all: true,
            sets: BTreeSet::new(),
        }
    }

    /// Whether set `name` is among them.
    pub fn contains(&self, name: &Name) -> bool {
        self.all || self.sets.contains(name)
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        !self.all && self.sets.is_empty()
    }

    /// Adds `other`'s sets.
    pub fn merge(&mut self, other: Touched) {
        self.all |= other.all;
        if !self.all {
            self.sets.extend(other.sets);
        } else {
            self.sets.clear();
        }
    }
}

impl World {
    /// Reads the world in one (paged) range read.
    pub async fn read(store: &Store) -> Result<World> {
        let root = format!("{}/", store.root());
        let (kvs, revision) = store.list_raw(&root).await?;
        let mut world = World::default();
        world.apply(&root, Update::Listed { kvs, revision });
        Ok(world)
    }

    /// Applies one update of a reflector over `root` (the store's root with
    /// its trailing `/`); answers the sets it touched.
    pub fn apply(&mut self, root: &str, update: Update) -> Touched {
        let mut touched = Touched::default();
        match update {
            Update::Listed { kvs, revision } => {
                *self = World::default();
                for kv in &kvs {
                    self.put(root, kv);
                }
                self.revision = revision;
                touched.all = true;
            }
            Update::Changed { events, revision } => {
                for event in &events {
                    let Some(kv) = event.kv() else { continue };
                    let set = match event.event_type() {
                        EventType::Put => self.put(root, kv),
                        EventType::Delete => self.delete(root, kv),
                    };
                    match set {
                        Some(Some(set)) => {
                            touched.sets.insert(set);
                        }
                        Some(None) => touched.all = true,
                        None => {}
                    }
                }
                self.revision = revision;
            }
            Update::Progress(revision) => self.revision = self.revision.max(revision),
        }
        touched
    }

    /// The key's parts under `root`.
    fn parts<'k>(root: &str, key: &'k str) -> Vec<&'k str> {
        key.get(root.len()..)
            .unwrap_or_default()
            .split('/')
            .collect()
    }

    /// Stores one key's value; answers the set it touched (`Some(None)`:
    /// every set; `None`: none).
    fn put(&mut self, root: &str, kv: &KeyValue) -> Option<Option<Name>> {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let parts = Self::parts(root, &key);
        let name = |i: usize, j: usize| (parts[i].to_string(), parts[j].to_string());
        // A value that no longer decodes is as good as gone.
        macro_rules! decode {
            ($t:ty) => {
                match decode_or_skip::<$t>(kv) {
                    Some(v) => v,
                    None => return self.delete(root, kv),
                }
            };
        }
        match parts.as_slice() {
            ["statefulsets", _, _] => {
                self.sets.insert(name(1, 2), decode!(SetRecord));
                Some(Some(name(1, 2)))
            }
            ["setstatus", _, _] => {
                self.statuses.insert(name(1, 2), decode!(SetStatusRecord));
                None
            }
            ["revisions", _, _, _] => {
                let revision = decode!(RevisionRecord);
                let revisions = self.revisions.entry(name(1, 2)).or_default();
                revisions.retain(|r| r.value.name != revision.value.name);
                revisions.push(revision);
                revisions.sort_by_key(|r| r.value.revision);
                Some(Some(name(1, 2)))
            }
            ["pods", ns, _] => {
                let pod = decode!(PodRecord);
                let set = (ns.to_string(), pod.value.set_name.clone());
                self.pods.insert(name(1, 2), pod);
                Some(Some(set))
            }
            ["podstatus", _, _] => {
                let status = decode!(PodStatusRecord);
                self.pod_status.insert(name(1, 2), status.value);
                self.set_of_pod(&name(1, 2)).map(Some)
            }
            ["nodes", node] => {
                let record = decode!(NodeRecord);
                self.nodes.insert(node.to_string(), record.value);
                Some(None)
            }
            ["nodeleases", node] => {
                let lease = decode!(i64);
                self.node_leases.insert(node.to_string(), lease.value);
                Some(None)
            }
            ["identities", ns, set, ordinal, "holder"] => {
                let ordinal = ordinal.parse().ok()?;
                let holder = decode!(HolderRecord);
                self.holders
                    .insert((ns.to_string(), set.to_string(), ordinal), holder.value);
                Some(Some((ns.to_string(), set.to_string())))
            }
            _ => None,
        }
    }

    /// Forgets one key; answers the set it touched, as [`World::put`].
    fn delete(&mut self, root: &str, kv: &KeyValue) -> Option<Option<Name>> {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let parts = Self::parts(root, &key);
        let name = |i: usize, j: usize| (parts[i].to_string(), parts[j].to_string());
        match parts.as_slice() {
            ["statefulsets", _, _] => {
                self.sets.remove(&name(1, 2));
                Some(Some(name(1, 2)))
            }
            ["setstatus", _, _] => {
                self.statuses.remove(&name(1, 2));
                None
            }
            ["revisions", _, _, revision] => {
                if let Some(revisions) = self.revisions.get_mut(&name(1, 2)) {
                    revisions.retain(|r| r.value.name != *revision);
                    if revisions.is_empty() {
                        self.revisions.remove(&name(1, 2));
                    }
                }
                Some(Some(name(1, 2)))
            }
            ["pods", ns, _] => {
                let pod = self.pods.remove(&name(1, 2))?;
                Some(Some((ns.to_string(), pod.value.set_name)))
            }
            ["podstatus", _, _] => {
                self.pod_status.remove(&name(1, 2));
                self.set_of_pod(&name(1, 2)).map(Some)
            }
            ["nodes", node] => {
                self.nodes.remove(*node);
                Some(None)
            }
            ["nodeleases", node] => {
                self.node_leases.remove(*node);
                Some(None)
            }
            ["identities", ns, set, ordinal, "holder"] => {
                let ordinal = ordinal.parse().ok()?;
                self.holders
                    .remove(&(ns.to_string(), set.to_string(), ordinal));
                Some(Some((ns.to_string(), set.to_string())))
            }
            _ => None,
        }
    }

    /// The set of pod `(ns, pod)`, when the pod is known. An unknown pod's
    /// status touches no set: its pod record, when it comes, will.
    fn set_of_pod(&self, pod: &Name) -> Option<Name> {
        let set = self.pods.get(pod)?.value.set_name.clone();
        Some((pod.0.clone(), set))
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
