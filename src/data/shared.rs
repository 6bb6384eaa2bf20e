//! One host copy of a resident split per node (docs/training.md, "Resident data"): with several
//! ranks on a node and `data.resident` placing a split in host memory, the node's first rank
//! decodes it once into an **unnamed** file (`O_TMPFILE`) in the node's shared-memory folder
//! (`/dev/shm`, or `LOSSBENCH_SHM`), the other ranks of the node open it through
//! `/proc/<pid>/fd/<fd>` and every rank maps it read-only. The file never has a name, so the
//! kernel frees it when the last rank unmaps it or dies, however it dies (a SIGKILL while it is
//! written included): nothing is ever left in the node's tmpfs. Its space is reserved first
//! (`fallocate`), and a write that runs out of space (`ENOSPC`) is not a failure: the caller
//! falls back ([`super::splits`]). N ranks on a node thus hold one copy instead of N.

use std::fs;
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tch::Kind;

use super::Normalizer;
use super::mapping::Mapping;
use super::resident::{Placement, ResidentSplit, decode_group, gib, labels_of, loader_pool};
use crate::dist::Dist;
use lossbench_core::labels::NUM_CLASSES;
use lossbench_core::layout::BAND_GROUPS;
use lossbench_core::store::SplitData;

/// Prefix of the named files older versions left in the shared-memory folder.
const PREFIX: &str = "lossbench-";

/// The node's shared-memory folder: `LOSSBENCH_SHM`, else `/dev/shm`.
pub fn folder() -> PathBuf {
    std::env::var_os("LOSSBENCH_SHM")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from)
}

/// Removes `lossbench-*` files an older version left in the shared-memory folder when killed
/// (it named its copies): their creator's pid (in the name) no longer runs on this node.
fn remove_left_by_older_versions(folder: &Path) {
    let Ok(entries) = fs::read_dir(folder) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next()?.parse::<u32>().ok());
        if let Some(pid) = pid
            && !lossbench_core::host::process_runs(pid)
        {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Whether an I/O failure is a full file system (a tmpfs at its size limit).
fn out_of_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Why the node's first rank made no shared copy.
enum NotMade {
    /// No room or no unnamed files in the folder: the caller falls back (a warning says why).
    Fallback(String),
    /// Reading the store failed: the run's error.
    Failed(anyhow::Error),
}

/// Creates the unnamed file in `folder`, reserves `bytes` and writes the split's band groups
/// (int16) then its labels (f32).
fn create(
    split: &SplitData,
    threads: usize,
    bytes: u64,
    folder: &Path,
) -> Result<fs::File, NotMade> {
    let fallback = |what: &str, e: std::io::Error| {
        NotMade::Fallback(format!("{what} in {}: {e}", folder.display()))
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(folder)
        .map_err(|e| fallback("cannot create an unnamed file", e))?;
    // SAFETY: fallocate on a descriptor this File owns.
    let reserved = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, bytes as libc::off_t) };
    if reserved != 0 {
        let e = std::io::Error::from_raw_os_error(reserved);
        return Err(fallback(&format!("cannot reserve {}", gib(bytes)), e));
    }
    let rows: Vec<usize> = (0..split.len).collect();
    let written = (|| -> Result<()> {
        let mut out = BufWriter::with_capacity(1 << 22, &file);
        let pool = loader_pool(threads)?;
        for g in 0..BAND_GROUPS.len() {
            decode_group(split, &rows, g, &pool, |_, values| {
                values
                    .iter()
                    .try_for_each(|v| out.write_all(&v.to_le_bytes()))?;
                Ok(())
            })?;
        }
        for l in labels_of(split, &rows) {
            out.write_all(&l.to_le_bytes())?;
        }
        out.flush()?;
        Ok(())
    })();
    match written {
        Ok(()) => Ok(file),
        Err(e) => match e.downcast_ref::<std::io::Error>() {
            Some(io) if out_of_space(io) => Err(NotMade::Fallback(format!(
                "writing {} in {}: {io}",
                gib(bytes),
                folder.display()
            ))),
            _ => Err(NotMade::Failed(e.context(format!(
                "writing the node's shared copy of the {} split",
                split.split
            )))),
        },
    }
}

