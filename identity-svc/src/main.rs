//! identity-svc: parses its settings, binds, and serves until SIGTERM/SIGINT.

use anyhow::Context as _;
use clap::Parser as _;
use identity_svc::{Config, Listeners, Server};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = petset_core::telemetry::init("identity-svc", &config.telemetry)?;
    let listeners = Listeners::bind(config.grpc_addr, config.dns_addr).await?;
    let shutdown = petset_core::shutdown::on_signal();
    Server::run(
        config.etcd.store_config(),
        &config.zone,
        listeners,
        shutdown,
    )
    .await
    .context("identity-svc failed")
}
