//! node-agent is petset's kubelet: it registers its node under an etcd lease
//! (through scheduler-svc), runs the pods bound to the node as real
//! processes or Docker containers, and stops them itself when it loses the
//! lease, so that an identity never runs twice.
//!
//! # Layout
//! - [`pods`]: one pod's life: attach, run, probe, restart, report, stop.
//! - [`runtime`]: a container as a process (namespaces, mounts, signals).
//! - [`docker`]: a container as a Docker container (`--runtime docker`).
//! - [`probes`]: readiness and liveness probes.
//! - [`config`]: the agent's settings (flags and environment).
//!
//! # Guarantees
//! - The lease is renewed every third of its TTL. When no renewal has
//!   succeeded for two thirds of it (or etcd says it expired), every pod is
//!   killed at once, before the lease can expire and the scheduler place
//!   them elsewhere; then the node registers again.
//! - A pod's processes end with the agent: a parent-death signal (process
//!   runtime), or the agent container's PID namespace, which the pods join
//!   (Docker runtime, when the agent runs in a container).

pub mod config;
pub mod docker;
pub mod fence;
pub mod pods;
pub mod probes;
pub mod runtime;
pub mod schedulers;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use petset_core::error::Violations;
use petset_core::serve::{ServiceHost, lazy_channel};
use petset_core::shutdown::CancellationToken;
use petset_core::validate;
use petset_proto::v1;
use petset_proto::v1::identities_client::IdentitiesClient;
use petset_proto::v1::leases_client::LeasesClient;
use petset_proto::v1::node_agent_server::{NodeAgent, NodeAgentServer};
use petset_proto::v1::storage_client::StorageClient;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

pub use config::{Config, Isolation, RuntimeKind};

use crate::pods::{Context, Stop};

pub use petset_core::serve::ServeError;

/// The addresses pods get, one each.
#[derive(Debug)]
struct Addresses {
    free: BTreeSet<Ipv4Addr>,
}

impl Addresses {
    fn take(&mut self) -> Option<Ipv4Addr> {
        let first = *self.free.iter().next()?;
        self.free.remove(&first);
        Some(first)
    }
}

struct Running {
    incarnation: u64,
    ip: Ipv4Addr,
    stop: watch::Sender<Option<Stop>>,
    task: tokio::task::JoinHandle<()>,
}

/// The running agent.
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// Runs until `shutdown`: serves pod logs on `listener`, registers the
    /// node and runs its pods.
    pub async fn run(
        config: &Config,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        let mut v = Violations::new();
        v.check("name", validate::dns1123_subdomain(&config.name));
        if let Err(e) = v.into_result() {
            return Err(ServeError::Config {
                setting: "name",
                reason: e.to_string(),
            });
        }
        // The node's deadline: moved after each confirmed lease renewal,
        // read by every container's shim (see `fence`).
        let (deadline, deadlines) = watch::channel(0u64);
        let (runtime, node_address) = make_runtime(config, deadlines).await?;
        let identity = lazy_channel("identity-addr", &config.identity_addr)?;
        let ctx = Arc::new(Context {
            node: config.name.clone(),
            images: config.image_map(),
            data_dir: config.data_dir.clone(),
            backoff: Duration::from_secs(config.restart_backoff.max(1)),
            runtime,
            nodes: schedulers::Schedulers::new(&config.scheduler_addr)?,
            identities: IdentitiesClient::new(identity.clone()),
            storage: StorageClient::new(lazy_channel("storage-addr", &config.storage_addr)?),
        });
        let node_address = node_address.unwrap_or_else(|| "127.0.0.1".into());
        // Where petctl finds this agent's logs: the bound address, or the
        // node's address when bound to every address (0.0.0.0 reaches
        // nothing from elsewhere).
        let agent_endpoint = match listener.local_addr() {
            Ok(a) if a.ip().is_unspecified() => match node_address.parse::<std::net::IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, a.port()).to_string(),
                Err(_) => a.to_string(),
            },
            Ok(a) => a.to_string(),
            Err(_) => String::new(),
        };
        let mut host = ServiceHost::new();
        host.add_service(NodeAgentServer::new(LogsApi { ctx: ctx.clone() }));
        let server = tokio::spawn(host.serve(listener, shutdown.clone()));
        let addresses = Addresses {
            free: config.pod_subnet.hosts().collect(),
        };
        let mut node = NodeLoop {
            ctx,
            addresses,
            running: BTreeMap::new(),
            config: config.clone(),
            agent_endpoint,
            node_address,
            deadline: Arc::new(deadline),
        };
        node.run(shutdown.clone(), LeasesClient::new(identity))
            .await;
        server
            .await
            .map_err(|e| ServeError::Config {
                setting: "grpc",
                reason: e.to_string(),
            })?
            .map_err(ServeError::Grpc)
    }
}

