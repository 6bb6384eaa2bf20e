//! lossbench: runs the BigEarthNet-19 loss-function study as repeatable batch jobs. This
//! library is what the `trainer` binary is thin over. The store it reads and the run-folder
//! formats it writes are defined in `lossbench-core`, which data-prep (the store's writer) and
//! the collector (the run folders' reader) use too (docs/architecture.md).

pub mod attempt;
pub mod augment;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod dist;
pub mod eval;
pub mod exit;
pub mod explain;
pub mod failure;
pub mod final_test;
pub mod folder_lock;
pub mod landscape;
pub mod losses;
pub mod lrp;
pub mod model;
pub mod network;
pub mod optim;
pub mod resume;
pub mod run;
pub mod snapshot;
pub mod step;
pub mod steps;
pub mod stop;
pub mod tensorboard;
pub mod thresholds;
pub mod train;

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
