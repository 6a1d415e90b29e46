//! The read API: per-user read models with explicit freshness, share tokens, and analyst
//! SQL over the Parquet exports through DataFusion.
//!
//! Not built yet (see the README's status table); it exports nothing.
