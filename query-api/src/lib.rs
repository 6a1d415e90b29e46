//! The read API: per-user read models (rollups, sleep nights, impacts), each answer with
//! its freshness, over the Postgres read store; and analysts' read-only SQL over the
//! Parquet export (`analytics`). Binary: `pulseline-query-api`.
//!
//! It reads the sink's tables, the gateway's sequences and the export, and writes nothing
//! (apart from running the sink's idempotent migrations at start). A user only ever reads
//! rows of the user id in their token; an analyst only the pseudonymised export.
//! Share tokens are not built yet.

pub mod analytics;
pub mod api;
pub mod app;
pub mod config;
pub mod error;
pub mod params;
pub mod store;
pub mod telemetry;

pub use app::Application;
pub use config::Config;
pub use error::QueryError;
