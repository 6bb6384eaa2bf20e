//! Advisory locks on files (flock(2)), released by the kernel when the holder closes the file
//! or dies, so a killed job never leaves a stale lock behind:
//!
//! - a run folder's `.lock`: a trainer writing the run (train, resume) holds it exclusively,
//!   landscapes and explanations that read or write into the run hold it shared;
//! - a results folder's `.lock`: `collector merge` holds it exclusively, `collector report`
//!   shared;
//! - a store's `zarr.json`: every reader holds it shared, `data-prep convert --overwrite` needs
//!   it exclusively to replace the store.
//!
//! The exclusive holder writes who it is into the lock file (host, pid, SLURM job, since when,
//! what it does), so that whoever is refused can say who holds it. On a file system without
//! flock support (Lustre mounted without `-o flock`) locking is reported as unsupported and
//! callers go on unprotected, with a warning.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Who holds an exclusive lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// `SLURM_ARRAY_JOB_ID_SLURM_ARRAY_TASK_ID`, else `SLURM_JOB_ID`, when under SLURM.
    pub slurm_job: Option<String>,
    /// RFC 3339.
    pub since: String,
    /// What the holder is doing, e.g. `trainer train`.
    pub purpose: String,
}

impl Holder {
    fn me(purpose: &str) -> Holder {
        Holder {
            host: host_name(),
            pid: std::process::id(),
            slurm_job: slurm_job(),
            since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            purpose: purpose.to_string(),
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (host {}, pid {}", self.purpose, self.host, self.pid)?;
        if let Some(job) = &self.slurm_job {
            write!(f, ", SLURM job {job}")?;
        }
        write!(f, ", since {})", self.since)
    }
}

/// The machine's host name.
pub fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// This process's SLURM job (`<array job>_<task>` for an array task), if any.
pub fn slurm_job() -> Option<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
        (Some(job), Some(task)) => Some(format!("{job}_{task}")),
        _ => var("SLURM_JOB_ID"),
    }
}

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Exclusive,
    Shared,
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it: exclusively (its holder named when it wrote one), or shared.
    #[error("{}", held_message(.path, .holder.as_deref()))]
    Held {
        path: PathBuf,
        holder: Option<Box<Holder>>,
    },
    /// The file system does not support flock.
    #[error("{path}: this file system does not support locks ({source})")]
    Unsupported {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn held_message(path: &Path, holder: Option<&Holder>) -> String {
    match holder {
        Some(h) => format!("{} is held by {h}", path.display()),
        None => format!(
            "{} is held by other processes reading it (a landscape, an explanation or a report)",
            path.display()
        ),
    }
}

/// A held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    pub path: PathBuf,
    pub mode: Mode,
}

fn flock(file: &File, operation: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a file descriptor this File owns.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOLCK | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

fn open(path: &Path, mode: Mode) -> Result<File, LockError> {
    let io = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    match mode {
        Mode::Exclusive => OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path),
        // A reader may not be allowed to write beside what it reads (a read-only store).
        Mode::Shared => File::open(path).or_else(|_| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
        }),
    }
    .map_err(io)
}

/// Takes the lock on `path` (created if missing) without waiting; an exclusive holder writes
/// itself into the file as `purpose`.
pub fn try_lock(path: &Path, mode: Mode, purpose: &str) -> Result<Lock, LockError> {
    acquire(path, mode, purpose, false)
}

/// Takes the lock, waiting for the holders to release it; `waiting` is called once, with the
/// refusal, if it must wait.
pub fn lock_waiting(
    path: &Path,
    mode: Mode,
    purpose: &str,
    waiting: impl FnOnce(&LockError),
) -> Result<Lock, LockError> {
    match acquire(path, mode, purpose, false) {
        Err(e @ LockError::Held { .. }) => {
            waiting(&e);
            acquire(path, mode, purpose, true)
        }
        other => other,
    }
}

fn acquire(path: &Path, mode: Mode, purpose: &str, wait: bool) -> Result<Lock, LockError> {
    let mut file = open(path, mode)?;
    let operation = match mode {
        Mode::Exclusive => libc::LOCK_EX,
        Mode::Shared => libc::LOCK_SH,
    };
    match flock(
        &file,
        if wait {
            operation
        } else {
            operation | libc::LOCK_NB
        },
    ) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => {
            let holder = exclusive_holder(path).map(Box::new);
            return Err(LockError::Held {
                path: path.into(),
                holder,
            });
        }
        Err(e) if unsupported(&e) => {
            return Err(LockError::Unsupported {
                path: path.into(),
                source: e,
            });
        }
        Err(e) => {
            return Err(LockError::Io {
                path: path.into(),
                source: e,
            });
        }
    }
    if mode == Mode::Exclusive {
        let me = serde_json::to_vec(&Holder::me(purpose)).expect("a holder serialises");
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(&me))
            .and_then(|()| file.flush());
        written.map_err(|source| LockError::Io {
            path: path.into(),
            source,
        })?;
    }
    Ok(Lock {
        _file: file,
        path: path.into(),
        mode,
    })
}

/// The exclusive holder of a lock, when the lock is held exclusively (a shared lock can be
/// taken beside shared holders only) and the holder wrote itself into the file.
fn exclusive_holder(path: &Path) -> Option<Holder> {
    let file = File::open(path).ok()?;
    if flock(&file, libc::LOCK_SH | libc::LOCK_NB).is_ok() {
        return None; // only shared holders
    }
    let mut text = String::new();
    (&file).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exclusive_holder_is_named_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let held = try_lock(&path, Mode::Exclusive, "trainer train").unwrap();
        // flock locks belong to open file descriptions: a second open conflicts, as another
        // process would.
        let e = try_lock(&path, Mode::Exclusive, "trainer train").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("is held by trainer train (host"), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(try_lock(&path, Mode::Shared, "landscape").is_err());
        drop(held);
        let a = try_lock(&path, Mode::Shared, "landscape").unwrap();
        let b = try_lock(&path, Mode::Shared, "landscape").unwrap();
        let e = try_lock(&path, Mode::Exclusive, "trainer train").unwrap_err();
        assert!(
            e.to_string().contains("held by other processes reading it"),
            "{e}"
        );
        drop((a, b));
        try_lock(&path, Mode::Exclusive, "trainer train").unwrap();
    }

    #[test]
    fn a_waiting_lock_is_taken_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let held = try_lock(&path, Mode::Exclusive, "collector merge").unwrap();
        // The holder lets go once the second one says it waits.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let release = std::thread::spawn(move || {
            rx.recv().unwrap();
            drop(held);
        });
        let mut waited = None;
        let lock = lock_waiting(&path, Mode::Exclusive, "collector merge", |e| {
            waited = Some(e.to_string());
            tx.send(()).unwrap();
        });
        release.join().unwrap();
        assert!(lock.is_ok());
        assert!(waited.unwrap().contains("is held by collector merge"));
    }
}
