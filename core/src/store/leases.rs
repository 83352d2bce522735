//! etcd leases: how a process proves it is still alive.
//!
//! # Guarantees
//! - A keep-alive that answers `ttl <= 0` means the lease is gone: whatever
//!   was held under it (an identity, an endpoint) is already released, and
//!   the holder must stop acting for it. [`KeepAlive`] reports that once and
//!   stops.
//! - The loop renews at a third of the TTL, so two renewals can be lost to a
//!   slow network before the lease expires.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Store, etcd_error};
use crate::error::{Error, Result};

/// Shortest and longest TTL petset grants, in seconds. etcd itself will not
/// go under about 2 seconds (one and a half election timeouts).
pub const TTL_RANGE: std::ops::RangeInclusive<i64> = 2..=3600;

impl Store {
    /// Grants a lease of `ttl` seconds and answers its id.
    pub async fn grant_lease(&self, ttl: i64) -> Result<i64> {
        if !TTL_RANGE.contains(&ttl) {
            return Err(Error::invalid(
                "ttl_seconds",
                format!(
                    "must be between {} and {} seconds, got {ttl}",
                    TTL_RANGE.start(),
                    TTL_RANGE.end()
                ),
            ));
        }
        let response = super::timed("lease_grant", || {
            let mut client = self.client.clone();
            async move { client.lease_grant(ttl, None).await }
        })
        .await
        .map_err(etcd_error)?;
        Ok(response.id())
    }

    /// Renews a lease once and answers the TTL it now has. `NotFound` when
    /// the lease has expired.
    pub async fn renew_lease(&self, id: i64) -> Result<i64> {
        let renewed = super::timed("lease_renew", || {
            let mut client = self.client.clone();
            async move {
                let (mut keeper, mut responses) = client.lease_keep_alive(id).await?;
                keeper.keep_alive().await?;
                Ok(responses.message().await?.map(|r| r.ttl()))
            }
        })
        .await
        .map_err(etcd_error)?;
        match renewed {
            Some(ttl) if ttl > 0 => Ok(ttl),
            _ => Err(lease_gone(id)),
        }
    }

    /// Revokes a lease: every key attached to it is deleted at once.
    pub async fn revoke_lease(&self, id: i64) -> Result<()> {
        super::timed("lease_revoke", || {
            let mut client = self.client.clone();
            async move { client.lease_revoke(id).await }
        })
        .await
        .map_err(etcd_error)?;
        Ok(())
    }

    /// Keeps a lease alive in the background until it is lost or the
    /// returned handle is dropped.
    pub fn keep_alive(&self, id: i64, ttl: i64) -> KeepAlive {
        let (alive_tx, alive) = watch::channel(true);
        let store = self.clone();
        let period = Duration::from_millis((ttl.max(1) as u64) * 1000 / 3);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match store.renew_lease(id).await {
                    Ok(_) => {}
                    Err(Error::NotFound { .. }) => {
                        tracing::warn!(lease = id, "lease lost");
                        let _ = alive_tx.send(false);
                        return;
                    }
                    // etcd out of reach: keep trying; the lease may still
                    // be alive, and if it is not, the next answer says so.
                    Err(error) => {
                        tracing::warn!(lease = id, %error, "lease renewal failed; retrying")
                    }
                }
            }
        });
        KeepAlive { id, alive, task }
    }
}

fn lease_gone(id: i64) -> Error {
    Error::NotFound {
        kind: "lease",
        name: format!("{id} (expired or revoked)"),
    }
}

/// A lease kept alive in the background; renewals stop when it is dropped.
#[derive(Debug)]
pub struct KeepAlive {
    id: i64,
    alive: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl KeepAlive {
    /// The lease id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Waits until the lease is lost (etcd answered that it expired).
    pub async fn lost(&mut self) {
        let _ = self.alive.wait_for(|alive| !alive).await;
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}
