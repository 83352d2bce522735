//! Issuing identities: at most one holder at a time, fenced by incarnation.
//!
//! # Expected flow
//! 1. A holder (the process that will run pod `web-0`) takes an etcd lease
//!    and asks for the identity under it.
//! 2. It gets incarnation `n + 1`, where `n` is the last incarnation ever
//!    issued for that identity, and reports its endpoint with it.
//! 3. It gives the identity back when the pod stops, or its lease expires
//!    when it dies; only then can another holder get incarnation `n + 2`.
//!
//! # Guarantees
//! - One transaction issues: it checks that nobody holds the identity and
//!   that the incarnation counter is still the one read, then writes the
//!   holder (on the holder's lease) and the counter together. Of any number
//!   of concurrent requests, exactly one succeeds; the others learn who won.
//! - Incarnations only grow: the counter has no lease and is never deleted.
//! - Every write made for an identity afterwards (release, endpoint) checks
//!   the holder key's revision, so a stale incarnation cannot act.

use std::time::SystemTime;

use petset_core::error::{Error, Result};
use petset_core::identity::{self, check_current};
use petset_core::store::{Compare, CompareOp, PutOptions, Store, Txn, TxnOp, Versioned, encode};
use petset_core::validate;

use crate::names::IdentityRef;
use crate::records::{HolderRecord, Keys};

/// How many times an issue is retried when the counter moved under it but
/// nobody holds the identity (a release or expiry raced the read).
const ISSUE_ROUNDS: usize = 16;

/// The state of one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityState {
    /// The current holder, if any.
    pub holder: Option<HolderRecord>,
    /// The highest incarnation ever issued.
    pub last_incarnation: u64,
}

/// Issues and releases identities.
#[derive(Debug, Clone)]
pub struct Issuer {
    store: Store,
}

/// Checks the holder's name: printable, 1 to 253 characters.
pub fn check_holder(holder: &str) -> std::result::Result<(), String> {
    if holder.is_empty() {
        return Err("is required: name the process that will act for the identity".into());
    }
    if holder.len() > validate::DNS1123_SUBDOMAIN_MAX {
        return Err(format!(
            "must be no more than 253 characters, got {}",
            holder.len()
        ));
    }
    if holder.chars().any(|c| c.is_control()) {
        return Err("must be printable (no control characters)".into());
    }
    Ok(())
}

impl Issuer {
    /// Identities kept in `store`.
    pub fn new(store: Store) -> Self {
        Issuer { store }
    }

    /// Reads who holds an identity and its last incarnation.
    pub async fn state(&self, r: &IdentityRef) -> Result<IdentityState> {
        let keys = Keys(&self.store);
        let holder = self
            .store
            .get::<HolderRecord>(&keys.holder(r))
            .await?
            .map(|v| v.value);
        let last_incarnation = self.last_incarnation(r).await?;
        Ok(IdentityState {
            holder,
            last_incarnation,
        })
    }

    /// The highest incarnation ever issued for `r`; 0 if never issued.
    pub async fn last_incarnation(&self, r: &IdentityRef) -> Result<u64> {
        let counter = self
            .store
            .get::<u64>(&Keys(&self.store).incarnation(r))
            .await?;
        Ok(counter.map(|v| v.value).unwrap_or(0))
    }

    /// Issues `r` to `holder` under `lease_id`; see the module's guarantees.
    pub async fn issue(
        &self,
        r: &IdentityRef,
        service: &str,
        holder: &str,
        lease_id: i64,
    ) -> Result<HolderRecord> {
        let keys = Keys(&self.store);
        let (holder_key, counter_key) = (keys.holder(r), keys.incarnation(r));
        for _ in 0..ISSUE_ROUNDS {
            let counter = self.store.get::<u64>(&counter_key).await?;
            let (last, counter_revision) =
                counter.map(|c| (c.value, c.mod_revision)).unwrap_or((0, 0));
            let record = HolderRecord {
                holder: holder.to_string(),
                lease_id,
                incarnation: last + 1,
                service: service.to_string(),
                issued_at: SystemTime::now(),
            };
            let txn = Txn::new()
                .when([
                    Compare::create_revision(holder_key.clone(), CompareOp::Equal, 0),
                    Compare::mod_revision(counter_key.clone(), CompareOp::Equal, counter_revision),
                ])
                .and_then([
                    TxnOp::put(
                        holder_key.clone(),
                        encode(&record)?,
                        Some(PutOptions::new().with_lease(lease_id)),
                    ),
                    TxnOp::put(counter_key.clone(), encode(&record.incarnation)?, None),
                ]);
            if self.store.txn(txn).await?.succeeded() {
                metrics::counter!("petset_identity_issued_total").increment(1);
                tracing::info!(identity = %r, holder, lease = lease_id, incarnation = record.incarnation, "identity issued");
                return Ok(record);
            }
            match self.store.get::<HolderRecord>(&holder_key).await? {
                Some(Versioned { value: current, .. })
                    if current.holder == holder && current.lease_id == lease_id =>
                {
                    // The same holder asking again (a retry): the issue stands.
                    return Ok(current);
                }
                Some(Versioned { value: current, .. }) => {
                    metrics::counter!("petset_identity_refused_total").increment(1);
                    return Err(Error::FailedPrecondition(format!(
                        "identity {r} is held by {:?} (incarnation {}, lease {}); it is issued again only after \
                         that holder releases it or its lease expires",
                        current.holder, current.incarnation, current.lease_id
                    )));
                }
                // Released or expired between our reads: try again.
                None => continue,
            }
        }
        Err(Error::Conflict(format!(
            "identity {r} kept changing while being issued; retry"
        )))
    }

    /// Releases `r` if `incarnation` is the current one. Answers whether
    /// anything was released (false when it was free already).
    pub async fn release(&self, r: &IdentityRef, incarnation: u64) -> Result<bool> {
        let keys = Keys(&self.store);
        let holder_key = keys.holder(r);
        let Some(current) = self.store.get::<HolderRecord>(&holder_key).await? else {
            let last = self.last_incarnation(r).await?;
            if incarnation > last {
                return Err(Error::FailedPrecondition(format!(
                    "identity {r} was never issued with incarnation {incarnation} (last issued: {last})"
                )));
            }
            return Ok(false);
        };
        check_current(r, &current.value, incarnation)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                holder_key.clone(),
                CompareOp::Equal,
                current.mod_revision,
            )])
            .and_then([
                TxnOp::delete(holder_key, None),
                TxnOp::delete(keys.endpoint(r), None),
            ]);
        if !self.store.txn(txn).await?.succeeded() {
            // The holder key changed: it expired or was re-issued meanwhile.
            return match self.store.get::<HolderRecord>(&keys.holder(r)).await? {
                Some(now) => check_current(r, &now.value, incarnation).map(|()| false),
                None => Ok(false),
            };
        }
        tracing::info!(identity = %r, incarnation, "identity released");
        Ok(true)
    }

    /// Reads the current holder and checks that `incarnation` is its.
    pub async fn current_holder(
        &self,
        r: &IdentityRef,
        incarnation: u64,
    ) -> Result<Versioned<HolderRecord>> {
        identity::current_holder(&self.store, r, incarnation).await
    }
}
