//! `run.json` in each run folder: who ran it, with what code, and each attempt's start, end and
//! outcome (a run resumed after a time limit has several). Written by rank 0, atomically.

use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
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

/// One start of the trainer on this run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub host: String,
    pub world_size: usize,
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
    let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    (ms, humantime::format_rfc3339_millis(t).to_string())
}

fn host() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

impl RunInfo {
    /// Records the start of an attempt (keeping earlier attempts of a resumed run).
    pub fn begin(dir: &Path, run_id: &str, loss: &str, seed: u64, world_size: usize) -> Result<Self> {
        let path = dir.join(FILE);
        let earlier: Vec<Attempt> = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<RunInfo>(&b).ok())
            .map(|i| i.attempts)
            .unwrap_or_default();
        let (ms, text) = now();
        let mut attempts = earlier;
        attempts.push(Attempt {
            host: host(),
            world_size,
            started_unix_ms: ms,
            started: text,
            ended_unix_ms: None,
            ended: None,
            outcome: Status::Running,
        });
        let info = RunInfo {
            run_id: run_id.into(),
            loss: loss.into(),
            seed,
            code_revision: env!("LOSSBENCH_REVISION").into(),
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
        let mut a = RunInfo::begin(dir.path(), "ce-seed1", "ce", 1, 2).unwrap();
        a.end(dir.path(), Status::Stopped).unwrap();
        let mut b = RunInfo::begin(dir.path(), "ce-seed1", "ce", 1, 4).unwrap();
        assert_eq!(b.status, Status::Running);
        b.end(dir.path(), Status::Finished).unwrap();
        let read: RunInfo = serde_json::from_slice(&fs::read(dir.path().join(FILE)).unwrap()).unwrap();
        assert_eq!(read.status, Status::Finished);
        assert_eq!(read.attempts.len(), 2);
        assert_eq!(read.attempts[0].outcome, Status::Stopped);
        assert_eq!(read.attempts[1].world_size, 4);
        assert!(read.attempts[1].ended_unix_ms.unwrap() >= read.attempts[0].started_unix_ms);
    }
}
