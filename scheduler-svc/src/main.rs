//! scheduler-svc: parses its settings, binds, and serves until SIGTERM/SIGINT.

use anyhow::Context as _;
use clap::Parser as _;
use scheduler_svc::{Config, Server};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = petset_core::telemetry::init("scheduler-svc", &config.telemetry)?;
    let listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot bind {}", config.grpc_addr))?;
    let shutdown = petset_core::shutdown::on_signal();
    Server::run(&config, listener, shutdown)
        .await
        .context("scheduler-svc failed")
}
