//! The ingest gateway: read the config, build the application, run it.

use clap::Parser;
use pulseline_ingest_gateway::app::Application;
use pulseline_ingest_gateway::config::Config;
use pulseline_ingest_gateway::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging();
    let config = Config::parse();
    tracing::info!(config = ?config, "starting pulseline-gateway");
    Application::build(config)
        .await?
        .run_until_stopped()
        .await?;
    Ok(())
}
