//! storage-svc gives each replica of a StatefulSet its own storage: it keeps
//! storage classes, volumes and claims, makes a set's claims from its
//! templates, binds them one-to-one, attaches them fenced by the pod's
//! identity, and reclaims volumes as their policy says.
//!
//! # Layout
//! - [`records`]: what is stored in etcd, and the key layout.
//! - [`classes`], [`volumes`], [`claims`]: the objects, validated and stored;
//!   `claims` also makes a replica's claims and binds them.
//! - [`binder`]: which volume a claim binds (pure).
//! - [`provisioner`]: the directories behind volumes.
//! - [`attach`]: fenced attach and detach.
//! - [`reclaim`]: `Retain`, `Delete` and `Recycle`.
//! - [`grpc`]: the tonic service over the modules above.
//! - [`config`]: settings ([`ServeError`] is the shared start-up failure).

pub mod attach;
pub mod binder;
pub mod claims;
pub mod classes;
pub mod config;
pub mod grpc;
pub mod provisioner;
pub mod reclaim;
pub mod records;
pub mod volumes;

use std::sync::Arc;
use std::time::Duration;

use petset_core::serve::ServiceHost;
use petset_core::shutdown::CancellationToken;
use petset_core::store::Store;
use petset_proto::v1::storage_server::StorageServer;
use tokio::net::TcpListener;

pub use config::Config;
pub use petset_core::serve::ServeError;

use crate::attach::Attacher;
use crate::claims::Claims;
use crate::classes::Classes;
use crate::grpc::StorageApi;
use crate::provisioner::Roots;
use crate::reclaim::Reclaimer;
use crate::records::Provisioner;
use crate::volumes::Volumes;

/// The running service.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Serves on `listener` until `shutdown` is cancelled.
    pub async fn run(
        config: &Config,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), ServeError> {
        if !config.data_root.is_absolute() {
            return Err(ServeError::Config {
                setting: "data-root",
                reason: format!(
                    "must be an absolute path, got {}",
                    config.data_root.display()
                ),
            });
        }
        if let Some(p) = config.host_path_prefix.iter().find(|p| !p.is_absolute()) {
            return Err(ServeError::Config {
                setting: "host-path-prefix",
                reason: format!("must be an absolute path, got {}", p.display()),
            });
        }
        let roots = Arc::new(Roots::new(
            config.data_root.clone(),
            config.host_path_prefix.clone(),
        ));
        let default_class = parse_default_class(&config.default_class)?;
        let store = Store::connect(&config.etcd.store_config())
            .await
            .map_err(ServeError::Store)?;
        let replica = format!(
            "storage-svc@{}/{}",
            listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            std::process::id()
        );
        let reclaimer = Reclaimer::new(store.clone(), roots.clone(), replica);
        let api = StorageApi {
            classes: Classes::new(store.clone()),
            volumes: Volumes::new(store.clone()),
            claims: Claims::new(store.clone(), roots.clone(), reclaimer.clone()),
            attacher: Attacher::new(store.clone(), roots.clone()),
            roots: roots.clone(),
        };
        if let Some((name, provisioner)) = default_class {
            let created = api
                .classes
                .ensure_default(&name, provisioner)
                .await
                .map_err(|e| ServeError::Config {
                    setting: "default-class",
                    reason: format!("cannot store the default class: {e}"),
                })?;
            if created.is_some() {
                match api.claims.adopt_default().await {
                    Ok(n) if n > 0 => {
                        tracing::info!(claims = n, "Pending claims took the default class")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot give Pending claims the default class")
                    }
                }
            }
        }
        tracing::info!(
            grpc = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            data_root = %roots.data_root.display(),
            root = store.root(),
            "storage-svc serving"
        );
        let sweeper = tokio::spawn(sweep(
            reclaimer,
            Duration::from_secs(config.reclaim_interval.max(1)),
            shutdown.clone(),
        ));
        let mut host = ServiceHost::new();
        host.add_service(StorageServer::new(api));
        let served = host
            .serve(listener, shutdown.clone())
            .await
            .map_err(ServeError::Grpc);
        shutdown.cancel();
        let _ = sweeper.await;
        tracing::info!("storage-svc stopped");
        served
    }
}

/// `NAME=PROVISIONER` or `none`, from `--default-class`.
fn parse_default_class(text: &str) -> Result<Option<(String, Provisioner)>, ServeError> {
    if text == "none" {
        return Ok(None);
    }
    let error = |reason: String| ServeError::Config {
        setting: "default-class",
        reason,
    };
    let (name, provisioner) = text
        .split_once('=')
        .ok_or_else(|| error(format!("must be NAME=PROVISIONER or none, got {text:?}")))?;
    petset_core::validate::dns1123_subdomain(name)
        .map_err(|e| error(format!("class name {name:?}: {e}")))?;
    let provisioner = Provisioner::from_name(provisioner)
        .filter(|p| *p != Provisioner::NoProvisioner)
        .ok_or_else(|| {
            error(format!(
                "provisioner must be petset.io/shared or petset.io/node-local, got {provisioner:?}"
            ))
        })?;
    Ok(Some((name.to_owned(), provisioner)))
}

/// Finishes reclaims left undone, at start and then every `period`.
async fn sweep(reclaimer: Reclaimer, period: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                match reclaimer.sweep().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(volumes = n, "sweep reclaimed volumes"),
                    Err(e) => tracing::warn!(error = %e, "reclaim sweep failed"),
                }
            }
        }
    }
}
