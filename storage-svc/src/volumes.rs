//! Persistent volumes a person declares (static volumes, like the seed's
//! `pv-a`..`pv-c`), and the volumes petset provisions.
//!
//! # Guarantees
//! - A volume's source never changes once created, and a bound volume keeps
//!   its binding whatever an apply says: only the binder and the reclaimer
//!   move a volume between phases.
//! - A bound volume is not deleted (its claim must go first).

use std::sync::RwLockReadGuard;
use std::time::SystemTime;

use petset_core::error::{Error, Result, Violations};
use petset_core::meta::{MetaInput, Scope};
use petset_core::selector::NodeSelector;
use petset_core::store::mirror::{Decoded, DecodedSnapshot};
use petset_core::store::page::PageRequest;
use petset_core::store::{Store, Versioned, decode_or_skip};
use petset_core::validate;
use petset_proto::v1;
use petset_proto::v1::persistent_volume_spec::Source;

pub use petset_core::claim::{parse_access_modes, parse_storage, parse_volume_mode};

use crate::provisioner::Roots;
use crate::records::{
    AccessMode, ClaimRef, Keys, ReclaimPolicy, VolumePhase, VolumeRecord, VolumeSource,
};

/// A checked volume from the API.
#[derive(Debug, Clone)]
pub struct VolumeInput {
    /// Metadata.
    pub meta: MetaInput,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Access modes.
    pub access_modes: Vec<AccessMode>,
    /// Reclaim policy.
    pub reclaim_policy: ReclaimPolicy,
    /// Class name; empty for none.
    pub class: String,
    /// Node affinity.
    pub node_affinity: Option<NodeSelector>,
    /// Source.
    pub source: VolumeSource,
    /// Pre-binding.
    pub claim_ref: Option<ClaimRef>,
}

/// Checks a volume from the API; every broken rule is named.
pub fn parse(volume: Option<&v1::PersistentVolume>, roots: &Roots) -> Result<VolumeInput> {
    let Some(volume) = volume else {
        return Err(Error::invalid("volume", "is required"));
    };
    let spec = volume.spec.clone().unwrap_or_default();
    let mut v = Violations::new();
    let meta = MetaInput::parse(
        "volume.metadata",
        volume.metadata.as_ref(),
        Scope::Cluster,
        validate::dns1123_subdomain,
        &mut v,
    );
    let capacity = parse_storage("volume.spec.capacity", &spec.capacity, &mut v);
    let access_modes = parse_access_modes("volume.spec.access_modes", &spec.access_modes, &mut v);
    let reclaim_policy = match spec.persistent_volume_reclaim_policy.as_str() {
        "" | "Retain" => ReclaimPolicy::Retain,
        "Delete" => ReclaimPolicy::Delete,
        "Recycle" => ReclaimPolicy::Recycle,
        other => {
            v.add(
                "volume.spec.persistent_volume_reclaim_policy",
                format!("must be Retain, Delete or Recycle, got {other:?}"),
            );
            ReclaimPolicy::Retain
        }
    };
    if !spec.storage_class_name.is_empty() {
        v.check(
            "volume.spec.storage_class_name",
            validate::dns1123_subdomain(&spec.storage_class_name),
        );
    }
    parse_volume_mode("volume.spec.volume_mode", &spec.volume_mode, &mut v);
    let node_affinity = spec
        .node_affinity
        .as_ref()
        .and_then(|a| a.required.as_ref())
        .map(|required| {
            NodeSelector::parse(
                "volume.spec.node_affinity.required",
                required.node_selector_terms.iter().map(|t| {
                    t.match_expressions
                        .iter()
                        .map(|r| (r.key.as_str(), r.operator.as_str(), r.values.clone()))
                        .collect()
                }),
                &mut v,
            )
        });
    let source = match &spec.source {
        None => {
            v.add(
                "volume.spec.source",
                "a volume source is required: hostPath or local",
            );
            None
        }
        Some(v1::persistent_volume_spec::Source::HostPath(h)) => {
            v.check("volume.spec.host_path.path", roots.check_host_path(&h.path));
            let create = match h.r#type.as_str() {
                "" | "DirectoryOrCreate" => true,
                "Directory" => false,
                other => {
                    v.add(
                        "volume.spec.host_path.type",
                        format!(
                            "must be \"\", Directory or DirectoryOrCreate for a volume, got {other:?}"
                        ),
                    );
                    false
                }
            };
            Some(VolumeSource::HostPath {
                path: h.path.clone(),
                create,
            })
        }
        Some(
            unsupported @ (Source::GcePersistentDisk(_)
            | Source::AwsElasticBlockStore(_)
            | Source::AzureDisk(_)
            | Source::AzureFile(_)
            | Source::Nfs(_)
            | Source::Iscsi(_)
            | Source::Csi(_)
            | Source::Cephfs(_)
            | Source::Rbd(_)
            | Source::Fc(_)
            | Source::Cinder(_)
            | Source::Glusterfs(_)),
        ) => {
            let (field, kind) = unsupported_source(unsupported);
            v.add(
                format!("volume.spec.{field}"),
                format!(
                    "{kind} volumes are not supported: petset volumes are directories on its nodes; \
                     use hostPath or local (or a storage class) instead"
                ),
            );
            None
        }
        Some(v1::persistent_volume_spec::Source::Local(l)) => {
            v.check("volume.spec.local.path", roots.check_host_path(&l.path));
            if node_affinity.is_none() {
                v.add(
                    "volume.spec.node_affinity",
                    "a local volume must say which node it is on (nodeAffinity.required)",
                );
            }
            Some(VolumeSource::Local {
                path: l.path.clone(),
            })
        }
    };
    let claim_ref = spec.claim_ref.as_ref().map(|r| {
        let ns = validate::namespace_or_default(&r.namespace);
        v.check(
            "volume.spec.claim_ref.namespace",
            validate::dns1123_label(&ns),
        );
        v.check(
            "volume.spec.claim_ref.name",
            validate::dns1123_subdomain(&r.name),
        );
        ClaimRef {
            namespace: ns,
            name: r.name.clone(),
            uid: r.uid.clone(),
        }
    });
    v.into_result()?;
    Ok(VolumeInput {
        meta,
        capacity,
        access_modes,
        reclaim_policy,
        class: spec.storage_class_name,
        node_affinity,
        source: source.expect("checked above"),
        claim_ref,
    })
}

