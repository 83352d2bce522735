//! What storage-svc keeps in etcd, and where.
//!
//! # Key layout (under the store root, `/petset` by default)
//! - `storageclasses/<name>`: a [`ClassRecord`].
//! - `volumes/<name>`: a [`VolumeRecord`] (cluster-scoped, as in Kubernetes).
//! - `claims/<ns>/<name>`: a [`ClaimRecord`].
//! - `attachments/<volume>/<ns>/<set>/<ordinal>`: an [`AttachmentRecord`],
//!   on the lease of the identity's holder: when the holder dies, the
//!   attachment goes with it.
//! - `reclaims/<volume>`: the replica reclaiming a volume now, on that
//!   replica's lease, so that two replicas never wipe one volume and a
//!   replica that dies mid-way leaves the work to another.

use std::collections::BTreeMap;
use std::time::SystemTime;

use petset_core::identity::IdentityRef;
use petset_core::meta::Meta;
use petset_core::selector::NodeSelector;
use petset_core::store::Store;
use serde::{Deserialize, Serialize};

/// The annotation that makes a class the default one.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// The annotation a provisioned volume carries, naming its provisioner.
pub const PROVISIONED_BY_ANNOTATION: &str = "pv.kubernetes.io/provisioned-by";
pub use petset_core::claim::AccessMode;
pub use petset_core::names::{POD_INDEX_LABEL as ORDINAL_LABEL, SET_LABEL};

/// Who makes volumes for a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Provisioner {
    /// A directory under the node's data root; the volume pins its pod to
    /// that node.
    NodeLocal,
    /// A directory under the root every node mounts; pods can move.
    Shared,
    /// Nobody: the class only groups static volumes.
    NoProvisioner,
}

impl Provisioner {
    /// Every provisioner, by the name users write.
    pub const ALL: [(&'static str, Provisioner); 3] = [
        ("petset.io/node-local", Provisioner::NodeLocal),
        ("petset.io/shared", Provisioner::Shared),
        ("kubernetes.io/no-provisioner", Provisioner::NoProvisioner),
    ];

    /// The provisioner users call `name`, if petset has it.
    pub fn from_name(name: &str) -> Option<Provisioner> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
    }

    /// The name users write.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map(|(name, _)| *name)
            .expect("every provisioner is listed")
    }
}

/// What happens to a volume when its claim is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReclaimPolicy {
    /// The volume is Released, its data kept, for a person to deal with.
    Retain,
    /// The volume and its data are removed.
    Delete,
    /// The data is wiped and the volume is Available again.
    Recycle,
}

/// When a claim of a class is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BindingMode {
    /// As soon as the claim exists.
    Immediate,
    /// When a pod using it is placed on a node, and for that node.
    WaitForFirstConsumer,
}

/// A storage class, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassRecord {
    /// Name, uid, labels, annotations.
    pub meta: Meta,
    /// Who makes its volumes.
    pub provisioner: Provisioner,
    /// Provisioner parameters (none are understood yet; kept as given).
    pub parameters: BTreeMap<String, String>,
    /// Reclaim policy of the volumes it provisions.
    pub reclaim_policy: ReclaimPolicy,
    /// When its claims are bound.
    pub binding_mode: BindingMode,
    /// Whether its claims may grow.
    pub allow_volume_expansion: bool,
}

impl ClassRecord {
    /// Whether the default-class annotation is set.
    pub fn is_default(&self) -> bool {
        self.meta
            .annotations
            .get(DEFAULT_CLASS_ANNOTATION)
            .is_some_and(|v| v == "true")
    }
}

/// Where a volume's data lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VolumeSource {
    /// A directory a person named (`hostPath`).
    HostPath {
        /// Absolute, clean, under an allowed prefix.
        path: String,
        /// Create it when missing (`DirectoryOrCreate`, and the default).
        create: bool,
    },
    /// A node's local directory a person named (`local`).
    Local {
        /// Absolute, clean, under an allowed prefix.
        path: String,
    },
    /// A directory petset made under `<data root>/nodes/<node>/<volume>`.
    NodeLocal {
        /// The node it lives on.
        node: String,
    },
    /// A directory petset made under `<data root>/shared/<volume>`.
    Shared,
}

impl VolumeSource {
    /// Whether petset made the directory (and may remove it).
    pub fn provisioned(&self) -> bool {
        matches!(self, VolumeSource::NodeLocal { .. } | VolumeSource::Shared)
    }
}

/// A volume's phase, as Kubernetes'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumePhase {
    /// Free to bind.
    Available,
    /// Bound to a claim.
    Bound,
    /// Its claim was deleted; not bound again until reclaimed.
    Released,
    /// Reclaim failed; the message says why.
    Failed,
}

/// The claim a volume is bound (or pre-bound) to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRef {
    /// The claim's namespace.
    pub namespace: String,
    /// The claim's name.
    pub name: String,
    /// The claim's uid; empty for a pre-binding by name.
    #[serde(default)]
    pub uid: String,
}

