//! `pulseline`: the command the README's first line runs.

mod demo;
mod run;
mod sql;

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
    /// Run read-only SQL over the Parquet export (as an analyst would).
    Sql(sql::SqlArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The commands that talk to Kafka stop here, by name, on a bad security setting.
    if !matches!(cli.command, Command::Sql(_)) {
        pulseline_schemas::kafka::check_env()?;
    }
    match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Sql(args) => sql::run(args).await,
    }
}
