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

/// `<path>.tmp.<pid>.<n>`, beside the file it becomes: unique to this process and call, so
/// concurrent writers of one file (two SLURM tasks computing the same landscape block) never
/// share a temporary file. Readers of a folder skip these names (they do not end in the
/// folder's extension).
pub fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp.{}.{n}", std::process::id()));
    name.into()
}

/// Syncs `tmp` and renames it to `path`.
pub fn commit(tmp: &Path, path: &Path) -> Result<()> {
    fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    fs::rename(tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Creates `path` with `bytes` only if no file of that name exists yet (atomically: written
/// under a temporary name, then hard-linked to the final name, which fails when it exists).
/// Returns whether this call created it.
pub fn create_new_atomically(path: &Path, bytes: &[u8]) -> Result<bool> {
    let tmp = temp_path(path);
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    let synced = fs::File::open(&tmp).and_then(|f| f.sync_all());
    let linked = synced.and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// Removes temporary files (`<name>.tmp.<pid>.<n>`) of processes that no longer run, left in
/// `dir` by writers killed mid-write; returns how many.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = temporary_owner(&name) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The writer's pid of a temporary file name made by [`temp_path`].
fn temporary_owner(name: &str) -> Option<u32> {
    let (_, tail) = name.rsplit_once(".tmp.")?;
    let (pid, n) = tail.split_once('.')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
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
        assert_eq!(temporary_owner(&name), Some(std::process::id()));
        assert_eq!(temporary_owner("x.parquet"), None);
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

    #[test]
    fn stale_temporaries_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // A pid above the kernel's maximum (4194304) never runs.
        fs::write(dir.path().join("a.parquet.tmp.4294967.3"), b"x").unwrap();
        let mine = temp_path(&dir.path().join("b.parquet"));
        fs::write(&mine, b"y").unwrap();
        assert_eq!(remove_stale_temporaries(dir.path()), 1);
        assert!(mine.exists());
    }
}
