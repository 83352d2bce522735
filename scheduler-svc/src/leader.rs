//! Leader election through an etcd lease.
//!
//! # Expected flow
//! 1. Each replica takes a lease and tries to create `leader/scheduler` on
//!    it (create only if absent). One succeeds: its term is the revision of
//!    that create.
//! 2. The others watch the key and try again when it is deleted: the leader
//!    resigned (revoked its lease on shutdown) or died (its lease expired
//!    after the TTL).
//! 3. The leader keeps its lease alive; when it cannot, it stops its
//!    controller and campaigns again.
//!
//! # Guarantees
//! - Every write the controller makes carries [`Term::guard`]: the leader
//!   key's create revision is still this term's. A deposed leader's writes
//!   fail, even if it has not noticed yet that it was deposed.
//! - A new leader knows nothing but what etcd holds: it resumes from there.

use std::future::Future;
use std::time::{Duration, SystemTime};

use etcd_client::{EventType, WatchOptions};
use petset_core::error::{Error, Result};
use petset_core::shutdown::CancellationToken;
use petset_core::store::{Compare, CompareOp, PutOptions, Store, Txn, TxnOp, encode};

use crate::records::{Keys, LeaderRecord};

/// One leader's tenure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// The leader key.
    pub key: String,
    /// The revision that created it: unique to this term.
    pub revision: i64,
    /// The lease it lives on.
    pub lease: i64,
    /// The leader's id.
    pub id: String,
}

impl Term {
    /// The compare every leader write includes.
    pub fn guard(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.revision)
    }

    /// Runs `txn`'s compares plus the term guard; answers whether it
    /// succeeded, and [`Error::Deposed`] if this replica no longer leads.
    pub async fn write(
        &self,
        store: &Store,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<bool> {
        Ok(self.write_at(store, compares, ops).await?.is_some())
    }

    /// [`Term::write`], answering the revision the write made (`None`: a
    /// compare failed).
    pub async fn write_at(
        &self,
        store: &Store,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<Option<i64>> {
        let mut all = vec![self.guard()];
        all.extend(compares);
        let response = store.txn(Txn::new().when(all).and_then(ops)).await?;
        if response.succeeded() {
            return Ok(Some(
                response.header().map(|h| h.revision()).unwrap_or_default(),
            ));
        }
        let leader = store.get::<LeaderRecord>(&self.key).await?;
        if leader.as_ref().map(|l| l.create_revision) != Some(self.revision) {
            return Err(Error::Deposed(format!(
                "replica {} no longer leads (term {} ended; leader now: {}); its write was refused",
                self.id,
                self.revision,
                leader.map(|l| l.value.id).unwrap_or_else(|| "none".into())
            )));
        }
        Ok(None)
    }
}

/// Campaigns for leadership and runs `lead` while leading, until
/// `shutdown`.
pub async fn run<F, Fut>(
    store: Store,
    id: String,
    ttl: i64,
    shutdown: CancellationToken,
    mut lead: F,
) where
    F: FnMut(Term, CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let key = Keys(&store).leader();
    while !shutdown.is_cancelled() {
        let lease = match store.grant_lease(ttl).await {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take a lease to campaign; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut keep = store.keep_alive(lease, ttl);
        let term = tokio::select! {
            _ = shutdown.cancelled() => None,
            _ = keep.lost() => None,
            term = campaign(&store, &key, &id, lease) => term,
        };
        let Some(term) = term else {
            let _ = store.revoke_lease(lease).await;
            continue;
        };
        tracing::info!(id = %id, term = term.revision, "leading");
        metrics::gauge!("petset_scheduler_leader").set(1.0);
        let token = shutdown.child_token();
        let leading = lead(term.clone(), token.clone());
        tokio::pin!(leading);
        tokio::select! {
            _ = &mut leading => {}
            _ = keep.lost() => {
                tracing::warn!(id = %id, term = term.revision, "leader lease lost; stepping down");
                token.cancel();
                leading.await;
            }
            _ = shutdown.cancelled() => {
                token.cancel();
                leading.await;
            }
        }
        metrics::gauge!("petset_scheduler_leader").set(0.0);
        // Resign at once rather than make the others wait for the TTL.
        drop(keep);
        let _ = store.revoke_lease(lease).await;
        tracing::info!(id = %id, term = term.revision, "no longer leading");
    }
}

/// Tries to become leader; waits for the key's deletion between tries.
async fn campaign(store: &Store, key: &str, id: &str, lease: i64) -> Option<Term> {
    loop {
        let record = LeaderRecord {
            id: id.to_string(),
            since: SystemTime::now(),
        };
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                encode(&record).ok()?,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        match store.txn(txn).await {
            Ok(response) if response.succeeded() => {
                let revision = response.header().map(|h| h.revision()).unwrap_or_default();
                return Some(Term {
                    key: key.to_string(),
                    revision,
                    lease,
                    id: id.to_string(),
                });
            }
            Ok(_) => wait_for_vacancy(store, key).await,
            Err(e) => {
                tracing::warn!(error = %e, "campaign failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Returns when the leader key is deleted (or after a while, to look again).
async fn wait_for_vacancy(store: &Store, key: &str) {
    let current = match store.get::<LeaderRecord>(key).await {
        Ok(Some(current)) => current,
        Ok(None) => return,
        Err(_) => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    };
    let mut client = store.client();
    let options = WatchOptions::new().with_start_revision(current.mod_revision + 1);
    let Ok(mut stream) = client.watch(key, Some(options)).await else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return;
    };
    let deleted = async {
        while let Ok(Some(response)) = stream.message().await {
            if response
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                return;
            }
        }
    };
    // Look again now and then even without an event (a broken watch).
    let _ = tokio::time::timeout(Duration::from_secs(10), deleted).await;
}
