//! MPI data parallelism with real OpenMPI (`mpirun`): two ranks with one micro-batch each do
//! the computation of one process accumulating the same two micro-batches.
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::Command;

use common::{landscape_args, spectrum_args, store, tensors, train_args, trainer};

fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("epochs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `trainer ARGS` on two MPI ranks of this machine (as root, as CI runs), rank 0 logging at info.
fn on_two_ranks(args: &[String]) -> std::process::Output {
    Command::new("mpirun")
        .args(["-np", "2", "--oversubscribe", env!("CARGO_BIN_EXE_trainer")])
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

#[test]
fn two_ranks_equal_one_process_accumulating_their_micro_batches() {
    equivalence("kbranch", "hamming");
}

/// The same for another architecture (ResNet-50) and loss.
#[test]
fn two_resnet_ranks_equal_one_process() {
    equivalence("resnet50", "poly1");
}

fn equivalence(arch: &str, loss: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let data = store(tmp.path());
    let out = tmp.path().join("runs");
    let args = |run_id: &str, accumulate: u32| -> Vec<String> {
        let (accumulate, arch) = (
            format!("train.accumulate={accumulate}"),
            format!("model.arch=\"{arch}\""),
        );
        let sets = [
            "--set",
            "train.batch_size=8",
            "--set",
            &accumulate,
            "--set",
            "run.threads=1",
            "--set",
            "train.loader_threads=1",
        ];
        train_args(
            loss,
            &data,
            &out,
            &[
                &[
                    "--epochs", "2", "--seed", "5", "--run-id", run_id, "--set", &arch,
                ],
                &sets[..],
            ]
            .concat(),
        )
    };
    let one = trainer(&args("one", 2));
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    let two = on_two_ranks(&args("two", 1));
    let log = String::from_utf8_lossy(&two.stderr);
    assert!(two.status.success(), "{log}");
    assert!(
        log.contains("ranks=2"),
        "the trainer did not see two ranks: {log}"
    );

    let (a, b) = (out.join("one"), out.join("two"));
    // Several optimizer steps (36 training patches, 8 per step, 2 epochs): same weights.
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for ((na, ta), (nb, tb)) in tensors(&a.join("checkpoints/epoch-0002/model.safetensors"))
        .iter()
        .zip(tensors(&b.join("checkpoints/epoch-0002/model.safetensors")).iter())
    {
        assert_eq!(na, nb);
        diff += (ta - tb)
            .to_kind(tch::Kind::Double)
            .square()
            .sum(tch::Kind::Double)
            .double_value(&[]);
        norm += ta
            .to_kind(tch::Kind::Double)
            .square()
            .sum(tch::Kind::Double)
            .double_value(&[]);
    }
    let relative = (diff / norm).sqrt();
    assert!(
        relative <= 1e-5,
        "weights differ: relative error {relative:e}"
    );

    // One record per epoch (rank 0 alone writes), identical validation counts and metrics.
    let (ra, rb) = (records(&a), records(&b));
    assert_eq!(ra.len(), 2);
    assert_eq!(rb.len(), 2);
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(x["val"], y["val"]);
        let (la, lb) = (
            x["val_loss"].as_f64().unwrap(),
            y["val_loss"].as_f64().unwrap(),
        );
        assert!(
            (la - lb).abs() <= 1e-9 * la.abs(),
            "validation loss {la} vs {lb}"
        );
        assert_eq!(x["time"]["allreduce_s"], 0.0);
        assert!(y["time"]["allreduce_s"].as_f64().unwrap() > 0.0, "{y}");
    }
    let test = |run: &Path| -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(run.join("test_metrics.json")).unwrap(),
        )
        .unwrap()["metrics"]
            .clone()
    };
    assert_eq!(test(&a), test(&b));
    // The test predictions, gathered from both ranks, are every patch's, as from one process.
    let (pa, pb) = (common::predictions(&a), common::predictions(&b));
    assert_eq!(pa.names, pb.names);
    assert_eq!(pa.decisions, pb.decisions);
    for (x, y) in pa.scores.iter().zip(&pb.scores) {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs().max(1.0),
            "scores {x} vs {y}"
        );
    }
}

/// A landscape's grid points, and a spectrum's items, shared over two MPI ranks: the table of
/// one process.
#[test]
fn two_ranks_share_a_landscapes_points() {
    let tmp = tempfile::tempdir().unwrap();
    let data = store(tmp.path());
    let out = tmp.path().join("runs");
    let sets = [
        "--epochs",
        "1",
        "--set",
        "train.batch_size=8",
        "--set",
        "lrp.every=0",
    ];
    let o = trainer(&train_args("ce", &data, &out, &sets));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = out.join("ce-seed0");
    // One compute thread per process in both: libtorch's float reductions depend on the
    // thread count, not on the ranks.
    let grid = |name: &str| {
        landscape_args(
            &run,
            "2d",
            name,
            &["--points", "3", "--block", "2", "--threads", "1"],
        )
    };
    // The spectrum's items (Lanczos runs, probes, units) are its unit of work.
    let spectrum = |name: &str| spectrum_args(&run, name, &["--threads", "1"]);
    type Args<'a> = &'a dyn Fn(&str) -> Vec<String>;
    for (kind, args) in [("2d", &grid as Args), ("spectrum", &spectrum)] {
        let one = trainer(&args(&format!("{kind}-one")));
        assert!(
            one.status.success(),
            "{}",
            String::from_utf8_lossy(&one.stderr)
        );
        let two = on_two_ranks(&args(&format!("{kind}-two")));
        assert!(
            two.status.success(),
            "{}",
            String::from_utf8_lossy(&two.stderr)
        );
    }
    // Blocks 0, 2, 4 by rank 0, 1, 3 by rank 1: the same files, the same values.
    let blocks = |name: &str| -> Vec<(String, Vec<u8>)> {
        let dir = run.join("landscape").join(name).join("blocks");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| {
                (
                    f.file_name().unwrap().to_string_lossy().to_string(),
                    values(f),
                )
            })
            .collect()
    };
    assert_eq!(blocks("2d-one"), blocks("2d-two"));
    assert_eq!(blocks("2d-one").len(), 5);
    assert_eq!(blocks("spectrum-one"), blocks("spectrum-two"));
    assert!(
        blocks("spectrum-one")
            .iter()
            .any(|(f, _)| f == "e0001-summary.parquet")
    );
}

