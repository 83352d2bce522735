//! scheduler-svc holds the StatefulSet API and runs its controller: sets
//! are reconciled by the leading replica, one pod at a time, each pod with
//! its identity (identity-svc) and its claims (storage-svc), placed on a
//! Ready node. Node agents register here and receive their pods.
//!
//! # Layout
//! - [`records`]: what is stored in etcd, and the key layout.
//! - [`sets`]: StatefulSets, validated, defaulted and stored.
//! - [`revisions`]: template revisions (ControllerRevisions): naming,
//!   the current revision, history pruning (pure).
//! - [`planner`]: the controller's decision (pure).
//! - [`placement`]: choosing a node (pure).
//! - [`rules`]: what a set's pods are: `pod_for`, the planner's views,
//!   orphan identities, kept claims (pure).
//! - [`world`]: everything the controller decides on, at one revision: the
//!   leader's cache, fed by one watch.
//! - [`controller`]: carries the plan out (a dispatcher over one set's pass).
//! - [`leader`]: leader election and the term every controller write checks.
//! - [`nodes`], [`pods`]: nodes and pods as agents and people see them;
//!   [`node_pods`]: each node's pods, for the agents' streams.
//! - [`grpc`]: the tonic services.
//! - [`proxy`]: the HTTP pod and service proxy.
//! - [`config`]: settings ([`ServeError`] is the shared start-up failure).

pub mod config;
pub mod controller;
pub mod grpc;
pub mod leader;
pub mod node_pods;
pub mod nodes;
pub mod placement;
pub mod planner;
pub mod pods;
pub mod proxy;
pub mod records;
pub mod revisions;
pub mod rules;
pub mod sets;
pub mod world;

use petset_core::serve::{ServiceHost, lazy_channel};
use petset_core::shutdown::CancellationToken;
use petset_core::store::Store;
use petset_proto::v1::nodes_server::NodesServer;
use petset_proto::v1::pods_server::PodsServer;
use petset_proto::v1::stateful_sets_server::StatefulSetsServer;
use tokio::net::TcpListener;

pub use config::Config;
pub use petset_core::serve::ServeError;

use crate::controller::Controller;
use crate::grpc::{NodesApi, PodsApi, StatefulSetsApi};
use crate::nodes::Nodes;
use crate::pods::Pods;
use crate::sets::Sets;

/// The running service.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Serves on `listener` (and campaigns to lead) until `shutdown`.
    pub async fn run(
        config: &Config,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        if !(2..=60).contains(&config.leader_ttl) {
            return Err(ServeError::Config {
                setting: "leader-ttl",
                reason: format!(
                    "must be between 2 and 60 seconds, got {}",
                    config.leader_ttl
                ),
            });
        }
        let identity = lazy_channel("identity-addr", &config.identity_addr)?;
        let storage = lazy_channel("storage-addr", &config.storage_addr)?;
        let store = Store::connect(&config.etcd.store_config())
            .await
            .map_err(ServeError::Store)?;
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let id = config
            .id
            .clone()
            .unwrap_or_else(|| format!("scheduler@{address}/{}", std::process::id()));
        let pods = Pods::new(store.clone(), identity.clone());
        let http = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| ServeError::Bind {
                what: "HTTP API",
                addr: config.http_addr,
                source,
            })?;
        let http_addr = http.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let proxy = proxy::Proxy::new(
            pods.clone(),
            identity.clone(),
            std::time::Duration::from_secs(config.proxy_timeout.max(1)),
        );
        let http_server = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let served = axum::serve(http, proxy.router())
                    .with_graceful_shutdown(async move { shutdown.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "HTTP API failed");
                }
            }
        });
        let controller = Controller::new(
            store.clone(),
            identity,
            storage,
            std::time::Duration::from_millis(config.fence_margin_ms),
        );
        let elector = tokio::spawn(leader::run(
            store.clone(),
            id.clone(),
            config.leader_ttl,
            shutdown.clone(),
            move |term, token| {
                let controller = controller.clone();
                async move { controller.run(term, token).await }
            },
        ));
        tracing::info!(grpc = %address, http = %http_addr, id = %id, root = store.root(), "scheduler-svc serving");
        let mut host = ServiceHost::new();
        host.add_service(StatefulSetsServer::new(StatefulSetsApi {
            sets: Sets::new(store.clone()),
            store: store.clone(),
            shutdown: shutdown.clone(),
        }))
        .add_service(PodsServer::new(PodsApi {
            pods: pods.clone(),
            store: store.clone(),
        }))
        .add_service(petset_proto::v1::cluster_server::ClusterServer::new(
            grpc::ClusterApi {
                identity_addr: config
                    .advertise_identity_addr
                    .clone()
                    .unwrap_or_else(|| config.identity_addr.clone()),
                storage_addr: config
                    .advertise_storage_addr
                    .clone()
                    .unwrap_or_else(|| config.storage_addr.clone()),
                replica: id.clone(),
                store: store.clone(),
                api_http_addr: config
                    .advertise_http_addr
                    .clone()
                    .unwrap_or_else(|| http_addr.clone()),
            },
        ))
        .add_service(NodesServer::new(NodesApi {
            nodes: Nodes::new(store.clone()),
            pods,
            node_pods: node_pods::NodePods::spawn(&store),
            shutdown: shutdown.clone(),
        }));
        let served = host
            .serve(listener, shutdown.clone())
            .await
            .map_err(ServeError::Grpc);
        shutdown.cancel();
        let _ = elector.await;
        let _ = http_server.await;
        tracing::info!("scheduler-svc stopped");
        served
    }
}
