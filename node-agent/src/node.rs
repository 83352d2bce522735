//! The node loop: register the node under a lease, keep it, receive the
//! node's pods from scheduler-svc and run or stop each; on losing the lease
//! kill every pod, then register again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use petset_core::serve::ServiceChannel;
use petset_core::shutdown::CancellationToken;
use petset_proto::v1;
use petset_proto::v1::leases_client::LeasesClient;
use tokio::sync::{mpsc, watch};

use crate::Config;
use crate::addresses::Addresses;
use crate::fence;
use crate::keepalive::{self, deadline_after};
use crate::pods::{self, Context, Stop};

/// A pod this agent runs.
pub(crate) struct Running {
    incarnation: u64,
    ip: Ipv4Addr,
    stop: watch::Sender<Option<Stop>>,
    task: tokio::task::JoinHandle<()>,
    /// Set by the task once the pod has stopped, just before it tells the
    /// node loop: the task itself may not have finished when the loop
    /// hears of it.
    done: Arc<AtomicBool>,
}

impl Running {
    /// Whether the pod has stopped for good.
    fn ended(&self) -> bool {
        self.done.load(Ordering::Acquire) || self.task.is_finished()
    }
}

pub(crate) struct NodeLoop {
    pub(crate) ctx: Arc<Context>,
    pub(crate) addresses: Addresses,
    /// The node's pods, by `<namespace>/<pod>`: one incarnation each.
    pub(crate) running: BTreeMap<String, Running>,
    /// Incarnations replaced by a newer one, still stopping: their
    /// addresses come back when they have stopped.
    pub(crate) stopping: Vec<Running>,
    /// Pods this node refused (`<namespace>/<pod>` → incarnation), each
    /// reported once.
    pub(crate) refused: BTreeMap<String, u64>,
    /// Pods waiting for the address of a pod that is stopping.
    pub(crate) waiting: BTreeMap<String, v1::Pod>,
    pub(crate) config: Config,
    pub(crate) agent_endpoint: String,
    pub(crate) node_address: String,
    /// The node's fence deadline (see [`fence`]).
    pub(crate) deadline: Arc<watch::Sender<u64>>,
    /// Pods the node registered it can run: the smaller of `--max-pods`
    /// and its free addresses.
    pub(crate) capacity: u32,
    /// Told by each pod task when it ends, so that its address comes back
    /// then, not at the next change of the node's pods.
    pub(crate) ended: mpsc::UnboundedSender<()>,
}

