//! `pulseline`: the command the README's first line runs.

mod demo;
mod run;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "pulseline", version, about = "Personal health data pipeline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the pipeline on the embedded default with simulated users, and show what it did.
    Run(run::RunArgs),
    /// Send sample records through Avro, the schema registry and the broker, and back.
    Demo(demo::DemoArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run::run(args).await,
        Command::Demo(args) => demo::run(args).await,
    }
}
