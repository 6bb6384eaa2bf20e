//! Renewing the leases this process holds: a thread of its own touches each lease file every
//! quarter lease, and marks a lock lost when its file is gone or names another holder.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::{Holder, lease};

pub(super) struct Renewal {
    file: PathBuf,
    token: String,
    lost: Arc<AtomicBool>,
}

/// Stops renewing the lease of the holding `token` (its lock is released).
pub(super) fn forget(token: &str) {
    renewals()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|r| r.token != token);
}

fn renewals() -> &'static Mutex<Vec<Renewal>> {
    static RENEWALS: OnceLock<Mutex<Vec<Renewal>>> = OnceLock::new();
    RENEWALS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Renews `file`'s lease every quarter lease from now on, until its lock is dropped; marks the
/// lock lost when the file is gone or names another holder.
pub(super) fn renew(file: PathBuf, token: String, lost: Arc<AtomicBool>) {
    static STARTED: OnceLock<()> = OnceLock::new();
    renewals()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Renewal { file, token, lost });
    STARTED.get_or_init(|| {
        std::thread::Builder::new()
            .name("lock-renewal".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(lease() / 4);
                    for r in renewals().lock().unwrap_or_else(|e| e.into_inner()).iter() {
                        renew_one(r);
                    }
                }
            })
            .expect("starting the lock renewal thread");
    });
}

pub(super) fn renew_one(r: &Renewal) {
    if r.lost.load(Ordering::SeqCst) {
        return;
    }
    let touched = File::open(&r.file).and_then(|f| {
        let holder: Option<Holder> = serde_json::from_reader(&f).ok();
        if holder.and_then(|h| h.token).as_deref() != Some(r.token.as_str()) {
            return Err(std::io::Error::new(ErrorKind::NotFound, "taken over"));
        }
        let now = [libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        }; 2];
        // SAFETY: futimens on a descriptor this File owns, with two valid timespecs.
        if unsafe { libc::futimens(f.as_raw_fd(), now.as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    });
    match touched {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            r.lost.store(true, Ordering::SeqCst);
            tracing::error!(lock = %r.file.display(), "this process's lock was taken over by another");
        }
        // A file system that hiccups: the next renewal tries again within the lease.
        Err(e) => tracing::warn!(lock = %r.file.display(), "renewing the lock's lease: {e}"),
    }
}
