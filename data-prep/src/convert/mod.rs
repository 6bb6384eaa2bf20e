//! The conversion: an archive (an unpacked folder, or one packed file read as a stream) →
//! per-split sharded arrays, built under `<out>.partial` and renamed to `<out>` only once
//! everything (arrays, attributes, rejects report) is written.
//!
//! Both routes feed the same pipeline: patches, each with its split decided ([`crate::plan`]),
//! are decoded in parallel a chunk at a time while the shards filled by the previous chunks are
//! compressed and written. An unpacked archive feeds its patches split by split in name order;
//! a packed one in the order its patches complete in the stream.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rayon::prelude::*;

use crate::archive::{self, ArchiveFormat, PatchRecord, Reject};
use crate::geotiff;
use crate::packed::{self, Event, PackedStream, Packing};
use crate::plan::{self, Fate, ListFiles, Rules};
use crate::stats::BandSums;
use crate::store::{self, SplitWriter, StoreOptions};
use lossbench_core::labels::{BEN19, LabelVector, NUM_CLASSES};
use lossbench_core::layout::{
    ALL_BANDS, Accounting, BAND_COUNT, BAND_GROUPS, FORMAT_VERSION, Source, Split, SplitInfo,
    StoreAttributes, Tool, partial_path, sibling,
};

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
        None => convert_folder(opts, &partial),
        Some(p) => convert_packed(opts, p, &partial),
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

/// An unpacked archive: every patch planned from its metadata first, then converted split by
/// split in name order.
fn convert_folder(opts: &ConvertOptions, partial: &Path) -> Result<Outcome> {
    let archive = archive::open(&opts.archive, opts.format)?;
    tracing::info!(format = %archive.format, root = %archive.root.display(), patches = archive.patches.len(),
        bad_metadata = archive.rejects.len(), "read archive metadata");
    let plan = plan::make_plan(&opts.archive, archive, &opts.lists, opts.split_seed)?;
    tracing::info!(
        to_write = plan.splits.values().map(Vec::len).sum::<usize>(),
        rss_mib = resident_mib(),
        "planned every patch"
    );
    if !opts.skip_bad && !plan.rejects.is_empty() {
        bail!(bad_input_message(&plan.rejects, false));
    }
    let total: usize = plan.splits.values().map(Vec::len).sum();
    let progress = lossbench_core::progress::bar(total as u64, "patches");
    let capacities = Split::ALL.map(|s| plan.splits[&s].len() as u64);
    let mut sinks = Sinks::create(
        partial,
        capacities,
        opts,
        plan.accounting.clone(),
        plan.rejects.clone(),
    )?;
    for (&split, patches) in &plan.splits {
        for chunk in patches.chunks(CHUNK) {
            let work = chunk.iter().map(|p| Work {
                split,
                name: p.name.clone(),
                labels: p.labels,
                input: Input::Folder(p.dir.clone()),
            });
            sinks.process(work.collect())?;
            progress.inc(chunk.len() as u64);
        }
    }
    progress.finish_and_clear();
    sinks.finish(partial, plan.source)
}

/// Patches decoded per step: enough to keep every thread busy, few enough to bound memory
/// (each holds 160 KB of pixels).
const CHUNK: usize = 128;

/// One patch to decode and the split it goes to.
struct Work {
    split: Split,
    name: String,
    labels: LabelVector,
    input: Input,
}

