//! The ingest gateway: read the config, build the application, run it.

use clap::Parser;
use pulseline_ingest_gateway::app::Application;
use pulseline_ingest_gateway::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    pulseline_service::init_logging();
    let config = Config::parse();
    tracing::info!(config = ?config, "starting pulseline-gateway");
    Application::build(config)
        .await?
        .run_until_stopped()
        .await?;
    Ok(())
}
