//! Read-model sinks: versioned upserts from the read-model topics into Postgres (the
//! embedded default) and ScyllaDB, and the Parquet export.
//!
//! Not built yet (see the README's status table); it exports nothing.
