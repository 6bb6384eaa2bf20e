//! The pipeline both routes feed: patches decoded in parallel a chunk at a time ([`decode`]),
//! and per split the shards they fill, compressed and written by a writer thread while the
//! next chunk is decoded ([`Sinks`]), then the store's attributes.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow, bail};
use rayon::prelude::*;

use crate::archive::Reject;
use crate::geotiff;
use crate::stats::BandSums;
use crate::store::{self, SplitWriter};
use lossbench_core::labels::{BEN19, LabelVector, NUM_CLASSES};
use lossbench_core::layout::{
    ALL_BANDS, Accounting, BAND_COUNT, BAND_GROUPS, FORMAT_VERSION, Source, Split, SplitInfo,
    StoreAttributes, Tool,
};

use super::{ConvertOptions, Outcome, bad_input_message, new_store_id};

/// Patches decoded per step: enough to keep every thread busy, few enough to bound memory
/// (each holds 160 KB of pixels).
pub(super) const CHUNK: usize = 128;

/// One patch to decode and the split it goes to.
pub(super) struct Work {
    pub(super) split: Split,
    pub(super) name: String,
    pub(super) labels: LabelVector,
    pub(super) input: Input,
}

pub(super) enum Input {
    /// The patch folder of an unpacked archive.
    Folder(PathBuf),
    /// The band files' bytes (in [`ALL_BANDS`] order) from a packed archive, named for messages.
    Packed {
        bands: Vec<Vec<u8>>,
        archive: PathBuf,
    },
}

/// A patch's pixels per band group (channels in layout order) and per-band sums.
struct Decoded {
    groups: [Vec<u16>; 3],
    sums: [BandSums; BAND_COUNT],
}

/// Reads a whole file with one open and as few reads as its size needs (no `stat`): the
/// folder route reads 12 small files per patch, so system calls count.
fn read_small_file(path: &Path, expected: usize) -> std::io::Result<Vec<u8>> {
    let mut file = fs::File::open(path)?;
    let mut buf = vec![0u8; expected + 1];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = file.read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
        // A regular file returns less than asked only at its end.
        if len < buf.len() {
            break;
        }
    }
    buf.truncate(len);
    Ok(buf)
}

fn decode(w: &Work) -> Result<Decoded, Reject> {
    let mut groups: [Vec<u16>; 3] = Default::default();
    let mut sums = [BandSums::default(); BAND_COUNT];
    for (g, group) in BAND_GROUPS.iter().enumerate() {
        groups[g].reserve_exact(group.values_per_patch());
        for band in group.bands {
            let b = ALL_BANDS
                .iter()
                .position(|x| x == band)
                .expect("layout bands are archive bands");
            let file_name = format!("{}_{band}.tif", w.name);
            let (bytes, file) = match &w.input {
                Input::Folder(dir) => {
                    let path = dir.join(&file_name);
                    let reason = |e: std::io::Error| {
                        if e.kind() == std::io::ErrorKind::NotFound {
                            "missing band file".to_string()
                        } else {
                            format!("cannot read: {e}")
                        }
                    };
                    let read = read_small_file(&path, geotiff::typical_file_size(group.side));
                    match read {
                        Ok(bytes) => (std::borrow::Cow::Owned(bytes), path),
                        Err(e) => {
                            return Err(Reject {
                                patch: w.name.clone(),
                                file: path,
                                reason: reason(e),
                            });
                        }
                    }
                }
                Input::Packed { bands, archive } => (
                    std::borrow::Cow::Borrowed(&bands[b][..]),
                    PathBuf::from(format!("{}:{file_name}", archive.display())),
                ),
            };
            let px = geotiff::decode_band(&bytes, group.side).map_err(|e| Reject {
                patch: w.name.clone(),
                file: file.clone(),
                reason: e.to_string(),
            })?;
            sums[b] = BandSums::of(&px);
            groups[g].extend_from_slice(&px);
        }
    }
    Ok(Decoded { groups, sums })
}

/// One split being written: the shard being filled and everything recorded so far.
struct SplitSink {
    /// Pixels of the patches not yet written, per band group.
    shard: [Vec<u16>; 3],
    /// Patches written to the array so far.
    stored: u64,
    names: Vec<String>,
    labels: Vec<u8>,
    sums: [BandSums; BAND_COUNT],
}

