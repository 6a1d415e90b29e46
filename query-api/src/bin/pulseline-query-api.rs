//! The query API: read the config, build the application, run it.

use clap::Parser;
use pulseline_ingest_gateway::telemetry::init_logging;
use pulseline_query_api::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let config = Config::parse();
    tracing::info!(config = ?config, "starting pulseline-query-api");
    Application::build(config)
        .await?
        .run_until_stopped()
        .await?;
    Ok(())
}
