//! Shared by the integration tests: the brute-force oracle, a generator of realistic
//! change streams, and helpers around the read model.
#![allow(dead_code)]

pub mod kafka;
pub use pulseline_stream_processors::oracle;

use std::collections::BTreeMap;

use pulseline_schemas::records::RollupUpsert;

/// The oracle's view of a folded read model.
pub fn rows(model: &BTreeMap<String, RollupUpsert>) -> BTreeMap<String, oracle::Row> {
    model
        .iter()
        .map(|(k, r)| {
            (
                k.clone(),
                oracle::Row {
                    value: r.value,
                    min: r.min,
                    max: r.max,
                    count: r.count,
                    sources: r.sources.clone(),
                },
            )
        })
        .collect()
}
