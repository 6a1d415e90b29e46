//! The read API: per-user read models (rollups now; sleep nights and impacts later), each
//! answer with its freshness, over the Postgres read store. Binary: `pulseline-query-api`.
//!
//! It reads the sink's tables and the gateway's sequences and writes nothing (apart from
//! running the sink's idempotent migrations at start). A caller only ever reads rows of
//! the user id in their token. Share tokens and analyst SQL over Parquet are not built yet.

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
