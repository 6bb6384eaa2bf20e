//! The trainer's exit codes (docs/training.md, "Exit codes"): what each failure means for the
//! job that ran it, so that a SLURM script can tell "requeue", "leave it to the other job" and
//! "fail visibly" apart. Every rank of a run exits with the same code ([`crate::dist::Dist::agree`]).

use crate::dist::PeerFailed;
use crate::failure::{Internal, OutOfMemory};
use crate::folder_lock::{RunBusy, RunFolderUnwritable, RunInUse};
use crate::resume::ConfigChanged;
use lossbench_core::files::{is_out_of_space, is_refused_write};
use lossbench_core::lock::LockError;

/// An error (bad config, missing store, a store replaced under the run, ...).
pub const ERROR: u8 = 1;
/// A libtorch error or a panic.
pub const INTERNAL: u8 = 70;
/// Memory ran out; the newest checkpoint is intact.
pub const OUT_OF_MEMORY: u8 = 71;
/// Another live trainer holds the run folder (or took it over from this attempt): leave the
/// run to it. Nothing was changed.
pub const BUSY: u8 = 73;
/// A file cannot be written (or its folder locked): a permission, a read-only file system.
pub const UNWRITABLE: u8 = 74;
/// Stopped to be resumed: by SIGTERM / SIGUSR1 after a checkpoint, or out of disk space or
/// quota with the newest checkpoint intact (resume once space is freed).
pub const REQUEUE: u8 = crate::stop::EXIT_REQUEUE;
/// Landscapes or explanations use the run folder: train again once they end.
pub const IN_USE: u8 = 76;
/// `--resume auto` with a configuration that may not continue the run.
pub const CONFIG_CHANGED: u8 = 78;

/// The exit code of a trainer's failure.
pub fn code(e: &anyhow::Error) -> u8 {
    let is = |f: &dyn Fn(&(dyn std::error::Error + 'static)) -> bool| e.chain().any(f);
    if let Some(peer) = e.chain().find_map(|c| c.downcast_ref::<PeerFailed>()) {
        return peer.code;
    }
    if is(&|c| c.is::<RunBusy>())
        || is(&|c| matches!(c.downcast_ref::<LockError>(), Some(LockError::Lost { .. })))
    {
        BUSY
    } else if is(&|c| c.is::<RunInUse>()) {
        IN_USE
    } else if is(&|c| c.is::<ConfigChanged>()) {
        CONFIG_CHANGED
    } else if is(&|c| c.is::<OutOfMemory>()) {
        OUT_OF_MEMORY
    } else if is_out_of_space(e) {
        REQUEUE
    } else if is(&|c| c.is::<RunFolderUnwritable>()) || is_refused_write(e) {
        UNWRITABLE
    } else if is(&|c| c.is::<Internal>()) {
        INTERNAL
    } else {
        ERROR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_a_requeue_and_a_peer_carries_its_code() {
        let full = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOSPC))
            .context("writing runs/ce-seed0/checkpoints/epoch-0002.tmp/model.safetensors");
        assert_eq!(code(&full), REQUEUE);
        let quota = anyhow::anyhow!("Torch(\"Disk quota exceeded\")");
        assert_eq!(code(&quota), REQUEUE);
        let peer = anyhow::Error::new(PeerFailed {
            rank: 0,
            code: 71,
            message: "out of memory".into(),
        });
        assert_eq!(code(&peer), 71);
        assert_eq!(code(&anyhow::anyhow!("bad config")), ERROR);
    }

    /// A panic caught around an attempt is an internal error by its type, whatever its
    /// message says and whatever context is added on the way up.
    #[test]
    fn a_caught_panic_is_internal_by_its_type() {
        let caught = crate::failure::Caught::Internal("index out of range".into());
        let e = caught
            .internal("runs/ce-seed0", "training or testing")
            .context("trainer train");
        assert_eq!(code(&e), INTERNAL);
        assert_eq!(
            code(&anyhow::anyhow!("internal error: a message alone")),
            ERROR
        );
    }
}
