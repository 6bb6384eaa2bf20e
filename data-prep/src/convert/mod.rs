//! The conversion: an archive (an unpacked folder, or one packed file read as a stream) →
//! per-split sharded arrays, built under `<out>.partial` and renamed to `<out>` only once
//! everything (arrays, attributes, rejects report) is written.
//!
//! Both routes feed the same pipeline: patches, each with its split decided ([`crate::plan`]),
//! are decoded in parallel a chunk at a time while the shards filled by the previous chunks are
//! compressed and written. An unpacked archive feeds its patches split by split in name order;
//! a packed one in the order its patches complete in the stream.

mod folder;
mod packed;
mod sinks;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use crate::archive::{ArchiveFormat, Reject};
use crate::packed::Packing;
use crate::plan::ListFiles;
use crate::store::StoreOptions;
use lossbench_core::layout::{StoreAttributes, partial_path, sibling};

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// An unpacked archive folder, or a packed archive file (`.tar.gz`, `.tar.zst`, `.tar`).
    pub archive: PathBuf,
    pub out: PathBuf,
    pub format: Option<ArchiveFormat>,
    pub lists: ListFiles,
    /// v2.0's `metadata.parquet` for a packed archive (default: beside it).
    pub metadata: Option<PathBuf>,
    pub split_seed: u64,
    pub skip_bad: bool,
    pub overwrite: bool,
    /// With `overwrite`: replace the store even while processes read it.
    pub force: bool,
    pub store: StoreOptions,
    /// Patches of a packed archive that may be incomplete at once.
    pub max_pending: usize,
}

/// Default of [`ConvertOptions::max_pending`]: up to about 90 MB of held members.
pub const DEFAULT_MAX_PENDING: usize = 512;

pub struct Outcome {
    pub attrs: StoreAttributes,
    pub rejects: Vec<Reject>,
}

pub fn convert(opts: &ConvertOptions) -> Result<Outcome> {
    if !opts.archive.exists() {
        bail!("--archive {}: does not exist", opts.archive.display());
    }
    if opts.out.exists() && !opts.overwrite {
        bail!(
            "{} already exists; pass --overwrite to replace it",
            opts.out.display()
        );
    }
    if let Some(parent) = opts.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let lock = lock_store(opts)?;
    restore_interrupted_replacement(&opts.out)?;
    convert_locked(opts, &lock)
}

/// The store's lock (`<out>.lock`, [`lossbench_core::store::lock_path`]) held exclusively for
/// the whole conversion: a second data-prep writing the same store is refused, and so is an
/// existing store's replacement while processes read it (unless `--force`); readers that start
/// meanwhile are told the store is being replaced. The lock lives in its own file: the old
/// store's bytes stay as they are until the new one replaces it by renames.
fn lock_store(opts: &ConvertOptions) -> Result<lossbench_core::lock::Lock> {
    use lossbench_core::lock::{LockError, Mode, try_lock, try_lock_past_readers};
    let path = lossbench_core::store::lock_path(&opts.out);
    let purpose = if opts.overwrite {
        "data-prep convert --overwrite"
    } else {
        "data-prep convert"
    };
    let taken = if opts.force {
        try_lock_past_readers(&path, purpose)
    } else {
        try_lock(&path, Mode::Exclusive, purpose)
    };
    taken.map_err(|e| match e {
        LockError::Held {
            holder: Some(h), ..
        } => anyhow!("another data-prep is writing {}: {h}", opts.out.display()),
        LockError::Held { .. } => anyhow!(
            "{} is being read (by a trainer, a landscape, an explanation or a report): replacing \
             it now would mix its old labels with the new pixels in their results; wait until \
             they end, convert into another folder, or pass --force. {e}",
            opts.out.display()
        ),
        e => anyhow::Error::new(e).context(format!("locking {}", opts.out.display())),
    })
}

fn convert_locked(opts: &ConvertOptions, lock: &lossbench_core::lock::Lock) -> Result<Outcome> {
    let packing = if opts.archive.is_file() {
        let packing = Packing::of(&opts.archive).with_context(|| {
            format!(
                "{}: not an archive folder, and not a .tar.gz, .tgz, .tar.zst, .tzst or .tar file",
                opts.archive.display()
            )
        })?;
        packing.verify(&opts.archive)?;
        Some(packing)
    } else {
        None
    };
    let partial = partial_path(&opts.out);
    if partial.exists() {
        tracing::warn!(path = %partial.display(), "removing an incomplete store left by an interrupted run");
        fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let result = match packing {
        None => folder::convert_folder(opts, &partial),
        Some(p) => packed::convert_packed(opts, p, &partial),
    };
    if result.is_err() {
        // A failed build leaves nothing behind; a killed one leaves `.partial`, which the next
        // run removes.
        let _ = fs::remove_dir_all(&partial);
    }
    let outcome = result?;
    // Replaced only by the holder of the lock (never after another node took it over).
    lock.check()?;
    finalize(&partial, &opts.out)?;
    Ok(outcome)
}

/// Resident memory of this process (Linux), logged after planning: the per-patch index is all
/// that grows with the archive.
fn resident_mib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// The error for bad input without `--skip-bad`: metadata problems are all listed at once;
/// pixel problems stop the conversion at the first one.
fn bad_input_message(rejects: &[Reject], stopped_at_first: bool) -> String {
    let mut msg = if stopped_at_first {
        "bad input; stopped, no store was written:\n".to_string()
    } else {
        format!(
            "{} bad input patch(es); no store was written:\n",
            rejects.len()
        )
    };
    for r in rejects.iter().take(20) {
        msg.push_str(&format!("  {r}\n"));
    }
    if rejects.len() > 20 {
        msg.push_str(&format!("  ... and {} more\n", rejects.len() - 20));
    }
    msg.push_str("pass --skip-bad to write the other patches and a rejects report");
    msg
}

/// A random 128-bit id, as 32 hex digits.
fn new_store_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Replaces `out` by the finished `partial`: the two folders' names exchanged in one step where
/// the file system can (a reader or a kill sees the old store or the new one, never neither),
/// else the old store moved aside to `<out>.old` and the new one renamed in (a kill between the
/// two renames is repaired by the next conversion, [`restore_interrupted_replacement`]); the old
/// one is removed afterwards.
fn finalize(partial: &Path, out: &Path) -> Result<()> {
    fs::File::open(partial)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", partial.display()))?;
    let swapped = out.exists()
        && lossbench_core::files::exchange(partial, out)
            .with_context(|| format!("exchanging {} and {}", partial.display(), out.display()))?;
    if swapped {
        // `partial` now names the old store.
        fs::remove_dir_all(partial).with_context(|| format!("removing {}", partial.display()))?;
    } else if out.exists() {
        let old = sibling(out, ".old");
        if old.exists() {
            fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        fs::rename(out, &old).with_context(|| format!("moving the old {} aside", out.display()))?;
        fs::rename(partial, out)
            .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
        fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    } else {
        fs::rename(partial, out)
            .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
    }
    lossbench_core::files::sync_parent(out)
}

/// After a conversion killed between moving the old store aside and renaming the new one in
/// (file systems without an exchange): the old store is renamed back.
fn restore_interrupted_replacement(out: &Path) -> Result<()> {
    let old = sibling(out, ".old");
    if !out.exists() && old.join("zarr.json").is_file() {
        tracing::warn!(store = %out.display(), "restoring the store a killed conversion had moved aside");
        fs::rename(&old, out)
            .with_context(|| format!("renaming {} back to {}", old.display(), out.display()))?;
    }
    Ok(())
}
