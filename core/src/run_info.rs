//! `run.json` in each run folder: who ran it, with what code, and each attempt's start, end and
//! outcome (a run resumed after a time limit has several), what the attempt was allowed to
//! change, where its data lived, and why it ended. Written by rank 0, atomically.
//!
//! Values are documented strings (docs/training.md, "Run folder"): run folders written before
//! them (device `Cpu` / `Cuda(0)`) read as `cpu` / `cuda:0`.

use std::fmt;
use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer, Serialize};

pub const FILE: &str = "run.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    /// Stopped by a signal after a checkpoint; resumable.
    Stopped,
    Finished,
    Failed,
    /// The attempt ended without recording its end (killed by SIGKILL, a node failure): found
    /// so by the next attempt.
    Killed,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Finished => "finished",
            Status::Failed => "failed",
            Status::Killed => "killed",
        }
    }
}

/// Where a split's data lives during training (`data.resident`, docs/training.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Read from the store every epoch.
    Stream,
    /// Decoded once into host memory.
    Host,
    /// Decoded once into the training GPU's memory.
    Device,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::Stream => "stream",
            Placement::Host => "host",
            Placement::Device => "device",
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Placement::Stream => "streamed from the store",
            Placement::Host => "resident in host memory",
            Placement::Device => "resident in GPU memory",
        })
    }
}

/// Where a split's data lived during an attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataPlacement {
    pub split: String,
    pub placement: Placement,
    /// Seconds spent decoding the split into memory (0 when streamed).
    pub load_s: f64,
    /// Bytes the split takes in memory on this node (0 when streamed).
    #[serde(default)]
    pub bytes: u64,
    /// With several ranks on a node: whether they share one host copy (shared memory).
    #[serde(default)]
    pub shared: bool,
}

/// A configuration key an attempt changed against the run's (docs/training.md, "Resuming with
/// another configuration"); values as TOML, absent where unset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigChange {
    pub key: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

impl fmt::Display for ConfigChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not set)".into());
        write!(f, "{}: {} → {}", self.key, show(&self.old), show(&self.new))
    }
}

/// A compute device as `run.json` names it: `cpu` or `cuda:<index>`; older run folders' Rust
/// names (`Cpu`, `Cuda(0)`) read the same.
fn device_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    Ok(
        match s.strip_prefix("Cuda(").and_then(|r| r.strip_suffix(')')) {
            Some(i) => format!("cuda:{i}"),
            None if s == "Cpu" => "cpu".into(),
            None => s,
        },
    )
}

/// One start of the trainer on this run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub host: String,
    /// The SLURM job (`<array job>_<task>` for an array task), if any.
    #[serde(default)]
    pub slurm_job: Option<String>,
    pub world_size: usize,
    /// Rank 0's compute device: `cpu` or `cuda:<index>`.
    #[serde(default, deserialize_with = "device_name")]
    pub device: String,
    #[serde(default)]
    pub data: Vec<DataPlacement>,
    /// The store's identity when the attempt started.
    #[serde(default)]
    pub store_id: Option<String>,
    /// Keys this attempt changed against the checkpoint's configuration.
    #[serde(default)]
    pub config_changes: Vec<ConfigChange>,
    pub started_unix_ms: i64,
    pub started: String,
    pub ended_unix_ms: Option<i64>,
    pub ended: Option<String>,
    pub outcome: Status,
    /// Why it ended: the error of a failed attempt, the signal of a stopped one, the early
    /// stopping rule of a finished one.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub run_id: String,
    pub loss: String,
    pub seed: u64,
    /// `git rev-parse --short HEAD` of the build (with `-dirty` for uncommitted changes).
    pub code_revision: String,
    pub status: Status,
    pub attempts: Vec<Attempt>,
}

fn now() -> (i64, String) {
    let t = SystemTime::now();
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    (ms, humantime::format_rfc3339_millis(t).to_string())
}

/// What names a run in `run.json`.
pub struct Identity {
    pub run_id: String,
    pub loss: String,
    pub seed: u64,
    /// The trainer build's git revision.
    pub code_revision: String,
}

/// What an attempt starts with.
pub struct Start {
    pub world_size: usize,
    pub device: String,
    pub data: Vec<DataPlacement>,
    pub store_id: String,
    pub config_changes: Vec<ConfigChange>,
}

