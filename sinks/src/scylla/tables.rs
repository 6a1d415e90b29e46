//! The CQL side of each read model: one small `CqlReadModel` impl per read model, next to
//! its `StoredReadModel` declaration's columns. The table, its columns and the values of
//! a row are derived from that declaration, so a new read model adds one impl here.
//!
//! The partition key is the user (every read is one user's); the other key columns are
//! clustering columns in declaration order, so a user's rows are sorted by metric, period
//! and bucket (rollups) or by night (sleep), and a date range is one slice of a partition.

use pulseline_schemas::records::{
    ProductImpactUpsert, RollupUpsert, SessionImpactUpsert, SleepNightUpsert,
};
use scylla::value::{CqlDate, CqlTimestamp, CqlValue};
use serde_json::Value;
use uuid::Uuid;

use crate::sink::InvalidRecord;
use crate::tables::{Column, StoredReadModel};

/// A read model the Scylla store can hold.
pub trait CqlReadModel: StoredReadModel {
    /// The version of the migration that creates its table (1001+, as in Postgres; unique
    /// across read models). Keyspace migrations are versioned and run once each.
    const CQL_MIGRATION: i32;
}

impl CqlReadModel for RollupUpsert {
    const CQL_MIGRATION: i32 = 1001;
}

impl CqlReadModel for SleepNightUpsert {
    const CQL_MIGRATION: i32 = 1002;
}

impl CqlReadModel for SessionImpactUpsert {
    const CQL_MIGRATION: i32 = 1003;
}

impl CqlReadModel for ProductImpactUpsert {
    const CQL_MIGRATION: i32 = 1004;
}

/// The CQL type of a declared (Postgres) column type. Instants (`timestamptz`) are kept
/// as microseconds since the epoch in a `bigint`: CQL's `timestamp` has milliseconds
/// only, and the Scylla store must answer exactly what Postgres answers.
pub(crate) fn cql_type(sql_type: &str) -> Option<&'static str> {
    Some(match sql_type {
        "uuid" => "uuid",
        "text" => "text",
        "timestamp" => "timestamp",
        "timestamptz" => "bigint",
        "date" => "date",
        "float8" => "double",
        "int8" => "bigint",
        "int4" => "int",
        "bool" => "boolean",
        "text[]" => "list<text>",
        _ => return None,
    })
}

/// Every written column of `M`: the key first (`user_id` first), then the values.
pub(crate) fn columns<M: StoredReadModel>() -> impl Iterator<Item = &'static Column> {
    M::KEY_COLUMNS.iter().chain(M::VALUE_COLUMNS)
}

/// `CREATE TABLE IF NOT EXISTS` of `M`'s table in `keyspace`; refuses a declaration the
/// Scylla store cannot hold (a column type it does not map, a key not led by `user_id`).
pub(crate) fn create_table<M: StoredReadModel>(keyspace: &str) -> Result<String, String> {
    let (partition, clustering) = M::KEY_COLUMNS
        .split_first()
        .ok_or_else(|| format!("{} declares no key", M::NAME))?;
    if partition.name != "user_id" {
        return Err(format!("{}: the key must start with user_id", M::NAME));
    }
    let mut defs = Vec::new();
    for c in columns::<M>() {
        let ty = cql_type(c.sql_type).ok_or_else(|| {
            format!(
                "{}: column {} has type {}, which the Scylla store does not map",
                M::NAME,
                c.name,
                c.sql_type
            )
        })?;
        defs.push(format!("{} {ty}", c.name));
    }
    let key = std::iter::once(format!("({})", partition.name))
        .chain(clustering.iter().map(|c| c.name.to_owned()))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "CREATE TABLE IF NOT EXISTS {keyspace}.{table} ({defs}, PRIMARY KEY ({key}))",
        table = M::TABLE,
        defs = defs.join(", "),
    ))
}

/// The prepared insert of one row of `M` (its write timestamp is the batch's).
pub(crate) fn insert_row<M: StoredReadModel>(keyspace: &str) -> String {
    let names: Vec<&str> = columns::<M>().map(|c| c.name).collect();
    let marks = vec!["?"; names.len()].join(", ");
    format!(
        "INSERT INTO {keyspace}.{table} ({names}) VALUES ({marks})",
        table = M::TABLE,
        names = names.join(", "),
    )
}

/// A row's values in `columns::<M>()` order, from its serde form (the same one Postgres
/// gets, so both stores hold the same row). `None` is CQL null.
pub(crate) fn row_values<M: StoredReadModel>(
    row: &M::Columns,
) -> Result<Vec<Option<CqlValue>>, InvalidRecord> {
    let Value::Object(object) =
        serde_json::to_value(row).map_err(|_| InvalidRecord("row does not serialise"))?
    else {
        return Err(InvalidRecord("row does not serialise to an object"));
    };
    columns::<M>()
        .map(|c| {
            let value = object.get(c.name).unwrap_or(&Value::Null);
            to_cql(c.sql_type, value)
        })
        .collect()
}