/// The field and Kubernetes name of a source petset cannot provide.
fn unsupported_source(source: &Source) -> (&'static str, &'static str) {
    match source {
        Source::GcePersistentDisk(_) => ("gce_persistent_disk", "gcePersistentDisk"),
        Source::AwsElasticBlockStore(_) => ("aws_elastic_block_store", "awsElasticBlockStore"),
        Source::AzureDisk(_) => ("azure_disk", "azureDisk"),
        Source::AzureFile(_) => ("azure_file", "azureFile"),
        Source::Nfs(_) => ("nfs", "nfs"),
        Source::Iscsi(_) => ("iscsi", "iscsi"),
        Source::Csi(_) => ("csi", "csi"),
        Source::Cephfs(_) => ("cephfs", "cephfs"),
        Source::Rbd(_) => ("rbd", "rbd"),
        Source::Fc(_) => ("fc", "fc"),
        Source::Cinder(_) => ("cinder", "cinder"),
        Source::Glusterfs(_) => ("glusterfs", "glusterfs"),
        Source::HostPath(_) | Source::Local(_) => ("source", "this"),
    }
}

/// The stored volumes.
#[derive(Debug, Clone)]
pub struct Volumes {
    store: Store,
    /// Every volume as a watch keeps it, for the binder.
    cache: Option<Decoded<VolumeRecord>>,
}

impl Volumes {
    /// Volumes kept in `store`.
    pub fn new(store: Store) -> Self {
        Volumes { store, cache: None }
    }

    /// Volumes kept in `store`, with a watch-fed copy of all of them for
    /// [`Volumes::for_binding`].
    pub fn cached(store: Store) -> Self {
        let cache = Decoded::spawn(&store, Keys(&store).volumes());
        Volumes {
            store,
            cache: Some(cache),
        }
    }

