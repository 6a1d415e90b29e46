//! `pulseline-processor`: runs every registered stream processor (see `processors::registry`).

use std::process::ExitCode;

use clap::Parser;
use pulseline_stream_processors::cli::{Cli, run};

#[tokio::main]
async fn main() -> ExitCode {
    pulseline_service::init_logging();
    // Before any Kafka client: a bad security setting stops the service here.
    match pulseline_schemas::kafka::check_env() {
        Ok(kafka) => tracing::info!(kafka_security = ?kafka, "Kafka client settings"),
        Err(e) => {
            tracing::error!(error = %e, "pulseline-processor failed: invalid Kafka security setting");
            return ExitCode::FAILURE;
        }
    }
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(kind = e.kind(), error = %e, "pulseline-processor failed");
            ExitCode::FAILURE
        }
    }
}
