//! Versioned, idempotent keyspace migrations: each migration has a version, and its
//! statements are all `IF NOT EXISTS`, so a migration interrupted half-way, or run by two
//! sinks at once, is simply run again. A version is recorded in `schema_migrations` after
//! its statements succeed, and skipped from then on.
//!
//! Version 1 is the keyspace's shared tables; each read model's table is its own version
//! (`CqlReadModel::CQL_MIGRATION`), derived from its declaration.

use std::collections::BTreeSet;

use super::tables::{self, CqlReadModel};
use super::{ScyllaSink, ScyllaTarget};
use crate::error::SinkError;

/// One migration: a version, what it does (recorded), and its statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Migration {
    pub version: i32,
    pub description: String,
    pub statements: Vec<String>,
}

/// The keyspace itself and the tables every read model shares: offsets (partitioned by
/// consumer and topic, clustered by partition) and progress (by read model and user).
pub(crate) fn base(target: &ScyllaTarget) -> Vec<Migration> {
    let ks = &target.keyspace;
    vec![Migration {
        version: 1,
        description: "sink_offset and sink_progress".into(),
        statements: vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.sink_offset (consumer text, topic text, \
                 partition int, next_offset bigint, PRIMARY KEY ((consumer, topic), partition))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.sink_progress (read_model text, user_id uuid, \
                 stream int, applied_seq bigint, PRIMARY KEY ((read_model, user_id), stream))"
            ),
        ],
    }]
}

/// The migration that creates `M`'s table.
pub(crate) fn model<M: CqlReadModel>(target: &ScyllaTarget) -> Result<Migration, SinkError> {
    Ok(Migration {
        version: M::CQL_MIGRATION,
        description: format!("{} table {}", M::NAME, M::TABLE),
        statements: vec![tables::create_table::<M>(&target.keyspace).map_err(SinkError::Config)?],
    })
}

/// The statements that make sure the keyspace and the migrations table exist.
pub(crate) fn bootstrap(target: &ScyllaTarget) -> [String; 2] {
    let ks = &target.keyspace;
    [
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = \
             {{'class': 'NetworkTopologyStrategy', 'replication_factor': {}}}",
            target.replication_factor
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (version int PRIMARY KEY, \
             description text)"
        ),
    ]
}

/// The migrations of `wanted` not yet recorded in `applied`, in version order.
pub(crate) fn pending<'a>(wanted: &'a [Migration], applied: &BTreeSet<i32>) -> Vec<&'a Migration> {
    let mut todo: Vec<&Migration> = wanted
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .collect();
    todo.sort_by_key(|m| m.version);
    todo
}

/// Runs the migrations of `wanted` that the keyspace has not recorded.
pub(crate) async fn run(sink: &ScyllaSink, wanted: &[Migration]) -> Result<(), SinkError> {
    for cql in bootstrap(&sink.target) {
        sink.run_ddl("migrate", &cql).await?;
    }
    let ks = &sink.target.keyspace;
    let applied = sink
        .retried("migrate", || {
            sink.session
                .query_unpaged(format!("SELECT version FROM {ks}.schema_migrations"), ())
        })
        .await?;
    let applied: BTreeSet<i32> = applied
        .into_rows_result()
        .map_err(|e| migration_error(format!("reading schema_migrations: {e}")))?
        .rows::<(i32,)>()
        .map_err(|e| migration_error(format!("reading schema_migrations: {e}")))?
        .map(|r| r.map(|(v,)| v))
        .collect::<Result<_, _>>()
        .map_err(|e| migration_error(format!("reading schema_migrations: {e}")))?;
    for m in pending(wanted, &applied) {
        for cql in &m.statements {
            sink.run_ddl("migrate", cql).await?;
        }
        let description = m.description.clone();
        let version = m.version;
        sink.retried("migrate", || {
            sink.session.query_unpaged(
                format!("INSERT INTO {ks}.schema_migrations (version, description) VALUES (?, ?)"),
                (version, description.as_str()),
            )
        })
        .await?;
        tracing::info!(version, description = %m.description, keyspace = %ks, "scylla migration applied");
    }
    Ok(())
}

fn migration_error(message: String) -> SinkError {
    SinkError::Scylla {
        message,
        retryable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pulseline_schemas::records::{
        ProductImpactUpsert, RollupUpsert, SessionImpactUpsert, SleepNightUpsert,
    };

    fn target() -> ScyllaTarget {
        ScyllaTarget::parse("scylla://h:9042/ks?replication_factor=1").unwrap()
    }

    #[test]
    fn every_statement_is_idempotent() {
        let t = target();
        let all: Vec<Migration> = base(&t)
            .into_iter()
            .chain([
                model::<RollupUpsert>(&t).unwrap(),
                model::<SleepNightUpsert>(&t).unwrap(),
                model::<SessionImpactUpsert>(&t).unwrap(),
                model::<ProductImpactUpsert>(&t).unwrap(),
            ])
            .collect();
        for cql in all.iter().flat_map(|m| &m.statements).chain(&bootstrap(&t)) {
            assert!(cql.contains("IF NOT EXISTS"), "{cql}");
        }
        for cql in all.iter().flat_map(|m| &m.statements) {
            assert!(cql.contains(" ks."), "{cql}");
        }
        assert!(bootstrap(&t)[0].contains("'replication_factor': 1"));
    }

    #[test]
    fn versions_are_unique_and_run_once_in_order() {
        let t = target();
        let wanted = vec![
            model::<SleepNightUpsert>(&t).unwrap(),
            base(&t).remove(0),
            model::<RollupUpsert>(&t).unwrap(),
        ];
        let versions: BTreeSet<i32> = wanted.iter().map(|m| m.version).collect();
        assert_eq!(versions.len(), wanted.len());
        let todo: Vec<i32> = pending(&wanted, &BTreeSet::new())
            .iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(todo, vec![1, 1001, 1002]);
        let todo: Vec<i32> = pending(&wanted, &BTreeSet::from([1, 1001]))
            .iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(todo, vec![1002]);
    }
}
