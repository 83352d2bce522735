//! Attaching a claim's volume to the node a pod runs on, fenced by the pod's
//! identity.
//!
//! # Expected flow
//! 1. The node agent, holding identity `web-1` at incarnation `n` (issued by
//!    identity-svc under its lease), attaches each claim of the pod before
//!    starting it and mounts the path it is given.
//! 2. It detaches after the pod stopped. If it dies instead, its lease
//!    expires and etcd deletes the attachment with the identity's holder key.
//!
//! # Guarantees
//! - An attachment is written in one transaction that checks the identity's
//!   holder key is still the one read (so incarnation `n` is current), that
//!   no attachment of the volume appeared or changed since they were read,
//!   and that the claim and volume are unchanged. It lives on the holder's
//!   lease.
//! - ReadWriteOnce: every attachment of a volume is on one node.
//!   ReadWriteOncePod: one attachment. ReadOnlyMany/ReadWriteMany: any.
//! - An older incarnation's attachment of the same identity blocks a newer
//!   one until it is detached or its lease expires: the old pod may still be
//!   writing. A stale incarnation is refused.

use std::sync::Arc;
use std::time::SystemTime;

use petset_core::error::{Error, Result, Violations};
use petset_core::identity::{self, IdentityRef};
use petset_core::store::page::PageRequest;
use petset_core::store::{
    Compare, CompareOp, PutOptions, Store, Txn, TxnOp, Versioned, decode_or_skip, encode,
};
use petset_core::validate;

use crate::claims::check_node;
use crate::provisioner::{self, Roots};
use crate::records::{
    AccessMode, AttachmentRecord, ClaimPhase, ClaimRecord, Keys, VolumeRecord, VolumeSource,
};

/// A checked attach or detach request.
#[derive(Debug, Clone)]
pub struct AttachInput {
    /// The claim's namespace (the identity's).
    pub namespace: String,
    /// The claim.
    pub claim: String,
    /// The node (attach only).
    pub node: String,
    /// The identity acting.
    pub identity: IdentityRef,
    /// Its incarnation.
    pub incarnation: u64,
}

/// Checks an attach (`node` required) or detach request.
pub fn parse(
    namespace: &str,
    claim: &str,
    node: Option<&str>,
    identity: Option<&petset_proto::v1::IdentityRef>,
    incarnation: u64,
) -> Result<AttachInput> {
    let mut v = Violations::new();
    let namespace = validate::namespace_or_default(namespace);
    v.check("namespace", validate::dns1123_label(&namespace));
    v.check("claim_name", validate::dns1123_subdomain(claim));
    if let Some(node) = node {
        v.check("node", validate::dns1123_subdomain(node));
    }
    let identity = match identity {
        None => {
            v.add("identity", "is required: the pod's identity, as issued");
            None
        }
        Some(r) => v.merge(IdentityRef::parse(
            "identity",
            &r.namespace,
            &r.set_name,
            r.ordinal,
        ))?,
    };
    if incarnation == 0 {
        v.add(
            "incarnation",
            "is required: the incarnation IssueIdentity answered (1 or more)",
        );
    }
    if let Some(id) = &identity
        && id.namespace != namespace
    {
        v.add(
            "identity.namespace",
            format!(
                "must be the claim's namespace {namespace:?}, got {:?}",
                id.namespace
            ),
        );
    }
    v.into_result()?;
    Ok(AttachInput {
        namespace,
        claim: claim.to_string(),
        node: node.unwrap_or_default().to_string(),
        identity: identity.expect("checked above"),
        incarnation,
    })
}

/// Attaches and detaches volumes.
#[derive(Debug, Clone)]
pub struct Attacher {
    store: Store,
    roots: Arc<Roots>,
}

impl Attacher {
    /// Attachments kept in `store`, for volumes under `roots`.
    pub fn new(store: Store, roots: Arc<Roots>) -> Self {
        Attacher { store, roots }
    }

