//! The operations commands' command lines and what they print (the work is in
//! `pulseline_cli::ops`).

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use pulseline_cli::ops::{Deployment, dead_letters, outbox_dead, reconcile, sink_offsets};
use uuid::Uuid;

#[derive(Subcommand, Debug)]
pub enum DeadLetterCommand {
    /// Print the dead letters (headers and keys only, never values).
    List {
        #[command(flatten)]
        deployment: Deployment,
        #[command(flatten)]
        selection: dead_letters::Selection,
    },
    /// Put dead letters back once their cause is fixed (all selected ones).
    Replay {
        #[command(flatten)]
        deployment: Deployment,
        #[command(flatten)]
        selection: dead_letters::Selection,
    },
}

#[derive(Subcommand, Debug)]
pub enum OutboxDeadCommand {
    /// Print the relay's poison rows (without their payloads).
    List {
        #[command(flatten)]
        deployment: Deployment,
    },
    /// Accept the rows' items again under new change ids and remove the rows.
    Replay {
        #[command(flatten)]
        deployment: Deployment,
        /// Only these row ids (all rows when none is given); repeatable.
        #[arg(long = "id")]
        ids: Vec<i64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SinkOffsetCommand {
    /// Print the sinks' stored offsets.
    List {
        #[command(flatten)]
        deployment: Deployment,
        #[command(flatten)]
        selection: sink_offsets::OffsetSelection,
    },
    /// Delete stored offsets so the sink reads its topics from the start (stop it first).
    Reset {
        #[command(flatten)]
        deployment: Deployment,
        #[command(flatten)]
        selection: sink_offsets::OffsetSelection,
    },
}

#[derive(Args, Debug)]
pub struct ReconcileArgs {
    #[command(flatten)]
    deployment: Deployment,
    /// Only this user (default: every user with accepted data).
    #[arg(long)]
    user: Option<Uuid>,
    /// Accept the differing users' data again, wait until their read models are fresh,
    /// and compare again.
    #[arg(long)]
    repair: bool,
    /// How long `--repair` waits for the read models to be fresh.
    #[arg(long, default_value_t = 300)]
    wait_secs: u64,
}

pub async fn dead_letters(command: DeadLetterCommand) -> anyhow::Result<()> {
    match command {
        DeadLetterCommand::List {
            deployment,
            selection,
        } => {
            let letters = dead_letters::list(&deployment, &selection).await?;
            println!(
                "{:<10} {:<9} {:<16} {:<20} {:<34} {:<36} detail",
                "id", "stage", "processor", "reason", "source", "key"
            );
            for d in &letters {
                let source = format!(
                    "{}[{}]@{}",
                    d.source_topic,
                    d.source_partition.map_or("?".into(), |p| p.to_string()),
                    d.source_offset.map_or("?".into(), |o| o.to_string())
                );
                println!(
                    "{:<10} {:<9} {:<16} {:<20} {:<34} {:<36} {}",
                    d.id(),
                    d.stage,
                    d.processor,
                    d.reason,
                    source,
                    d.key.as_deref().unwrap_or("-"),
                    d.detail
                );
            }
            println!("{} dead letters", letters.len());
        }
        DeadLetterCommand::Replay {
            deployment,
            selection,
        } => {
            let letters = dead_letters::list(&deployment, &selection).await?;
            let report = dead_letters::replay(&deployment, &letters).await?;
            println!(
                "{} dead letters selected: {} put back on their read-model topics; {} accepted again ({} records in the outbox, {} of them undecodable so their user's whole stream); {} skipped",
                letters.len(),
                report.republished_to_topic,
                report.reaccepted_letters,
                report.reaccepted_records,
                report.whole_streams,
                report.skipped.len()
            );
            for (id, why) in &report.skipped {
                println!("  skipped {id}: {why}");
            }
            if !report.skipped.is_empty() {
                bail!(
                    "{} dead letters could not be replayed",
                    report.skipped.len()
                );
            }
        }
    }
    Ok(())
}

pub async fn outbox_dead(command: OutboxDeadCommand) -> anyhow::Result<()> {
    match command {
        OutboxDeadCommand::List { deployment } => {
            let rows = outbox_dead::list(&deployment.pool().await?, &[]).await?;
            println!(
                "{:<8} {:<36} {:<7} {:<14} {:<25} reason",
                "id", "user", "stream", "change id", "dead at"
            );
            for r in &rows {
                println!(
                    "{:<8} {:<36} {:<7} {:<14} {:<25} {}",
                    r.id,
                    r.user_id,
                    r.stream,
                    format!("{}.{}", r.change_seq, r.change_index),
                    r.dead_at.to_rfc3339(),
                    r.reason
                );
            }
            println!("{} poison rows", rows.len());
        }
        OutboxDeadCommand::Replay { deployment, ids } => {
            let pool = deployment.pool().await?;
            let report = outbox_dead::replay(&pool, deployment.relay_shards, &ids).await?;
            println!(
                "{} poison rows replayed: {} records in the outbox ({} rows unparseable, so their user's whole stream)",
                report.rows, report.records, report.whole_streams
            );
        }
    }
    Ok(())
}

pub async fn sink_offsets(command: SinkOffsetCommand) -> anyhow::Result<()> {
    match command {
        SinkOffsetCommand::List {
            deployment,
            selection,
        } => {
            let offsets = sink_offsets::list(&deployment.pool().await?, &selection).await?;
            for o in &offsets {
                println!(
                    "{} {}[{}] next offset {} (updated {})",
                    o.consumer,
                    o.topic,
                    o.partition,
                    o.next_offset,
                    o.updated_at.to_rfc3339()
                );
            }
            println!("{} stored offsets", offsets.len());
        }
        SinkOffsetCommand::Reset {
            deployment,
            selection,
        } => {
            let deleted = sink_offsets::reset(&deployment.pool().await?, &selection).await?;
            println!(
                "{deleted} stored offsets deleted: the sink reads those partitions from the start"
            );
        }
    }
    Ok(())
}

pub async fn reconcile(args: ReconcileArgs) -> anyhow::Result<()> {
    let pool = args.deployment.pool().await?;
    let mut report = reconcile::compare(&pool, args.user).await?;
    print_report(&report);
    if args.repair && !report.differing.is_empty() {
        let users: Vec<Uuid> = report.differing.iter().map(|u| u.user).collect();
        let records = reconcile::repair(&pool, args.deployment.relay_shards, &users).await?;
        println!(
            "repair: {} users' data accepted again ({records} records in the outbox); waiting until their read models are fresh",
            users.len()
        );
        reconcile::wait_until_fresh(&pool, &users, Duration::from_secs(args.wait_secs)).await?;
        report = reconcile::compare(&pool, args.user).await?;
        print_report(&report);
    }
    if !report.differing.is_empty() {
        bail!(
            "{} differences in {} users' read models",
            report.differences(),
            report.differing.len()
        );
    }
    Ok(())
}

fn print_report(report: &reconcile::Report) {
    println!(
        "reconcile: {} users, {} read-model rows recomputed from Postgres's accepted data: {} differ, in {} users",
        report.users,
        report.compared,
        report.differences(),
        report.differing.len()
    );
    for u in &report.differing {
        for (model, problem) in &u.problems {
            println!("  {model}: {problem}");
        }
    }
}

#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// Seeds the schedule of faults and the users (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds of uploads while faults strike.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    #[arg(long, default_value_t = 4)]
    users: usize,
    /// Samples per upload.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Days of offline backlog each user starts with.
    #[arg(long, default_value_t = 3)]
    backlog_days: i64,
    #[arg(
        long,
        env = "PULSELINE_SCHEMA_REGISTRY_URL",
        default_value = pulseline_service::config::DEFAULT_SCHEMA_REGISTRY_URL
    )]
    schema_registry_url: String,
    /// Where the services' logs and the broker's data go (default: a new directory under
    /// the system's temporary directory).
    #[arg(long)]
    log_dir: Option<std::path::PathBuf>,
    /// Only these kinds of fault (gateway, relay, processor, sink, postgres, broker);
    /// repeatable or comma-separated. Default: all.
    #[arg(long, value_delimiter = ',', value_parser = parse_fault)]
    faults: Vec<pulseline_cli::chaos::Fault>,
}