impl NodeLoop {
    async fn register(&self, shutdown: &CancellationToken) -> Option<(i64, i64)> {
        let capacity: std::collections::HashMap<String, String> =
            [("pods".to_string(), self.capacity.to_string())].into();
        loop {
            let request = v1::RegisterNodeRequest {
                name: self.config.name.clone(),
                address: self.node_address.clone(),
                capacity: capacity.clone(),
                labels: self.config.labels.iter().cloned().collect(),
                ttl_seconds: self.config.lease_ttl,
                agent_endpoint: self.agent_endpoint.clone(),
            };
            let sent = fence::boottime_ns();
            let registered = self
                .ctx
                .nodes
                .call(Duration::from_secs(5), |mut nodes| {
                    let request = request.clone();
                    async move { nodes.register_node(request).await }
                })
                .await;
            match registered {
                Ok(r) => {
                    let r = r.into_inner();
                    tracing::info!(node = %self.config.name, lease = r.lease_id, ttl = r.ttl_seconds, "node registered");
                    let ttl = Duration::from_secs(r.ttl_seconds.max(2) as u64);
                    self.deadline.send_replace(deadline_after(sent, ttl));
                    return Some((r.lease_id, r.ttl_seconds));
                }
                Err(status) => tracing::warn!(%status, "cannot register the node; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    pub(crate) async fn run(
        &mut self,
        shutdown: CancellationToken,
        mut leases: LeasesClient<ServiceChannel>,
        mut ended: mpsc::UnboundedReceiver<()>,
    ) {
        while let Some((lease, ttl)) = self.register(&shutdown).await {
            let lost = CancellationToken::new();
            let keep = tokio::spawn(renew_lease(
                self.ctx.clone(),
                self.deadline.clone(),
                self.config.name.clone(),
                lease,
                ttl,
                lost.clone(),
                shutdown.clone(),
            ));
            let mut stream = None;
            // The node's pods as the stream gave them, by `<ns>/<name>`.
            let mut known: BTreeMap<String, v1::Pod> = BTreeMap::new();
            loop {
                if stream.is_none() {
                    let request = v1::WatchNodePodsRequest {
                        node_name: self.config.name.clone(),
                    };
                    match self.ctx.nodes.preferred().watch_node_pods(request).await {
                        Ok(s) => stream = Some(s.into_inner()),
                        Err(status) => {
                            // The next try goes to another replica.
                            self.ctx.nodes.rotate();
                            tracing::warn!(%status, "cannot watch this node's pods; retrying")
                        }
                    }
                }
                let next = async {
                    match stream.as_mut() {
                        Some(s) => s.next().await,
                        None => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            None
                        }
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = lost.cancelled() => break,
                    Some(()) = ended.recv() => self.reap(),
                    event = next => match event {
                        Some(Ok(event)) => {
                            apply_node_pods(&mut known, event);
                            self.reconcile(known.values().cloned().collect());
                        }
                        // The replica went away: watch again (elsewhere
                        // if it does not answer); the pods run on.
                        _ => stream = None,
                    },
                }
            }
            keep.abort();
            if shutdown.is_cancelled() {
                self.stop_all(None).await;
                let _ = leases
                    .revoke_lease(v1::RevokeLeaseRequest { lease_id: lease })
                    .await;
                tracing::info!(node = %self.config.name, "node agent stopped; its lease revoked");
                return;
            }
            tracing::error!(node = %self.config.name, lease, "node lease lost: killing every pod so that no identity runs twice");
            metrics::counter!("petset_agent_fence_kills_total")
                .increment(self.running.len() as u64);
            self.stop_all(Some(Stop::Fence)).await;
        }
        self.stop_all(None).await;
    }

    /// Runs what `pods` (every pod bound to the node) asks for: starts new
    /// pods and incarnations, stops deleted ones and those not listed.
    fn reconcile(&mut self, pods: Vec<v1::Pod>) {
        self.reap();
        let mut seen = BTreeSet::new();
        for pod in pods {
            let meta = pod.metadata.clone().unwrap_or_default();
            let key = format!("{}/{}", meta.namespace, meta.name);
            seen.insert(key.clone());
            if pod.deletion_timestamp.is_some() {
                self.waiting.remove(&key);
                let grace = Duration::from_secs(pod.deletion_grace_period_seconds.max(0) as u64);
                match self.running.get(&key) {
                    Some(r) if r.stop.borrow().is_none() => {
                        let _ = r.stop.send(Some(Stop::Graceful(grace)));
                    }
                    Some(_) => {}
                    None => {
                        // Not running here (refused, or the agent
                        // restarted): just give the identity back.
                        let mut identities = self.ctx.identities.clone();
                        let release = v1::ReleaseIdentityRequest {
                            r#ref: Some(v1::IdentityRef {
                                namespace: meta.namespace.clone(),
                                set_name: pod.set_name.clone(),
                                ordinal: pod.ordinal,
                            }),
                            incarnation: pod.incarnation,
                        };
                        tokio::spawn(async move { identities.release_identity(release).await });
                    }
                }
                continue;
            }
            if self
                .running
                .get(&key)
                .is_some_and(|r| r.incarnation == pod.incarnation)
                || self.refused.get(&key) == Some(&pod.incarnation)
            {
                continue;
            }
            if let Some(old) = self.running.remove(&key) {
                let _ = old.stop.send(Some(Stop::Graceful(Duration::ZERO)));
                self.stopping.push(old);
            }
            self.start(key, pod);
        }
        self.refused.retain(|key, _| seen.contains(key));
        self.waiting.retain(|key, _| seen.contains(key));
        // Pods that vanished (deleted by force): stop them too.
        for (key, r) in &self.running {
            if !seen.contains(key) && r.stop.borrow().is_none() {
                let _ = r.stop.send(Some(Stop::Graceful(Duration::ZERO)));
            }
        }
    }

    /// Starts `pod` if the node can admit it; waits for an address while a
    /// pod is still stopping; otherwise refuses it.
    fn start(&mut self, key: String, pod: v1::Pod) {
        self.waiting.remove(&key);
        let ip = match self.admit() {
            Ok(ip) => ip,
            Err(_) if self.is_stopping() => {
                // Its address comes back when it has stopped.
                self.waiting.insert(key, pod);
                return;
            }
            Err(message) => {
                tracing::warn!(pod = %key, %message, "pod refused");
                metrics::counter!("petset_agent_pods_refused_total").increment(1);
                self.refused.insert(key, pod.incarnation);
                tokio::spawn(refuse(self.ctx.clone(), pod, message));
                return;
            }
        };
        let (stop, stopped) = watch::channel(None);
        let (ended, done) = (self.ended.clone(), Arc::new(AtomicBool::new(false)));
        let supervise = pods::supervise(self.ctx.clone(), pod.clone(), ip, stopped);
        let task = tokio::spawn({
            let done = done.clone();
            async move {
                supervise.await;
                done.store(true, Ordering::Release);
                let _ = ended.send(());
            }
        });
        self.running.insert(
            key,
            Running {
                incarnation: pod.incarnation,
                ip,
                stop,
                task,
                done,
            },
        );
    }

    /// Whether a pod of this node is stopping, so that its address comes
    /// back soon.
    fn is_stopping(&self) -> bool {
        !self.stopping.is_empty() || self.running.values().any(|r| r.stop.borrow().is_some())
    }

    /// An address for a new pod, or why the node cannot run it (the
    /// kubelet's admission: `Pod was rejected: ...`).
    fn admit(&mut self) -> Result<Ipv4Addr, String> {
        let used = self.running.len() as u32;
        if used >= self.capacity {
            return Err(format!(
                "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: {used}, capacity: {}",
                self.capacity
            ));
        }
        self.addresses.take().ok_or_else(|| {
            format!(
                "Pod was rejected: node {} has no free pod address in {} ({} pods still stopping)",
                self.config.name,
                self.config.pod_subnet,
                self.stopping.len()
            )
        })
    }

    /// Forgets the pods whose task ended, giving their addresses back.
    fn reap(&mut self) {
        let ended: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| r.ended())
            .map(|(k, _)| k.clone())
            .collect();
        for key in ended {
            if let Some(r) = self.running.remove(&key) {
                self.addresses.give_back(r.ip);
            }
        }
        let (ended, stopping): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stopping)
            .into_iter()
            .partition(Running::ended);
        self.stopping = stopping;
        for r in ended {
            self.addresses.give_back(r.ip);
        }
        let waiting = std::mem::take(&mut self.waiting);
        for (key, pod) in waiting {
            self.start(key, pod);
        }
    }

    /// Stops every pod (`how`: `None` for each pod's own grace) and waits.
    async fn stop_all(&mut self, how: Option<Stop>) {
        for r in self.running.values().chain(&self.stopping) {
            let _ = r
                .stop
                .send(Some(how.unwrap_or(Stop::Graceful(Duration::from_secs(30)))));
        }
        let running = std::mem::take(&mut self.running).into_values();
        for r in running.chain(std::mem::take(&mut self.stopping)) {
            let _ = r.task.await;
            self.addresses.give_back(r.ip);
        }
    }
}

