//! lossbench: runs the BigEarthNet-19 loss-function study as repeatable batch jobs. This
//! library is what the `trainer` and `collector` binaries are thin over; the store it trains
//! from is written by the `data-prep` crate, whose layout and reader it re-exports so that both
//! sides use one definition.

pub mod checkpoint;
pub mod collector;
pub mod config;
pub mod data;
pub mod dist;
pub mod explain;
pub mod losses;
pub mod lrp;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod render;
pub mod report;
pub mod results;
pub mod run_info;
pub mod train;

pub use data_prep::{labels, layout, store};

/// Torch's random generator is global: unit tests that seed it must not interleave.
#[cfg(test)]
pub(crate) static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
