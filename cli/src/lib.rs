//! The `pulseline` command's reusable part: the whole pipeline in one process.

pub mod pipeline;
