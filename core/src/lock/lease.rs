//! The lease files of a lock (module docs of [`super`]): creating one exclusively, reading its
//! holder, judging whether the holder is live, and removing a stale one under `<lock>.break`.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::slurm::{self, JobState};
use super::{Holder, Process, lease};

/// The folder of a lock's shared holders.
pub(super) fn shared_dir(path: &Path) -> PathBuf {
    crate::layout::sibling(path, ".shared")
}

pub(super) fn break_path(path: &Path) -> PathBuf {
    crate::layout::sibling(path, ".break")
}

/// Creates `path` holding `bytes` only if it does not exist ([`crate::files::link_new`]).
pub(super) fn create_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match crate::files::link_new(path, bytes, false)? {
        true => Ok(()),
        false => Err(std::io::Error::from(ErrorKind::AlreadyExists)),
    }
}

/// The lock file's bytes and holder (`None` when the file does not exist; a holder of `None`
/// when the file is not a holder's JSON: an empty lock file of an older version).
#[allow(clippy::type_complexity)]
pub(super) fn read_holder(path: &Path) -> std::io::Result<Option<(Vec<u8>, Option<Holder>)>> {
    match fs::read(path) {
        Ok(bytes) => {
            let holder = serde_json::from_slice(&bytes).ok();
            Ok(Some((bytes, holder)))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The token of the lease file's holder.
pub(super) fn token_of(path: &Path) -> Option<String> {
    read_holder(path).ok()??.1?.token
}

pub(super) fn flock(file: &File, operation: libc::c_int) -> std::io::Result<()> {
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

/// Opens a lease file this process created and takes its `flock` (kept while the file is
/// open); the file alone where the file system has no `flock`.
pub(super) fn open_and_flock(path: &Path) -> Option<File> {
    let file = File::open(path).ok()?;
    match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Some(file),
        Err(_) => None,
    }
}

/// Whether a lease file's holder is live, and how that is known.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    Live(String),
    Stale(String),
}

/// Seconds since the file's last modification, read through a fresh open (NFS revalidates
/// attributes on open); `None` if it vanished.
pub(super) fn age_of(path: &Path) -> Option<Duration> {
    let file = File::open(path).ok()?;
    let modified = file.metadata().ok()?.modified().ok()?;
    Some(
        SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default(),
    )
}

/// Judges the holder of the lease file `path` (see the module docs).
pub(super) fn judge(path: &Path, holder: Option<&Holder>, me: &Process) -> Verdict {
    if let Ok(file) = File::open(path)
        && let Err(e) = flock(&file, libc::LOCK_SH | libc::LOCK_NB)
        && e.kind() == ErrorKind::WouldBlock
    {
        return Verdict::Live("it holds the lock file's flock".into());
    }
    let Some(age) = age_of(path) else {
        return Verdict::Stale("its lock file is gone".into());
    };
    let lease_s = holder.and_then(|h| h.lease_s);
    let Some(h) = holder.filter(|_| lease_s.is_some()) else {
        // A lock file of a version before leases: its holders held flock, which is free.
        return if age > lease() {
            Verdict::Stale(format!(
                "a lock file without a lease, unchanged for {:.0} s",
                age.as_secs_f64()
            ))
        } else {
            Verdict::Live(format!(
                "a lock file without a lease, written {:.0} s ago",
                age.as_secs_f64()
            ))
        };
    };
    let p = &h.process;
    if me.shares_pids_with(p) {
        return if p.runs_here() {
            Verdict::Live(format!("its process {} runs on this host", p.pid))
        } else {
            Verdict::Stale(format!("its process {} no longer runs on this host", p.pid))
        };
    }
    let lease = Duration::from_secs_f64(lease_s.unwrap_or(0.0));
    if age <= lease {
        return Verdict::Live(format!(
            "its lease was renewed {:.0} s ago (lease {:.0} s)",
            age.as_secs_f64(),
            lease.as_secs_f64()
        ));
    }
    let expired = format!("its lease expired {:.0} s ago", (age - lease).as_secs_f64());
    let Some(job) = &p.slurm_job else {
        return Verdict::Stale(expired);
    };
    if p.is_earlier_incarnation_of(me) {
        return Verdict::Stale(format!("{expired}; it ran in an earlier start of this job"));
    }
    if p.slurm_job == me.slurm_job {
        return Verdict::Stale(format!("{expired} (in this SLURM job)"));
    }
    match slurm::job_state(job) {
        JobState::Ended(why) => {
            Verdict::Stale(format!("{expired} and its SLURM job ended ({why})"))
        }
        JobState::MayRun(why) => Verdict::Live(format!(
            "{expired}, but its SLURM job {job} may still run ({why})"
        )),
        JobState::Unknown(why) => Verdict::Live(format!(
            "{expired}, but whether its SLURM job {job} still runs is unknown ({why}); remove \
             {} by hand if it does not",
            path.display()
        )),
    }
}

/// Removes the lease file `path` judged stale with contents `seen`, under `<path>.break` so that
/// two processes never remove a lock one of them took meanwhile. Returns whether the caller may
/// try again at once (false: another process is breaking it; wait a moment).
pub(super) fn break_stale(path: &Path, seen: &[u8], me: &Holder) -> std::io::Result<bool> {
    let brk = break_path(path);
    match create_new(&brk, &me.to_json()) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            // A breaker killed in its few milliseconds leaves its file: judged as any holder.
            if let Some((bytes, holder)) = read_holder(&brk)?
                && let Verdict::Stale(_) = judge(&brk, holder.as_ref(), &me.process)
                && read_holder(&brk)?.is_some_and(|(now, _)| now == bytes)
            {
                let _ = fs::remove_file(&brk);
            }
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    let result = (|| {
        if read_holder(path)?.is_some_and(|(now, _)| now == seen) {
            let token = me.token.as_deref().unwrap_or("x");
            let aside = crate::layout::sibling(path, &format!(".stale.{token}"));
            fs::rename(path, &aside)?;
            fs::remove_file(&aside)?;
        }
        Ok(true)
    })();
    let _ = fs::remove_file(&brk);
    result
}

/// Live shared holders of the lock `path`; stale ones' files are removed.
pub(super) fn live_readers(path: &Path, me: &Process) -> std::io::Result<Vec<Holder>> {
    let dir = shared_dir(path);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut live = Vec::new();
    for entry in entries {
        let file = entry?.path();
        if file.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Some((_, holder)) = read_holder(&file)? else {
            continue;
        };
        match judge(&file, holder.as_ref(), me) {
            Verdict::Live(_) => live.extend(holder),
            Verdict::Stale(why) => {
                tracing::info!(file = %file.display(), "removing a stale reader's lock: {why}");
                let _ = fs::remove_file(&file);
            }
        }
    }
    Ok(live)
}
