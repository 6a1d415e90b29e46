//! `pulseline`: the command the README's first line runs.

mod demo;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "pulseline", version, about = "Personal health data pipeline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send sample records through Avro, the schema registry and the broker, and back.
    Demo(demo::DemoArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(args).await,
    }
}
