//! What scheduler-svc keeps in etcd, and where.
//!
//! # Key layout (under the store root, `/petset` by default)
//! - `statefulsets/<ns>/<name>`: a [`SetRecord`] (metadata and the spec as
//!   the API gave it).
//! - `setstatus/<ns>/<name>`: a [`SetStatusRecord`], written by the leader
//!   only, so status writes never race spec updates.
//! - `revisions/<ns>/<set>/<revision name>`: a [`RevisionRecord`] (the
//!   set's ControllerRevisions).
//! - `pods/<ns>/<pod>`: a [`PodRecord`], created and removed by the leader
//!   only, each time in a transaction that checks its leadership.
//! - `podstatus/<ns>/<pod>`: a [`PodStatusRecord`], reported by the pod's
//!   node agent with the pod's incarnation.
//! - `nodes/<name>`: a [`NodeRecord`].
//! - `nodeleases/<name>`: the node's lease id, on that lease: present while
//!   the node is Ready.
//! - `leader/scheduler`: the leading replica, on its lease.

use std::collections::BTreeMap;
use std::time::SystemTime;

use petset_core::meta::Meta;
use petset_core::store::Store;
use petset_proto::v1;
use serde::{Deserialize, Serialize};

/// A StatefulSet, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetRecord {
    /// Name, namespace, uid, labels, annotations, generation.
    pub meta: Meta,
    /// The spec as applied (defaults filled in).
    pub spec: v1::StatefulSetSpec,
    /// Set when deletion was asked for: the controller deletes the pods,
    /// then the set.
    #[serde(default)]
    pub deleting: Option<SystemTime>,
    /// The W3C `traceparent` of the request that last changed the spec
    /// (apply or scale), when it was traced: the controller's actions for
    /// the change join that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// A set's status, as the leader computed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetStatusRecord {
    /// The generation this status reflects.
    pub observed_generation: i64,
    /// Pods that exist.
    pub replicas: u32,
    /// Pods Running and Ready.
    pub ready_replicas: u32,
    /// Pods Ready for at least minReadySeconds.
    pub available_replicas: u32,
    /// Pods at the current revision.
    pub current_replicas: u32,
    /// Pods at the update revision.
    pub updated_replicas: u32,
    /// The revision pods below the partition keep.
    pub current_revision: String,
    /// The revision of the spec's template.
    pub update_revision: String,
    /// Why the controller could not do what the spec asks, if it cannot.
    #[serde(default)]
    pub blocked: Option<String>,
}

/// One revision of a set's pod template (a ControllerRevision).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionRecord {
    /// `<set>-<hash>`.
    pub name: String,
    /// Grows with each new template; an old template applied again gets a
    /// new number.
    pub revision: i64,
    /// The template.
    pub template: v1::PodTemplateSpec,
    /// When first made.
    pub created: SystemTime,
}

/// Why a pod is being deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    /// When it was asked for.
    pub requested_at: SystemTime,
    /// Seconds between SIGTERM and SIGKILL.
    pub grace_seconds: i64,
    /// Who asked and why (`scale-down`, `update`, `failed`, `user`).
    pub reason: String,
}

/// A pod, as the controller made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Name, namespace, uid, labels.
    pub meta: Meta,
    /// The set that owns it.
    pub set_name: String,
    /// Its ordinal.
    pub ordinal: u32,
    /// The node it is bound to.
    pub node: String,
    /// The identity's incarnation it runs as.
    pub incarnation: u64,
    /// The revision it was made from.
    pub revision: String,
    /// What to run.
    #[serde(deserialize_with = "compact_spec")]
    pub spec: v1::PodSpec,
    /// Set once deletion was asked for.
    #[serde(default)]
    pub deletion: Option<Deletion>,
    /// The W3C `traceparent` of the controller action that made it, when
    /// traced: its agent's start of the pod joins that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// Decodes a pod spec without the spare room of its lists: serde grows a
