//! scheduler-svc's settings: flags, each with an environment variable.

use std::net::SocketAddr;

use petset_core::config::{EtcdArgs, TelemetryArgs};

/// scheduler-svc: the StatefulSet API and controller.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "scheduler-svc", version, about)]
pub struct Config {
    /// Address of the gRPC API (and `GET /metrics`): what petctl talks to.
    #[arg(
        long,
        env = "PETSET_SCHEDULER_GRPC_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_addr: SocketAddr,
    /// Address of the HTTP API: the pod and service proxy
    /// (`/api/v1/namespaces/<ns>/pods/<pod>/proxy/...`).
    #[arg(
        long,
        env = "PETSET_SCHEDULER_HTTP_ADDR",
        default_value = "127.0.0.1:50080"
    )]
    pub http_addr: SocketAddr,
    /// Seconds a proxied request may take before the proxy answers 504.
    #[arg(long, env = "PETSET_PROXY_TIMEOUT", default_value_t = 30)]
    pub proxy_timeout: u64,
    /// identity-svc's gRPC address.
    #[arg(
        long,
        env = "PETSET_IDENTITY_ADDR",
        default_value = "http://127.0.0.1:50052"
    )]
    pub identity_addr: String,
    /// storage-svc's gRPC address.
    #[arg(
        long,
        env = "PETSET_STORAGE_ADDR",
        default_value = "http://127.0.0.1:50053"
    )]
    pub storage_addr: String,
    /// The addresses clients (petctl) are told to use for identity-svc,
    /// storage-svc and this replica's HTTP API, when they differ from the
    /// ones this replica uses (e.g. ports published on a host); default:
    /// the same.
    #[arg(long, env = "PETSET_ADVERTISE_IDENTITY_ADDR")]
    pub advertise_identity_addr: Option<String>,
    /// See `advertise_identity_addr`.
    #[arg(long, env = "PETSET_ADVERTISE_STORAGE_ADDR")]
    pub advertise_storage_addr: Option<String>,
    /// See `advertise_identity_addr` (host:port).
    #[arg(long, env = "PETSET_ADVERTISE_HTTP_ADDR")]
    pub advertise_http_addr: Option<String>,
    /// TTL of the leader's lease, in seconds: how long the others wait
    /// before taking over from a leader that died. 2 is etcd's least (its
    /// minimum lease TTL is 1.5 election timeouts, rounded up); the lease is
    /// renewed every third of it.
    #[arg(long, env = "PETSET_LEADER_TTL", default_value_t = 2)]
    pub leader_ttl: i64,
    /// Milliseconds to wait, after a pod's identity was seen freed by its
    /// node's lease expiry, before replacing the pod: covers clocks that
    /// run at other rates than etcd's (the node's shims kill at two thirds
    /// of the lease; see ARCHITECTURE, "The fence").
    #[arg(long, env = "PETSET_FENCE_MARGIN_MS", default_value_t = 500)]
    pub fence_margin_ms: u64,
    /// This replica's name in leader election (default: host and port).
    #[arg(long, env = "PETSET_SCHEDULER_ID")]
    pub id: Option<String>,
    /// etcd settings.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}
