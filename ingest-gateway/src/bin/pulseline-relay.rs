//! `pulseline-relay`: publishes the outbox to Kafka (`run`, the default) or re-enqueues
//! accepted data from Postgres (`republish`). The logic lives in `relay`.

use std::process::ExitCode;

use clap::Parser;
use pulseline_ingest_gateway::relay::{Cli, run_cli};

#[tokio::main]
async fn main() -> ExitCode {
    pulseline_service::init_logging();
    // Before any Kafka client: a bad security setting stops the service here.
    match pulseline_schemas::kafka::check_env() {
        Ok(kafka) => tracing::info!(kafka_security = ?kafka, "Kafka client settings"),
        Err(e) => {
            tracing::error!(error = %e, "pulseline-relay failed: invalid Kafka security setting");
            return ExitCode::FAILURE;
        }
    }
    match run_cli(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(kind = e.kind(), error = %e.log_safe(), "pulseline-relay failed");
            ExitCode::FAILURE
        }
    }
}
