//! The Parquet export: read the config, export once or every interval until stopped.

use std::time::Duration;

use clap::Parser;
use pulseline_sinks::export::{ExportConfig, Exporter};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    pulseline_service::init_logging();
    let config = ExportConfig::parse();
    tracing::info!(config = ?config, "starting pulseline-export");
    let mut exporter = Exporter::connect(&config).await?;
    if config.once {
        exporter.export_once().await?;
        return Ok(());
    }
    exporter
        .run(
            Duration::from_secs(config.interval_secs),
            pulseline_service::shutdown_signal(),
        )
        .await;
    Ok(())
}