fn parse_fault(s: &str) -> Result<pulseline_cli::chaos::Fault, String> {
    use pulseline_cli::chaos::FAULTS;
    FAULTS
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, f)| *f)
        .ok_or_else(|| {
            let names: Vec<&str> = FAULTS.iter().map(|(n, _)| *n).collect();
            format!("'{s}' is not one of {}", names.join(", "))
        })
}

pub async fn chaos(args: ChaosArgs) -> anyhow::Result<()> {
    use pulseline_cli::chaos::{ChaosConfig, noida_binary, run};
    let seed = args.seed.unwrap_or_else(|| {
        u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or_default() % 1_000_000
    });
    let exe = std::env::current_exe()?;
    let bin_dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no directory around {}", exe.display()))?
        .to_path_buf();
    let log_dir = args.log_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("pulseline-chaos-{seed}-{}", std::process::id()))
    });
    let report = run(ChaosConfig {
        seed,
        duration: Duration::from_secs(args.duration),
        users: args.users,
        batch: args.batch,
        backlog_days: args.backlog_days,
        bin_dir,
        noida_bin: noida_binary()?,
        schema_registry_url: args.schema_registry_url,
        log_dir,
        faults: if args.faults.is_empty() {
            pulseline_cli::chaos::FAULTS
                .iter()
                .map(|(_, f)| *f)
                .collect()
        } else {
            args.faults
        },
    })
    .await?;
    if !report.passed() {
        bail!("chaos run with seed {seed} failed its checks");
    }
    Ok(())
}
