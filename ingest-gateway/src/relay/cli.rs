//! The `pulseline-relay` command line: `run` (the default) and `republish`.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use super::{
    ChangeIds, OutboxRelay, RelayConfig, RelayError, RepublishScope, StreamChoice, Users, republish,
};

/// Publishes the Postgres outbox to Kafka, or re-enqueues accepted data from Postgres.
#[derive(Debug, clap::Parser)]
#[command(name = "pulseline-relay", version)]
pub struct Cli {
    #[command(flatten)]
    pub config: RelayConfig,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Publish the outbox until SIGTERM or ctrl-c (the default).
    Run,
    /// Re-enqueue users' current samples/events with their original change ids (recovery
    /// after the broker lost data; idempotent downstream). A running relay publishes them.
    Republish(RepublishArgs),
}

#[derive(Debug, clap::Args)]
pub struct RepublishArgs {
    /// The user whose data to republish.
    #[arg(
        long,
        required_unless_present = "all_users",
        conflicts_with = "all_users"
    )]
    pub user: Option<Uuid>,
    /// Every user with samples or events.
    #[arg(long)]
    pub all_users: bool,
    /// Only items starting at or after this instant (RFC 3339).
    #[arg(long, value_parser = parse_rfc3339)]
    pub from: Option<DateTime<Utc>>,
    /// Only items starting before this instant (RFC 3339).
    #[arg(long, value_parser = parse_rfc3339)]
    pub to: Option<DateTime<Utc>>,
    #[arg(long, value_enum, default_value_t = StreamChoice::Both)]
    pub stream: StreamChoice,
    /// Accept the current content again under new change ids, so processors apply it even
    /// where they passed the old ids (repairs a read model; see `pulseline reconcile`).
    #[arg(long)]
    pub renew_change_ids: bool,
}

impl RepublishArgs {
    pub fn scope(&self) -> RepublishScope {
        RepublishScope {
            users: self.user.map_or(Users::All, Users::One),
            from: self.from,
            to: self.to,
            streams: self.stream,
            change_ids: if self.renew_change_ids {
                ChangeIds::Renew
            } else {
                ChangeIds::Keep
            },
            only: None,
        }
    }
}

fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 instant: {e}"))
}

/// Runs the parsed command line.
pub async fn run_cli(cli: Cli) -> Result<(), RelayError> {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => OutboxRelay::build(cli.config).await?.run().await,
        Command::Republish(args) => {
            cli.config.validate()?;
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .connect(&cli.config.database_url)
                .await?;
            crate::MIGRATOR.run(&pool).await?;
            let summary = republish(&pool, cli.config.shards, &args.scope()).await?;
            tracing::info!(
                users = summary.users,
                samples = summary.samples,
                events = summary.events,
                "republish enqueued"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn republish_arguments_parse() {
        let u = Uuid::new_v4();
        let cli = Cli::try_parse_from([
            "pulseline-relay",
            "republish",
            "--user",
            &u.to_string(),
            "--from",
            "2024-03-01T00:00:00+01:00",
            "--stream",
            "samples",
            "--batch",
            "7",
        ])
        .expect("valid command line");
        assert_eq!(cli.config.batch, 7);
        let Some(Command::Republish(args)) = cli.command else {
            panic!("not republish")
        };
        let scope = args.scope();
        assert_eq!(scope.users, Users::One(u));
        assert_eq!(
            scope.from.map(|t| t.to_rfc3339()),
            Some("2024-02-29T23:00:00+00:00".to_owned())
        );
        assert_eq!(scope.streams, StreamChoice::Samples);
    }

    #[test]
    fn republish_needs_exactly_one_user_selection() {
        assert!(Cli::try_parse_from(["pulseline-relay", "republish"]).is_err());
        let both = [
            "pulseline-relay",
            "republish",
            "--all-users",
            "--user",
            "00000000-0000-0000-0000-000000000001",
        ];
        assert!(Cli::try_parse_from(both).is_err());
        assert!(
            Cli::try_parse_from([
                "pulseline-relay",
                "republish",
                "--all-users",
                "--to",
                "yesterday"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["pulseline-relay"]).is_ok_and(|c| c.command.is_none()));
    }
}