    async fn bound(
        &self,
        namespace: &str,
        claim: &str,
    ) -> Result<(Versioned<ClaimRecord>, Versioned<VolumeRecord>)> {
        let keys = Keys(&self.store);
        let claim_record: Versioned<ClaimRecord> = self
            .store
            .fetch(
                &keys.claim(namespace, claim),
                "claim",
                format!("{namespace}/{claim}"),
            )
            .await?;
        let volume_name = match (&claim_record.value.phase, &claim_record.value.volume) {
            (ClaimPhase::Bound, Some(volume)) => volume.clone(),
            _ => {
                return Err(Error::FailedPrecondition(format!(
                    "claim {namespace}/{claim} is not bound{}; a pod can use it once it is",
                    if claim_record.value.message.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", claim_record.value.message)
                    }
                )));
            }
        };
        let volume = self
            .store
            .get::<VolumeRecord>(&keys.volume(&volume_name))
            .await?
            .ok_or_else(|| Error::FailedPrecondition(format!(
                "claim {namespace}/{claim} is bound to volume {volume_name}, which no longer exists (claim Lost)"
            )))?;
        Ok((claim_record, volume))
    }

    /// Attaches; see the module's guarantees. Answers the attachment
    /// (the standing one for a retry by the same incarnation).
    pub async fn attach(&self, input: &AttachInput) -> Result<AttachmentRecord> {
        let keys = Keys(&self.store);
        let (claim, volume) = self.bound(&input.namespace, &input.claim).await?;
        let holder =
            identity::current_holder(&self.store, &input.identity, input.incarnation).await?;
        check_node(&claim.value, &volume.value, &input.node)?;
        let volume_name = volume.value.meta.name.clone();
        let prefix = keys.attachments(Some(&volume_name));
        let own_key = keys.attachment(&volume_name, &input.identity);
        let (existing, read_revision) = self.store.list::<AttachmentRecord>(&prefix).await?;
        for (key, other) in &existing {
            let other = &other.value;
            if *key == own_key {
                if other.incarnation == input.incarnation && other.node == input.node {
                    return Ok(other.clone());
                }
                return Err(Error::FailedPrecondition(format!(
                    "volume {volume_name} is still attached on node {} for {} incarnation {}; \
                     incarnation {} takes it over once that one detaches or its holder's lease ({}) expires",
                    other.node,
                    other.identity,
                    other.incarnation,
                    input.incarnation,
                    other.lease_id
                )));
            }
        }
        let mode = effective_mode(&claim.value.access_modes);
        let conflict = existing.iter().map(|(_, a)| &a.value).find(|a| match mode {
            AccessMode::ReadWriteOncePod => true,
            AccessMode::ReadWriteOnce => a.node != input.node,
            AccessMode::ReadOnlyMany | AccessMode::ReadWriteMany => false,
        });
        if let Some(other) = conflict {
            return Err(Error::FailedPrecondition(format!(
                "volume {volume_name} is {} and attached on node {} for {} (incarnation {}); \
                 it can attach on {} once that one detaches or its holder's lease expires",
                mode.as_str(),
                other.node,
                other.identity,
                other.incarnation,
                input.node
            )));
        }
        let path = self.roots.path_of(&volume_name, &volume.value.source);
        let create = match &volume.value.source {
            VolumeSource::HostPath { create, .. } => *create,
            _ => true,
        };
        let dir = path.clone();
        tokio::task::spawn_blocking(move || provisioner::ensure_dir(&dir, create))
            .await
            .map_err(|e| Error::internal(format!("attach task failed: {e}")))??;
        let record = AttachmentRecord {
            volume: volume_name.clone(),
            namespace: input.namespace.clone(),
            claim: input.claim.clone(),
            node: input.node.clone(),
            identity: input.identity.clone(),
            incarnation: input.incarnation,
            lease_id: holder.value.lease_id,
            path: path.display().to_string(),
            attached_at: SystemTime::now(),
        };
        let txn = Txn::new()
            .when([
                Compare::mod_revision(
                    input.identity.holder_key(&self.store),
                    CompareOp::Equal,
                    holder.mod_revision,
                ),
                Compare::mod_revision(prefix, CompareOp::Less, read_revision + 1).with_prefix(),
                Compare::mod_revision(
                    keys.claim(&input.namespace, &input.claim),
                    CompareOp::Equal,
                    claim.mod_revision,
                ),
                Compare::mod_revision(
                    keys.volume(&volume_name),
                    CompareOp::Equal,
                    volume.mod_revision,
                ),
            ])
            .and_then([TxnOp::put(
                own_key,
                encode(&record)?,
                Some(PutOptions::new().with_lease(holder.value.lease_id)),
            )]);
        if !self.store.txn(txn).await?.succeeded() {
            return Err(Error::Conflict(format!(
                "volume {volume_name}, its claim or identity {} changed while attaching; retry",
                input.identity
            )));
        }
        metrics::counter!("petset_storage_attached_total").increment(1);
        tracing::info!(volume = %volume_name, node = %input.node, identity = %input.identity, incarnation = input.incarnation, "volume attached");
        Ok(record)
    }

    /// Detaches. Answers false when there was nothing to detach.
    pub async fn detach(&self, input: &AttachInput) -> Result<bool> {
        let keys = Keys(&self.store);
        let (_, volume) = self.bound(&input.namespace, &input.claim).await?;
        let key = keys.attachment(&volume.value.meta.name, &input.identity);
        let Some(current) = self.store.get::<AttachmentRecord>(&key).await? else {
            return Ok(false);
        };
        if current.value.incarnation != input.incarnation {
            return Err(Error::FailedPrecondition(format!(
                "volume {} is attached for {} incarnation {}, not {}: only the incarnation that attached may detach",
                current.value.volume, input.identity, current.value.incarnation, input.incarnation
            )));
        }
        if !self.store.delete_over(&key, &current).await? {
            return Err(Error::Conflict(format!(
                "attachment of {} changed while detaching; retry",
                current.value.volume
            )));
        }
        tracing::info!(volume = %current.value.volume, node = %current.value.node, identity = %input.identity, "volume detached");
        Ok(true)
    }

    /// Attachments of one volume, or all.
    pub async fn list(&self, volume: Option<&str>) -> Result<Vec<AttachmentRecord>> {
        Ok(self.page(volume, &PageRequest::default()).await?.0)
    }

    /// One page of [`Attacher::list`], with the token of the next (empty
    /// after the last).
    pub async fn page(
        &self,
        volume: Option<&str>,
        page: &PageRequest,
    ) -> Result<(Vec<AttachmentRecord>, String)> {
        let read = self
            .store
            .list_page(&Keys(&self.store).attachments(volume), page)
            .await?;
        let attachments = read
            .kvs
            .iter()
            .filter_map(decode_or_skip::<AttachmentRecord>)
            .map(|a| a.value)
            .collect();
        Ok((attachments, read.continue_token()))
    }
}

/// The rule a claim's modes put on attachments. Pods mount read-write, so a
/// claim that lists ReadWriteOnce is held to it even if it lists
/// ReadOnlyMany too; only ReadWriteMany (or ReadOnlyMany alone) lets many
/// nodes attach.
pub fn effective_mode(modes: &[AccessMode]) -> AccessMode {
    [
        AccessMode::ReadWriteMany,
        AccessMode::ReadWriteOncePod,
        AccessMode::ReadWriteOnce,
    ]
    .into_iter()
    .find(|m| modes.contains(m))
    .unwrap_or(AccessMode::ReadOnlyMany)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_once_wins_over_read_only_many() {
        use AccessMode::*;
        assert_eq!(
            effective_mode(&[ReadWriteOnce, ReadOnlyMany]),
            ReadWriteOnce
        );
        assert_eq!(effective_mode(&[ReadOnlyMany]), ReadOnlyMany);
        assert_eq!(
            effective_mode(&[ReadWriteOnce, ReadWriteMany]),
            ReadWriteMany
        );
        assert_eq!(effective_mode(&[ReadWriteOncePod]), ReadWriteOncePod);
    }
}
