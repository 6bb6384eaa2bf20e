//! Helpers shared by the trainer's integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tiny synthetic store (70 patches) under `dir`.
pub fn store(dir: &Path) -> PathBuf {
    data_prep::synth::synthetic_store(dir, 70, 9).unwrap()
}

pub fn trainer<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .output()
        .unwrap()
}

/// The path of `jobs/<name>.toml`.
pub fn job(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("jobs")
        .join(format!("{name}.toml"))
        .display()
        .to_string()
}

/// `trainer train` arguments of a small run on the CPU: `jobs/<job_name>.toml` on the store
/// `data`, into `out`, then `extra` (flags and `--set` overrides).
pub fn train_args(job_name: &str, data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let common = [
        "train",
        "--config",
        &job(job_name),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    common.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// `trainer landscape` arguments of a small landscape of the run `run` on the CPU (12 training
/// and 10 validation patches, batches of 8: seconds), then `extra`.
pub fn landscape_args(run: &Path, kind: &str, name: &str, extra: &[&str]) -> Vec<String> {
    let common = [
        "landscape",
        "--run",
        run.to_str().unwrap(),
        "--kind",
        kind,
        "--name",
        name,
        "--train-patches",
        "12",
    ];
    let small = ["--val-patches", "10", "--batch", "8", "--device", "cpu"];
    common
        .iter()
        .chain(&small)
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

/// A safetensors file's tensors, sorted by name.
pub fn tensors(path: &Path) -> Vec<(String, tch::Tensor)> {
    let mut v = tch::Tensor::read_safetensors(path).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Validation results of every epoch, without the timing fields.
pub fn val_records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("epochs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            serde_json::json!([v["epoch"], v["train_loss"], v["val_loss"], v["val"]])
        })
        .collect()
}

/// `test_predictions.parquet` of a run, flattened row-major `[N, 19]`.
pub struct Predictions {
    pub names: Vec<String>,
    pub labels: Vec<u8>,
    pub decisions: Vec<u8>,
    pub scores: Vec<f32>,
}

pub fn predictions(run: &Path) -> Predictions {
    use arrow_array::{Array, FixedSizeListArray, Float32Array, StringArray, UInt8Array};
    let file = std::fs::File::open(run.join("test_predictions.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut p = Predictions {
        names: Vec::new(),
        labels: Vec::new(),
        decisions: Vec::new(),
        scores: Vec::new(),
    };
    for batch in reader {
        let batch = batch.unwrap();
        let list = |n: &str| {
            let list = batch
                .column_by_name(n)
                .unwrap()
                .as_any()
                .downcast_ref::<FixedSizeListArray>()
                .unwrap()
                .clone();
            assert_eq!(list.value_length(), 19);
            list.values().clone()
        };
        let patch = batch.column_by_name("patch").unwrap();
        p.names.extend(
            patch
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .iter()
                .map(|s| s.unwrap().to_string()),
        );
        for (name, out) in [("labels", &mut p.labels), ("decisions", &mut p.decisions)] {
            out.extend(
                list(name)
                    .as_any()
                    .downcast_ref::<UInt8Array>()
                    .unwrap()
                    .values()
                    .iter()
                    .copied(),
            );
        }
        p.scores.extend(
            list("scores")
                .as_any()
                .downcast_ref::<Float32Array>()
                .unwrap()
                .values()
                .iter()
                .copied(),
        );
    }
    p
}

/// `trainer landscape --kind spectrum` arguments of a small spectrum of the run `run` on the CPU
/// (4 training patches; a few Hessian-vector products per item), then `extra`.
pub fn spectrum_args(run: &Path, name: &str, extra: &[&str]) -> Vec<String> {
    let small = [
        "landscape",
        "--run",
        run.to_str().unwrap(),
        "--kind",
        "spectrum",
        "--name",
        name,
        "--train-patches",
        "4",
        "--val-patches",
        "4",
        "--batch",
        "4",
        "--device",
        "cpu",
        "--top-k",
        "2",
        "--lanczos-steps",
        "5",
        "--layer-steps",
        "2",
        "--trace-probes",
        "10",
        "--density-probes",
        "2",
    ];
    small.iter().chain(extra).map(|s| s.to_string()).collect()
}
