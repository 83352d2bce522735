//! Command-line and environment settings every service shares. Each flag
//! has an environment variable, so the same binary runs from a shell, a
//! compose file or a Kubernetes manifest.

use crate::store::StoreConfig;

/// Where etcd is and which key prefix is petset's.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated.
    #[arg(
        long = "etcd-endpoints",
        env = "PETSET_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// The key prefix petset's keys live under.
    #[arg(
        long = "etcd-prefix",
        env = "PETSET_ETCD_PREFIX",
        default_value = "/petset"
    )]
    pub prefix: String,
}

impl EtcdArgs {
    /// The store configuration these flags describe.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            endpoints: self.endpoints.clone(),
            root: self.prefix.clone(),
        }
    }
}

/// How the service logs and where it sends traces.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log lines as `text` or `json`.
    #[arg(long, env = "PETSET_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint for traces (e.g. `http://127.0.0.1:4317`); none
    /// means traces are not exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
