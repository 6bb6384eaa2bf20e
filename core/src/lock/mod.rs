//! Locks that hold on cluster file systems, where `flock(2)` may be granted per node (BeeGFS by
//! default, Lustre mounted `localflock`, NFS with `local_lock`) or not at all:
//!
//! - a run folder's `.lock`: a trainer writing the run (train, resume) holds it exclusively,
//!   landscapes and explanations that read or write into the run hold it shared;
//! - a results folder's `.lock`: `collector merge` holds it exclusively, `collector report` and
//!   `compare` shared;
//! - a store's `<store>.lock` beside it: `data-prep convert` holds it exclusively while it
//!   builds the store, every reader shared.
//!
//! A lock is a **lease file**. The exclusive holder creates `<lock>` itself with `link(2)` of a
//! complete temporary file (atomic, and exclusive on NFS too); each shared holder creates its own
//! file in `<lock>.shared/`. The file names the holder ([`Holder`]: host, boot, PID namespace,
//! pid and start time, SLURM job, step and restart count, purpose, lease), and the holder renews
//! its lease by touching the file every quarter lease from a thread of its own. The holder also
//! holds `flock` on its file, where that works: a refused `flock` proves a live holder.
//!
//! A holder is judged **stale** only when it is certainly gone: on its own host (same boot, same
//! PID namespace) by its pid and start time; elsewhere when its lease has expired *and*, where it
//! ran under SLURM, `squeue`/`sacct` say its job no longer runs (or it is an earlier incarnation
//! of a requeued job). A stale lock is removed under a short-lived `<lock>.break` lock, so that
//! two processes never both take it over. Exclusive and shared holders create first and check
//! the other kind second, so of two at once one at least sees the other. docs/reliability.md says
//! what each file system guarantees.

mod identity;
mod lease;
mod renewal;
mod slurm;

use std::fmt;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use identity::Process;
use lease::{
    Verdict, break_stale, create_new, judge, live_readers, open_and_flock, read_holder, shared_dir,
    token_of,
};
use renewal::{forget, renew};
pub use slurm::JobState;

/// The lease unless `LOSSBENCH_LOCK_LEASE_S` says otherwise: a holder killed on another node is
/// judged stale this long after its last renewal (and once SLURM says its job ended).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// The lease of this process's locks (read once).
pub fn lease() -> Duration {
    static LEASE: OnceLock<Duration> = OnceLock::new();
    *LEASE.get_or_init(|| {
        std::env::var("LOSSBENCH_LOCK_LEASE_S")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(DEFAULT_LEASE, Duration::from_secs_f64)
    })
}

/// Who holds a lock: written into the lease file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    #[serde(flatten)]
    pub process: Process,
    /// RFC 3339.
    pub since: String,
    /// What the holder is doing, e.g. `trainer train`.
    pub purpose: String,
    /// Unique to this holding: tells a renewed lease from a lock taken over meanwhile (absent in
    /// lock files of versions before leases).
    #[serde(default)]
    pub token: Option<String>,
    /// Seconds the holder's lease lasts after each renewal.
    #[serde(default)]
    pub lease_s: Option<f64>,
}

fn new_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}-{}-{nanos:x}-{n}",
        crate::host::host_name(),
        std::process::id()
    )
}

impl Holder {
    fn me(purpose: &str) -> Holder {
        Holder {
            process: Process::me(),
            since: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            purpose: purpose.to_string(),
            token: Some(new_token()),
            lease_s: Some(lease().as_secs_f64()),
        }
    }

    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a holder serialises")
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.process;
        write!(f, "{} (host {}, pid {}", self.purpose, p.host, p.pid)?;
        if let Some(job) = &p.slurm_job {
            write!(f, ", SLURM job {job}")?;
        }
        write!(f, ", since {})", self.since)
    }
}

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Exclusive,
    Shared,
}

/// Why a lock was not taken, or was lost.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A live process holds it exclusively (`holder`), or live processes hold it shared
    /// (`readers`); `why` says how it is known to be live.
    #[error("{}", held_message(.path, .holder.as_deref(), .readers, .why))]
    Held {
        path: PathBuf,
        holder: Option<Box<Holder>>,
        readers: Vec<Holder>,
        why: String,
    },
    /// The lock file could not be created or read (permissions, a read-only or full file
    /// system): nothing says the lock is held.
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// This process held the lock, but another one judged it stale and took it over.
    #[error(
        "{path}: this process's lock was taken over{}: it stops without writing more",
        .by.as_ref().map_or(String::new(), |h| format!(" by {h}"))
    )]
    Lost {
        path: PathBuf,
        by: Option<Box<Holder>>,
    },
}

