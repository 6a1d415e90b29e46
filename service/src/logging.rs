//! Log set-up for binaries (tests leave logging alone, so their output stays readable).

use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is unset or unparsable.
const DEFAULT_FILTER: &str = "info";

/// JSON log lines on stdout, filtered by `RUST_LOG` (default `info`), with the current
/// span's fields (the HTTP span carries the request id). One behaviour for every service,
/// so one log pipeline parses them all. Calling it twice is harmless (the second call
/// keeps the first subscriber).
pub fn init_logging() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .try_init();
}
