//! Keeping the node's lease: one renewal every third of the TTL through
//! whichever scheduler replica answers, and the fence deadline that each
//! confirmed renewal buys.
//!
//! # Guarantees
//! - A renewal counts from when it was sent, not when its answer came: etcd
//!   restarts the lease's TTL at some moment between the two, so the lease
//!   lives at least TTL past the send.
//! - Each confirmed renewal moves the node's fence deadline to its send
//!   instant plus two thirds of the TTL ([`deadline_after`]); nothing else
//!   moves it, so the deadline never passes the lease's own expiry.
//! - The lease is given up ([`Lost`]) when etcd says it is gone, or when no
//!   renewal has been confirmed for two thirds of the TTL: the same instant
//!   as the deadline, so the agent stops its pods when the shims would.
//! - A renewal that hangs is abandoned after a third of the TTL, so a hung
//!   replica cannot hold the loop past the deadline.

use std::future::Future;
use std::time::Duration;

use petset_core::shutdown::CancellationToken;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::fence;

/// Why the lease was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// etcd said the lease is gone (`NOT_FOUND`).
    Expired,
    /// No renewal was confirmed for this long (two thirds of the TTL).
    NotRenewed(Duration),
}

/// The deadline a lease renewal sent at `sent` (`CLOCK_BOOTTIME` ns) buys:
/// two thirds of the TTL, the same point at which the agent itself gives
/// up; the last third is the margin for clock rates and the kill itself.
pub fn deadline_after(sent: u64, ttl: Duration) -> u64 {
    sent + (ttl * 2 / 3).as_nanos() as u64
}

/// Renews the lease with `renew` every third of `ttl` until it is lost
/// (answered) or `shutdown` (`None`). `deadline` is the node's fence
/// deadline.
pub async fn keep_alive<F, Fut>(
    ttl: Duration,
    deadline: &watch::Sender<u64>,
    mut renew: F,
    shutdown: &CancellationToken,
) -> Option<Lost>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        let sent = Instant::now();
        let sent_boottime = fence::boottime_ns();
        let renewed = match tokio::time::timeout(ttl / 3, renew()).await {
            Ok(outcome) => {
                metrics::histogram!("petset_agent_lease_renew_seconds", "ok" => if outcome.is_ok() { "true" } else { "false" })
                    .record(sent.elapsed().as_secs_f64());
                outcome
            }
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {:?}",
                ttl / 3
            ))),
        };
        match renewed {
            Ok(()) => {
                last_ok = sent;
                deadline.send_replace(deadline_after(sent_boottime, ttl));
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                tracing::error!(%status, "node lease expired");
                metrics::counter!("petset_agent_lease_lost_total", "reason" => "expired")
                    .increment(1);
                return Some(Lost::Expired);
            }
            Err(status) => {
                tracing::warn!(%status, "lease renewal failed on every scheduler replica")
            }
        }
        let since = last_ok.elapsed();
        if since >= ttl * 2 / 3 {
            tracing::error!(?since, "lease not renewed for two thirds of its TTL");
            metrics::counter!("petset_agent_lease_lost_total", "reason" => "not_renewed")
                .increment(1);
            return Some(Lost::NotRenewed(since));
        }
    }
}