/// Reads `run.json` of a run folder: `None` when there is none.
pub fn read(dir: &Path) -> Result<Option<RunInfo>> {
    let path = dir.join(FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .with_context(|| format!("{}: not a run.json", path.display()))
}

impl RunInfo {
    /// Records the start of an attempt, keeping earlier attempts of a resumed run; an earlier
    /// attempt still `running` was killed before it could say so (the run folder's lock, which
    /// the new attempt holds, proves that it no longer runs).
    pub fn begin(dir: &Path, run: Identity, start: Start) -> Result<Self> {
        let mut attempts = match read(dir) {
            Ok(info) => info.map(|i| i.attempts).unwrap_or_default(),
            // Unreadable history is reported, not fatal: the run itself is in its records.
            Err(e) => {
                tracing::warn!("starting a new attempt history: {e:#}");
                Vec::new()
            }
        };
        for a in attempts.iter_mut().filter(|a| a.outcome == Status::Running) {
            a.outcome = Status::Killed;
            a.reason =
                Some("ended without recording its end (killed or lost with its node)".into());
        }
        let (ms, text) = now();
        attempts.push(Attempt {
            host: crate::host::host_name(),
            slurm_job: crate::host::slurm_job(),
            world_size: start.world_size,
            device: start.device,
            data: start.data,
            store_id: Some(start.store_id),
            config_changes: start.config_changes,
            started_unix_ms: ms,
            started: text,
            ended_unix_ms: None,
            ended: None,
            outcome: Status::Running,
            reason: None,
        });
        let Identity {
            run_id,
            loss,
            seed,
            code_revision,
        } = run;
        let info = RunInfo {
            run_id,
            loss,
            seed,
            code_revision,
            status: Status::Running,
            attempts,
        };
        info.write(dir)?;
        Ok(info)
    }

    /// Records where the current attempt's data lives, once it is loaded.
    pub fn placed(&mut self, dir: &Path, data: Vec<DataPlacement>) -> Result<()> {
        if let Some(a) = self.attempts.last_mut() {
            a.data = data;
        }
        self.write(dir)
    }

    /// Records the end of the current attempt, and why.
    pub fn end(&mut self, dir: &Path, outcome: Status, reason: Option<String>) -> Result<()> {
        let (ms, text) = now();
        if let Some(a) = self.attempts.last_mut() {
            a.ended_unix_ms = Some(ms);
            a.ended = Some(text);
            a.outcome = outcome;
            a.reason = reason;
        }
        self.status = outcome;
        self.write(dir)
    }

    fn write(&self, dir: &Path) -> Result<()> {
        crate::files::write_atomically(&dir.join(FILE), &serde_json::to_vec_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            run_id: "ce-seed1".into(),
            loss: "ce".into(),
            seed: 1,
            code_revision: "abc".into(),
        }
    }

    fn start(world_size: usize, device: &str, data: Vec<DataPlacement>) -> Start {
        Start {
            world_size,
            device: device.into(),
            data,
            store_id: "s".into(),
            config_changes: Vec::new(),
        }
    }

    #[test]
    fn attempts_accumulate_across_resumes_and_a_lost_one_reads_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = RunInfo::begin(dir.path(), id(), start(2, "cpu", Vec::new())).unwrap();
        a.end(dir.path(), Status::Stopped, Some("SIGUSR1".into()))
            .unwrap();
        let placed = vec![DataPlacement {
            split: "train".into(),
            placement: Placement::Host,
            load_s: 1.5,
            bytes: 10,
            shared: true,
        }];
        RunInfo::begin(dir.path(), id(), start(4, "cuda:0", placed.clone())).unwrap();
        // That attempt was killed: the next one finds it running.
        let mut c = RunInfo::begin(dir.path(), id(), start(4, "cuda:0", placed.clone())).unwrap();
        c.end(dir.path(), Status::Finished, None).unwrap();
        let read: RunInfo = read(dir.path()).unwrap().unwrap();
        assert_eq!(read.status, Status::Finished);
        let outcomes: Vec<Status> = read.attempts.iter().map(|a| a.outcome).collect();
        assert_eq!(
            outcomes,
            [Status::Stopped, Status::Killed, Status::Finished]
        );
        assert_eq!(read.attempts[0].reason.as_deref(), Some("SIGUSR1"));
        assert_eq!(
            (read.attempts[2].device.as_str(), &read.attempts[2].data),
            ("cuda:0", &placed)
        );
        assert!(read.attempts[2].ended_unix_ms.unwrap() >= read.attempts[0].started_unix_ms);
    }

    #[test]
    fn older_run_folders_read_with_documented_names() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{"run_id":"ce-seed0","loss":"ce","seed":0,"code_revision":"x","status":"finished",
            "attempts":[{"host":"h","world_size":1,"device":"Cuda(1)","data":[{"split":"train",
            "placement":"host","load_s":0.5}],"started_unix_ms":1,"started":"t","ended_unix_ms":2,
            "ended":"u","outcome":"finished"}]}"#;
        fs::write(dir.path().join(FILE), old).unwrap();
        let info = read(dir.path()).unwrap().unwrap();
        assert_eq!(info.attempts[0].device, "cuda:1");
        assert_eq!(info.attempts[0].data[0].placement, Placement::Host);
        assert!(info.attempts[0].config_changes.is_empty());
    }
}
