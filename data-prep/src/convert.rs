//! The conversion: archive → plan → per-split sharded arrays, built under `<out>.partial` and
//! renamed to `<out>` only once everything (arrays, attributes, rejects report) is written.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use indicatif::ProgressBar;
use rayon::prelude::*;

use crate::archive::{self, ArchiveFormat, PatchRecord, Reject};
use crate::geotiff::{self, BandError};
use crate::labels::{BEN19, NUM_CLASSES};
use crate::layout::{ALL_BANDS, BAND_COUNT, BAND_GROUPS, FORMAT_VERSION, Split, SplitInfo, StoreAttributes, Tool, partial_path, sibling};
use crate::plan::{self, ListFiles};
use crate::stats::BandSums;
use crate::store::{self, SplitWriter, StoreOptions};

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub archive: PathBuf,
    pub out: PathBuf,
    pub format: Option<ArchiveFormat>,
    pub lists: ListFiles,
    pub split_seed: u64,
    pub skip_bad: bool,
    pub overwrite: bool,
    pub store: StoreOptions,
}

pub struct Outcome {
    pub attrs: StoreAttributes,
    pub rejects: Vec<Reject>,
}

pub fn convert(opts: &ConvertOptions) -> Result<Outcome> {
    if opts.out.exists() && !opts.overwrite {
        bail!("{} already exists; pass --overwrite to replace it", opts.out.display());
    }
    if let Some(parent) = opts.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let lock_path = sibling(&opts.out, ".lock");
    let lock = fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    lock.try_lock().map_err(|_| anyhow!("another data-prep is writing {} (lock {} is held)", opts.out.display(), lock_path.display()))?;
    let result = convert_locked(opts);
    drop(lock);
    let _ = fs::remove_file(&lock_path);
    result
}

