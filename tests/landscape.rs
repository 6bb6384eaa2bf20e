//! `trainer landscape` end to end on a tiny run: every kind writes its quantities; the ends of
//! an interpolation are the checkpoints' own values; a landscape killed midway and rerun, or
//! computed in shares by separate tasks, equals one computed in one go; a rerun that asks for
//! another landscape under the same name is refused.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, UInt32Type};
use arrow_array::{Array, RecordBatch};
use common::{landscape_args, store, train_args};

/// A two-epoch CE run on a tiny store, keeping every checkpoint.
fn tiny_run(dir: &Path) -> PathBuf {
    let data = store(dir);
    let out = dir.join("runs");
    let sets = [
        "--set",
        "train.batch_size=8",
        "--set",
        "lrp.every=0",
        "--set",
        "checkpoint.keep_last=5",
    ];
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(train_args(
            "ce",
            &data,
            &out,
            &[&["--epochs", "2"], &sets[..]].concat(),
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out.join("ce-seed0")
}

/// Small subsets and grids: seconds on the CPU.
fn landscape(run: &Path, kind: &str, name: &str, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(landscape_args(run, kind, name, extra))
        .output()
        .unwrap()
}

/// (point, quantity) → (alpha, beta, value) of a landscape's blocks.
type Table = BTreeMap<(u32, String), (Option<f64>, Option<f64>, f64)>;

fn read(dir: &Path) -> Table {
    let mut out = Table::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("blocks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&f).unwrap(),
        )
        .unwrap();
        for b in reader.build().unwrap() {
            let b: RecordBatch = b.unwrap();
            let col = |n: &str| b.column_by_name(n).unwrap().clone();
            let (point, quantity) = (col("point"), col("quantity"));
            let (alpha, beta, value) = (col("alpha"), col("beta"), col("value"));
            let f64_at = |a: &dyn Array, i: usize| {
                let p = a.as_primitive::<Float64Type>();
                p.is_valid(i).then(|| p.value(i))
            };
            for i in 0..b.num_rows() {
                let key = (
                    point.as_primitive::<UInt32Type>().value(i),
                    quantity.as_string::<i32>().value(i).to_string(),
                );
                out.insert(
                    key,
                    (
                        f64_at(&alpha, i),
                        f64_at(&beta, i),
                        f64_at(&value, i).unwrap(),
                    ),
                );
            }
        }
    }
    out
}

#[test]
fn every_kind_writes_its_quantities_and_interpolation_ends_are_the_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path());
    for (kind, name, extra) in [
        ("1d", "one", vec!["--points", "5", "--epoch", "1"]),
        ("2d", "two", vec!["--points", "3", "--epoch", "2"]),
        (
            "interp",
            "between",
            vec![
                "--points",
                "3",
                "--range",
                "0:1",
                "--epoch",
                "1",
                "--to-epoch",
                "2",
            ],
        ),
        ("sharpness", "sharp", vec!["--iterations", "30"]),
    ] {
        let o = landscape(&run, kind, name, &extra);
        assert!(
            o.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(run.join("landscape").join(name).join("spec.json").is_file());
    }
    let one = read(&run.join("landscape/one"));
    assert_eq!(
        one.len(),
        5 * 11,
        "5 points x (own loss + 7 study losses + 3 F1)"
    );
    // The run trains with CE: its own loss is the study's CE, at every point.
    for p in 0..5 {
        assert_eq!(one[&(p, "loss".into())].2, one[&(p, "loss:ce".into())].2);
        let f1 = one[&(p, "f1_samples".into())].2;
        assert!((0.0..=1.0).contains(&f1));
    }
    assert_eq!(
        one[&(2, "loss".into())].0,
        Some(0.0),
        "the middle point is the checkpoint"
    );
    assert!(run.join("landscape/one/directions.safetensors").is_file());
    let two = read(&run.join("landscape/two"));
    assert_eq!(two.len(), 9 * 11);
    assert_eq!(
        (two[&(4, "loss".into())].0, two[&(4, "loss".into())].1),
        (Some(0.0), Some(0.0))
    );
    // t = 0 is epoch 1's checkpoint (the 1D landscape's centre), t = 1 epoch 2's (the 2D one's).
    let between = read(&run.join("landscape/between"));
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(1.0);
    assert!(close(
        between[&(0, "loss".into())].2,
        one[&(2, "loss".into())].2
    ));
    assert!(close(
        between[&(2, "loss".into())].2,
        two[&(4, "loss".into())].2
    ));
    let sharp = read(&run.join("landscape/sharp"));
    assert_eq!(
        sharp.len(),
        2 * 3,
        "two kept epoch checkpoints: the eigenvalue, its iterations and whether it converged"
    );
    for p in 0..2 {
        let v = sharp[&(p, "lambda_max".into())].2;
        assert!(v.is_finite() && v > 0.0, "lambda_max {v}");
    }
    // Asking for another landscape under a name in use is refused.
    let o = landscape(&run, "1d", "one", &["--points", "7", "--epoch", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("holds another landscape"),
        "{err}"
    );
    let o = landscape(&run, "interp", "no-end", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--to-epoch"), "{err}");
}

#[test]
fn a_landscape_killed_midway_or_computed_in_shares_equals_one_computed_in_one_go() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path());
    let args = ["--points", "4", "--block", "2", "--epoch", "2"];
    let o = landscape(&run, "2d", "whole", &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole = read(&run.join("landscape/whole"));
    assert_eq!(whole.len(), 16 * 11);

    // Killed once its first block is written (8 blocks in all); the rerun computes the rest.
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args([
            "landscape",
            "--run",
            run.to_str().unwrap(),
            "--kind",
            "2d",
            "--name",
            "killed",
            "--train-patches",
            "12",
        ])
        .args(["--val-patches", "10", "--batch", "8", "--device", "cpu"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first = run.join("landscape/killed/blocks/block-00000.parquet");
    let started = std::time::Instant::now();
    while !first.exists() {
        assert!(started.elapsed().as_secs() < 120, "no block appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the landscape ended before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = std::fs::read_dir(run.join("landscape/killed/blocks"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "parquet")
        })
        .count();
    assert!(done < 8, "killed too late");
    let o = landscape(&run, "2d", "killed", &args);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && said.contains(&format!("computed {}, found {done}", 8 - done)),
        "{said}"
    );
    assert_eq!(
        read(&run.join("landscape/killed")),
        whole,
        "a rerun after a kill gives the uninterrupted table"
    );

    // Shares: task 1 of 3, then 0 and 2: the same table.
    for task in ["1/3", "0/3", "2/3"] {
        let mut a = args.to_vec();
        a.extend(["--task", task]);
        let o = landscape(&run, "2d", "shared", &a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(read(&run.join("landscape/shared")), whole);
}