/// A full shard on its way to the store.
struct ShardWrite {
    split: Split,
    start: u64,
    groups: [Vec<u16>; 3],
}

/// Full shards a writer thread compresses and stores while the next patches are read and
/// decoded; it hands the split writers back at the end.
struct ShardWriter {
    tx: SyncSender<ShardWrite>,
    thread: JoinHandle<Result<BTreeMap<Split, SplitWriter>>>,
}

/// Full shards waiting for the writer thread beside the one it writes.
const SHARDS_QUEUED: usize = 1;

impl ShardWriter {
    fn start(writers: BTreeMap<Split, SplitWriter>) -> Result<ShardWriter> {
        let (tx, rx) = sync_channel::<ShardWrite>(SHARDS_QUEUED);
        let thread = std::thread::Builder::new()
            .name("shard-writer".into())
            .spawn(move || {
                for w in rx {
                    writers[&w.split]
                        .write(w.start, &w.groups)
                        .with_context(|| format!("writing split {}", w.split))?;
                }
                Ok(writers)
            })
            .context("starting the shard writer")?;
        Ok(ShardWriter { tx, thread })
    }

    /// Waits for every queued shard; the writers, or the first write's error.
    fn finish(self) -> Result<BTreeMap<Split, SplitWriter>> {
        drop(self.tx);
        self.thread
            .join()
            .map_err(|_| anyhow!("the shard writer panicked"))?
    }
}

/// Where decoded patches go: one sink per split, the accounting and the rejects.
pub(super) struct Sinks {
    splits: BTreeMap<Split, SplitSink>,
    writer: Option<ShardWriter>,
    shard_patches: usize,
    skip_bad: bool,
    pub(super) accounting: Accounting,
    rejects: Vec<Reject>,
    options: serde_json::Value,
}

impl Sinks {
    pub(super) fn create(
        partial: &Path,
        capacities: [u64; 3],
        opts: &ConvertOptions,
        accounting: Accounting,
        rejects: Vec<Reject>,
    ) -> Result<Sinks> {
        let mut splits = BTreeMap::new();
        let mut writers = BTreeMap::new();
        for (split, capacity) in Split::ALL.into_iter().zip(capacities) {
            writers.insert(
                split,
                SplitWriter::create(partial, split, capacity, &opts.store)?,
            );
            let sink = SplitSink {
                shard: Default::default(),
                stored: 0,
                names: Vec::new(),
                labels: Vec::new(),
                sums: [BandSums::default(); BAND_COUNT],
            };
            splits.insert(split, sink);
        }
        let options = serde_json::json!({
            "codec": opts.store.codec,
            "level": opts.store.level,
            "shard_patches": opts.store.shard_patches,
            "skip_bad": opts.skip_bad,
            "split_seed": opts.split_seed,
        });
        Ok(Sinks {
            splits,
            writer: Some(ShardWriter::start(writers)?),
            shard_patches: opts.store.shard_patches as usize,
            skip_bad: opts.skip_bad,
            accounting,
            rejects,
            options,
        })
    }

    /// A patch that cannot be used: recorded with `--skip-bad`, else the end of the conversion.
    pub(super) fn reject(&mut self, r: Reject) -> Result<()> {
        if !self.skip_bad {
            bail!(bad_input_message(&[r], true));
        }
        self.accounting.rejected += 1;
        self.rejects.push(r);
        Ok(())
    }

    /// Decodes `chunk` in parallel (full shards are written meanwhile by the writer thread),
    /// then files each patch into its split's shard, in order.
    pub(super) fn process(&mut self, chunk: Vec<Work>) -> Result<()> {
        let decoded: Vec<Result<Decoded, Reject>> = chunk.par_iter().map(decode).collect();
        for (work, result) in chunk.into_iter().zip(decoded) {
            match result {
                Ok(d) => self.file(work, d)?,
                Err(r) => self.reject(r)?,
            }
        }
        Ok(())
    }

    /// Hands a full shard to the writer thread (waiting while two are queued).
    fn write(&mut self, w: ShardWrite) -> Result<()> {
        let writer = self
            .writer
            .as_ref()
            .context("the shard writer has stopped")?;
        if writer.tx.send(w).is_err() {
            // The writer stopped on an error: report it.
            let stopped = self.writer.take().expect("checked above").finish();
            return Err(stopped
                .err()
                .unwrap_or_else(|| anyhow!("the shard writer stopped")));
        }
        Ok(())
    }

