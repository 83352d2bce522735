//! storage-svc's settings: flags, each with an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use petset_core::config::{EtcdArgs, TelemetryArgs};

/// storage-svc: storage classes, volumes and claims per ordinal.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "storage-svc", version, about)]
pub struct Config {
    /// Address of the gRPC API (and `GET /metrics`).
    #[arg(
        long,
        env = "PETSET_STORAGE_GRPC_ADDR",
        default_value = "127.0.0.1:50053"
    )]
    pub grpc_addr: SocketAddr,
    /// Root of provisioned volumes: `nodes/<node>/<volume>` (node-local) and
    /// `shared/<volume>` under it. Every node must see it at the same path.
    #[arg(
        long,
        env = "PETSET_STORAGE_DATA_ROOT",
        default_value = "/var/lib/petset/storage"
    )]
    pub data_root: PathBuf,
    /// Static `hostPath`/`local` volumes must live under one of these
    /// (repeat the flag, or separate with ',' in the variable). Default:
    /// `<data root>/static`.
    #[arg(long, env = "PETSET_STORAGE_HOST_PATH_PREFIX", value_delimiter = ',')]
    pub host_path_prefix: Vec<PathBuf>,
    /// Seconds between sweeps that finish reclaims a replica left undone.
    #[arg(long, env = "PETSET_STORAGE_RECLAIM_INTERVAL", default_value_t = 10)]
    pub reclaim_interval: u64,
    /// The default storage class this service makes at start when there is
    /// no default class yet: `NAME=PROVISIONER` (`petset.io/shared` binds at
    /// once, `petset.io/node-local` waits for the pod's node), or `none`.
    /// A class of that name, or any default class, already stored is left
    /// as it is.
    #[arg(
        long,
        env = "PETSET_STORAGE_DEFAULT_CLASS",
        default_value = "standard=petset.io/shared"
    )]
    pub default_class: String,
    /// etcd settings.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}