impl LockError {
    /// Held exclusively by a live writer (not only by shared readers).
    pub fn held_by_writer(&self) -> bool {
        matches!(
            self,
            LockError::Held {
                holder: Some(_),
                ..
            }
        )
    }
}

fn held_message(path: &Path, holder: Option<&Holder>, readers: &[Holder], why: &str) -> String {
    match holder {
        Some(h) => format!("{} is held by {h}; {why}", path.display()),
        None => {
            let list: Vec<String> = readers.iter().take(5).map(Holder::to_string).collect();
            format!(
                "{} is held by other processes reading it (a landscape, an explanation or a \
                 report): {}",
                path.display(),
                list.join(", ")
            )
        }
    }
}

/// A held lock. Dropping it releases it (removes its lease file); a process that dies leaves
/// its file, which others judge stale as the module docs say.
#[derive(Debug)]
pub struct Lock {
    /// The lock's name (`<run>/.lock`, `<store>.lock`, ...).
    pub path: PathBuf,
    pub mode: Mode,
    /// This holding's lease file: `path` itself, or its entry in `<path>.shared/`.
    file: PathBuf,
    token: String,
    lost: Arc<AtomicBool>,
    /// Open for the lock's life: its `flock`, where the file system has one.
    _flock: Option<File>,
}

impl Lock {
    /// Fails with [`LockError::Lost`] when another process took the lock over (it judged this
    /// one's lease expired: a process stopped for longer than the lease, a file system that
    /// hung). Writers check before each write that must not be doubled.
    pub fn check(&self) -> Result<(), LockError> {
        let still_mine = token_of(&self.file).as_deref() == Some(self.token.as_str());
        if self.lost.load(Ordering::SeqCst) || !still_mine {
            self.lost.store(true, Ordering::SeqCst);
            let by = read_holder(&self.path)
                .ok()
                .flatten()
                .and_then(|(_, h)| h.map(Box::new));
            return Err(LockError::Lost {
                path: self.path.clone(),
                by,
            });
        }
        Ok(())
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        forget(&self.token);
        if token_of(&self.file).as_deref() == Some(self.token.as_str()) {
            let _ = fs::remove_file(&self.file);
        }
    }
}

/// Rounds of "exists → judged stale → removed → create again" before giving up: only many
/// processes breaking one lock at once need more than two.
const ROUNDS: usize = 50;