enum Input {
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
struct Sinks {
    splits: BTreeMap<Split, SplitSink>,
    writer: Option<ShardWriter>,
    shard_patches: usize,
    skip_bad: bool,
    accounting: Accounting,
    rejects: Vec<Reject>,
    options: serde_json::Value,
}

impl Sinks {
    fn create(
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
    fn reject(&mut self, r: Reject) -> Result<()> {
        if !self.skip_bad {
            bail!(bad_input_message(&[r], true));
        }
        self.accounting.rejected += 1;
        self.rejects.push(r);
        Ok(())
    }

    /// Decodes `chunk` in parallel (full shards are written meanwhile by the writer thread),
    /// then files each patch into its split's shard, in order.
    fn process(&mut self, chunk: Vec<Work>) -> Result<()> {
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
    fn finish(mut self, partial: &Path, source: Source) -> Result<Outcome> {
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

/// A packed archive, read once as a stream: each patch is decided and converted as its last
/// member arrives.
fn convert_packed(opts: &ConvertOptions, packing: Packing, partial: &Path) -> Result<Outcome> {
    let path = &opts.archive;
    let (format, known, rules, metadata_rejects) = packed_metadata(opts)?;
    if !opts.skip_bad && !metadata_rejects.is_empty() {
        bail!(bad_input_message(&metadata_rejects, false));
    }
    let accounting = Accounting {
        input_patches: metadata_rejects.len() as u64,
        rejected: metadata_rejects.len() as u64,
        ..Default::default()
    };
    let held: HashSet<String> = metadata_rejects.iter().map(|r| r.patch.clone()).collect();
    // Arrays grow to whatever the stream holds; their final length is set at the end.
    let capacities = [u64::from(u32::MAX); 3];
    let sinks = Sinks::create(partial, capacities, opts, accounting, metadata_rejects)?;
    let mut c = PackedConversion {
        archive: path,
        known,
        rules,
        sinks,
        held,
        chunk: Vec::with_capacity(CHUNK),
    };
    let stream = PackedStream::open(path, packing)?;
    let (read, size) = (stream.read.clone(), stream.size);
    let (reader, events) = spawn_reader(stream, format, opts.max_pending)?;
    let mut progress = StreamProgress::new(size);
    let consumed = (|| -> Result<()> {
        for event in events.iter() {
            c.event(event)?;
            if c.chunk.len() == CHUNK {
                let chunk = std::mem::replace(&mut c.chunk, Vec::with_capacity(CHUNK));
                c.sinks.process(chunk)?;
                progress.update(
                    read.load(Ordering::Relaxed),
                    c.sinks.accounting.input_patches,
                );
            }
        }
        c.sinks.process(std::mem::take(&mut c.chunk))
    })();
    drop(events);
    let read_result = reader
        .join()
        .map_err(|_| anyhow!("the archive reader panicked"))?;
    consumed?;
    stream_outcome(read_result, opts.skip_bad)?;
    progress.finish(
        read.load(Ordering::Relaxed),
        c.sinks.accounting.input_patches,
    );
    for r in c.absent() {
        c.sinks.accounting.input_patches += 1;
        c.sinks.reject(r)?;
    }
    c.sinks.finish(partial, c.rules.source)
}

/// What a packed archive's metadata says before its stream is read: the format, v2.0's patch
/// records (from `metadata.parquet` beside it; v1.0's come inside the stream, one JSON per
/// patch), the rules deciding each patch's fate, and the records that cannot be used.
type PackedMetadata = (
    ArchiveFormat,
    Option<HashMap<String, PatchRecord>>,
    Rules,
    Vec<Reject>,
);

fn packed_metadata(opts: &ConvertOptions) -> Result<PackedMetadata> {
    let path = &opts.archive;
    let beside = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let metadata_path = opts
        .metadata
        .clone()
        .or_else(|| Some(beside.join(archive::V2_METADATA)).filter(|p| p.is_file()));
    let format = opts.format.unwrap_or(if metadata_path.is_some() {
        ArchiveFormat::V2
    } else {
        ArchiveFormat::V1
    });
    let (known, rejects, has_flags) = match format {
        ArchiveFormat::V2 => {
            let meta = metadata_path.with_context(|| {
                format!(
                    "{}: a v2.0 archive needs its metadata.parquet: beside it, or --metadata",
                    path.display()
                )
            })?;
            let m = archive::read_v2_metadata(&meta, Path::new(archive::V2_FOLDER))?;
            let known = m.patches.into_iter().map(|p| (p.name.clone(), p)).collect();
            (Some(known), m.rejects, m.has_exclusion_flags)
        }
        ArchiveFormat::V1 => (None, Vec::new(), false),
    };
    let has_splits = known
        .as_ref()
        .is_some_and(|k: &HashMap<String, PatchRecord>| k.values().any(|p| p.split.is_some()));
    let beside = [beside.to_path_buf()];
    let lists = &opts.lists;
    let rules = Rules::new(
        format,
        &beside,
        path,
        lists,
        has_flags,
        has_splits,
        opts.split_seed,
    )?;
    Ok((format, known, rules, rejects))
}

/// The thread reading a packed archive, and how its reading ended.
type Reader = JoinHandle<Result<(), packed::ReadError>>;

/// Reads the stream on its own thread, passing its events on.
fn spawn_reader(
    stream: PackedStream,
    format: ArchiveFormat,
    max_pending: usize,
) -> Result<(Reader, std::sync::mpsc::Receiver<Event>)> {
    let (tx, rx) = sync_channel::<Event>(CHUNK);
    let reader = std::thread::Builder::new()
        .name("archive-reader".into())
        .spawn(move || {
            packed::read_patches(stream, format, max_pending, |e| {
                tx.send(e).map_err(|_| anyhow!("the conversion stopped"))
            })
        })
        .context("starting the archive reader")?;
    Ok((reader, rx))
}

/// A damaged stream: fatal damage, or any without `--skip-bad`, stops the conversion; with it
/// the patches read so far are kept.
fn stream_outcome(read: Result<(), packed::ReadError>, skip_bad: bool) -> Result<()> {
    let e = match read {
        Ok(()) => return Ok(()),
        Err(packed::ReadError::Stream(s)) if s.fatal => {
            return Err(anyhow::Error::new(s)
                .context("no store was written (--skip-bad cannot set this aside)"));
        }
        Err(packed::ReadError::Stream(s)) => anyhow::Error::new(s),
        Err(packed::ReadError::Other(e)) => e,
    };
    if !skip_bad {
        return Err(e.context("the archive is damaged; no store was written"));
    }
    tracing::error!(
        "{e:#}; with --skip-bad the patches read so far are kept, those after this point are \
         not in the store"
    );
    Ok(())
}

/// Progress through a stream, on the bar and every 30 s in the log.
struct StreamProgress {
    bar: lossbench_core::progress::ProgressBar,
    size: u64,
    started: Instant,
    last_log: Instant,
}

impl StreamProgress {
    fn new(size: u64) -> StreamProgress {
        let bar = lossbench_core::progress::bytes_bar(size);
        StreamProgress {
            bar,
            size,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    fn update(&mut self, read: u64, seen: u64) {
        self.bar.set_position(read);
        let rate = seen as f64 / self.started.elapsed().as_secs_f64();
        self.bar.set_message(format!("{seen} patches, {rate:.0}/s"));
        if self.last_log.elapsed() > Duration::from_secs(30) {
            log_stream_progress(read, self.size, seen, self.started);
            self.last_log = Instant::now();
        }
    }

    fn finish(self, read: u64, seen: u64) {
        self.bar.finish_and_clear();
        log_stream_progress(read, self.size, seen, self.started);
    }
}

/// A packed archive's patches as they complete in the stream.
struct PackedConversion<'a> {
    archive: &'a PathBuf,
    /// v2.0's records by patch name.
    known: Option<HashMap<String, PatchRecord>>,
    rules: Rules,
    sinks: Sinks,
    /// Patches seen (in the stream or as bad metadata).
    held: HashSet<String>,
    /// Patches to decode next.
    chunk: Vec<Work>,
}

impl PackedConversion<'_> {
    /// One event of the stream: a bad patch is rejected, a complete one decided and queued.
    fn event(&mut self, event: Event) -> Result<()> {
        self.sinks.accounting.input_patches += 1;
        let (patch, bands, metadata) = match event {
            Event::Bad { patch, reason } => {
                self.held.insert(patch.clone());
                return self.sinks.reject(Reject {
                    patch,
                    file: self.archive.clone(),
                    reason,
                });
            }
            Event::Complete(p) => (p.name, p.bands, p.metadata),
        };
        self.held.insert(patch.clone());
        let record = match self.record(&patch, &metadata) {
            Ok(r) => r,
            Err(reason) => {
                let member = archive::v1_metadata_file(&patch);
                let file = PathBuf::from(format!("{}:{member}", self.archive.display()));
                return self.sinks.reject(Reject {
                    patch,
                    file,
                    reason,
                });
            }
        };
        let fate = self.rules.fate(&record);
        plan::count(&mut self.sinks.accounting, fate);
        if let Fate::Write(split) = fate {
            let input = Input::Packed {
                bands,
                archive: self.archive.clone(),
            };
            self.chunk.push(Work {
                split,
                name: patch,
                labels: record.labels,
                input,
            });
        }
        Ok(())
    }

    /// A patch's record: v2.0's from the metadata, v1.0's from its JSON member.
    fn record(&self, patch: &str, metadata: &[u8]) -> Result<PatchRecord, String> {
        match &self.known {
            Some(known) => known
                .get(patch)
                .cloned()
                .ok_or_else(|| format!("in the archive but not in its {}", archive::V2_METADATA)),
            None => archive::v1_labels(metadata).map(|labels| PatchRecord {
                name: patch.to_string(),
                dir: PathBuf::new(),
                labels,
                snow: false,
                cloud: false,
                split: None,
            }),
        }
    }

    /// Patches the lists or the metadata name that the stream did not hold.
    fn absent(&self) -> Vec<Reject> {
        let held = |name: &str| self.held.contains(name);
        let mut absent = self.rules.listed_but_absent(held);
        if let Some(known) = &self.known {
            let mut unseen: Vec<Reject> = known
                .keys()
                .filter(|n| !held(n))
                .map(|n| Reject {
                    patch: n.clone(),
                    file: self.archive.clone(),
                    reason: format!("in {} but not in the archive", archive::V2_METADATA),
                })
                .collect();
            unseen.sort_by(|a, b| a.patch.cmp(&b.patch));
            absent.extend(unseen);
        }
        absent
    }
}

fn log_stream_progress(read: u64, size: u64, patches: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let share = read as f64 / size.max(1) as f64;
    let eta = if share > 0.0 {
        secs * (1.0 - share) / share
    } else {
        f64::NAN
    };
    tracing::info!(
        read_mb = read >> 20,
        total_mb = size >> 20,
        percent = format!("{:.1}", 100.0 * share),
        patches,
        patches_per_s = format!("{:.0}", patches as f64 / secs),
        eta_s = format!("{eta:.0}"),
        "reading the archive"
    );
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
