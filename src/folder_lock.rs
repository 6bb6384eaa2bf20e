//! The lock of a run folder (`<run>/.lock`, [`lossbench_core::lock`]: a lease file that holds on
//! cluster file systems without `flock`): a trainer training the run holds it exclusively, a
//! landscape or an explanation writing into it holds it shared. Refusals are told apart, each
//! with its exit code ([`crate::exit`]): another live trainer holds the run ([`RunBusy`], 73:
//! leave it to that one), landscapes or explanations use it ([`RunInUse`], 76: try again when
//! they end), the lock cannot be created at all ([`RunFolderUnwritable`], 74: a permission, a
//! read-only or full file system). In each case nothing was changed.

use std::fs;
use std::path::Path;

use anyhow::Result;

use crate::dist::Dist;
use lossbench_core::lock::{Lock, LockError, Mode, try_lock};

/// The lock file in a run folder.
pub const FILE: &str = ".lock";

/// The run folder is held by another live process writing it; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("run folder {dir} is busy: {holder}; nothing was changed")]
pub struct RunBusy {
    pub dir: String,
    /// Who holds it (the lock's refusal).
    pub holder: LockError,
}

/// A trainer found the run folder used by landscapes or explanations (they read its
/// checkpoints, which training prunes); nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error(
    "run folder {dir} is in use: {holders}; nothing was changed. Train it again once they have \
     ended"
)]
pub struct RunInUse {
    pub dir: String,
    pub holders: LockError,
}

/// The run folder or its lock cannot be created (permissions, a read-only or full file system).
#[derive(Debug, thiserror::Error)]
#[error("run folder {dir} cannot be locked")]
pub struct RunFolderUnwritable {
    pub dir: String,
    #[source]
    pub source: anyhow::Error,
}

/// Locks the run folder `dir` (created if missing) for `purpose`. Exclusive: rank 0 holds it
/// (the other ranks never write run files); shared: every process holds its own. The ranks
/// agree, so that a refusal ends all of them with the same exit code.
pub fn lock(dir: &Path, mode: Mode, purpose: &str, dist: &Dist) -> Result<Option<Lock>> {
    let mine = if mode == Mode::Shared || dist.is_root() {
        lock_here(dir, mode, purpose).map(Some)
    } else {
        Ok(None)
    };
    dist.agree(mine)
}

fn lock_here(dir: &Path, mode: Mode, purpose: &str) -> Result<Lock> {
    let shown = dir.display().to_string();
    let unwritable = |source: anyhow::Error| RunFolderUnwritable {
        dir: shown.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(|e| unwritable(e.into()))?;
    match try_lock(&dir.join(FILE), mode, purpose) {
        Ok(lock) => Ok(lock),
        Err(e @ LockError::Held { .. }) if e.held_by_writer() || mode == Mode::Shared => {
            Err(RunBusy {
                dir: shown,
                holder: e,
            }
            .into())
        }
        Err(e @ LockError::Held { .. }) => Err(RunInUse {
            dir: shown,
            holders: e,
        }
        .into()),
        Err(e) => Err(unwritable(e.into()).into()),
    }
}
