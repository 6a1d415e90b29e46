//! The read-model sink: read the config, build the application, run it.

use clap::Parser;
use pulseline_sinks::{SinkApplication, SinkConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    pulseline_service::init_logging();
    let config = SinkConfig::parse();
    tracing::info!(config = ?config, "starting pulseline-sink");
    SinkApplication::build(config)
        .await?
        .run_until_stopped()
        .await?;
    Ok(())
}
