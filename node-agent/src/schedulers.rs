//! Every scheduler-svc replica the agent knows, and calls that go to
//! whichever answers.
//!
//! # Guarantees
//! - A call goes first to the replica that answered last, then to each
//!   other one in turn, until one answers; a replica that is down (refused,
//!   reset, or silent past the attempt's deadline) costs one attempt, not
//!   the call. Any replica serves the node calls: each is a read or an etcd
//!   transaction, none needs the leader.
//! - An answer that is a refusal (`NOT_FOUND`, `FAILED_PRECONDITION`, ...)
//!   is the answer: it is not asked of another replica.
//!
//! So killing or restarting one scheduler replica while another runs costs
//! the node at most one attempt's deadline per call; its lease is renewed
//! through the other replica and no pod stops.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use petset_core::serve::ServiceChannel;
use petset_core::serve::{ServeError, lazy_channel};
use petset_proto::v1::nodes_client::NodesClient;
use tonic::{Code, Status};

/// The replicas, by address (clones share which answered last).
#[derive(Debug, Clone)]
pub struct Schedulers {
    clients: Vec<(String, NodesClient<ServiceChannel>)>,
    last_good: Arc<AtomicUsize>,
}

impl Schedulers {
    /// Clients for `addresses` (URLs); at least one.
    pub fn new(addresses: &[String]) -> Result<Schedulers, ServeError> {
        if addresses.is_empty() {
            return Err(ServeError::Config {
                setting: "scheduler-addr",
                reason: "name at least one scheduler-svc address".into(),
            });
        }
        let clients = addresses
            .iter()
            .map(|a| {
                Ok((
                    a.clone(),
                    NodesClient::new(lazy_channel("scheduler-addr", a)?),
                ))
            })
            .collect::<Result<Vec<_>, ServeError>>()?;
        Ok(Schedulers {
            clients,
            last_good: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// How many replicas.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether there are none (never: [`Self::new`] needs one).
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The client of the replica that answered last (for streams, which
    /// the caller opens again elsewhere when they end; see [`Self::call`]
    /// for the rotation).
    pub fn preferred(&self) -> NodesClient<ServiceChannel> {
        let i = self.last_good.load(Ordering::Relaxed) % self.clients.len();
        self.clients[i].1.clone()
    }

    /// Moves the preference to the next replica (after a stream to the
    /// preferred one failed).
    pub fn rotate(&self) {
        self.last_good.fetch_add(1, Ordering::Relaxed);
    }

    /// Calls `f` on each replica in turn, starting with the one that
    /// answered last, each attempt bounded by `attempt`, until one answers.
    /// Answers that answer, or the last failure when none did.
    pub async fn call<T, F, Fut>(&self, attempt: Duration, mut f: F) -> Result<T, Status>
    where
        F: FnMut(NodesClient<ServiceChannel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let n = self.clients.len();
        let start = self.last_good.load(Ordering::Relaxed) % n;
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let (address, client) = &self.clients[i];
            let outcome = match tokio::time::timeout(attempt, f(client.clone())).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "{address} did not answer within {attempt:?}"
                ))),
            };
            match outcome {
                Err(status) if unreachable(&status) => {
                    tracing::debug!(scheduler = %address, %status, "scheduler replica did not answer; trying the next");
                    last = Some(status);
                }
                answered => {
                    self.last_good.store(i, Ordering::Relaxed);
                    return answered;
                }
            }
        }
        Err(last.expect("at least one replica"))
    }
}

/// Whether `status` says the replica was not reached (or did not answer),
/// rather than answering.
fn unreachable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedulers(n: usize) -> Schedulers {
        let addresses: Vec<String> = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", 1 + i))
            .collect();
        Schedulers::new(&addresses).unwrap()
    }

    #[tokio::test]
    async fn a_call_goes_round_to_the_replica_that_answers_and_stays_there() {
        let s = schedulers(3);
        let tried = AtomicUsize::new(0);
        let answer = s
            .call(Duration::from_secs(1), |_| {
                let k = tried.fetch_add(1, Ordering::Relaxed) + 1;
                async move {
                    if k < 3 {
                        Err(Status::unavailable("connection refused"))
                    } else {
                        Ok(k)
                    }
                }
            })
            .await;
        assert_eq!(answer.unwrap(), 3);
        // The next call starts with the replica that answered (index 2).
        assert_eq!(s.last_good.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_refusal_is_an_answer_and_a_silent_replica_costs_one_attempt() {
        let s = schedulers(2);
        let calls = AtomicUsize::new(0);
        let refused = s
            .call(Duration::from_secs(1), |_| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err::<(), _>(Status::not_found("lease expired")) }
            })
            .await
            .unwrap_err();
        assert_eq!(
            (refused.code(), calls.load(Ordering::Relaxed)),
            (Code::NotFound, 1)
        );

        let calls = AtomicUsize::new(0);
        let answered = s
            .call(Duration::from_millis(50), |_| {
                let k = calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    if k == 0 {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, Status>(k)
                }
            })
            .await;
        assert_eq!(answered.unwrap(), 1);
    }
}