fn to_cql(sql_type: &str, value: &Value) -> Result<Option<CqlValue>, InvalidRecord> {
    if value.is_null() {
        return Ok(None);
    }
    let text = || {
        value
            .as_str()
            .ok_or(InvalidRecord("a text column is not text"))
    };
    let int = || {
        value
            .as_i64()
            .ok_or(InvalidRecord("an integer column is not one"))
    };
    let v = match sql_type {
        "uuid" => CqlValue::Uuid(
            Uuid::parse_str(text()?).map_err(|_| InvalidRecord("a uuid column is not one"))?,
        ),
        "text" => CqlValue::Text(text()?.to_owned()),
        "timestamp" => {
            let t = chrono::NaiveDateTime::parse_from_str(text()?, "%Y-%m-%dT%H:%M:%S%.f")
                .map_err(|_| InvalidRecord("a timestamp column is not one"))?;
            CqlValue::Timestamp(CqlTimestamp(t.and_utc().timestamp_millis()))
        }
        "timestamptz" => {
            let t = chrono::DateTime::parse_from_rfc3339(text()?)
                .map_err(|_| InvalidRecord("an instant column is not one"))?;
            CqlValue::BigInt(t.timestamp_micros())
        }
        "date" => {
            let d = chrono::NaiveDate::parse_from_str(text()?, "%Y-%m-%d")
                .map_err(|_| InvalidRecord("a date column is not one"))?;
            let days = d
                .signed_duration_since(chrono::NaiveDate::default())
                .num_days();
            // CQL dates count days from 2^31 days before the epoch.
            let raw = u32::try_from(days + (1_i64 << 31))
                .map_err(|_| InvalidRecord("a date column is out of range"))?;
            CqlValue::Date(CqlDate(raw))
        }
        "float8" => CqlValue::Double(
            value
                .as_f64()
                .ok_or(InvalidRecord("a float column is not a number"))?,
        ),
        "int8" => CqlValue::BigInt(int()?),
        "int4" => CqlValue::Int(
            i32::try_from(int()?).map_err(|_| InvalidRecord("an int column is out of range"))?,
        ),
        "bool" => CqlValue::Boolean(
            value
                .as_bool()
                .ok_or(InvalidRecord("a boolean column is not one"))?,
        ),
        "text[]" => CqlValue::List(
            value
                .as_array()
                .ok_or(InvalidRecord("a list column is not a list"))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(|s| CqlValue::Text(s.to_owned()))
                        .ok_or(InvalidRecord("a list column holds a non-text item"))
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(InvalidRecord("a column type the Scylla store does not map")),
    };
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::StoredRow;
    use pulseline_schemas::records::Period;

    #[test]
    fn every_declared_column_type_maps() {
        let all = columns::<RollupUpsert>()
            .chain(columns::<SleepNightUpsert>())
            .chain(columns::<SessionImpactUpsert>())
            .chain(columns::<ProductImpactUpsert>());
        for c in all {
            assert!(cql_type(c.sql_type).is_some(), "{}", c.sql_type);
        }
    }

    #[test]
    fn tables_partition_by_user_and_cluster_by_bucket() {
        let rollup = create_table::<RollupUpsert>("ks").unwrap();
        assert!(rollup.starts_with("CREATE TABLE IF NOT EXISTS ks.rollup (user_id uuid,"));
        assert!(
            rollup.ends_with("PRIMARY KEY ((user_id), metric, period, bucket_start))"),
            "{rollup}"
        );
        assert!(rollup.contains("sources list<text>"));
        let sleep = create_table::<SleepNightUpsert>("ks").unwrap();
        assert!(
            sleep.ends_with("PRIMARY KEY ((user_id), night))"),
            "{sleep}"
        );
        assert!(sleep.contains("bed_at bigint"));
    }

    #[test]
    fn the_insert_names_every_column_once() {
        let sql = insert_row::<RollupUpsert>("ks");
        let n = columns::<RollupUpsert>().count();
        assert_eq!(sql.matches('?').count(), n);
        assert!(sql.starts_with("INSERT INTO ks.rollup (user_id, metric, period, bucket_start,"));
    }

    #[test]
    fn values_follow_the_declaration_exactly() {
        let user = Uuid::new_v4();
        let mut r = crate::tables::tests::upsert(Period::Hour, "2026-11-23T05:00:00");
        r.user_id = user.to_string();
        (r.version, r.value, r.max, r.count) = (7, Some(0.1 + 0.2), Some(3.0), 2);
        r.sources = vec!["watch".into()];
        let row = StoredRow::parse(r).unwrap();
        let v = row_values::<RollupUpsert>(&row.columns).unwrap();
        let names: Vec<&str> = columns::<RollupUpsert>().map(|c| c.name).collect();
        let get = |name: &str| v[names.iter().position(|n| *n == name).unwrap()].clone();
        assert_eq!(get("user_id"), Some(CqlValue::Uuid(user)));
        assert_eq!(get("period"), Some(CqlValue::Text("HOUR".into())));
        assert_eq!(
            get("bucket_start"),
            Some(CqlValue::Timestamp(CqlTimestamp(1_795_410_000_000)))
        );
        assert_eq!(get("value"), Some(CqlValue::Double(0.1 + 0.2)));
        assert_eq!(get("min"), None);
        assert_eq!(get("count"), Some(CqlValue::BigInt(2)));
        assert_eq!(get("version"), Some(CqlValue::BigInt(7)));
        assert_eq!(
            get("sources"),
            Some(CqlValue::List(vec![CqlValue::Text("watch".into())]))
        );
    }

    #[test]
    fn dates_and_instants_keep_their_precision() {
        assert_eq!(
            to_cql("date", &Value::from("1970-01-02")).unwrap(),
            Some(CqlValue::Date(CqlDate((1 << 31) + 1)))
        );
        assert_eq!(
            to_cql("timestamptz", &Value::from("2026-11-23T05:00:00.000123Z")).unwrap(),
            Some(CqlValue::BigInt(1_795_410_000_000_123))
        );
    }
}
