//! lossbench: runs the BigEarthNet-19 loss-function study as repeatable batch jobs. This
//! library is what the `trainer` binary is thin over. The store it trains from is written by the
//! `data-prep` crate, and the records it writes are defined by the `collector` crate (which
//! merges them into tables without libtorch); their modules are re-exported here so that each
//! side uses one definition.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod eval;
pub mod explain;
pub mod landscape;
pub mod losses;
pub mod lrp;
pub mod model;
pub mod optim;
pub mod run;
pub mod snapshot;
pub mod train;

pub use collector::{metrics, records, render, results, run_info};
pub use data_prep::{labels, layout, store};

/// Torch's random generator is global: unit tests that seed it must not interleave. A test that
/// failed while holding the lock leaves nothing to repair, so a poisoned lock is taken as is
/// (one failure must not fail every other test that seeds torch).
#[cfg(test)]
pub(crate) fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TORCH_RNG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
