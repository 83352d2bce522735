//! Reclaiming a volume whose claim was deleted, as its policy says:
//! `Retain` keeps it Released with its data, `Delete` removes the directory
//! and the volume, `Recycle` empties the directory and makes the volume
//! Available again.
//!
//! # Guarantees
//! - One replica reclaims a volume at a time: it first writes
//!   `reclaims/<volume>` on a lease of its own, in a transaction that also
//!   checks the volume is still the Released one it read. Two replicas never
//!   wipe one volume, and a volume is never wiped after it was bound again.
//! - A replica that dies mid-way leaves no lock behind (its lease expires),
//!   and the next sweep finishes the work; wiping and removing are
//!   idempotent.
//! - A failure on disk leaves the volume `Failed`, with the error in its
//!   message, never half-reclaimed and Available.

use std::sync::Arc;
use std::time::SystemTime;

use petset_core::error::{Error, Result};
use petset_core::store::{Compare, CompareOp, PutOptions, Store, Txn, TxnOp, Versioned, encode};

use crate::provisioner::{self, Roots};
use crate::records::{Keys, ReclaimPolicy, ReclaimRecord, VolumePhase, VolumeRecord};

/// TTL of a reclaiming replica's lock lease, in seconds.
const LOCK_TTL: i64 = 10;

/// Reclaims released volumes.
#[derive(Debug, Clone)]
pub struct Reclaimer {
    store: Store,
    roots: Arc<Roots>,
    replica: String,
}

impl Reclaimer {
    /// A reclaimer for volumes under `roots`; `replica` names this process
    /// in the lock it takes.
    pub fn new(store: Store, roots: Arc<Roots>, replica: String) -> Self {
        Reclaimer {
            store,
            roots,
            replica,
        }
    }

    /// Reclaims volume `name` if it is Released with a `Delete` or
    /// `Recycle` policy. Answers the volume afterwards (`None` if deleted).
    pub async fn reclaim(&self, name: &str) -> Result<Option<Versioned<VolumeRecord>>> {
        let keys = Keys(&self.store);
        let volume_key = keys.volume(name);
        let Some(volume) = self.store.get::<VolumeRecord>(&volume_key).await? else {
            return Ok(None);
        };
        let policy = volume.value.reclaim_policy;
        if volume.value.phase != VolumePhase::Released || policy == ReclaimPolicy::Retain {
            return Ok(Some(volume));
        }
        let lease = self.store.grant_lease(LOCK_TTL).await?;
        let _keep_alive = self.store.keep_alive(lease, LOCK_TTL);
        let outcome = self.reclaim_locked(name, volume, lease).await;
        if let Err(e) = self.store.revoke_lease(lease).await {
            tracing::debug!(lease, error = %e, "reclaim lock lease not revoked; it expires by itself");
        }
        outcome
    }

    async fn reclaim_locked(
        &self,
        name: &str,
        volume: Versioned<VolumeRecord>,
        lease: i64,
    ) -> Result<Option<Versioned<VolumeRecord>>> {
        let keys = Keys(&self.store);
        let (volume_key, lock_key) = (keys.volume(name), keys.reclaim(name));
        let lock = ReclaimRecord {
            by: self.replica.clone(),
            since: SystemTime::now(),
        };
        let locked = self
            .store
            .txn(
                Txn::new()
                    .when([
                        Compare::mod_revision(
                            volume_key.clone(),
                            CompareOp::Equal,
                            volume.mod_revision,
                        ),
                        Compare::create_revision(lock_key.clone(), CompareOp::Equal, 0),
                    ])
                    .and_then([TxnOp::put(
                        lock_key.clone(),
                        encode(&lock)?,
                        Some(PutOptions::new().with_lease(lease)),
                    )]),
            )
            .await?
            .succeeded();
        if !locked {
            // Another replica is at it, or the volume moved on.
            return self.store.get::<VolumeRecord>(&volume_key).await;
        }
        let policy = volume.value.reclaim_policy;
        let path = self.roots.path_of(name, &volume.value.source);
        let disk = tokio::task::spawn_blocking(move || match policy {
            ReclaimPolicy::Delete => provisioner::remove(&path),
            _ => provisioner::wipe(&path),
        })
        .await
        .map_err(|e| Error::internal(format!("reclaim task failed: {e}")))?;
        let mut record = volume.value.clone();
        let delete = match disk {
            Ok(()) if policy == ReclaimPolicy::Delete => true,
            Ok(()) => {
                record.claim_ref = None;
                record.set_phase(VolumePhase::Available, "");
                false
            }
            Err(e) => {
                tracing::error!(volume = name, ?policy, error = %e, "reclaim failed");
                record.set_phase(
                    VolumePhase::Failed,
                    format!("reclaim ({policy:?}) failed: {e}"),
                );
                false
            }
        };
        let op = if delete {
            TxnOp::delete(volume_key.clone(), None)
        } else {
            TxnOp::put(volume_key.clone(), encode(&record)?, None)
        };
        // The lock kept every binder away: only this replica writes the
        // volume until the lock key goes, so the volume's revision is the
        // one read.
        let response = self
            .store
            .txn(
                Txn::new()
                    .when([Compare::mod_revision(
                        volume_key.clone(),
                        CompareOp::Equal,
                        volume.mod_revision,
                    )])
                    .and_then([op, TxnOp::delete(lock_key, None)]),
            )
            .await?;
        if !response.succeeded() {
            return Err(Error::Conflict(format!(
                "volume {name} changed while being reclaimed; the next sweep finishes it"
            )));
        }
        metrics::counter!("petset_storage_reclaimed_total", "policy" => format!("{policy:?}"))
            .increment(1);
        tracing::info!(volume = name, ?policy, phase = ?record.phase, "volume reclaimed");
        if delete {
            return Ok(None);
        }
        let revision = response.header().map(|h| h.revision()).unwrap_or_default();
        Ok(Some(Versioned {
            value: record,
            mod_revision: revision,
            create_revision: volume.create_revision,
            lease: 0,
        }))
    }

    /// Reclaims every Released volume whose policy asks for it: the work a
    /// replica that died mid-way left behind.
    pub async fn sweep(&self) -> Result<usize> {
        let (volumes, _) = self
            .store
            .list::<VolumeRecord>(&Keys(&self.store).volumes())
            .await?;
        let mut done = 0;
        for (_, v) in volumes {
            if v.value.phase == VolumePhase::Released
                && v.value.reclaim_policy != ReclaimPolicy::Retain
            {
                match self.reclaim(&v.value.meta.name).await {
                    Ok(_) => done += 1,
                    Err(e) => {
                        tracing::warn!(volume = %v.value.meta.name, error = %e, "sweep could not reclaim")
                    }
                }
            }
        }
        Ok(done)
    }
}
