//! The trainer's per-run records: `epochs.jsonl` (one [`EpochRecord`] per line, appended and
//! synced after each epoch) and `test_metrics.json` ([`TestOutcome`]); docs/training.md,
//! "Run folder".

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::ranking::Ranking;

/// The records file in a run folder.
pub const EPOCHS_FILE: &str = "epochs.jsonl";
/// Lines of `epochs.jsonl` that did not parse, kept aside (never dropped) by a resuming trainer:
/// one JSON object per line, `{"line": <number in epochs.jsonl>, "text": <the line>}`.
pub const REJECTED_FILE: &str = "epochs.rejected.jsonl";

/// The test evaluation in a run folder.
pub const TEST_FILE: &str = "test_metrics.json";

/// Where one epoch's training time went on rank 0, seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTimes {
    /// Forward, backward and optimizer step.
    pub compute_s: f64,
    /// Summing gradients and BatchNorm statistics over ranks (0 for one process).
    pub allreduce_s: f64,
    /// Waiting for the loader's next batch.
    pub data_wait_s: f64,
}

/// One line of `epochs.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: u32,
    pub train_loss: f64,
    pub val_loss: f64,
    pub lr: f64,
    /// Training and validation, seconds.
    pub wall_s: f64,
    /// Training images per second.
    pub images_per_s: f64,
    /// Share of the training time spent waiting for the next batch.
    pub data_wait_fraction: f64,
    /// The training time broken down (rank 0's).
    #[serde(default)]
    pub time: StepTimes,
    pub val: Metrics,
    /// The validation scores' ranking metrics (absent in records written before them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_ranking: Option<Ranking>,
}

/// `test_metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestOutcome {
    /// The epoch whose weights were tested: the best by the run's selection metric
    /// (`selection.metric`, validation F1 sample average by default).
    pub best_epoch: u32,
    pub loss: f64,
    /// With the loss's own decision rule.
    pub metrics: Metrics,
    /// The test scores' ranking metrics (absent in runs tested before them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranking: Option<Ranking>,
    /// With per-class thresholds tuned on the validation split instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned: Option<Tuned>,
}

/// The second decision rule of a test: per-class thresholds tuned on the validation split
/// (crate::thresholds) and the test metrics they give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tuned {
    /// One per class, in class order (`null` for a class never predicted: no validation
    /// positive).
    pub thresholds: Vec<Option<f32>>,
    pub metrics: Metrics,
}

/// The complete records of a run folder, each with its line as written.
#[derive(Debug, Default)]
pub struct Records {
    pub records: Vec<(EpochRecord, String)>,
    /// Line numbers (1-based) of lines skipped as torn (no newline: being written or cut by a
    /// crash) or invalid.
    pub skipped_lines: Vec<usize>,
}

/// Reads `epochs.jsonl`; a missing file has no records. Any other failure to read it is an
/// error: a run's history is never taken for empty because a read failed.
pub fn read_epochs(path: &Path) -> Result<Records> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Records::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut out = Records::default();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let parsed = line
            .strip_suffix('\n')
            .and_then(|l| serde_json::from_str::<EpochRecord>(l).ok().map(|r| (r, l)));
        match parsed {
            Some((r, l)) => out.records.push((r, l.to_string())),
            None => out.skipped_lines.push(i + 1),
        }
    }
    Ok(out)
}

/// Appends lines `numbers` (1-based) of the file `path` to `aside` ([`REJECTED_FILE`]), synced.
pub fn keep_aside(path: &Path, numbers: &[usize], aside: &Path) -> Result<()> {
    use std::io::Write;
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = String::new();
    for &n in numbers {
        let line = lines.get(n - 1).map_or("", |l| l.trim_end_matches('\n'));
        out.push_str(&serde_json::json!({ "line": n, "text": line }).to_string());
        out.push('\n');
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(aside)
        .with_context(|| format!("opening {}", aside.display()))?;
    file.write_all(out.as_bytes())
        .and_then(|()| file.sync_data())
        .with_context(|| format!("appending to {}", aside.display()))
}

/// Reads `test_metrics.json`: `None` when the run has not been tested yet.
pub fn read_test(path: &Path) -> Result<Option<TestOutcome>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .with_context(|| format!("{}: not a test outcome", path.display()))
}

#[cfg(test)]
pub(crate) fn record(epoch: u32, f1: f64) -> EpochRecord {
    let mut val = crate::metrics::Counts::default().metrics();
    val.samples.f1 = f1;
    EpochRecord {
        epoch,
        train_loss: 1.0,
        val_loss: 1.0,
        lr: 1e-4,
        wall_s: 1.0,
        images_per_s: 1.0,
        data_wait_fraction: 0.0,
        time: StepTimes::default(),
        val,
        val_ranking: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_and_invalid_lines_are_skipped_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EPOCHS_FILE);
        assert!(read_epochs(&path).unwrap().records.is_empty());
        let line = |e| serde_json::to_string(&record(e, 0.5)).unwrap();
        fs::write(
            &path,
            format!("{}\nnot json\n{}\n{{\"epoch\": 4, \"tra", line(1), line(3)),
        )
        .unwrap();
        let r = read_epochs(&path).unwrap();
        assert_eq!(
            r.records.iter().map(|(r, _)| r.epoch).collect::<Vec<_>>(),
            [1, 3]
        );
        assert_eq!(r.records[0].1, line(1));
        assert_eq!(r.skipped_lines, [2, 4]);
    }

    #[test]
    fn a_folder_in_place_of_the_file_is_an_error_not_an_empty_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EPOCHS_FILE);
        fs::create_dir(&path).unwrap();
        let e = read_epochs(&path).unwrap_err();
        assert!(format!("{e:#}").contains("epochs.jsonl"), "{e:#}");
        assert!(read_test(&dir.path().join(TEST_FILE)).unwrap().is_none());
        fs::write(dir.path().join(TEST_FILE), "{").unwrap();
        assert!(
            format!("{:#}", read_test(&dir.path().join(TEST_FILE)).unwrap_err())
                .contains("test_metrics.json")
        );
    }
}
