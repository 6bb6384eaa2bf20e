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
use common::{landscape_args, spectrum_args, store, train_args};

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
    rows(dir)
        .into_iter()
        .map(|r| ((r.point, r.quantity), (r.alpha, r.beta, r.value)))
        .collect()
}

/// A row of a landscape's blocks, with the block's file stem.
#[derive(Debug, Clone, PartialEq)]
struct Rec {
    block: String,
    checkpoint: Option<u32>,
    point: u32,
    unit: Option<String>,
    quantity: String,
    alpha: Option<f64>,
    beta: Option<f64>,
    value: f64,
}

/// Every row of a landscape's blocks, in file order.
fn rows(dir: &Path) -> Vec<Rec> {
    let mut out = Vec::new();
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
        let block = f.file_stem().unwrap().to_string_lossy().to_string();
        for b in reader.build().unwrap() {
            let b: RecordBatch = b.unwrap();
            let col = |n: &str| b.column_by_name(n).unwrap().clone();
            let (point, quantity, unit) = (col("point"), col("quantity"), col("unit"));
            let checkpoint = col("checkpoint");
            let (alpha, beta, value) = (col("alpha"), col("beta"), col("value"));
            let f64_at = |a: &dyn Array, i: usize| {
                let p = a.as_primitive::<Float64Type>();
                p.is_valid(i).then(|| p.value(i))
            };
            for i in 0..b.num_rows() {
                let checkpoint = checkpoint.as_primitive::<UInt32Type>();
                let unit = unit.as_string::<i32>();
                out.push(Rec {
                    block: block.clone(),
                    checkpoint: checkpoint.is_valid(i).then(|| checkpoint.value(i)),
                    point: point.as_primitive::<UInt32Type>().value(i),
                    unit: unit.is_valid(i).then(|| unit.value(i).to_string()),
                    quantity: quantity.as_string::<i32>().value(i).to_string(),
                    alpha: f64_at(&alpha, i),
                    beta: f64_at(&beta, i),
                    value: f64_at(&value, i).unwrap(),
                });
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

/// `--kind spectrum` at one epoch: its quantities agree with each other; killed in the middle
/// of a Lanczos run and rerun, or computed as two array tasks, it gives the table of one
/// uninterrupted run.
#[test]
fn a_spectrum_killed_in_a_lanczos_run_or_shared_equals_one_computed_in_one_go() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path());
    // A tolerance no estimate meets: the trace uses all 10 probes.
    let args = [
        "--epoch",
        "2",
        "--trace-tolerance",
        "1e-9",
        "--density-points",
        "400",
    ];
    let spectrum = |name: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_trainer"))
            .args(spectrum_args(&run, name, &[&args[..], extra].concat()))
            .output()
            .unwrap()
    };
    let o = spectrum("whole", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole = rows(&run.join("landscape/whole"));
    let of = |q: &str| -> Vec<f64> {
        whole
            .iter()
            .filter(|r| r.quantity == q && r.unit.is_none())
            .map(|r| r.value)
            .collect()
    };
    let top = of("eigenvalue");
    assert_eq!(top.len(), 2);
    assert!(
        top[0] > 0.0 && top.windows(2).all(|w| w[0] >= w[1]),
        "{top:?}"
    );
    let probes = of("hutchinson");
    assert_eq!(probes.len(), 10);
    let mean = probes.iter().sum::<f64>() / 10.0;
    assert!((of("trace")[0] - mean).abs() <= 1e-9 * mean.abs());
    // Each probe's per-unit values are the diagonal blocks' shares of its total.
    for j in 0..10 {
        let units: f64 = whole
            .iter()
            .filter(|r| r.quantity == "hutchinson" && r.point == j && r.unit.is_some())
            .map(|r| r.value)
            .sum();
        assert!(
            (units - probes[j as usize]).abs() <= 1e-4 * probes[j as usize].abs().max(1.0),
            "probe {j}: units {units} vs total {}",
            probes[j as usize]
        );
    }
    let layer_units: Vec<&str> = whole
        .iter()
        .filter(|r| r.quantity == "layer_eigenvalue")
        .map(|r| r.unit.as_deref().unwrap())
        .collect();
    assert!(
        layer_units.len() > 2 && layer_units.contains(&"head"),
        "{layer_units:?}"
    );
    let traced = whole.iter().filter(|r| r.quantity == "layer_trace").count();
    assert_eq!(traced, layer_units.len(), "a trace per unit");
    // The density is a probability density: it integrates to 1 over its grid.
    let density: Vec<(f64, f64)> = whole
        .iter()
        .filter(|r| r.quantity == "density")
        .map(|r| (r.alpha.unwrap(), r.value))
        .collect();
    assert_eq!(density.len(), 400);
    let area: f64 = density
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
        .sum();
    assert!((area - 1.0).abs() < 1e-3, "the density's area {area}");
    let negative = of("negative_mass")[0];
    assert!((0.0..=1.0).contains(&negative));

    // Killed once the top eigenvalues' Lanczos run has saved a step; the rerun resumes it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(spectrum_args(&run, "killed", &args))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let saved = run.join("landscape/killed/state/e0002-top/coefficients.json");
    let started = std::time::Instant::now();
    while !saved.exists() {
        assert!(
            started.elapsed().as_secs() < 120,
            "no Lanczos step was saved"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the spectrum ended before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !run.join("landscape/killed/blocks/e0002-top.parquet")
            .exists()
    );
    let o = spectrum("killed", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(said.contains("resuming a Lanczos run"), "{said}");
    assert_eq!(rows(&run.join("landscape/killed")), whole);
    assert!(
        !run.join("landscape/killed/state/e0002-top").exists(),
        "a finished item's state is removed"
    );

    // Two array tasks: the second finds the epoch complete and writes its summary.
    for task in ["0/2", "1/2"] {
        let o = spectrum("shared", &["--task", task]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(rows(&run.join("landscape/shared")), whole);
}