/// A block's values column, as bytes: equal tables are bitwise equal.
fn values(path: &Path) -> Vec<u8> {
    use arrow_array::Array;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(path).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for b in reader.build().unwrap() {
        let b = b.unwrap();
        let v = b.column_by_name("value").unwrap();
        let data = v.to_data();
        out.extend_from_slice(data.buffers()[0].as_slice());
    }
    out
}

/// Two ranks on one node hold one host copy of resident data (shared memory): each rank's
/// proportional share of each split's pages is half of it (measured from /proc/self/smaps when
/// training ends), run.json says so, and the shared file's name is gone from /dev/shm. (That
/// they train as one process accumulating their micro-batches is the equivalence test above,
/// which shares its data the same way.)
#[test]
fn two_ranks_on_a_node_hold_one_copy_of_resident_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_prep::synth::synthetic_store(tmp.path(), 200, 4).unwrap();
    let out = tmp.path().join("runs");
    let sets = [
        "--epochs",
        "1",
        "--set",
        "train.batch_size=16",
        "--set",
        "data.resident=\"host\"",
    ];
    let two = on_two_ranks(&train_args("ce", &data, &out, &sets));
    let log = String::from_utf8_lossy(&two.stderr);
    assert!(two.status.success(), "{log}");
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("ce-seed0/run.json")).unwrap()).unwrap();
    let placed = &info["attempts"][0]["data"];
    for split in [0, 1] {
        assert_eq!(placed[split]["placement"], "host", "{info}");
        assert_eq!(placed[split]["shared"], true, "{info}");
    }
    let train_bytes = placed[0]["bytes"].as_u64().unwrap();
    assert!(train_bytes > 8 << 20, "{train_bytes}");
    // "train: <this rank's share> of <the split> KiB" from each rank.
    let shares: Vec<(u64, u64)> = log
        .lines()
        .filter(|l| l.contains("memory"))
        .filter_map(|l| {
            let at = l.find("train: ")? + 7;
            let mut words = l[at..].split_whitespace();
            let share = words.next()?.parse().ok()?;
            let whole = words.nth(1)?.parse().ok()?;
            Some((share, whole))
        })
        .collect();
    assert_eq!(shares.len(), 2, "{log}");
    let sum: u64 = shares.iter().map(|s| s.0).sum();
    let whole = shares[0].1;
    assert!(
        sum <= whole + whole / 20 && sum >= whole - whole / 20,
        "{shares:?}: not one copy"
    );
    for (share, _) in &shares {
        assert!(
            *share <= whole / 2 + whole / 10,
            "{shares:?}: a rank holds more than half"
        );
    }
    let left: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.starts_with("lossbench-")
                && name.contains(&info["attempts"][0]["store_id"].as_str().unwrap()[..16])
        })
        .collect();
    assert!(
        left.is_empty(),
        "the shared copy's name is left in /dev/shm"
    );
}

/// A run that diverges on two ranks (every rank sees the summed NaN loss at the same step)
/// fails together: no rank aborts the others (MPI_Abort) before rank 0 has recorded why in
/// run.json. Three attempts, since the abort raced rank 0's record.
#[test]
fn two_ranks_that_diverge_record_why() {
    let tmp = tempfile::tempdir().unwrap();
    let data = store(tmp.path());
    for attempt in 0..3 {
        let out = tmp.path().join(format!("runs{attempt}"));
        let sets = [
            "--set",
            "train.lr=1e30",
            "--set",
            "train.batch_size=8",
            "--set",
            "run.threads=1",
            "--set",
            "train.loader_threads=1",
            "--set",
            "lrp.every=0",
            "--epochs",
            "1",
        ];
        let done = on_two_ranks(&train_args("ce", &data, &out, &sets));
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert_eq!(done.status.code(), Some(1), "attempt {attempt}: {stderr}");
        assert!(!stderr.contains("MPI_Abort"), "attempt {attempt}: {stderr}");
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("ce-seed0/run.json")).unwrap())
                .unwrap();
        assert_eq!(info["status"], "failed", "attempt {attempt}: {info}");
        let reason = info["attempts"][0]["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("training diverged"),
            "attempt {attempt}: {info}"
        );
    }
}
