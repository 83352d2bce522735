//! Keeping a lost etcd member out of the way.
//!
//! etcd-client balances requests over every endpoint it was given, and
//! tonic's balancer keeps choosing an endpoint whose connections are
//! refused: with one member of three down, most requests failed and every
//! node agent, unable to renew, fenced its pods (found by
//! `e2e/tests/etcd_chaos.rs`). So:
//!
//! - a task checks every endpoint each [`CHECK_EVERY`] with a TCP connect;
//!   one that refuses is taken out of the balance (never the last one), and
//!   put back once it accepts connections again;
//! - a request that failed before it reached etcd (its connection was
//!   refused) is sent again, for up to [`RETRY_FOR`]: nothing was applied,
//!   so sending it again cannot apply it twice. Any other failure is
//!   answered at once.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use etcd_client::Client;

/// How often each endpoint is checked.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long a request whose connection was refused is retried.
pub const RETRY_FOR: Duration = Duration::from_secs(3);

/// Watches `endpoints` for `client` (only when there are several) for the
/// life of the process.
pub(crate) fn watch(client: Client, endpoints: &[String]) {
    if endpoints.len() < 2 {
        return;
    }
    let endpoints = endpoints.to_vec();
    tokio::spawn(async move {
        let mut out: BTreeSet<String> = BTreeSet::new();
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let mut up = Vec::new();
            for endpoint in &endpoints {
                up.push(accepts(endpoint).await);
            }
            let standing = up.iter().filter(|u| **u).count();
            for (endpoint, up) in endpoints.iter().zip(up) {
                let removed = out.contains(endpoint);
                if !up && !removed && standing > 0 {
                    if client.remove_endpoint(endpoint).await.is_ok() {
                        tracing::warn!(%endpoint, "etcd member refuses connections; sending to the others");
                        out.insert(endpoint.clone());
                    }
                } else if up && removed && client.add_endpoint(endpoint).await.is_ok() {
                    tracing::info!(%endpoint, "etcd member accepts connections again");
                    out.remove(endpoint);
                }
            }
        }
    });
}

/// Whether `endpoint` (a URL) accepts a TCP connection within a second.
async fn accepts(endpoint: &str) -> bool {
    let Some(authority) = endpoint
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
    else {
        return true;
    };
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(authority)
        )
        .await,
        Ok(Ok(_))
    )
}

/// Whether `error` happened before the request reached etcd: somewhere in
/// its chain of causes, a connection was refused.
pub(crate) fn unsent(error: &etcd_client::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Runs `request`, sending it again while it fails before reaching etcd,
/// for up to [`RETRY_FOR`].
pub(crate) async fn retrying<T, F, Fut>(mut request: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut wait = Duration::from_millis(50);
    loop {
        match request().await {
            Err(e) if unsent(&e) && tokio::time::Instant::now() + wait < deadline => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(500));
            }
            answer => return answer,
        }
    }
}