/// Creates the lease file `file` for `me`, taking over a stale one; `Err(Held)` when a live
/// process holds it.
fn create_lease(path: &Path, file: &Path, me: &Holder) -> Result<(), LockError> {
    let io = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    for _ in 0..ROUNDS {
        match create_new(file, &me.to_json()) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let Some((seen, holder)) = read_holder(file).map_err(io)? else {
            continue; // released meanwhile
        };
        match judge(file, holder.as_ref(), &me.process) {
            Verdict::Live(why) => {
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder: Some(Box::new(holder.unwrap_or_else(|| unknown_holder(file)))),
                    readers: Vec::new(),
                    why,
                });
            }
            Verdict::Stale(why) => {
                tracing::info!(lock = %file.display(), "taking over a stale lock: {why}");
                if !break_stale(file, &seen, me).map_err(io)? {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    Err(io(std::io::Error::other(
        "the lock kept changing hands while this process tried to take it",
    )))
}

/// A holder for a lock file that names none (an older version's empty lock file).
fn unknown_holder(file: &Path) -> Holder {
    Holder {
        process: Process {
            host: "unknown".into(),
            pid: 0,
            boot_id: None,
            pid_namespace: None,
            start_ticks: None,
            slurm_job: None,
            slurm_step: None,
            slurm_restart: None,
        },
        since: "unknown".into(),
        purpose: format!("a process that did not name itself in {}", file.display()),
        token: None,
        lease_s: None,
    }
}

/// Takes the lock on `path` without waiting; `ignore_readers` takes an exclusive lock beside
/// live shared holders (`data-prep convert --overwrite --force`), never beside a live writer.
fn acquire(
    path: &Path,
    mode: Mode,
    purpose: &str,
    ignore_readers: bool,
) -> Result<Lock, LockError> {
    let me = Holder::me(purpose);
    let io = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match mode {
        Mode::Exclusive => path.to_path_buf(),
        Mode::Shared => {
            let dir = shared_dir(path);
            fs::create_dir_all(&dir).map_err(io)?;
            dir.join(format!("{}.json", me.token.as_deref().unwrap_or("reader")))
        }
    };
    create_lease(path, &file, &me)?;
    let release = || {
        let _ = fs::remove_file(&file);
    };
    let held_flock = open_and_flock(&file);
    // Created first, the other kind checked second (module docs).
    let conflict = match mode {
        Mode::Exclusive if ignore_readers => None,
        Mode::Exclusive => match live_readers(path, &me.process) {
            Ok(readers) if readers.is_empty() => None,
            Ok(readers) => Some(LockError::Held {
                path: path.to_path_buf(),
                holder: None,
                readers,
                why: "they run".into(),
            }),
            Err(e) => Some(io(e)),
        },
        Mode::Shared => match writer_of(path, &me) {
            Ok(None) => None,
            Ok(Some(e)) => Some(e),
            Err(e) => Some(io(e)),
        },
    };
    if let Some(e) = conflict {
        release();
        return Err(e);
    }
    let token = me.token.clone().expect("a new holder has a token");
    let lost = Arc::new(AtomicBool::new(false));
    renew(file.clone(), token.clone(), lost.clone());
    Ok(Lock {
        path: path.to_path_buf(),
        mode,
        file,
        token,
        lost,
        _flock: held_flock,
    })
}

/// The live exclusive holder of `path` as an error, after removing a stale one.
fn writer_of(path: &Path, me: &Holder) -> std::io::Result<Option<LockError>> {
    for _ in 0..ROUNDS {
        let Some((seen, holder)) = read_holder(path)? else {
            return Ok(None);
        };
        match judge(path, holder.as_ref(), &me.process) {
            Verdict::Live(why) => {
                return Ok(Some(LockError::Held {
                    path: path.to_path_buf(),
                    holder: Some(Box::new(holder.unwrap_or_else(|| unknown_holder(path)))),
                    readers: Vec::new(),
                    why,
                }));
            }
            Verdict::Stale(why) => {
                tracing::info!(lock = %path.display(), "removing a stale lock: {why}");
                if !break_stale(path, &seen, me)? {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    Err(std::io::Error::other("the lock kept changing hands"))
}

/// Takes the lock on `path` (its folder must exist) without waiting.
pub fn try_lock(path: &Path, mode: Mode, purpose: &str) -> Result<Lock, LockError> {
    acquire(path, mode, purpose, false)
}

/// Takes the lock exclusively beside live shared holders (never beside a live exclusive one).
pub fn try_lock_past_readers(path: &Path, purpose: &str) -> Result<Lock, LockError> {
    acquire(path, Mode::Exclusive, purpose, true)
}

/// Takes the lock, waiting for its holders to release it; `waiting` is called once, with the
/// refusal, if it must wait.
pub fn lock_waiting(
    path: &Path,
    mode: Mode,
    purpose: &str,
    waiting: impl FnOnce(&LockError),
) -> Result<Lock, LockError> {
    let mut waiting = Some(waiting);
    let mut pause = Duration::from_millis(50);
    loop {
        match acquire(path, mode, purpose, false) {
            Err(e @ LockError::Held { .. }) => {
                if let Some(w) = waiting.take() {
                    w(&e);
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// Who holds the lock `path` now: its live exclusive holder, or its live shared holders, as
/// the error a taker would get; `None` when it is free (stale holders are not removed).
pub fn inspect(path: &Path) -> std::io::Result<Option<LockError>> {
    let me = Process::me();
    if let Some((_, holder)) = read_holder(path)?
        && let Verdict::Live(why) = judge(path, holder.as_ref(), &me)
    {
        return Ok(Some(LockError::Held {
            path: path.to_path_buf(),
            holder: Some(Box::new(holder.unwrap_or_else(|| unknown_holder(path)))),
            readers: Vec::new(),
            why,
        }));
    }
    let mut readers = Vec::new();
    if let Ok(entries) = fs::read_dir(shared_dir(path)) {
        for file in entries.flatten().map(|e| e.path()) {
            if file.extension().is_some_and(|e| e == "json")
                && let Some((_, holder)) = read_holder(&file)?
                && let Verdict::Live(_) = judge(&file, holder.as_ref(), &me)
            {
                readers.extend(holder);
            }
        }
    }
    Ok((!readers.is_empty()).then(|| LockError::Held {
        path: path.to_path_buf(),
        holder: None,
        readers,
        why: "they run".into(),
    }))
}

#[cfg(test)]
mod tests;