/// The runtime the settings ask for, and the node's address (from the
/// settings, else the agent container's with the Docker runtime).
async fn make_runtime(
    config: &Config,
    deadlines: watch::Receiver<u64>,
) -> Result<(runtime::Runtime, Option<String>), ServeError> {
    let mut node_address = config.node_address.clone();
    let runtime = match config.runtime {
        RuntimeKind::Process => {
            let namespaces = match config.isolation {
                Isolation::Namespaces if !runtime::is_root() => {
                    return Err(ServeError::Config {
                        setting: "isolation",
                        reason: "namespaces need root; run as root or use --isolation none".into(),
                    });
                }
                Isolation::Namespaces => true,
                Isolation::None => false,
                Isolation::Auto => runtime::is_root(),
            };
            if !namespaces {
                tracing::warn!(
                    "running pods without namespaces: hostnames are only in HOSTNAME, and pods with volumes are refused"
                );
            }
            let fence = match fence::shim_program() {
                Some(shim) => {
                    tracing::info!(shim = %shim.display(), "each container runs under petset-shim, which kills it at the node's lease deadline");
                    Some(runtime::Fence {
                        shim,
                        deadline: deadlines,
                    })
                }
                None => {
                    tracing::warn!(
                        "no petset-shim beside the agent or on PATH: containers are fenced by the agent alone, \
                         so a hung agent would keep them running past its lease"
                    );
                    None
                }
            };
            runtime::Runtime::Process { namespaces, fence }
        }
        RuntimeKind::Docker => {
            let settings = docker::DockerSettings {
                network: config.docker_network.clone(),
                sandbox: config.docker_sandbox.clone(),
                pod_dns: config.pod_dns.clone(),
                cluster_domain: config.cluster_domain.clone(),
            };
            let docker = docker::DockerRuntime::connect(&config.name, &settings)
                .await
                .map_err(|reason| ServeError::Config {
                    setting: "runtime",
                    reason,
                })?;
            match docker.remove_leftovers().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "removed containers an earlier run left"),
                Err(e) => tracing::warn!(error = %e, "cannot list earlier containers"),
            }
            tracing::info!(network = %docker.network, sandbox = ?docker.sandbox, "pods run as Docker containers");
            if docker.sandbox.is_none() {
                tracing::warn!(
                    "no sandbox container: pods will outlive this agent if it dies; its node lease still \
                     fences their identities and volumes, but run the agent in a container to have them die with it"
                );
            }
            if node_address.is_none() {
                node_address = docker.sandbox_address.clone();
            }
            runtime::Runtime::Docker(Box::new(docker))
        }
    };
    Ok((runtime, node_address))
}

struct NodeLoop {
    ctx: Arc<Context>,
    addresses: Addresses,
    running: BTreeMap<String, Running>,
    config: Config,
    agent_endpoint: String,
    node_address: String,
    /// The node's fence deadline (see [`fence`]).
    deadline: Arc<watch::Sender<u64>>,
}

