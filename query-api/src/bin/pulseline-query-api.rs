//! The query API: read the config, build the application, run it.

use clap::Parser;
use pulseline_query_api::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    pulseline_service::init_logging();
    let config = Config::parse();
    tracing::info!(config = ?config, "starting pulseline-query-api");
    Application::build(config)
        .await?
        .run_until_stopped()
        .await?;
    Ok(())
}
