//! node-agent is petset's kubelet: it registers its node under an etcd lease
//! (through scheduler-svc), runs the pods bound to the node as real
//! processes or Docker containers, and stops them itself when it loses the
//! lease, so that an identity never runs twice.
//!
//! # Layout
//! - this file: start-up ([`Agent::run`]).
//! - `node`: the node loop: register, receive the node's pods, run or stop
//!   each, kill every pod when the lease is lost.
//! - [`keepalive`]: renewing the lease and the fence deadline it buys.
//! - [`schedulers`]: every scheduler replica; calls go to whichever answers.
//! - [`addresses`]: the node's pod addresses.
//! - [`network`]: the node's bridge and each pod's network namespace
//!   (`--pod-network bridge`).
//! - [`pods`]: one pod's life: attach, run, probe, restart, report, stop.
//! - [`runtime`]: a container as a process (namespaces, mounts, signals) or,
//!   in [`runtime::docker`], a Docker container (`--runtime docker`); exec
//!   in a container.
//! - [`fence`] and the `petset-shim` binary: the per-container deadline.
//! - [`probes`]: readiness and liveness probes.
//! - `grpc`: `petset.v1.NodeAgent` (pod logs).
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

pub mod addresses;
pub mod config;
pub mod dns;
pub mod env;
pub mod fence;
mod grpc;
pub mod keepalive;
pub mod limits;
pub mod network;
mod node;
pub mod pods;
pub mod probes;
pub mod runtime;
pub mod schedulers;
pub mod terminal;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use petset_core::error::Violations;
use petset_core::serve::{ServiceHost, lazy_channel};
use petset_core::shutdown::CancellationToken;
use petset_core::validate;
use petset_proto::v1::identities_client::IdentitiesClient;
use petset_proto::v1::leases_client::LeasesClient;
use petset_proto::v1::node_agent_server::NodeAgentServer;
use petset_proto::v1::storage_client::StorageClient;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Config, Isolation, PodNetwork, RuntimeKind};
pub use petset_core::serve::ServeError;

use crate::addresses::Addresses;
use crate::grpc::LogsApi;
use crate::node::NodeLoop;
use crate::pods::Context;

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
        let (runtime, node_address) = runtime::from_config(config, deadlines).await?;
        let identity = lazy_channel("identity-addr", &config.identity_addr)?;
        let node_address = node_address.unwrap_or_else(|| "127.0.0.1".into());
        let mut addresses = Addresses::new(config.pod_subnet);
        let namespaces = matches!(
            runtime,
            runtime::Runtime::Process {
                namespaces: true,
                ..
            }
        );
        let bridge = match config.pod_network {
            PodNetwork::Host => None,
            PodNetwork::Bridge => Some(set_up_bridge(config, namespaces, &mut addresses).await?),
        };
        let dns_relay = match &config.pod_dns {
            Some(upstream) if namespaces => {
                // The bridge's address, or the subnet's last kept for it.
                match bridge
                    .as_ref()
                    .map(|b| b.gateway)
                    .or_else(|| addresses.take_last())
                {
                    Some(ip) => Some(start_dns_relay(upstream, ip).await?),
                    None => None,
                }
            }
            _ => None,
        };
        let ctx = Arc::new(Context {
            node: config.name.clone(),
            images: config.image_map(),
            data_dir: config.data_dir.clone(),
            backoff: Duration::from_secs(config.restart_backoff.max(1)),
            runtime,
            nodes: schedulers::Schedulers::new(&config.scheduler_addr)?,
            identities: IdentitiesClient::new(identity.clone()),
            storage: StorageClient::new(lazy_channel("storage-addr", &config.storage_addr)?),
            node_address: node_address.clone(),
            allocatable: env::NodeAllocatable::of_this_machine(),
            execs: Default::default(),
            dns_relay,
            zone: config.cluster_domain.clone(),
            bridge,
        });
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
        let (ended_tx, ended) = tokio::sync::mpsc::unbounded_channel();
        let mut node = NodeLoop {
            ctx,
            capacity: config.max_pods.min(addresses.free() as u32),
            addresses,
            running: BTreeMap::new(),
            stopping: Vec::new(),
            refused: BTreeMap::new(),
            waiting: BTreeMap::new(),
            config: config.clone(),
            agent_endpoint,
            node_address,
            deadline: Arc::new(deadline),
            ended: ended_tx,
        };
        let ctx = node.ctx.clone();
        node.run(shutdown.clone(), LeasesClient::new(identity), ended)
            .await;
        // The pods are stopped: their cgroups go too.
        if let runtime::Runtime::Process {
            cgroups: Some(cgroups),
            ..
        } = &ctx.runtime
        {
            let marker = format!("_{}_", config.name);
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while cgroups.sweep(&marker) > 0 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if let Some(bridge) = &ctx.bridge {
            bridge.tear_down().await;
        }
        server
            .await
            .map_err(|e| ServeError::Config {
                setting: "grpc",
                reason: e.to_string(),
            })?
            .map_err(ServeError::Grpc)
    }
}

/// `--pod-network bridge`: the node's bridge, on the subnet's last address
/// (kept from the pods).
async fn set_up_bridge(
    config: &Config,
    namespaces: bool,
    addresses: &mut Addresses,
) -> Result<network::Bridge, ServeError> {
    let bad = |reason: String| ServeError::Config {
        setting: "pod-network",
        reason,
    };
    // Namespaces are only ever made by the process runtime.
    if !namespaces {
        return Err(bad(
            "bridge needs the process runtime with namespaces (root); use --pod-network host"
                .into(),
        ));
    }
    let gateway = addresses.take_last().ok_or_else(|| {
        bad(format!(
            "pod subnet {} has no address for the bridge",
            config.pod_subnet
        ))
    })?;
    let bridge = network::Bridge::set_up(config.pod_subnet, gateway)
        .await
        .map_err(bad)?;
    tracing::info!(bridge = %bridge.name, %gateway, subnet = %bridge.subnet, "each pod runs in a network namespace of its own on the node's bridge");
    Ok(bridge)
}

/// Process runtime: relays the pods' DNS from `ip` (an address of the pod
/// subnet kept from the pods), port 53, to `upstream` (identity-svc's DNS,
/// `host:port`, port 53 when none is given); answers `ip`.
async fn start_dns_relay(
    upstream: &str,
    ip: std::net::Ipv4Addr,
) -> Result<std::net::IpAddr, ServeError> {
    let bad = |reason: String| ServeError::Config {
        setting: "pod-dns",
        reason,
    };
    let with_port = if upstream
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        upstream.to_string()
    } else {
        format!("{upstream}:53")
    };
    let upstream = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| bad(format!("{with_port:?}: {e}")))?
        .next()
        .ok_or_else(|| bad(format!("{with_port:?} resolves to no address")))?;
    let listen = std::net::SocketAddr::new(ip.into(), 53);
    // Bound before the first pod can ask.
    let relay = dns::Relay::bind(listen)
        .await
        .map_err(|e| bad(format!("cannot relay the pods' DNS from {listen}: {e}")))?;
    tokio::spawn(relay.serve(upstream));
    Ok(ip.into())
}
