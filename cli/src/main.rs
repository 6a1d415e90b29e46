//! `pulseline`: the command the README's first line runs.

mod demo;
mod operate;
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
    /// List or replay the dead-letter topic's records.
    #[command(subcommand)]
    DeadLetters(operate::DeadLetterCommand),
    /// List or replay the relay's poison rows (`outbox_dead`).
    #[command(subcommand)]
    OutboxDead(operate::OutboxDeadCommand),
    /// List or reset the sinks' stored consumer offsets.
    #[command(subcommand)]
    SinkOffsets(operate::SinkOffsetCommand),
    /// Recompute read models from Postgres's accepted data, report differences, repair.
    Reconcile(operate::ReconcileArgs),
    /// Upload while a seeded schedule kills and restarts every part; check nothing is lost.
    Chaos(operate::ChaosArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The commands that talk to Kafka stop here, by name, on a bad security setting.
    if !matches!(
        cli.command,
        Command::Sql(_) | Command::OutboxDead(_) | Command::SinkOffsets(_) | Command::Reconcile(_)
    ) {
        pulseline_schemas::kafka::check_env()?;
    }
    match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Sql(args) => sql::run(args).await,
        Command::DeadLetters(c) => operate::dead_letters(c).await,
        Command::OutboxDead(c) => operate::outbox_dead(c).await,
        Command::SinkOffsets(c) => operate::sink_offsets(c).await,
        Command::Reconcile(args) => operate::reconcile(args).await,
        Command::Chaos(args) => operate::chaos(args).await,
    }
}
