//! identity-svc's settings: flags, each with an environment variable.

use std::net::SocketAddr;

use petset_core::config::{EtcdArgs, TelemetryArgs};

/// identity-svc: stable pod identities, headless services and their DNS.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "identity-svc", version, about)]
pub struct Config {
    /// Address of the gRPC API (and `GET /metrics`).
    #[arg(
        long,
        env = "PETSET_IDENTITY_GRPC_ADDR",
        default_value = "127.0.0.1:50052"
    )]
    pub grpc_addr: SocketAddr,
    /// Address DNS answers on, over UDP and TCP.
    #[arg(
        long,
        env = "PETSET_IDENTITY_DNS_ADDR",
        default_value = "127.0.0.1:5353"
    )]
    pub dns_addr: SocketAddr,
    /// The cluster's DNS zone.
    #[arg(long, env = "PETSET_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub zone: String,
    /// etcd settings.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}