fn convert_locked(opts: &ConvertOptions) -> Result<Outcome> {
    let archive = archive::open(&opts.archive, opts.format)?;
    tracing::info!(format = %archive.format, root = %archive.root.display(), patches = archive.patches.len(),
        bad_metadata = archive.rejects.len(), "read archive metadata");
    let plan = plan::make_plan(&opts.archive, archive, &opts.lists, opts.split_seed)?;
    tracing::info!(to_write = plan.splits.values().map(Vec::len).sum::<usize>(), rss_mib = resident_mib(), "planned every patch");
    if !opts.skip_bad && !plan.rejects.is_empty() {
        bail!(bad_input_message(&plan.rejects, false));
    }

    let partial = partial_path(&opts.out);
    if partial.exists() {
        tracing::warn!(path = %partial.display(), "removing an incomplete store left by an interrupted run");
        fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;

    let result = build(opts, &plan, &partial);
    if result.is_err() {
        // A failed build leaves nothing behind; a killed one leaves `.partial`, which the next
        // run removes.
        let _ = fs::remove_dir_all(&partial);
    }
    let outcome = result?;
    finalize(&partial, &opts.out)?;
    Ok(outcome)
}

/// Writes every split, the rejects report and the attributes into `partial`.
fn build(opts: &ConvertOptions, plan: &plan::Plan, partial: &Path) -> Result<Outcome> {
    let total: usize = plan.splits.values().map(Vec::len).sum();
    let progress = crate::progress::bar(total as u64, "patches");
    let mut accounting = plan.accounting.clone();
    let mut rejects = plan.rejects.clone();
    let mut split_infos = BTreeMap::new();
    let mut train_sums = [BandSums::default(); BAND_COUNT];
    for (&split, patches) in &plan.splits {
        let writer = SplitWriter::create(partial, split, patches.len() as u64, &opts.store)?;
        let done = write_split(split, patches, &writer, &opts.store, opts.skip_bad, &progress)?;
        tracing::info!(%split, written = done.names.len(), rejected = done.rejects.len(), "split written");
        if split == Split::Train {
            train_sums = done.sums;
        }
        let mut label_counts = vec![0u64; NUM_CLASSES];
        for row in done.labels.chunks(NUM_CLASSES) {
            for (c, &l) in row.iter().enumerate() {
                label_counts[c] += l as u64;
            }
        }
        accounting.written.insert(split, done.names.len() as u64);
        accounting.rejected += done.rejects.len() as u64;
        rejects.extend(done.rejects);
        split_infos.insert(split, SplitInfo { patches: done.names.len() as u64, label_counts });
        writer.finish(&done.labels, &done.names)?;
    }
    progress.finish_and_clear();
    assert_eq!(accounting.accounted(), accounting.input_patches, "every input patch is accounted for");

    let band_stats = ALL_BANDS.iter().zip(train_sums.iter()).filter_map(|(b, s)| s.stats().map(|st| (b.to_string(), st))).collect();
    let attrs = StoreAttributes {
        format_version: FORMAT_VERSION,
        tool: Tool { name: "data-prep".into(), version: env!("CARGO_PKG_VERSION").into() },
        classes: BEN19.iter().map(|s| s.to_string()).collect(),
        band_groups: BAND_GROUPS.iter().map(|g| (g.array.to_string(), g.bands.iter().map(|b| b.to_string()).collect())).collect(),
        splits: split_infos,
        band_stats,
        source: plan.source.clone(),
        options: serde_json::json!({
            "codec": opts.store.codec,
            "level": opts.store.level,
            "shard_patches": opts.store.shard_patches,
            "skip_bad": opts.skip_bad,
            "split_seed": opts.split_seed,
        }),
        accounting,
    };
    store::write_rejects(partial, &rejects)?;
    store::write_root(partial, &attrs)?;
    Ok(Outcome { attrs, rejects })
}

/// The error for bad input without `--skip-bad`: metadata problems are all listed at once;
/// pixel problems stop the conversion at the first one.
/// Resident memory of this process (Linux), logged after planning: the per-patch index is all
/// that grows with the archive.
fn resident_mib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

fn bad_input_message(rejects: &[Reject], stopped_at_first: bool) -> String {
    let mut msg = if stopped_at_first {
        "bad input; stopped, no store was written:\n".to_string()
    } else {
        format!("{} bad input patch(es); no store was written:\n", rejects.len())
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

/// Replaces `out` by the finished `partial` with renames only, so a reader sees the old store
/// or the new one, never a mix; the old one is removed afterwards.
fn finalize(partial: &Path, out: &Path) -> Result<()> {
    fs::File::open(partial)?.sync_all()?;
    if out.exists() {
        let old = sibling(out, ".old");
        if old.exists() {
            fs::remove_dir_all(&old)?;
        }
        fs::rename(out, &old).with_context(|| format!("moving the old {} aside", out.display()))?;
        fs::rename(partial, out).with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
        fs::remove_dir_all(&old)?;
    } else {
        fs::rename(partial, out).with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
    }
    Ok(())
}

/// What one split's conversion produced.
struct SplitDone {
    names: Vec<String>,
    labels: Vec<u8>,
    /// Per band, in [`ALL_BANDS`] order.
    sums: [BandSums; BAND_COUNT],
    rejects: Vec<Reject>,
}

/// Patches read for one shard: values per band group, patch-major.
#[derive(Default)]
struct Shard {
    groups: [Vec<u16>; 3],
    names: Vec<String>,
    labels: Vec<u8>,
    sums: [BandSums; BAND_COUNT],
    rejects: Vec<Reject>,
}

fn band_error_reason(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound { "missing band file".into() } else { format!("cannot read: {e}") }
}

/// Reads one patch's band files into `out` (one slice per band group, channels in layout
/// order); returns the per-band sums in [`ALL_BANDS`] order.
fn read_patch_into(p: &PatchRecord, out: [&mut [u16]; 3]) -> Result<[BandSums; BAND_COUNT], Reject> {
    let mut sums = [BandSums::default(); BAND_COUNT];
    for (g, dest) in BAND_GROUPS.iter().zip(out) {
        let n = g.pixels_per_band();
        for (k, band) in g.bands.iter().enumerate() {
            let path = p.band_path(band);
            let reject = |reason: String| Reject { patch: p.name.clone(), file: path.clone(), reason };
            let bytes = fs::read(&path).map_err(|e| reject(band_error_reason(&e)))?;
            let px = geotiff::decode_band(&bytes, g.side).map_err(|e: BandError| reject(e.to_string()))?;
            let b = ALL_BANDS.iter().position(|x| x == band).expect("layout bands are archive bands");
            sums[b] = BandSums::of(&px);
            dest[k * n..(k + 1) * n].copy_from_slice(&px);
        }
    }
    Ok(sums)
}

impl Shard {
    fn len(&self) -> usize {
        self.names.len()
    }

    /// Reads patches from `patches[*cursor..]` until the shard holds `size` good ones or the
    /// input ends. Pixels are decoded straight into the shard's buffers, in parallel; bad
    /// patches stop the conversion, or with `skip_bad` are set aside and their slots reused.
    fn fill(patches: &[PatchRecord], cursor: &mut usize, size: usize, skip_bad: bool) -> Result<Shard> {
        let mut shard = Shard::default();
        let per_patch = BAND_GROUPS.map(|g| g.values_per_patch());
        while shard.len() < size && *cursor < patches.len() {
            let batch = &patches[*cursor..patches.len().min(*cursor + size - shard.len())];
            *cursor += batch.len();
            let start = shard.len();
            for (buf, n) in shard.groups.iter_mut().zip(per_patch) {
                buf.resize((start + batch.len()) * n, 0);
            }
            let [g10, g20, g60] = &mut shard.groups;
            let results: Vec<Result<[BandSums; BAND_COUNT], Reject>> = g10[start * per_patch[0]..]
                .par_chunks_mut(per_patch[0])
                .zip(g20[start * per_patch[1]..].par_chunks_mut(per_patch[1]))
                .zip(g60[start * per_patch[2]..].par_chunks_mut(per_patch[2]))
                .zip(batch.par_iter())
                .map(|(((a, b), c), p)| read_patch_into(p, [a, b, c]))
                .collect();
            for (k, (p, r)) in batch.iter().zip(results).enumerate() {
                match r {
                    Ok(sums) => {
                        let (from, to) = (start + k, shard.len());
                        if from != to {
                            for (buf, n) in shard.groups.iter_mut().zip(per_patch) {
                                buf.copy_within(from * n..(from + 1) * n, to * n);
                            }
                        }
                        shard.names.push(p.name.clone());
                        shard.labels.extend_from_slice(&p.labels);
                        for (acc, s) in shard.sums.iter_mut().zip(sums.iter()) {
                            acc.add(s);
                        }
                    }
                    Err(rej) if skip_bad => shard.rejects.push(rej),
                    Err(rej) => bail!(bad_input_message(&[rej], true)),
                }
            }
            let kept = shard.len();
            for (buf, n) in shard.groups.iter_mut().zip(per_patch) {
                buf.truncate(kept * n);
            }
        }
        Ok(shard)
    }
}

fn write_split(
    split: Split,
    patches: &[PatchRecord],
    writer: &SplitWriter,
    opts: &StoreOptions,
    skip_bad: bool,
    progress: &ProgressBar,
) -> Result<SplitDone> {
    let size = opts.shard_patches as usize;
    let mut done = SplitDone { names: Vec::new(), labels: Vec::new(), sums: [BandSums::default(); BAND_COUNT], rejects: Vec::new() };
    let mut cursor = 0;
    let mut next = Shard::fill(patches, &mut cursor, size, skip_bad)?;
    // Encode and write one shard while the next one's files are read.
    while next.len() > 0 || !next.rejects.is_empty() {
        let current = next;
        let start = done.names.len() as u64;
        let (written, read) = rayon::join(
            || {
                if current.len() > 0 { writer.write(start, &current.groups) } else { Ok(()) }
            },
            || Shard::fill(patches, &mut cursor, size, skip_bad),
        );
        written.with_context(|| format!("writing split {split}"))?;
        next = read?;
        progress.inc((current.len() + current.rejects.len()) as u64);
        done.names.extend(current.names);
        done.labels.extend(current.labels);
        for (acc, s) in done.sums.iter_mut().zip(current.sums.iter()) {
            acc.add(s);
        }
        done.rejects.extend(current.rejects);
    }
    Ok(done)
}
