//! Bad inputs at scale (fuzzing crate) for what `collector merge` reads from a run folder: the
//! text records (`epochs.jsonl`, `test_metrics.json`, `run.json`, `config.toml`) and the
//! trainer's Parquet files (test predictions, LRP snapshots, landscape blocks). Each campaign
//! runs `LOSSBENCH_FUZZ_CASES` inputs (10,000 by default) through the readers merge uses; one
//! more runs whole merges over damaged run folders (a tenth as many: each writes tables). No
//! panic, no hang, bounded memory; a refusal names the file; a torn or invalid record line is
//! skipped, never an error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, StringArray, UInt32Array, UInt64Array};
use fuzzing::{Outcome, campaign, cases, outcome};
use lossbench_core::heatmaps::{self, HeatmapRow};
use lossbench_core::metrics::Counts;
use lossbench_core::ranking::ranking;
use lossbench_core::records::{self, EpochRecord, StepTimes, TestOutcome};
use lossbench_core::run_info::{self, Identity, RunInfo, Start, Status};
use lossbench_core::{predictions, schema, tables};

#[global_allocator]
static HEAP: fuzzing::PeakAlloc = fuzzing::PeakAlloc;

/// A run folder's config as the trainer writes it.
fn config() -> String {
    include_str!("../../tests/data/old-run/focal-seed1/config.toml")
        .replace("job = \"focal\"", "job = \"ce\"")
        .replace("name = \"focal\"\ngamma = 2.0", "name = \"ce\"")
}

/// A finished two-epoch run folder as the trainer leaves it, every file the collector reads.
fn run_folder(root: &Path) -> PathBuf {
    let dir = root.join("ce-seed1");
    std::fs::create_dir_all(dir.join("lrp")).unwrap();
    std::fs::write(dir.join("config.toml"), config()).unwrap();
    let mut counts = Counts::default();
    let truth = [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    counts.add(
        &truth,
        &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
    );
    let scores: Vec<f32> = (0..19).map(|c| c as f32 / 19.0).collect();
    let lines: Vec<String> = (1..=2)
        .map(|epoch| {
            let r = EpochRecord {
                epoch,
                train_loss: 0.5 / epoch as f64,
                val_loss: 0.6,
                lr: 1e-4,
                wall_s: 3.0,
                images_per_s: 40.0,
                data_wait_fraction: 0.01,
                time: StepTimes {
                    compute_s: 2.5,
                    allreduce_s: 0.0,
                    data_wait_s: 0.02,
                },
                val: counts.metrics(),
                val_ranking: Some(ranking(&scores, &truth)),
            };
            serde_json::to_string(&r).unwrap() + "\n"
        })
        .collect();
    std::fs::write(dir.join(records::EPOCHS_FILE), lines.concat()).unwrap();
    let test = TestOutcome {
        best_epoch: 2,
        loss: 0.55,
        metrics: counts.metrics(),
        ranking: Some(ranking(&scores, &truth)),
        tuned: None,
    };
    std::fs::write(
        dir.join(records::TEST_FILE),
        serde_json::to_vec(&test).unwrap(),
    )
    .unwrap();
    let identity = Identity {
        run_id: "ce-seed1".into(),
        loss: "ce".into(),
        seed: 1,
        code_revision: "abc".into(),
    };
    let start = Start {
        world_size: 1,
        device: "cpu".into(),
        data: Vec::new(),
        store_id: "s".into(),
        config_changes: Vec::new(),
    };
    let mut info = RunInfo::begin(&dir, identity, start).unwrap();
    info.end(&dir, Status::Finished, None).unwrap();
    let names: Vec<String> = (0..6)
        .map(|i| format!("S2A_MSIL2A_20170613T101031_{i}_0"))
        .collect();
    let labels: Vec<u8> = (0..6 * 19).map(|i| u8::from(i % 5 == 0)).collect();
    let logits: Vec<f32> = (0..6 * 19).map(|i| (i as f32 - 50.0) / 10.0).collect();
    predictions::write(
        &dir.join("test_predictions.parquet"),
        &names,
        &labels,
        &logits,
        &labels,
    )
    .unwrap();
    let heatmaps: Vec<HeatmapRow> = (0..2)
        .map(|k| HeatmapRow {
            epoch: 2,
            patch: names[k].clone(),
            class_index: k as u8,
            is_true: true,
            is_predicted: k == 0,
            logit: 1.5,
            map: vec![0.25; 120 * 120],
            band_totals: vec![0.5; 12],
            bands: None,
        })
        .collect();
    heatmaps::write(&dir.join("lrp").join("epoch-0002.parquet"), &heatmaps).unwrap();
    let blocks = dir.join("landscape").join("grid").join("blocks");
    std::fs::create_dir_all(&blocks).unwrap();
    let n = 9;
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "name",
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                "grid", n,
            ))),
        ),
        (
            "kind",
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n("2d", n))),
        ),
        (
            "checkpoint",
            Arc::new(UInt32Array::from_iter_values(std::iter::repeat_n(2, n))),
        ),
        (
            "other",
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n("", n))),
        ),
        (
            "direction_seed",
            Arc::new(UInt64Array::from_iter_values(std::iter::repeat_n(0, n))),
        ),
        (
            "point",
            Arc::new(UInt32Array::from_iter_values(0..n as u32)),
        ),
        (
            "alpha",
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| (i / 3) as f64 - 1.0),
            )),
        ),
        (
            "beta",
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| (i % 3) as f64 - 1.0),
            )),
        ),
        ("unit", Arc::new(StringArray::from(vec![None::<&str>; n]))),
        (
            "quantity",
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                "loss", n,
            ))),
        ),
        (
            "value",
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| 0.5 + i as f64),
            )),
        ),
    ];
    let schema = schema::of(schema::landscape_block());
    let block = schema::batch(&schema, columns).unwrap();
    tables::write_parquet(&blocks.join("block-00000.parquet"), &schema, &[block]).unwrap();
    dir
}