/// Reports a pod the node refused as Failed, with the reason the kubelet
/// gives (`OutOfpods`), so that its set replaces it on another node; tried
/// again for a while when no replica takes the report.
async fn refuse(ctx: Arc<Context>, pod: v1::Pod, message: String) {
    let meta = pod.metadata.clone().unwrap_or_default();
    let request = v1::ReportPodStatusRequest {
        namespace: meta.namespace,
        name: meta.name,
        incarnation: pod.incarnation,
        status: Some(v1::PodStatus {
            phase: "Failed".into(),
            reason: "OutOfpods".into(),
            message,
            ..Default::default()
        }),
    };
    let mut retry = Duration::from_millis(500);
    for _ in 0..8 {
        let reported = ctx
            .nodes
            .call(Duration::from_secs(5), |mut nodes| {
                let request = request.clone();
                async move { nodes.report_pod_status(request).await }
            })
            .await;
        match reported {
            Ok(_) => return,
            // The pod is gone or is another incarnation now: nothing to say.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::NotFound | tonic::Code::FailedPrecondition
                ) =>
            {
                return;
            }
            Err(status) => {
                tracing::warn!(pod = %request.name, %status, "refusal report not taken; retrying")
            }
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(Duration::from_secs(5));
    }
}

/// Keeps the node's lease through whichever scheduler replica answers
/// (each gets a share of the third of the TTL a renewal may take, so that
/// all are tried before the lease is at risk); cancels `lost` when it is
/// given up.
async fn renew_lease(
    ctx: Arc<Context>,
    deadline: Arc<watch::Sender<u64>>,
    name: String,
    lease: i64,
    ttl: i64,
    lost: CancellationToken,
    shutdown: CancellationToken,
) {
    let ttl = Duration::from_secs(ttl.max(2) as u64);
    let attempt = (ttl / 3 / ctx.nodes.len() as u32).max(Duration::from_millis(200));
    let renew = || {
        let request = v1::KeepAliveNodeRequest {
            name: name.clone(),
            lease_id: lease,
        };
        let nodes = ctx.nodes.clone();
        async move {
            nodes
                .call(attempt, |mut nodes| {
                    let request = request.clone();
                    async move { nodes.keep_alive_node(request).await }
                })
                .await
                .map(|_| ())
        }
    };
    if keepalive::keep_alive(ttl, &deadline, renew, &shutdown)
        .await
        .is_some()
    {
        lost.cancel();
    }
}

