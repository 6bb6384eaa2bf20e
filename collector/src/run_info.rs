//! `run.json` in each run folder: who ran it, with what code, and each attempt's start, end and
//! outcome (a run resumed after a time limit has several). Written by rank 0, atomically.

use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const FILE: &str = "run.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    /// Stopped by a signal after a checkpoint; resumable.
    Stopped,
    Finished,
    Failed,
}

/// Where a split's data lived during an attempt (`data.resident`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataPlacement {
    pub split: String,
    /// `stream`, `host` or `device`.
    pub placement: String,
    /// Seconds spent decoding the split into memory (0 when streamed).
    pub load_s: f64,
}

/// One start of the trainer on this run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub host: String,
    pub world_size: usize,
    /// The compute device, e.g. `Cpu` or `Cuda(0)` (rank 0's).
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub data: Vec<DataPlacement>,
    pub started_unix_ms: i64,
    pub started: String,
    pub ended_unix_ms: Option<i64>,
    pub ended: Option<String>,
    pub outcome: Status,
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

fn host() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// What names a run in `run.json`.
pub struct Identity {
    pub run_id: String,
    pub loss: String,
    pub seed: u64,
    /// The trainer build's git revision.
    pub code_revision: String,
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
    /// Records the start of an attempt (keeping earlier attempts of a resumed run).
    pub fn begin(
        dir: &Path,
        run: Identity,
        world_size: usize,
        device: String,
        data: Vec<DataPlacement>,
    ) -> Result<Self> {
        let earlier = match read(dir) {
            Ok(info) => info.map(|i| i.attempts).unwrap_or_default(),
            // Unreadable history is reported, not fatal: the run itself is in its records.
            Err(e) => {
                tracing::warn!("starting a new attempt history: {e:#}");
                Vec::new()
            }
        };
        let (ms, text) = now();
        let mut attempts = earlier;
        attempts.push(Attempt {
            host: host(),
            world_size,
            device,
            data,
            started_unix_ms: ms,
            started: text,
            ended_unix_ms: None,
            ended: None,
            outcome: Status::Running,
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

    /// Records the end of the current attempt.
    pub fn end(&mut self, dir: &Path, outcome: Status) -> Result<()> {
        let (ms, text) = now();
        if let Some(a) = self.attempts.last_mut() {
            a.ended_unix_ms = Some(ms);
            a.ended = Some(text);
            a.outcome = outcome;
        }
        self.status = outcome;
        self.write(dir)
    }

    fn write(&self, dir: &Path) -> Result<()> {
        crate::results::write_atomically(&dir.join(FILE), &serde_json::to_vec_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_accumulate_across_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let id = || Identity {
            run_id: "ce-seed1".into(),
            loss: "ce".into(),
            seed: 1,
            code_revision: "abc".into(),
        };
        let mut a = RunInfo::begin(dir.path(), id(), 2, "Cpu".into(), Vec::new()).unwrap();
        a.end(dir.path(), Status::Stopped).unwrap();
        let placed = vec![DataPlacement {
            split: "train".into(),
            placement: "host".into(),
            load_s: 1.5,
        }];
        let mut b = RunInfo::begin(dir.path(), id(), 4, "Cuda(0)".into(), placed.clone()).unwrap();
        assert_eq!(b.status, Status::Running);
        b.end(dir.path(), Status::Finished).unwrap();
        let read: RunInfo =
            serde_json::from_slice(&fs::read(dir.path().join(FILE)).unwrap()).unwrap();
        assert_eq!(read.status, Status::Finished);
        assert_eq!(read.attempts.len(), 2);
        assert_eq!(read.attempts[0].outcome, Status::Stopped);
        assert_eq!(read.attempts[1].world_size, 4);
        assert_eq!(
            (read.attempts[1].device.as_str(), &read.attempts[1].data),
            ("Cuda(0)", &placed)
        );
        assert!(read.attempts[1].ended_unix_ms.unwrap() >= read.attempts[0].started_unix_ms);
    }
}