/// The deadline a lease renewal sent at `sent` (`CLOCK_BOOTTIME` ns) buys:
/// two thirds of the TTL, the same point at which the agent itself gives
/// up; the last third is the margin for clock rates and the kill itself.
fn deadline_after(sent: u64, ttl: Duration) -> u64 {
    sent + (ttl * 2 / 3).as_nanos() as u64
}

impl NodeLoop {
    async fn register(&self, shutdown: &CancellationToken) -> Option<(i64, i64)> {
        let capacity: std::collections::HashMap<String, String> = [(
            "pods".to_string(),
            self.addresses.free.len().min(110).to_string(),
        )]
        .into();
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

    async fn run(&mut self, shutdown: CancellationToken, mut leases: LeasesClient<Channel>) {
        while let Some((lease, ttl)) = self.register(&shutdown).await {
            let lost = CancellationToken::new();
            let keep = tokio::spawn(keep_alive(
                self.ctx.clone(),
                self.deadline.clone(),
                self.config.name.clone(),
                lease,
                ttl,
                lost.clone(),
                shutdown.clone(),
            ));
            let mut stream = None;
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
                    event = next => match event {
                        Some(Ok(event)) => self.reconcile(event.pods),
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
            self.stop_all(Some(Stop::Fence)).await;
        }
        self.stop_all(None).await;
    }

    fn reconcile(&mut self, pods: Vec<v1::Pod>) {
        self.running.retain(|_, r| !r.task.is_finished());
        let mut seen = BTreeSet::new();
        for pod in pods {
            let meta = pod.metadata.clone().unwrap_or_default();
            let key = format!("{}/{}", meta.namespace, meta.name);
            seen.insert(key.clone());
            if pod.deletion_timestamp.is_some() {
                let grace = Duration::from_secs(pod.deletion_grace_period_seconds.max(0) as u64);
                match self.running.get(&key) {
                    Some(r) if r.stop.borrow().is_none() => {
                        let _ = r.stop.send(Some(Stop::Graceful(grace)));
                    }
                    Some(_) => {}
                    None => {
                        // Not running here (the agent restarted): just give
                        // the identity back.
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
            {
                continue;
            }
            if let Some(old) = self.running.remove(&key) {
                let _ = old.stop.send(Some(Stop::Graceful(Duration::ZERO)));
                self.addresses.free.insert(old.ip);
            }
            let Some(ip) = self.addresses.take() else {
                tracing::error!(pod = %key, "no pod address left in the pod subnet");
                continue;
            };
            let (stop, stopped) = watch::channel(None);
            let task = tokio::spawn(pods::supervise(self.ctx.clone(), pod.clone(), ip, stopped));
            self.running.insert(
                key,
                Running {
                    incarnation: pod.incarnation,
                    ip,
                    stop,
                    task,
                },
            );
        }
        // Pods that vanished (deleted by force): stop them too.
        for (key, r) in &self.running {
            if !seen.contains(key) && r.stop.borrow().is_none() {
                let _ = r.stop.send(Some(Stop::Graceful(Duration::ZERO)));
            }
        }
        let finished: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| r.task.is_finished())
            .map(|(k, _)| k.clone())
            .collect();
        for key in finished {
            if let Some(r) = self.running.remove(&key) {
                self.addresses.free.insert(r.ip);
            }
        }
    }

    /// Stops every pod (`how`: `None` for each pod's own grace) and waits.
    async fn stop_all(&mut self, how: Option<Stop>) {
        for r in self.running.values() {
            let _ = r
                .stop
                .send(Some(how.unwrap_or(Stop::Graceful(Duration::from_secs(30)))));
        }
        for (_, r) in std::mem::take(&mut self.running) {
            let _ = r.task.await;
            self.addresses.free.insert(r.ip);
        }
    }
}

/// Renews the node's lease every third of its TTL, through whichever
/// scheduler replica answers; cancels `lost` when it is gone or has not
/// been renewed for two thirds of the TTL.
///
/// A renewal counts from when it was sent, not when its answer came: etcd
/// restarts the lease's TTL at some moment between the two, so the lease
/// lives at least TTL past the send.
async fn keep_alive(
    ctx: Arc<Context>,
    deadline: Arc<watch::Sender<u64>>,
    name: String,
    lease: i64,
    ttl: i64,
    lost: CancellationToken,
    shutdown: CancellationToken,
) {
    let ttl = Duration::from_secs(ttl.max(2) as u64);
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        let request = v1::KeepAliveNodeRequest {
            name: name.clone(),
            lease_id: lease,
        };
        let sent = Instant::now();
        let sent_boottime = fence::boottime_ns();
        // Each replica gets a share of the third of the TTL a renewal may
        // take, so that all of them are tried before the lease is at risk.
        let attempt = (ttl / 3 / ctx.nodes.len() as u32).max(Duration::from_millis(200));
        let renewed = ctx
            .nodes
            .call(attempt, |mut nodes| {
                let request = request.clone();
                async move { nodes.keep_alive_node(request).await }
            })
            .await;
        match renewed {
            Ok(_) => {
                last_ok = sent;
                deadline.send_replace(deadline_after(sent_boottime, ttl));
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                tracing::error!(%status, "node lease expired");
                lost.cancel();
                return;
            }
            Err(status) => {
                tracing::warn!(%status, "lease renewal failed on every scheduler replica")
            }
        }
        if last_ok.elapsed() >= ttl * 2 / 3 {
            tracing::error!(since = ?last_ok.elapsed(), "lease not renewed for two thirds of its TTL");
            lost.cancel();
            return;
        }
    }
}

/// `petset.v1.NodeAgent`: pod logs from this node.
#[derive(Debug, Clone)]
struct LogsApi {
    ctx: Arc<Context>,
}

#[tonic::async_trait]
impl NodeAgent for LogsApi {
    async fn pod_logs(
        &self,
        request: Request<v1::PodLogsRequest>,
    ) -> Result<Response<v1::PodLogsResponse>, Status> {
        let r = request.into_inner();
        let namespace = validate::namespace_or_default(&r.namespace);
        let mut v = Violations::new();
        v.check("namespace", validate::dns1123_label(&namespace));
        v.check("name", validate::dns1123_label(&r.name));
        if !r.container.is_empty() {
            v.check("container", validate::dns1123_label(&r.container));
        }
        if r.tail_lines < 0 {
            v.add("tail_lines", "must be 0 or more");
        }
        v.into_result()?;
        let dir = self.ctx.pod_dir(&namespace, &r.name);
        let container = if r.container.is_empty() {
            let mut logs: Vec<String> = std::fs::read_dir(&dir)
                .map_err(|_| {
                    Status::not_found(format!(
                        "pod {namespace}/{} has no logs on node {}",
                        r.name, self.ctx.node
                    ))
                })?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|n| {
                    n.strip_suffix(".log")
                        .filter(|c| !c.ends_with(".previous"))
                        .map(str::to_string)
                })
                .collect();
            logs.sort();
            logs.into_iter().next().ok_or_else(|| {
                Status::not_found(format!("pod {namespace}/{} has no logs yet", r.name))
            })?
        } else {
            r.container.clone()
        };
        let file = dir.join(if r.previous {
            format!("{container}.previous.log")
        } else {
            format!("{container}.log")
        });
        let text = std::fs::read_to_string(&file).map_err(|_| {
            Status::not_found(format!(
                "no {}logs for container {container} of pod {namespace}/{}",
                if r.previous { "previous " } else { "" },
                r.name
            ))
        })?;
        let text = if r.tail_lines > 0 {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(r.tail_lines as usize);
            lines[from..].iter().map(|l| format!("{l}\n")).collect()
        } else {
            text
        };
        Ok(Response::new(v1::PodLogsResponse { container, text }))
    }
}
