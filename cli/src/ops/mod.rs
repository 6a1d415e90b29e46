//! Operations commands: what an operator runs when something went wrong, instead of
//! hand-written SQL or Kafka tooling. Each one reads or repairs through the same paths the
//! services use, so downstream stays idempotent:
//! - `dead_letters`: list the dead-letter topic, replay its records once the cause is fixed;
//! - `outbox_dead`: list the relay's poison rows, put them back;
//! - `sink_offsets`: list and reset the sinks' stored offsets (after a republish into a
//!   broker that lost its log);
//! - `reconcile`: recompute read models from Postgres's accepted data, report every
//!   difference from what is served, repair by accepting the differing users' data again.
//!
//! The repairs go through the outbox: a running relay publishes them.

pub mod dead_letters;
pub mod outbox_dead;
pub mod reconcile;
pub mod sink_offsets;

use std::collections::HashMap;

use pulseline_ingest_gateway::outbox::{DEFAULT_SHARDS, OutboxRecord, Stream};
use pulseline_ingest_gateway::relay::{
    ChangeIds, ItemKeys, RepublishScope, StreamChoice, Users, republish,
};
use pulseline_service::config::{
    DEFAULT_DATABASE_URL, DEFAULT_KAFKA_BOOTSTRAP, DEFAULT_SCHEMA_REGISTRY_URL, env,
};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// Where the deployment runs: the same settings (and variables) as the services.
#[derive(Debug, Clone, clap::Args)]
pub struct Deployment {
    /// The Postgres database of the gateway and the read store.
    #[arg(long, env = env::DATABASE_URL, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = env::KAFKA_BOOTSTRAP, default_value = DEFAULT_KAFKA_BOOTSTRAP)]
    pub kafka_bootstrap: String,
    /// The schema registry (decodes dead-lettered records).
    #[arg(long, env = env::SCHEMA_REGISTRY_URL, default_value = DEFAULT_SCHEMA_REGISTRY_URL)]
    pub schema_registry_url: String,
    /// Prefix of every topic.
    #[arg(long, env = env::TOPIC_PREFIX, default_value = "")]
    pub topic_prefix: String,
    /// The relay's shard count (re-enqueued rows are sharded as the gateway shards them).
    #[arg(long, env = "PULSELINE_RELAY_SHARDS", default_value_t = DEFAULT_SHARDS)]
    pub relay_shards: u16,
}

impl Deployment {
    /// The settings of a deployment on this database, broker, registry and prefix.
    pub fn new(database_url: &str, kafka_bootstrap: &str, registry: &str, prefix: &str) -> Self {
        Self {
            database_url: database_url.to_owned(),
            kafka_bootstrap: kafka_bootstrap.to_owned(),
            schema_registry_url: registry.to_owned(),
            topic_prefix: prefix.to_owned(),
            relay_shards: DEFAULT_SHARDS,
        }
    }

    /// A small pool: these commands run one statement at a time.
    pub async fn pool(&self) -> sqlx::Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url)
            .await
    }
}

/// Items of users to accept again under new change ids, per user and stream: the named
/// natural keys, or (`None`) everything the user has in that stream.
#[derive(Debug, Default)]
pub struct Reacceptance {
    items: HashMap<(Uuid, Stream), Option<ItemKeys>>,
}

impl Reacceptance {
    /// The item a record names.
    pub fn add_record(&mut self, user: Uuid, record: &OutboxRecord) {
        let stream = record.stream();
        let entry = self
            .items
            .entry((user, stream))
            .or_insert_with(|| Some(ItemKeys::default()));
        if let Some(keys) = entry {
            match record {
                OutboxRecord::Sample(s) => {
                    if let Some(start) = chrono::DateTime::from_timestamp_micros(s.start_at) {
                        keys.samples
                            .push((s.source_id.clone(), s.source_record_id.clone(), start));
                    }
                }
                OutboxRecord::Event(e) => keys.events.push(e.event_id.clone()),
            }
        }
    }

    /// Everything of the user in `stream` (when the item cannot be named).
    pub fn add_whole_stream(&mut self, user: Uuid, stream: Stream) {
        self.items.insert((user, stream), None);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Re-enqueues the items' current content from Postgres under new change ids; returns
    /// how many records went into the outbox.
    pub async fn run(&self, pool: &PgPool, shards: u16) -> anyhow::Result<u64> {
        let mut records = 0;
        for ((user, stream), only) in &self.items {
            let scope = RepublishScope {
                users: Users::One(*user),
                streams: match stream {
                    Stream::Samples => StreamChoice::Samples,
                    Stream::Events => StreamChoice::Events,
                },
                change_ids: ChangeIds::Renew,
                only: only.clone(),
                ..RepublishScope::default()
            };
            let summary = republish(pool, shards, &scope).await?;
            records += summary.samples + summary.events;
        }
        Ok(records)
    }
}