#[test]
fn text_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_folder(tmp.path());
    let files = [records::EPOCHS_FILE, records::TEST_FILE, run_info::FILE];
    let originals: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    let report = campaign(
        "run records (epochs.jsonl, test_metrics.json, run.json)",
        cases(),
        21,
        |i, m| m.mutate(&originals[i % 3], 0),
        |i, bytes| {
            let path = dir.join(files[i % 3]);
            std::fs::write(&path, bytes).unwrap();
            match i % 3 {
                // Records never fail on content: bad lines are counted and skipped.
                0 => match records::read_epochs(&path) {
                    Ok(r) => {
                        assert!(
                            r.records.len() + r.skipped_lines.len()
                                >= bytes.split(|&b| b == b'\n').count() - 1
                        );
                        if r.skipped_lines.is_empty() {
                            Outcome::Accepted
                        } else {
                            Outcome::Refused(format!("{}: skipped lines", path.display()))
                        }
                    }
                    Err(e) => Outcome::Refused(format!("{e:#}")),
                },
                1 => outcome(records::read_test(&path)),
                _ => outcome(run_info::read(&dir)),
            }
        },
        |message| message.contains(dir.to_str().unwrap()),
    );
    for (f, original) in files.iter().zip(&originals) {
        std::fs::write(dir.join(f), original).unwrap();
    }
    report.assert_clean();
}

#[test]
fn parquet_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_folder(tmp.path());
    let files = [
        dir.join("test_predictions.parquet"),
        dir.join("lrp").join("epoch-0002.parquet"),
        dir.join("landscape")
            .join("grid")
            .join("blocks")
            .join("block-00000.parquet"),
    ];
    let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let report = campaign(
        "Parquet inputs (predictions, LRP snapshots, landscape blocks)",
        cases(),
        22,
        // The footer holds the schema and the row groups' metadata: half the mutations go there.
        |i, m| m.mutate(&originals[i % 3], 1024),
        |i, bytes| {
            let path = &files[i % 3];
            std::fs::write(path, bytes).unwrap();
            outcome(tables::read_parquet(path, None))
        },
        |message| message.contains(dir.to_str().unwrap()),
    );
    report.assert_clean();
}

#[test]
fn whole_merges_of_damaged_run_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_folder(tmp.path());
    let files: Vec<PathBuf> = [
        "config.toml",
        records::EPOCHS_FILE,
        records::TEST_FILE,
        run_info::FILE,
        "test_predictions.parquet",
        "lrp/epoch-0002.parquet",
        "landscape/grid/blocks/block-00000.parquet",
    ]
    .iter()
    .map(|f| dir.join(f))
    .collect();
    let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let out = tmp.path().join("results");
    let report = campaign(
        "collector merge over damaged run folders",
        (cases() / 10).max(1),
        23,
        |i, m| {
            let k = i % files.len();
            for (f, original) in files.iter().zip(&originals) {
                std::fs::write(f, original).unwrap();
            }
            m.mutate(&originals[k], if k >= 4 { 1024 } else { 0 })
        },
        |i, bytes| {
            std::fs::write(&files[i % files.len()], bytes).unwrap();
            // A fresh output each time: every input is read, none skipped as unchanged.
            let _ = std::fs::remove_dir_all(&out);
            outcome(collector::merge::merge(&[tmp.path().to_path_buf()], &out))
        },
        |message| message.contains(dir.to_str().unwrap()),
    );
    report.assert_clean();
}
