//! The processors, and the one list that registers them. Adding a read model: one file
//! here implementing `Processor`, plus one line in `registry` (see stream-processors/README.md).

pub mod impact;
pub mod priority;
pub mod rollups;
pub mod sleep;

use crate::engine::{DynProcessor, register};

pub use self::impact::{ImpactConfig, ProductImpacts, SessionImpacts};
pub use self::priority::SourcePriority;
pub use self::rollups::Rollups;
pub use self::sleep::SleepNights;

/// Settings shared by the processors (parsed from the binary's flags and environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessorsConfig {
    /// Source priority for overlapping sources (cumulative rollups, sleep stages).
    pub source_priority: SourcePriority,
    /// Metrics and windows of the impact read models.
    pub impact: ImpactConfig,
}

/// Every processor the runtime runs, in one place.
pub fn registry(config: &ProcessorsConfig) -> Vec<Box<dyn DynProcessor>> {
    vec![
        register(Rollups::new(config.source_priority.clone())),
        register(SleepNights::new(config.source_priority.clone())),
        register(SessionImpacts::new(config.impact.clone())),
        register(ProductImpacts::new(config.impact.clone())),
    ]
}

/// The names of the registered processors (for status lines and docs).
pub fn registered_names() -> Vec<&'static str> {
    registry(&ProcessorsConfig::default())
        .iter()
        .map(|p| p.name())
        .collect()
}