/// list to four elements at its first push, and a `v1::Container` is 736
/// bytes, so a pod of one container would hold 2.2 KiB it never uses in
/// every cache that keeps it (the leader's world, each replica's
/// pods-by-node index): 44 MiB at 10,000 pods.
fn compact_spec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<v1::PodSpec, D::Error> {
    let mut spec = v1::PodSpec::deserialize(d)?;
    spec.containers.shrink_to_fit();
    spec.volumes.shrink_to_fit();
    for c in &mut spec.containers {
        c.command.shrink_to_fit();
        c.args.shrink_to_fit();
        c.env.shrink_to_fit();
        c.ports.shrink_to_fit();
        c.volume_mounts.shrink_to_fit();
        c.env_from.shrink_to_fit();
    }
    Ok(spec)
}

/// A pod's status, as its node agent reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatusRecord {
    /// The incarnation that reported it.
    pub incarnation: u64,
    /// Pending, Running, Succeeded, Failed, Unknown.
    pub phase: String,
    /// Passes its readiness probe.
    pub ready: bool,
    /// Its address.
    pub pod_ip: String,
    /// Container restarts.
    pub restart_count: i32,
    /// Why, in words.
    pub message: String,
    /// Why, in one CamelCase word.
    pub reason: String,
    /// Since when it has been ready (unbroken).
    pub ready_since: Option<SystemTime>,
    /// When its processes started.
    pub start_time: Option<SystemTime>,
    /// Why a container's last run ended (`OOMKilled`, `Error`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_termination_reason: String,
}

/// What a node offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Millicores.
    pub cpu_milli: u64,
    /// Bytes.
    pub memory_bytes: u64,
    /// Pods.
    pub pods: u32,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its name.
    pub name: String,
    /// Where its pods are reached.
    pub address: String,
    /// What it offers.
    pub capacity: Capacity,
    /// Its labels (`kubernetes.io/hostname` always among them).
    pub labels: BTreeMap<String, String>,
    /// The lease of its current registration.
    pub lease_id: i64,
    /// When it registered last.
    pub registered_at: SystemTime,
    /// The agent's gRPC address, for pod logs.
    #[serde(default)]
    pub agent_endpoint: String,
}

/// The leading replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The replica's id.
    pub id: String,
    /// Since when it leads.
    pub since: SystemTime,
}

/// The keys scheduler-svc uses, under one store's root.
#[derive(Debug, Clone, Copy)]
pub struct Keys<'a>(pub &'a Store);

impl Keys<'_> {
    /// `statefulsets/<ns>/<name>`.
    pub fn set(&self, ns: &str, name: &str) -> String {
        self.0.key(&["statefulsets", ns, name])
    }

    /// `statefulsets/` or `statefulsets/<ns>/`.
    pub fn sets(&self, ns: Option<&str>) -> String {
        match ns {
            Some(ns) => self.0.prefix(&["statefulsets", ns]),
            None => self.0.prefix(&["statefulsets"]),
        }
    }

    /// `setstatus/<ns>/<name>`.
    pub fn status(&self, ns: &str, name: &str) -> String {
        self.0.key(&["setstatus", ns, name])
    }

    /// `revisions/<ns>/<set>/<revision>`.
    pub fn revision(&self, ns: &str, set: &str, name: &str) -> String {
        self.0.key(&["revisions", ns, set, name])
    }

    /// `revisions/<ns>/<set>/`.
    pub fn revisions(&self, ns: &str, set: &str) -> String {
        self.0.prefix(&["revisions", ns, set])
    }

    /// `pods/<ns>/<pod>`.
    pub fn pod(&self, ns: &str, name: &str) -> String {
        self.0.key(&["pods", ns, name])
    }

    /// `pods/` or `pods/<ns>/`.
    pub fn pods(&self, ns: Option<&str>) -> String {
        match ns {
            Some(ns) => self.0.prefix(&["pods", ns]),
            None => self.0.prefix(&["pods"]),
        }
    }

    /// `podstatus/<ns>/<pod>`.
    pub fn pod_status(&self, ns: &str, name: &str) -> String {
        self.0.key(&["podstatus", ns, name])
    }

    /// `nodes/<name>`.
    pub fn node(&self, name: &str) -> String {
        self.0.key(&["nodes", name])
    }

    /// `nodeleases/<name>`.
    pub fn node_lease(&self, name: &str) -> String {
        self.0.key(&["nodeleases", name])
    }

    /// `leader/scheduler`.
    pub fn leader(&self) -> String {
        self.0.key(&["leader", "scheduler"])
    }
}
