//! One event file, written as TensorBoard's writers do: a `file_version` event first, then
//! events of scalars, images and text, each record appended whole; flushed at least every
//! [`FLUSH_EVERY`] (so that curves move during an epoch) and whenever asked (at checkpoints).

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use prost::Message;

use super::proto::{self, event, summary, summary_metadata};
use super::record;

/// Longest time written events wait in memory.
pub const FLUSH_EVERY: Duration = Duration::from_secs(30);
/// Event files' names start so (TensorBoard finds them by it).
pub const PREFIX: &str = "events.out.tfevents.";
/// `DataType::DtString` of TensorBoard's types.proto.
const DT_STRING: i32 = 7;
/// `SessionLog.SessionStatus.START`.
const SESSION_START: i32 = 1;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An event file being written.
pub struct EventWriter {
    pub path: PathBuf,
    file: BufWriter<File>,
    flushed: Instant,
}

impl EventWriter {
    /// A new event file in `dir` (created if missing), named as TensorBoard's writers name
    /// theirs: `events.out.tfevents.<seconds>.<host>.<pid>.<suffix>`.
    pub fn create(dir: &Path, suffix: &str) -> Result<EventWriter> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = format!(
            "{PREFIX}{}.{}.{}.{suffix}",
            now() as u64,
            lossbench_core::host::host_name(),
            std::process::id()
        );
        let path = dir.join(name);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let mut w = EventWriter {
            path,
            file: BufWriter::new(file),
            flushed: Instant::now(),
        };
        let first = proto::Event {
            wall_time: now(),
            step: 0,
            source_metadata: Some(proto::SourceMetadata {
                writer: "lossbench".into(),
            }),
            what: Some(event::What::FileVersion("brain.Event:2".into())),
        };
        w.append(&first)?;
        Ok(w)
    }

    fn append(&mut self, e: &proto::Event) -> Result<()> {
        self.file
            .write_all(&record::frame(&e.encode_to_vec()))
            .with_context(|| format!("writing {}", self.path.display()))?;
        if self.flushed.elapsed() >= FLUSH_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    fn summary(&mut self, step: i64, value: Vec<summary::Value>) -> Result<()> {
        let e = proto::Event {
            wall_time: now(),
            step,
            source_metadata: None,
            what: Some(event::What::Summary(proto::Summary { value })),
        };
        self.append(&e)
    }

    /// Scalars of one step, as `(tag, value)`.
    pub fn scalars(&mut self, step: i64, values: &[(String, f64)]) -> Result<()> {
        self.summary(step, scalar_values(values))
    }

    /// A PNG image of `width` x `height` RGB pixels.
    pub fn image(
        &mut self,
        step: i64,
        tag: &str,
        png: Vec<u8>,
        (width, height): (u32, u32),
    ) -> Result<()> {
        let image = summary::Image {
            height: height as i32,
            width: width as i32,
            colorspace: 3,
            encoded_image_string: png,
        };
        let value = summary::Value {
            tag: tag.into(),
            value: Some(summary::value::Value::Image(image)),
            ..Default::default()
        };
        self.summary(step, vec![value])
    }

    /// Text (Markdown), for TensorBoard's text plugin.
    pub fn text(&mut self, step: i64, tag: &str, text: &str) -> Result<()> {
        let tensor = proto::TensorProto {
            dtype: DT_STRING,
            tensor_shape: Some(proto::TensorShapeProto::default()),
            string_val: vec![text.as_bytes().to_vec()],
            ..Default::default()
        };
        let metadata = proto::SummaryMetadata {
            plugin_data: Some(summary_metadata::PluginData {
                plugin_name: "text".into(),
                content: Vec::new(),
            }),
            ..Default::default()
        };
        let value = summary::Value {
            tag: tag.into(),
            metadata: Some(metadata),
            value: Some(summary::value::Value::Tensor(tensor)),
            ..Default::default()
        };
        self.summary(step, vec![value])
    }

    /// A restart at `step` (a resumed attempt): TensorBoard drops what earlier files hold of
    /// this step and later ones, which a killed attempt may have logged past its checkpoint.
    pub fn restart_at(&mut self, step: i64) -> Result<()> {
        let e = proto::Event {
            wall_time: now(),
            step,
            source_metadata: None,
            what: Some(event::What::SessionLog(proto::SessionLog {
                status: SESSION_START,
                ..Default::default()
            })),
        };
        self.append(&e)
    }

    /// Hands the written events to the file system.
    pub fn flush(&mut self) -> Result<()> {
        self.flushed = Instant::now();
        self.file
            .flush()
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// An event file's bytes holding `file_version` and the scalars of each `(step, values)`.
pub fn encode_scalars(steps: &[(i64, Vec<(String, f64)>)]) -> Vec<u8> {
    let mut events = vec![proto::Event {
        wall_time: now(),
        step: 0,
        source_metadata: Some(proto::SourceMetadata {
            writer: "lossbench".into(),
        }),
        what: Some(event::What::FileVersion("brain.Event:2".into())),
    }];
    for (step, values) in steps {
        let value = scalar_values(values);
        events.push(proto::Event {
            wall_time: now(),
            step: *step,
            source_metadata: None,
            what: Some(event::What::Summary(proto::Summary { value })),
        });
    }
    events
        .iter()
        .flat_map(|e| record::frame(&e.encode_to_vec()))
        .collect()
}

/// The events of a file, whole records only (a file being written reads up to its last whole
/// record).
pub fn read_events(path: &Path) -> Result<Vec<proto::Event>> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    record::records(&bytes)
        .into_iter()
        .map(|r| {
            proto::Event::decode(r).with_context(|| format!("{}: not an event", path.display()))
        })
        .collect()
}

/// The event files of `dir`, by name.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(PREFIX))
            })
            .filter(|p| !p.to_string_lossy().contains(".tmp."))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    files.sort();
    Ok(files)
}

/// Rewrites the event files of `dir` without the events of steps after `last`: what an attempt
/// killed after its last checkpoint logged, which the resumed attempt logs again. Each file is
/// replaced atomically; returns how many events were dropped.
pub fn drop_after(dir: &Path, last: i64) -> Result<usize> {
    let mut dropped = 0;
    for path in event_files(dir)? {
        let events = read_events(&path)?;
        let kept: Vec<&proto::Event> = events
            .iter()
            .filter(|e| e.step <= last || matches!(e.what, Some(event::What::FileVersion(_))))
            .collect();
        if kept.len() == events.len() {
            continue;
        }
        dropped += events.len() - kept.len();
        let bytes: Vec<u8> = kept
            .iter()
            .flat_map(|e| record::frame(&e.encode_to_vec()))
            .collect();
        lossbench_core::files::write_atomically(&path, &bytes)?;
    }
    Ok(dropped)
}

/// Scalars as TensorBoard's summary values (float32, as TensorBoard stores them).
fn scalar_values(values: &[(String, f64)]) -> Vec<summary::Value> {
    values
        .iter()
        .map(|(tag, v)| summary::Value {
            tag: tag.clone(),
            value: Some(summary::value::Value::SimpleValue(*v as f32)),
            ..Default::default()
        })
        .collect()
}