    /// The watch-fed copy of every volume, for the binder to choose from
    /// without an etcd read, a decode or a clone of each volume; `None`
    /// before it was listed (or without one). The binder's transaction
    /// compares the chosen volume's revision, so a copy a moment old costs
    /// a retry, never a wrong binding; the retry reads etcd. Hold the guard
    /// briefly: the watch waits on it.
    pub fn copy(&self) -> Option<RwLockReadGuard<'_, DecodedSnapshot<VolumeRecord>>> {
        self.cache.as_ref().and_then(Decoded::read)
    }

    /// Reads one volume.
    pub async fn get(&self, name: &str) -> Result<Versioned<VolumeRecord>> {
        self.store
            .fetch(&Keys(&self.store).volume(name), "volume", name)
            .await
    }

    /// Every volume, by name.
    pub async fn list(&self) -> Result<Vec<Versioned<VolumeRecord>>> {
        Ok(self.page(&PageRequest::default()).await?.0)
    }

    /// One page of [`Volumes::list`], with the token of the next (empty
    /// after the last).
    pub async fn page(&self, page: &PageRequest) -> Result<(Vec<Versioned<VolumeRecord>>, String)> {
        let read = self
            .store
            .list_page(&Keys(&self.store).volumes(), page)
            .await?;
        let volumes = read
            .kvs
            .iter()
            .filter_map(decode_or_skip::<VolumeRecord>)
            .collect();
        Ok((volumes, read.continue_token()))
    }

    /// Creates or updates a static volume.
    pub async fn apply(&self, input: VolumeInput) -> Result<Versioned<VolumeRecord>> {
        let key = Keys(&self.store).volume(&input.meta.name);
        let existing = self.store.get::<VolumeRecord>(&key).await?;
        let record = match &existing {
            None => VolumeRecord {
                meta: input.meta.create(),
                capacity: input.capacity,
                access_modes: input.access_modes,
                reclaim_policy: input.reclaim_policy,
                class: input.class,
                node_affinity: input.node_affinity,
                source: input.source,
                claim_ref: input.claim_ref,
                phase: VolumePhase::Available,
                message: String::new(),
                phase_since: SystemTime::now(),
            },
            Some(current) => {
                input.meta.check_version("volume", current.mod_revision)?;
                let c = &current.value;
                let mut v = Violations::new();
                if c.source != input.source {
                    v.add(
                        "volume.spec.source",
                        "field is immutable once the volume exists",
                    );
                }
                if c.phase == VolumePhase::Bound {
                    if c.class != input.class {
                        v.add(
                            "volume.spec.storage_class_name",
                            "cannot change while the volume is bound",
                        );
                    }
                    if input
                        .claim_ref
                        .as_ref()
                        .is_some_and(|r| Some(r) != c.claim_ref.as_ref())
                    {
                        v.add(
                            "volume.spec.claim_ref",
                            "cannot change while the volume is bound",
                        );
                    }
                }
                v.into_result()?;
                let mut record = c.clone();
                record.meta.labels = input.meta.labels.clone();
                record.meta.annotations = input.meta.annotations.clone();
                if (
                    record.capacity,
                    &record.access_modes,
                    record.reclaim_policy,
                    &record.class,
                    &record.node_affinity,
                ) != (
                    input.capacity,
                    &input.access_modes,
                    input.reclaim_policy,
                    &input.class,
                    &input.node_affinity,
                ) {
                    record.meta.generation += 1;
                }
                record.capacity = input.capacity;
                record.access_modes = input.access_modes;
                record.reclaim_policy = input.reclaim_policy;
                record.class = input.class;
                record.node_affinity = input.node_affinity;
                if record.phase != VolumePhase::Bound {
                    record.claim_ref = input.claim_ref;
                }
                record
            }
        };
        if let Some(current) = &existing
            && current.value == record
        {
            return Ok(current.clone());
        }
        let written = self
            .store
            .put_over(&key, record, existing.as_ref())
            .await?
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "volume {} changed while being applied; apply again",
                    input.meta.name
                ))
            })?;
        tracing::info!(volume = %written.value.meta.name, "volume applied");
        Ok(written)
    }

    /// Deletes a volume that is not bound. Its directory stays: deleting
    /// the object is not a reclaim.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let current = self.get(name).await?;
        if current.value.phase == VolumePhase::Bound {
            let claim = current
                .value
                .claim_ref
                .as_ref()
                .map(|r| format!("{}/{}", r.namespace, r.name));
            return Err(Error::FailedPrecondition(format!(
                "volume {name} is bound to claim {}; delete the claim first",
                claim.unwrap_or_default()
            )));
        }
        if !self
            .store
            .delete_over(&Keys(&self.store).volume(name), &current)
            .await?
        {
            return Err(Error::Conflict(format!(
                "volume {name} changed while being deleted; retry"
            )));
        }
        tracing::info!(volume = name, "volume deleted");
        Ok(())
    }
}
