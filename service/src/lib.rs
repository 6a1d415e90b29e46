//! The plumbing every pulseline service used to carry its own copy of: log set-up, the
//! shutdown signal, the ops endpoints (`/healthz`, `/readyz`, `/metrics`), bearer-token
//! authentication, the HTTP error envelope, retry backoff, URL redaction and the names of
//! the settings every service shares.
//!
//! One copy means one behaviour: every service logs the same JSON, answers the same
//! readiness shape and redacts the same secrets. This crate owns no domain logic (no
//! samples, no topics, no read models) and must never grow any: it is what a new service
//! needs before it does anything useful.

pub mod auth;
mod backoff;
pub mod config;
#[cfg(feature = "postgres")]
pub mod db;
pub mod http;
mod logging;
pub mod ops;
mod redact;
mod shutdown;

pub use backoff::Backoff;
pub use logging::init_logging;
pub use ops::OpsRouter;
pub use redact::redact_url;
pub use shutdown::shutdown_signal;