/// Applies one `WatchNodePods` event to `known`: a snapshot replaces it,
/// a delta changes and removes pods in it.
fn apply_node_pods(known: &mut BTreeMap<String, v1::Pod>, event: v1::NodePodsEvent) {
    if event.snapshot {
        known.clear();
    }
    for gone in &event.removed {
        known.remove(&format!("{}/{}", gone.namespace, gone.name));
    }
    for pod in event.pods {
        let meta = pod.metadata.clone().unwrap_or_default();
        known.insert(format!("{}/{}", meta.namespace, meta.name), pod);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, incarnation: u64) -> v1::Pod {
        v1::Pod {
            metadata: Some(v1::ObjectMeta {
                namespace: "default".into(),
                name: name.into(),
                ..Default::default()
            }),
            incarnation,
            ..Default::default()
        }
    }

    #[test]
    fn snapshots_replace_and_deltas_change_and_remove() {
        let mut known = BTreeMap::new();
        known.insert("default/stale".to_string(), pod("stale", 1));
        let event = |pods, removed: &[&str], snapshot| v1::NodePodsEvent {
            pods,
            removed: removed
                .iter()
                .map(|n| v1::PodName {
                    namespace: "default".into(),
                    name: n.to_string(),
                })
                .collect(),
            snapshot,
        };
        apply_node_pods(
            &mut known,
            event(vec![pod("web-0", 1), pod("web-1", 1)], &[], true),
        );
        assert_eq!(
            known.keys().collect::<Vec<_>>(),
            ["default/web-0", "default/web-1"]
        );
        apply_node_pods(&mut known, event(vec![pod("web-1", 2)], &["web-0"], false));
        assert_eq!(known.keys().collect::<Vec<_>>(), ["default/web-1"]);
        assert_eq!(known["default/web-1"].incarnation, 2);
    }
}
