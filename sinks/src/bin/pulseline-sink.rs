//! The read-model sink: read the config, build the application, run it.

use clap::Parser;
use pulseline_sinks::{SinkApplication, SinkConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    pulseline_service::init_logging();
    // Before any Kafka client: a bad security setting stops the service here.
    let kafka = pulseline_schemas::kafka::check_env()?;
    tracing::info!(kafka_security = ?kafka, "Kafka client settings");
    let config = SinkConfig::parse();
    tracing::info!(config = ?config, "starting pulseline-sink");
    SinkApplication::build(config)
        .await?
        .run_until_stopped()
        .await?;
    Ok(())
}
