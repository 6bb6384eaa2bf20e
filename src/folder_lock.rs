//! The lock of a run folder (`<run>/.lock`, [`lossbench_core::lock`]): a trainer training the
//! run holds it exclusively, a landscape or an explanation writing into it holds it shared. A
//! second trainer on a run that is being trained exits at once with [`RunBusy`] (exit code 73)
//! and touches nothing; so does a landscape while the run trains (its checkpoints are pruned as
//! it trains).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use crate::dist::Dist;
use lossbench_core::lock::{Lock, LockError, Mode, try_lock};

/// The lock file in a run folder.
pub const FILE: &str = ".lock";

/// The run folder is held by another process; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("run folder {dir} is busy: {source}; nothing was changed")]
pub struct RunBusy {
    pub dir: String,
    #[source]
    pub source: LockError,
}

/// Locks the run folder `dir` (created if missing) for `purpose`. Exclusive: rank 0 holds it
/// (the other ranks never write run files); shared: every process holds its own. The ranks
/// agree, so that a refusal ends all of them. `None` where the file system has no locks.
pub fn lock(dir: &Path, mode: Mode, purpose: &str, dist: &Dist) -> Result<Option<Lock>> {
    let mine = if mode == Mode::Shared || dist.is_root() {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating run folder {}", dir.display()))?;
        match try_lock(&dir.join(FILE), mode, purpose) {
            Ok(lock) => Ok(Some(lock)),
            Err(e @ LockError::Unsupported { .. }) => {
                tracing::warn!("{e}: two trainers on this run folder would not be told apart");
                Ok(None)
            }
            Err(source) => Err(RunBusy {
                dir: dir.display().to_string(),
                source,
            }),
        }
    } else {
        Ok(None)
    };
    if dist.any(mine.is_err()) {
        mine?;
        // Every rank exits as busy (73); the rank that was refused names the holder.
        let path = dir.join(FILE);
        let source = LockError::Held { path, holder: None };
        return Err(RunBusy {
            dir: dir.display().to_string(),
            source,
        }
        .into());
    }
    Ok(mine.expect("checked above"))
}
