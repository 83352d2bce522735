//! node-agent: parses its settings, binds, and runs until SIGTERM/SIGINT.

use anyhow::Context as _;
use clap::Parser as _;
use node_agent::{Agent, Config};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = petset_core::telemetry::init("node-agent", &config.telemetry)?;
    let listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot bind {}", config.grpc_addr))?;
    let shutdown = petset_core::shutdown::on_signal();
    Agent::run(&config, listener, shutdown)
        .await
        .context("node-agent failed")
}
