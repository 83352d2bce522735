//! The agent's timing rules, on tokio's paused clock: the lease renewal
//! loop and the fence deadline it moves, and the crash-loop back-off. Time
//! only moves when every task waits, so each rule is checked to the
//! instant, with no real waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use node_agent::fence;
use node_agent::keepalive::{Lost, deadline_after, keep_alive};
use node_agent::pods::{RestartBackoff, Stop};
use petset_core::shutdown::CancellationToken;
use tokio::sync::watch;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(6);

/// One renewal's answer, as a fake replica gives it.
type Renewal = std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

/// Renewals that answer `outcome(n)` for the n-th call (from 0), and count.
fn renewals(
    outcome: impl Fn(usize) -> Result<(), tonic::Status> + Clone,
) -> (impl FnMut() -> Renewal, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let renew = move || {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        let answer = outcome(n);
        Box::pin(async move { answer }) as Renewal
    };
    (renew, calls)
}

#[tokio::test(start_paused = true)]
async fn a_renewed_lease_is_kept_and_each_renewal_moves_the_deadline_forward() {
    let (deadline, mut deadlines) = watch::channel(0u64);
    let (renew, calls) = renewals(|_| Ok(()));
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while deadlines.changed().await.is_ok() {
            seen.push(*deadlines.borrow_and_update());
        }
        seen
    });
    let start = Instant::now();
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(TTL * 100 + TTL / 6).await;
        stop.cancel();
    });
    let lost = keep_alive(TTL, &deadline, renew, &shutdown).await;
    assert_eq!(
        lost, None,
        "renewed for 100 TTLs, given up only by shutdown"
    );
    assert_eq!(start.elapsed(), TTL * 100 + TTL / 6);
    // One renewal every third of the TTL.
    assert_eq!(calls.load(Ordering::SeqCst), 300);
    stopper.await.unwrap();
    drop(deadline);
    let seen = watcher.await.unwrap();
    assert!(!seen.is_empty());
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "deadlines only move forward"
    );
}

#[tokio::test(start_paused = true)]
async fn failing_renewals_give_the_lease_up_at_two_thirds_of_the_ttl_when_the_deadline_is_due() {
    // Two renewals succeed, then every replica refuses.
    let (renew, calls) = renewals(|n| {
        if n < 2 {
            Ok(())
        } else {
            Err(tonic::Status::unavailable("no replica"))
        }
    });
    let (deadline, deadlines) = watch::channel(0u64);
    let start = Instant::now();
    let boot_before = fence::boottime_ns();
    let lost = keep_alive(TTL, &deadline, renew, &CancellationToken::new()).await;
    // The last confirmed renewal was sent at 2 TTL/3; two thirds of the TTL
    // later the agent gives up: the instant the shims' deadline names.
    assert_eq!(lost, Some(Lost::NotRenewed(TTL * 2 / 3)));
    assert_eq!(start.elapsed(), TTL * 2 / 3 + TTL * 2 / 3);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    // The deadline was last moved by the second renewal: two thirds of the
    // TTL past its send instant on CLOCK_BOOTTIME (which paused time does
    // not stop, hence the bounds).
    let last = *deadlines.borrow();
    let two_thirds = (TTL * 2 / 3).as_nanos() as u64;
    assert!(last >= boot_before + two_thirds, "{last}");
    assert!(last <= fence::boottime_ns() + two_thirds, "{last}");
    assert_eq!(deadline_after(1_000, TTL), 1_000 + two_thirds);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_hangs_is_abandoned_and_the_lease_given_up_in_time() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let renew = move || {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Ok(())
            } else {
                // A replica that accepted the connection and never answers.
                std::future::pending::<()>().await;
                Ok(())
            }
        }
    };
    let (deadline, _deadlines) = watch::channel(0u64);
    let start = Instant::now();
    let lost = keep_alive(TTL, &deadline, renew, &CancellationToken::new()).await;
    // Renewed at TTL/3; the next two hang for a third of the TTL each.
    assert!(matches!(lost, Some(Lost::NotRenewed(since)) if since >= TTL * 2 / 3));
    assert!(
        start.elapsed() <= TTL / 3 + TTL,
        "given up before the lease itself can expire (TTL after the last confirmed send): {:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_etcd_no_longer_has_is_given_up_at_once() {
    let (renew, calls) = renewals(|_| Err(tonic::Status::not_found("lease expired")));
    let (deadline, deadlines) = watch::channel(0u64);
    let start = Instant::now();
    let lost = keep_alive(TTL, &deadline, renew, &CancellationToken::new()).await;
    assert_eq!(lost, Some(Lost::Expired));
    assert_eq!(start.elapsed(), TTL / 3, "at the first answer");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(*deadlines.borrow(), 0, "the deadline never moved");
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_backs_off_as_the_kubelet_does_and_a_long_run_starts_over() {
    let (_stop_tx, mut stop) = watch::channel::<Option<Stop>>(None);
    let mut backoff = RestartBackoff::new(Duration::from_secs(10));
    let mut waits = Vec::new();
    // A container that ends after one second, ten times over.
    for restarts in 1..=10 {
        backoff.ended(Duration::from_secs(1), restarts);
        let before = Instant::now();
        assert!(backoff.wait(&mut stop).await);
        waits.push(before.elapsed().as_secs());
    }
    assert_eq!(waits, [0, 10, 20, 40, 80, 160, 300, 300, 300, 300]);
    // A run of more than ten minutes: the next restart is at once.
    backoff.ended(Duration::from_secs(601), 11);
    assert_eq!(backoff.current(), Duration::ZERO);
    // Starts that fail back off too.
    backoff.failed_start();
    backoff.failed_start();
    assert_eq!(backoff.current(), Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn stopping_a_pod_ends_its_back_off_at_once() {
    let (stop_tx, mut stop) = watch::channel::<Option<Stop>>(None);
    let mut backoff = RestartBackoff::new(Duration::from_secs(10));
    for restarts in 1..=8 {
        backoff.ended(Duration::from_secs(1), restarts);
    }
    assert_eq!(backoff.current(), Duration::from_secs(300));
    let start = Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = stop_tx.send(Some(Stop::Fence));
    });
    assert!(!backoff.wait(&mut stop).await, "stopped, not waited out");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}