    fn file(&mut self, work: Work, d: Decoded) -> Result<()> {
        let sink = self
            .splits
            .get_mut(&work.split)
            .expect("every split has a sink");
        for (buf, values) in sink.shard.iter_mut().zip(&d.groups) {
            buf.extend_from_slice(values);
        }
        for (acc, s) in sink.sums.iter_mut().zip(&d.sums) {
            acc.add(s);
        }
        sink.names.push(work.name);
        sink.labels.extend_from_slice(&work.labels);
        let held = sink.names.len() as u64 - sink.stored;
        if held as usize == self.shard_patches {
            // The next shard's buffers at their full size: no regrowing while they fill.
            let next =
                BAND_GROUPS.map(|g| Vec::with_capacity(self.shard_patches * g.values_per_patch()));
            let full = ShardWrite {
                split: work.split,
                start: sink.stored,
                groups: std::mem::replace(&mut sink.shard, next),
            };
            sink.stored += held;
            self.write(full)?;
        }
        Ok(())
    }

    /// Writes what is left, every split's labels and names, the rejects report and the
    /// attributes.
    pub(super) fn finish(mut self, partial: &Path, source: Source) -> Result<Outcome> {
        let splits: Vec<Split> = self.splits.keys().copied().collect();
        for split in splits {
            let sink = self.splits.get_mut(&split).expect("listed");
            let held = sink.names.len() as u64 - sink.stored;
            if held > 0 {
                let groups = std::mem::take(&mut sink.shard);
                let last = ShardWrite {
                    split,
                    start: sink.stored,
                    groups,
                };
                sink.stored += held;
                self.write(last)?;
            }
        }
        let mut writers = self
            .writer
            .take()
            .context("the shard writer has stopped")?
            .finish()?;
        let mut split_infos = BTreeMap::new();
        let mut train_sums = [BandSums::default(); BAND_COUNT];
        for (split, sink) in self.splits {
            tracing::info!(%split, written = sink.names.len(), "split written");
            self.accounting
                .written
                .insert(split, sink.names.len() as u64);
            split_infos.insert(split, sink.info());
            if split == Split::Train {
                train_sums = sink.sums;
            }
            let writer = writers.remove(&split).expect("a writer per split");
            writer.finish(&sink.labels, &sink.names)?;
        }
        let accounting = self.accounting;
        if accounting.accounted() != accounting.input_patches {
            bail!(
                "internal error: {} input patches but {} accounted for: {accounting:?}",
                accounting.input_patches,
                accounting.accounted()
            );
        }
        let band_stats = ALL_BANDS
            .iter()
            .zip(train_sums.iter())
            .filter_map(|(b, s)| s.stats().map(|st| (b.to_string(), st)))
            .collect();
        let attrs = attributes(split_infos, band_stats, source, self.options, accounting);
        store::write_rejects(partial, &self.rejects)?;
        store::write_root(partial, &attrs)?;
        Ok(Outcome {
            attrs,
            rejects: self.rejects,
        })
    }
}

impl SplitSink {
    /// The split's patch count and patches per class.
    fn info(&self) -> SplitInfo {
        let mut label_counts = vec![0u64; NUM_CLASSES];
        for row in self.labels.chunks(NUM_CLASSES) {
            for (count, &l) in label_counts.iter_mut().zip(row) {
                *count += l as u64;
            }
        }
        SplitInfo {
            patches: self.names.len() as u64,
            label_counts,
        }
    }
}

/// The store's attributes (docs/store.md), with a new store id.
fn attributes(
    splits: BTreeMap<Split, SplitInfo>,
    band_stats: BTreeMap<String, lossbench_core::layout::BandStats>,
    source: Source,
    options: serde_json::Value,
    accounting: Accounting,
) -> StoreAttributes {
    let band_groups = BAND_GROUPS
        .iter()
        .map(|g| {
            (
                g.array.to_string(),
                g.bands.iter().map(|b| b.to_string()).collect(),
            )
        })
        .collect();
    StoreAttributes {
        format_version: FORMAT_VERSION,
        tool: Tool {
            name: "data-prep".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        classes: BEN19.iter().map(|s| s.to_string()).collect(),
        band_groups,
        splits,
        band_stats,
        source,
        options,
        accounting,
        store_id: Some(new_store_id()),
    }
}
