//! `pulseline-processor`: runs every registered stream processor (see `processors::registry`).

use std::process::ExitCode;

use clap::Parser;
use pulseline_stream_processors::cli::{Cli, run};

#[tokio::main]
async fn main() -> ExitCode {
    pulseline_service::init_logging();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(kind = e.kind(), error = %e, "pulseline-processor failed");
            ExitCode::FAILURE
        }
    }
}