/// The split in host memory shared by the ranks of this node (see the module docs), or `None`
/// when this rank has no shared copy (the node's folder cannot hold it, or this rank cannot
/// open it): the caller then falls back.
pub fn load(
    split: Arc<SplitData>,
    norm: &Normalizer,
    compute: tch::Device,
    threads: usize,
    dist: &Dist,
) -> Result<Option<ResidentSplit>> {
    let started = Instant::now();
    let bytes = split.len as u64 * super::resident::BYTES_PER_PATCH;
    let folder = folder();
    let made = if dist.local_rank == 0 {
        remove_left_by_older_versions(&folder);
        Some(create(&split, threads, bytes, &folder))
    } else {
        None
    };
    // The node learns the outcome: 3 + the descriptor when made, 0 to fall back, 2 failed.
    let status = dist.node_broadcast_u64(match &made {
        Some(Ok(file)) => 3 + file.as_raw_fd() as u64,
        Some(Err(NotMade::Fallback(why))) => {
            tracing::warn!(
                needs = gib(bytes),
                "no shared copy of the {} split: {why}",
                split.split
            );
            0
        }
        Some(Err(NotMade::Failed(_))) => 2,
        None => 0,
    });
    let creator = dist.node_broadcast_u64(u64::from(std::process::id()));
    let made = match (status, made) {
        (2, Some(Err(NotMade::Failed(e)))) => return Err(e),
        (2, _) => bail!(
            "the node's first rank could not write the shared copy of the {} split (its error \
             is in its log)",
            split.split
        ),
        (0, _) => return Ok(None),
        (_, made) => made,
    };
    let fd = status - 3;
    let path = PathBuf::from(format!("/proc/{creator}/fd/{fd}"));
    let mapped = match &made {
        Some(Ok(file)) => Mapping::of(file, &path),
        _ => fs::File::open(&path)
            .with_context(|| format!("opening the node's shared copy {}", path.display()))
            .and_then(|file| Mapping::of(&file, &path)),
    };
    // The creator keeps its descriptor open until every rank of the node has its mapping.
    dist.node_barrier();
    drop(made);
    match mapped {
        Ok(mapping) => Ok(Some(views(split, mapping, norm, compute, dist, started))),
        Err(e) => {
            let split = split.split;
            tracing::warn!("no shared copy of the {split} split on this rank: {e:#}");
            Ok(None)
        }
    }
}

/// The split's tensors as views of the node's mapped copy.
fn views(
    split: Arc<SplitData>,
    mapping: Mapping,
    norm: &Normalizer,
    compute: tch::Device,
    dist: &Dist,
    started: Instant,
) -> ResidentSplit {
    let n = split.len as i64;
    let mut offset = 0;
    let mut groups = Vec::new();
    for g in BAND_GROUPS {
        let shape = [n, g.bands.len() as i64, g.side as i64, g.side as i64];
        groups.push(mapping.view(offset, &shape, Kind::Int16));
        offset += split.len * g.values_per_patch() * 2;
    }
    let labels = mapping.view(offset, &[n, NUM_CLASSES as i64], Kind::Float);
    let mut r = ResidentSplit::assemble(split, groups, labels, norm, compute, Placement::Host);
    r.load_s = started.elapsed().as_secs_f64();
    let pss = mapping.pss();
    r.shared = Some(mapping);
    tracing::info!(
        split = %r.split.split, patches = n, size = gib(r.bytes), ranks = dist.local_size,
        pss_mib = pss.map(|p| p / (1 << 20)), seconds = format!("{:.1}", r.load_s),
        "resident in host memory, one copy shared by the node's ranks"
    );
    r
}