/// A persistent volume, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Name, uid, labels, annotations.
    pub meta: Meta,
    /// Capacity in bytes.
    pub capacity: u64,
    /// How it may be attached.
    pub access_modes: Vec<AccessMode>,
    /// What happens when its claim goes.
    pub reclaim_policy: ReclaimPolicy,
    /// Its class; empty for none.
    pub class: String,
    /// The nodes it can be used on; `None` for every node.
    pub node_affinity: Option<NodeSelector>,
    /// Where the data lives.
    pub source: VolumeSource,
    /// The claim it is bound to.
    pub claim_ref: Option<ClaimRef>,
    /// Its phase.
    pub phase: VolumePhase,
    /// Why, when the phase needs explaining.
    #[serde(default)]
    pub message: String,
    /// When the phase last changed.
    pub phase_since: SystemTime,
}

impl VolumeRecord {
    /// Moves to `phase` with `message`, noting the time when it changes.
    pub fn set_phase(&mut self, phase: VolumePhase, message: impl Into<String>) {
        if self.phase != phase {
            self.phase_since = SystemTime::now();
        }
        self.phase = phase;
        self.message = message.into();
    }
}

/// A claim's phase, as Kubernetes'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimPhase {
    /// Not bound yet; the message says what it waits for.
    Pending,
    /// Bound to a volume.
    Bound,
    /// Its volume disappeared.
    Lost,
}

/// A persistent volume claim, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// Name, namespace, uid, labels, annotations.
    pub meta: Meta,
    /// The modes it needs.
    pub access_modes: Vec<AccessMode>,
    /// The bytes it asks for.
    pub request: u64,
    /// Its class: `None` for none named and no default; `Some("")` for
    /// explicitly none.
    pub class: Option<String>,
    /// Bind this volume only (`spec.volumeName` as written).
    #[serde(default)]
    pub wanted_volume: String,
    /// Only volumes with these labels.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// The replica it was made for, when made from a set's template.
    pub owner: Option<IdentityRef>,
    /// Its phase.
    pub phase: ClaimPhase,
    /// The bound volume.
    pub volume: Option<String>,
    /// The bound volume's capacity.
    pub capacity: Option<u64>,
    /// Why it is Pending.
    #[serde(default)]
    pub message: String,
}

impl ClaimRecord {
    /// The class volumes must have to bind it (`""` for none).
    pub fn class_name(&self) -> &str {
        self.class.as_deref().unwrap_or("")
    }

    /// Whether `claim_ref` names this claim.
    pub fn is(&self, claim_ref: &ClaimRef) -> bool {
        claim_ref.namespace == self.meta.namespace
            && claim_ref.name == self.meta.name
            && (claim_ref.uid.is_empty() || claim_ref.uid == self.meta.uid)
    }

    /// A reference to this claim.
    pub fn reference(&self) -> ClaimRef {
        ClaimRef {
            namespace: self.meta.namespace.clone(),
            name: self.meta.name.clone(),
            uid: self.meta.uid.clone(),
        }
    }
}

/// One identity's use of a volume on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRecord {
    /// The volume.
    pub volume: String,
    /// The claim's namespace.
    pub namespace: String,
    /// The claim.
    pub claim: String,
    /// The node it is attached to.
    pub node: String,
    /// The identity that attached it.
    pub identity: IdentityRef,
    /// That identity's incarnation.
    pub incarnation: u64,
    /// The holder's lease (the attachment key is on it).
    pub lease_id: i64,
    /// The directory to mount.
    pub path: String,
    /// When.
    pub attached_at: SystemTime,
}

/// Who is reclaiming a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReclaimRecord {
    /// The replica's name (host and process).
    pub by: String,
    /// When it started.
    pub since: SystemTime,
}

/// The keys storage-svc uses, under one store's root.
#[derive(Debug, Clone, Copy)]
pub struct Keys<'a>(pub &'a Store);

impl Keys<'_> {
    /// `storageclasses/<name>`.
    pub fn class(&self, name: &str) -> String {
        self.0.key(&["storageclasses", name])
    }

    /// `storageclasses/`.
    pub fn classes(&self) -> String {
        self.0.prefix(&["storageclasses"])
    }

    /// `volumes/<name>`.
    pub fn volume(&self, name: &str) -> String {
        self.0.key(&["volumes", name])
    }

    /// `volumes/`.
    pub fn volumes(&self) -> String {
        self.0.prefix(&["volumes"])
    }

    /// `claims/<ns>/<name>`.
    pub fn claim(&self, namespace: &str, name: &str) -> String {
        self.0.key(&["claims", namespace, name])
    }

    /// `claims/` or `claims/<ns>/`.
    pub fn claims(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) => self.0.prefix(&["claims", ns]),
            None => self.0.prefix(&["claims"]),
        }
    }

    /// `attachments/<volume>/<ns>/<set>/<ordinal>`.
    pub fn attachment(&self, volume: &str, identity: &IdentityRef) -> String {
        self.0.key(&[
            "attachments",
            volume,
            &identity.namespace,
            &identity.set_name,
            &identity.ordinal.to_string(),
        ])
    }

    /// `attachments/<volume>/`, or `attachments/` for all.
    pub fn attachments(&self, volume: Option<&str>) -> String {
        match volume {
            Some(v) => self.0.prefix(&["attachments", v]),
            None => self.0.prefix(&["attachments"]),
        }
    }

    /// `reclaims/<volume>`.
    pub fn reclaim(&self, volume: &str) -> String {
        self.0.key(&["reclaims", volume])
    }
}
