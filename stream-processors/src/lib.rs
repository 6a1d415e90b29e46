//! Stream processors: the exactly-once runtime (consumer group, per-user state with a
//! compacted changelog, Kafka transactions, watermarks, dead letters) and the processors
//! that turn samples and events into read models (rollups, sleep nights, impact windows).
//!
//! Not built yet: the processor runtime and the rollups processor are the next issue's
//! work (see the README's status table). The crate exists so the workspace has the layout
//! ARCHITECTURE.md decides; it exports nothing.
