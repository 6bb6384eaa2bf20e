//! The packed route: one archive file read once as a stream, each patch decided and converted
//! as its last member arrives.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::sync_channel;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::archive::{self, ArchiveFormat, PatchRecord, Reject};
use crate::packed::{self, Event, PackedStream, Packing};
use crate::plan::{self, Fate, Rules};
use lossbench_core::layout::Accounting;

use super::sinks::{CHUNK, Input, Sinks, Work};
use super::{ConvertOptions, Outcome, bad_input_message};

/// A packed archive, read once as a stream: each patch is decided and converted as its last
/// member arrives.
pub(super) fn convert_packed(
    opts: &ConvertOptions,
    packing: Packing,
    partial: &Path,
) -> Result<Outcome> {
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
