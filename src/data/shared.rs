//! One host copy of a resident split per node (docs/training.md, "Resident data"): with several
//! ranks on a node and `data.resident` placing a split in host memory, the node's first rank
//! decodes it once into a file in `/dev/shm`, every rank of the node maps that file read-only,
//! and the file's name is removed as soon as all have mapped it. The memory is then freed by
//! the kernel when the last rank exits, however it exits; a file left by a job killed between
//! creating and removing it is removed by the next start on the node (its creator no longer
//! runs). N ranks on a node thus hold one copy instead of N.

use std::fs;
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tch::{Device, Kind, Tensor};

use super::Normalizer;
use super::resident::Placement;
use super::resident::{ResidentSplit, decode_group, gib, labels_of, loader_pool};
use crate::dist::Dist;
use lossbench_core::labels::NUM_CLASSES;
use lossbench_core::layout::BAND_GROUPS;
use lossbench_core::store::SplitData;

const SHM: &str = "/dev/shm";
const PREFIX: &str = "lossbench-";

/// A file mapped read-only into this process; unmapped on drop.
pub struct Mapping {
    address: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and lives until dropped; tensors viewing it only read.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the address and length mmap returned.
        unsafe { libc::munmap(self.address, self.len) };
    }
}

impl Mapping {
    fn open(path: &Path) -> Result<Mapping> {
        let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata()?.len() as usize;
        // SAFETY: a fresh shared read-only mapping of a whole file this process opened.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            bail!(
                "mapping {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Mapping { address, len })
    }

    /// A tensor of `shape` and `kind` viewing the bytes at `offset` (no copy).
    fn view(&self, offset: usize, shape: &[i64], kind: Kind) -> Tensor {
        let bytes: i64 = shape.iter().product::<i64>() * kind.elt_size_in_bytes() as i64;
        assert!(
            offset + bytes as usize <= self.len,
            "a view inside the mapping"
        );
        // SAFETY: the bytes lie inside the mapping, which outlives the tensor (ResidentSplit
        // drops its tensors before its mapping); libtorch only reads them.
        unsafe {
            let data = (self.address as *const u8).add(offset);
            Tensor::from_blob(data, shape, &[], kind, Device::Cpu)
        }
    }

    /// This process's proportional share of the mapping's resident memory (PSS), in bytes.
    pub fn pss(&self) -> Option<u64> {
        let smaps = fs::read_to_string("/proc/self/smaps").ok()?;
        let start = format!("{:x}-", self.address as usize);
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        lines.next()?;
        let pss = lines.find(|l| l.starts_with("Pss:"))?;
        Some(pss.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }
}

/// Removes `lossbench-*` files of `/dev/shm` whose creator (the pid in their name) no longer
/// runs: left by a job killed before it could remove them.
fn remove_stale() {
    let Ok(entries) = fs::read_dir(SHM) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next()?.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The shared file's name: the node's first rank's pid, the store and the split.
fn file_name(creator: u64, store: &str, split: &SplitData) -> PathBuf {
    let store: String = store
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    Path::new(SHM).join(format!("{PREFIX}{creator}-{store}-{}", split.split))
}

/// Free bytes of `/dev/shm`.
fn shm_free() -> Option<u64> {
    let path = std::ffi::CString::new(SHM).ok()?;
    // SAFETY: statvfs fills the struct it is given.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(path.as_ptr(), &mut st) } == 0).then(|| st.f_bavail * st.f_frsize)
}

/// Writes the split's band groups (int16) and labels (f32), one after the other, to `path`.
fn write_file(split: &SplitData, rows: &[usize], threads: usize, path: &Path) -> Result<()> {
    let tmp = lossbench_core::files::temp_path(path);
    let written = (|| -> Result<()> {
        let mut out = BufWriter::with_capacity(1 << 22, fs::File::create(&tmp)?);
        let pool = loader_pool(threads)?;
        for g in 0..BAND_GROUPS.len() {
            decode_group(split, rows, g, &pool, |_, values| {
                values
                    .iter()
                    .try_for_each(|v| out.write_all(&v.to_le_bytes()))?;
                Ok(())
            })?;
        }
        for l in labels_of(split, rows) {
            out.write_all(&l.to_le_bytes())?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(())
    })();
    written
        .and_then(|()| Ok(fs::rename(&tmp, path)?))
        .with_context(|| format!("writing the node's shared copy {}", path.display()))
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
}

/// The split in host memory shared by the ranks of this node (see the module docs), or `None`
/// when `/dev/shm` cannot hold it (the caller then loads a private copy).
pub fn load(
    split: Arc<SplitData>,
    norm: &Normalizer,
    compute: Device,
    threads: usize,
    dist: &Dist,
    store: &str,
) -> Result<Option<ResidentSplit>> {
    let started = Instant::now();
    let rows: Vec<usize> = (0..split.len).collect();
    let bytes = split.len as u64 * super::resident::BYTES_PER_PATCH;
    let creator = dist.node_broadcast_u64(u64::from(std::process::id()));
    let path = file_name(creator, store, &split);
    let made = if dist.local_rank == 0 {
        remove_stale();
        match shm_free() {
            Some(free) if free > bytes => write_file(&split, &rows, threads, &path).map(|()| true),
            free => {
                let free = free.map_or("unknown".into(), gib);
                tracing::warn!(
                    needs = gib(bytes),
                    free,
                    "{SHM} cannot hold the {} split: each rank holds its own copy",
                    split.split
                );
                Ok(false)
            }
        }
    } else {
        Ok(true)
    };
    // Every rank of the node learns whether the file is there (a failure to write it is
    // rank 0's error; the others report that).
    let status = dist.node_broadcast_u64(match &made {
        Ok(true) => 1,
        Ok(false) => 0,
        Err(_) => 2,
    });
    match (status, made) {
        (2, Err(e)) => return Err(e),
        (2, _) => bail!("the node's first rank could not write {}", path.display()),
        (0, _) => return Ok(None),
        _ => {}
    }
    let mapping = Mapping::open(&path);
    dist.node_barrier();
    if dist.local_rank == 0 {
        // Every rank has it mapped: the name can go, the memory stays until the last unmaps.
        let _ = fs::remove_file(&path);
    }
    let mapping = mapping?;
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
    Ok(Some(r))
}
