//! Atomic file writes: a file is written under a temporary name unique to its writer, synced,
//! then renamed over its final name, so it exists whole or not at all (even after a crash),
//! readers never see half of it, and two writers of one file never write into each other's
//! temporary file.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// Writes `bytes` to `path` atomically.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let written = fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()));
    written.and_then(|()| commit(&tmp, path)).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// `<path>.tmp.<pid>.<n>.<host>`, beside the file it becomes: unique to this process, call and
/// node, so concurrent writers of one file (two SLURM tasks computing the same landscape block,
/// on one node or two) never share a temporary file. Readers of a folder skip these names (they
/// do not end in the folder's extension).
pub fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp.{}.{n}.{}", std::process::id(), this_host()));
    name.into()
}

/// This host's name as temporary names carry it (dots replaced, so that it is one field).
fn this_host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| crate::host::host_name().replace(['.', '/'], "_"))
}

/// Syncs `tmp` and renames it to `path`.
pub fn commit(tmp: &Path, path: &Path) -> Result<()> {
    fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    fs::rename(tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_parent(path)
}

/// Syncs the folder holding `path`, so that a rename or creation in it survives a crash of the
/// node (a synced file under a name the folder has not recorded is lost with it).
pub fn sync_parent(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(parent)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing folder {}", parent.display()))
}

/// Swaps the names `a` and `b` (files or folders) in one step (`renameat2` with
/// `RENAME_EXCHANGE`): a reader or a crash sees one or the other, never neither. `Ok(false)`
/// where the file system cannot (NFS, some parallel file systems).
pub fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c =
        |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two NUL-terminated paths relative to the working directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(e),
    }
}

/// Creates `path` with `bytes` only if no file of that name exists yet (atomically: written
/// under a temporary name, synced, then hard-linked to the final name, which fails when it
/// exists). Returns whether this call created it.
pub fn create_new_atomically(path: &Path, bytes: &[u8]) -> Result<bool> {
    link_new(path, bytes, true).with_context(|| format!("creating {}", path.display()))
}

/// [`create_new_atomically`] as an I/O result, the temporary file synced first if `sync`:
/// `link(2)` is atomic and exclusive on NFS too, where a link retried after a lost reply fails
/// although it succeeded; the temporary file's link count tells.
pub fn link_new(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let tmp = temp_path(path);
    let written = fs::write(&tmp, bytes).and_then(|()| {
        if sync {
            fs::File::open(&tmp)?.sync_all()?;
        }
        Ok(())
    });
    let linked = written.and_then(|()| match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => match fs::metadata(&tmp) {
            Ok(m) if m.nlink() == 2 => Ok(true),
            _ => Err(e),
        },
    });
    let _ = fs::remove_file(&tmp);
    linked
}

/// Temporary files of another node are removed only once they are this old: only the writer's
/// own node can tell by its pid whether it still writes, and no file takes this long to write.
pub const FOREIGN_TEMPORARY_AGE: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Removes temporary files ([`temp_path`]) left in `dir` by writers killed mid-write: this
/// node's whose process no longer runs, other nodes' once older than
/// [`FOREIGN_TEMPORARY_AGE`]; returns how many.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some((pid, host)) = temporary_owner(&name) else {
            continue;
        };
        let stale = if host == this_host() {
            !crate::host::process_runs(pid)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > FOREIGN_TEMPORARY_AGE)
        };
        if stale && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The writer's pid and host of a temporary file name made by [`temp_path`].
fn temporary_owner(name: &str) -> Option<(u32, &str)> {
    let (_, tail) = name.rsplit_once(".tmp.")?;
    let mut fields = tail.splitn(3, '.');
    let pid = fields.next()?.parse().ok()?;
    fields.next()?.parse::<u64>().ok()?;
    Some((pid, fields.next()?))
}

/// Whether the error comes from a full disk or an exceeded quota (an I/O error in its chain,
/// or libtorch's message of one).
pub fn is_out_of_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let io = c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::StorageFull
                || io.kind() == std::io::ErrorKind::QuotaExceeded
                || matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        });
        let text = c.to_string();
        io || text.contains("No space left on device") || text.contains("Disk quota exceeded")
    })
}

/// Whether the error comes from a write the file system refuses (a permission, read-only).
pub fn is_refused_write(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.raw_os_error(),
                Some(libc::EROFS | libc::EACCES | libc::EPERM)
            )
        }) || c.to_string().contains("Read-only file system")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_unique_and_readers_skip_them() {
        let a = temp_path(Path::new("d/x.parquet"));
        let b = temp_path(Path::new("d/x.parquet"));
        assert_ne!(a, b);
        assert!(
            a.extension().is_some_and(|e| e != "parquet"),
            "{}",
            a.display()
        );
        let name = a.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(
            temporary_owner(&name),
            Some((std::process::id(), this_host()))
        );
        assert_eq!(temporary_owner("x.parquet"), None);
    }

    #[test]
    fn exchange_swaps_two_folders() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(a.join("x"), b"a").unwrap();
        fs::write(b.join("x"), b"b").unwrap();
        assert!(exchange(&a, &b).unwrap(), "tmpfs and ext4 can exchange");
        assert_eq!(fs::read(a.join("x")).unwrap(), b"b");
        assert_eq!(fs::read(b.join("x")).unwrap(), b"a");
    }

    #[test]
    fn writes_replace_and_create_new_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_atomically(&p, b"1").unwrap();
        write_atomically(&p, b"2").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"2");
        assert!(!create_new_atomically(&p, b"3").unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"2");
        let q = dir.path().join("g.json");
        assert!(create_new_atomically(&q, b"4").unwrap());
        assert_eq!(fs::read(&q).unwrap(), b"4");
        // Nothing else is left in the folder.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    /// Only this node judges its writers by pid: another node's file in progress stays (its
    /// pid may run there), until it is older than any write takes.
    #[test]
    fn stale_temporaries_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A pid above the kernel's maximum (4194304) never runs.
        let here = format!("a.parquet.tmp.4294967.3.{}", this_host());
        fs::write(dir.path().join(&here), b"x").unwrap();
        let mine = temp_path(&dir.path().join("b.parquet"));
        fs::write(&mine, b"y").unwrap();
        let elsewhere = dir.path().join("c.parquet.tmp.4294967.3.node2");
        fs::write(&elsewhere, b"z").unwrap();
        assert_eq!(remove_stale_temporaries(dir.path()), 1);
        assert!(mine.exists() && elsewhere.exists());
        let old = std::time::SystemTime::now() - FOREIGN_TEMPORARY_AGE * 2;
        fs::File::options()
            .write(true)
            .open(&elsewhere)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(remove_stale_temporaries(dir.path()), 1);
        assert!(!elsewhere.exists());
    }
}
