//! The `pulseline` command's reusable part: the whole pipeline in one process.

pub mod chaos;
pub mod check;
pub mod clients;
pub mod cpu;
pub mod ops;
pub mod pipeline;
