//! The trainer binary end to end on a tiny synthetic store: records per epoch, the resolved
//! config beside them, and clear errors for bad configs.

mod common;

use std::path::Path;
use std::process::Command;

use common::{job, store, tensors, train_args, trainer, val_records};

#[test]
fn trains_and_records_every_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = store(tmp.path());
    let out = tmp.path().join("runs");
    for loss in ["wce", "sparsemax"] {
        let sets = [
            "--epochs",
            "2",
            "--seed",
            "3",
            "--set",
            "train.batch_size=8",
            "--set",
            "train.accumulate=2",
        ];
        let o = trainer(&train_args(loss, &data, &out, &sets));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let dir = out.join(format!("{loss}-seed3"));
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("epochs.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        for (i, r) in lines.iter().enumerate() {
            assert_eq!(r["epoch"], i as u64 + 1);
            assert!(r["train_loss"].as_f64().unwrap().is_finite());
            let f1 = r["val"]["samples"]["f1"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&f1));
            assert_eq!(r["val"]["per_class"].as_array().unwrap().len(), 19);
            assert!(r["images_per_s"].as_f64().unwrap() > 0.0);
        }
        let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        assert!(
            config.contains(&format!("name = \"{loss}\"")) && config.contains("batch_size = 8"),
            "{config}"
        );
        if loss == "wce" {
            assert!(config.contains("W-CE positive weights"), "{config}");
        }
        check_test_outputs(&dir, &data);
    }
}

#[test]
fn bad_configs_are_refused_naming_the_key() {
    let o = trainer(&["train", "--config", &job("ce"), "--set", "train.lrr=3"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the command line (--set train.lrr=3): `train.lrr`: unknown field `lrr`"),
        "{err}"
    );
    let o = trainer(&[
        "train",
        "--config",
        &job("ce"),
        "--device",
        "cpu",
        "--set",
        "train.bf16=true",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("train.bf16 = true needs a CUDA device"),
        "{err}"
    );
    // A launcher that started two tasks that cannot see each other is refused.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["train", "--config", &job("ce")])
        .env("SLURM_STEP_NUM_TASKS", "2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("SLURM_STEP_NUM_TASKS=2 but the MPI world has 1 process"),
        "{err}"
    );
    let o = trainer(&["train", "--config", "no/such.toml"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot read config no/such.toml: No such file"),
        "{err}"
    );
}

/// The usual mistakes, made as a user makes them, each refused before anything is written with
/// an error naming the cause and where it came from; and paths that work from any folder.
#[test]
fn mistakes_name_their_cause_and_paths_work_from_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let data = store(tmp.path());
    let out = tmp.path().join("runs");
    let refused = |args: &[String], says: &str| {
        let o = trainer(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(
            !o.status.success() && err.contains(says),
            "{says:?} not in: {err}"
        );
    };
    let args = |extra: &[&str]| train_args("ce", &data, &out, extra);
    // A key that does not exist, set on the command line: blamed on the command line.
    refused(
        &args(&["--set", "foo.bar=1"]),
        "the command line (--set foo.bar=1): `foo`: unknown field `foo`",
    );
    // A number beyond what TOML holds: a range error, not "invalid type: string".
    refused(
        &args(&["--set", "train.batch_size=99999999999999999999"]),
        "is out of range",
    );
    // The study's batch of 1024 on a small store.
    refused(
        &args(&["--set", "train.batch_size=1024"]),
        "train.batch_size = 1024 is larger than the training split",
    );
    // A store that is not there: the path and the flag it came from.
    let missing = tmp.path().join("nope.zarr");
    let mut wrong = args(&[]);
    let at = wrong.iter().position(|a| a == "--data").unwrap();
    wrong[at + 1] = missing.display().to_string();
    refused(
        &wrong,
        &format!(
            "run.data = {} (from the command line (--data)): {} does not exist",
            missing.display(),
            missing.display()
        ),
    );
    // A misspelt loss: its own line, and the names there are.
    let dir = tmp.path().join("jobs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(job("base"), dir.join("base.toml")).unwrap();
    std::fs::write(
        dir.join("typo.toml"),
        "base = \"base.toml\"\n\n[loss]\nname = \"focall\"\n",
    )
    .unwrap();
    let typo = dir.join("typo.toml").display().to_string();
    refused(
        &["train".into(), "--config".into(), typo.clone()],
        &format!("{typo}:4: `loss.name`: unknown variant `focall`, expected one of `ce`"),
    );
    assert!(!out.exists(), "a refused run left {} behind", out.display());
    // Paths in a config file are relative to it: a job beside its store, run from elsewhere.
    std::fs::write(dir.join("here.toml"), "base = \"base.toml\"\n[run]\ndata = \"../store.zarr\"\nout = \"../here-runs\"\n[loss]\nname = \"ce\"\n").unwrap();
    std::fs::rename(&data, tmp.path().join("store.zarr")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .current_dir(std::env::temp_dir())
        .args([
            "train",
            "--config",
            &dir.join("here.toml").display().to_string(),
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--set",
            "train.batch_size=16",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = tmp.path().join("here-runs/here-seed0");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let store = tmp.path().join("store.zarr");
    assert!(
        config.contains(&format!("data = \"{}\"", store.display())),
        "recorded absolute: {config}"
    );
    // explain from yet another folder finds the store through the recorded path.
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .current_dir("/")
        .args([
            "explain",
            "--run",
            &run.display().to_string(),
            "--out",
            &tmp.path().join("maps").display().to_string(),
            "--patch",
        ])
        .arg(first_test_patch(&store))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && said.contains("of epoch 1"),
        "{said}{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn first_test_patch(store: &Path) -> String {
    let s = lossbench_core::store::Store::open(store).unwrap();
    s.split(lossbench_core::layout::Split::Test).unwrap().names[0].clone()
}

/// Starts a trainer that logs every step (JSON at debug level) and returns once it reports
/// step `step` of epoch `epoch` done: the interruption comes at a known point, not after a
/// guessed delay. The rest of its log is drained in the background.
fn start_until_step(args: &[String], epoch: u64, step: u64) -> std::process::Child {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .arg("--log-format")
        .arg("json")
        .args(args)
        .env("RUST_LOG", "info,lossbench=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .expect("the trainer ended before the step")
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let f = &v["fields"];
        if f["message"] == "step done" && f["epoch"] == epoch && f["step"] == step {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// The checkpoint folders of a run, by name.
fn checkpoints(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}

/// Resumes a run; returns the checkpoint it said it resumed from.
fn resume(args: &[String]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .arg("--log-format")
        .arg("json")
        .args(args)
        .args(["--resume", "auto"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    let resumed = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "resuming");
    resumed.expect("a resume line")["fields"]["checkpoint"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Every tensor of two runs' final checkpoints is bit-identical, and so are their records.
fn assert_same_run(a: &Path, b: &Path) {
    for ((na, ta), (nb, tb)) in tensors(&a.join("checkpoints/epoch-0003/model.safetensors"))
        .iter()
        .zip(tensors(&b.join("checkpoints/epoch-0003/model.safetensors")).iter())
    {
        assert_eq!(na, nb);
        assert!(
            ta.equal(tb),
            "{na} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
    assert_eq!(val_records(a), val_records(b));
    assert_eq!(val_records(a).len(), 3);
}

/// Killed (SIGKILL, resumes from the last epoch checkpoint), signalled (SIGUSR1, checkpoints
/// mid-epoch, exits 75), stopped after a set number of steps (mid-epoch, deterministic): each
/// resumed run ends bit-identical to an uninterrupted one. The signalled run streams its data
/// from the store, the others hold it in memory: both give the same training.
#[test]
fn a_run_killed_midway_and_resumed_equals_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = store(tmp.path());
    let out = tmp.path().join("runs");
    let args = |run_id: &str, resident: &str| -> Vec<String> {
        let resident = format!("data.resident=\"{resident}\"");
        let sets = [
            "--set",
            "train.batch_size=8",
            "--set",
            "run.threads=2",
            "--set",
            "train.loader_threads=1",
            "--set",
            &resident,
        ];
        train_args(
            "focal",
            &data,
            &out,
            &[&["--epochs", "3", "--run-id", run_id], &sets[..]].concat(),
        )
    };
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args("whole", "host"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("whole/run.json")).unwrap()).unwrap();
    let data_placement = &info["attempts"][0]["data"];
    assert_eq!(
        (
            data_placement[0]["split"].as_str(),
            data_placement[0]["placement"].as_str()
        ),
        (Some("train"), Some("host"))
    );
    assert!(
        data_placement[1]["load_s"].as_f64().unwrap() > 0.0,
        "{info}"
    );

    // SIGKILL in epoch 2: nothing of epoch 2 is saved; the resume starts from epoch 1's checkpoint.
    let mut child = start_until_step(&args("killed", "host"), 2, 1);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(checkpoints(&out.join("killed")), ["epoch-0001"]);
    // Without --resume the folder is protected; with it the run finishes.
    let refused = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args("killed", "host"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume auto"));
    assert!(resume(&args("killed", "host")).ends_with("checkpoints/epoch-0001"));
    assert_same_run(&out.join("whole"), &out.join("killed"));

    // SIGUSR1 (as SLURM sends before the time limit): finish the step, checkpoint mid-epoch, exit 75.
    let child = start_until_step(&args("signalled", "off"), 2, 1);
    assert!(
        Command::new("kill")
            .args(["-USR1", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait_with_output().unwrap().status;
    assert_eq!(status.code(), Some(75), "exit code of a signalled run");
    let saved = checkpoints(&out.join("signalled"));
    let mid = saved
        .iter()
        .find(|n| n.starts_with("epoch-0001-step-"))
        .unwrap_or_else(|| panic!("no mid-epoch checkpoint: {saved:?}"));
    assert!(resume(&args("signalled", "off")).ends_with(mid.as_str()));
    assert_same_run(&out.join("whole"), &out.join("signalled"));

    // --stop-after-steps: two steps into epoch 2.
    let train = lossbench_core::store::Store::open(&data)
        .unwrap()
        .split(lossbench_core::layout::Split::Train)
        .unwrap();
    let per_epoch = train.len.div_ceil(8);
    let mut stopped = args("stopped", "host");
    stopped.extend(["--stop-after-steps".into(), (per_epoch + 2).to_string()]);
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(&stopped)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        checkpoints(&out.join("stopped")),
        ["epoch-0001", "epoch-0001-step-000002"]
    );
    assert!(resume(&args("stopped", "host")).ends_with("epoch-0001-step-000002"));
    assert_same_run(&out.join("whole"), &out.join("stopped"));
}

#[test]
fn lrp_snapshots_follow_the_configured_probes_and_explain_draws_any_patch() {
    use arrow_array::{Array, FixedSizeListArray, StringArray};
    let tmp = tempfile::tempdir().unwrap();
    let data = store(tmp.path());
    let split = lossbench_core::store::Store::open(&data)
        .unwrap()
        .split(lossbench_core::layout::Split::Validation)
        .unwrap();
    let probes = format!(
        "lrp.patches=[\"{}\", \"{}\"]",
        split.names[1], split.names[0]
    );
    let out = tmp.path().join("runs");
    let sets = [
        "--epochs",
        "2",
        "--set",
        "train.batch_size=16",
        "--set",
        "lrp.every=2",
        "--set",
        &probes,
    ];
    let o = trainer(&train_args("focal", &data, &out, &sets));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = out.join("focal-seed0");
    // every = 2: a snapshot after epoch 2 only, of the two named patches.
    assert!(!run.join("lrp/epoch-0001.parquet").exists());
    let read = |path: &Path| -> Vec<arrow_array::RecordBatch> {
        let file = std::fs::File::open(path).unwrap();
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let snapshot = read(&run.join("lrp/epoch-0002.parquet"));
    let patches: std::collections::BTreeSet<String> = snapshot
        .iter()
        .flat_map(|b| {
            b.column_by_name("patch")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .iter()
                .map(|s| s.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        patches,
        [split.names[0].clone(), split.names[1].clone()]
            .into_iter()
            .collect()
    );
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["status"], "finished");
    assert_eq!(info["attempts"].as_array().unwrap().len(), 1);

    // explain: a test patch, two named classes, epoch 1's weights.
    let test = lossbench_core::store::Store::open(&data)
        .unwrap()
        .split(lossbench_core::layout::Split::Test)
        .unwrap();
    let heatmaps = tmp.path().join("heatmaps");
    let o = trainer(&[
        "explain",
        "--run",
        run.to_str().unwrap(),
        "--epoch",
        "1",
        "--patch",
        &test.names[2],
        "--class",
        "Arable land",
        "--class",
        "Marine waters",
        "--out",
        heatmaps.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for png in ["Arable_land.png", "Marine_waters.png"] {
        let bytes = std::fs::read(heatmaps.join(&test.names[2]).join(png)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }
    let rows = read(&heatmaps.join("heatmaps.parquet"));
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    let bands = rows[0].column_by_name("bands").unwrap();
    assert_eq!(
        bands
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .unwrap()
            .value_length(),
        80_000
    );
    assert!(rows[0].column_by_name("map").unwrap().null_count() == 0);

    let o = trainer(&[
        "explain",
        "--run",
        run.to_str().unwrap(),
        "--patch",
        "no-such-patch",
        "--out",
        heatmaps.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no patch named no-such-patch"),
        "{err}"
    );
    let o = trainer(&train_args(
        "ce",
        &data,
        &out,
        &[
            "--set",
            "lrp.patches=[\"nope\"]",
            "--set",
            "train.batch_size=8",
        ],
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("lrp.patches"), "{err}");
}

/// The test predictions hold one row per test patch, and the metrics recomputed from them are
/// the stored test metrics.
fn check_test_outputs(run: &Path, data: &Path) {
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("test_metrics.json")).unwrap()).unwrap();
    let store = lossbench_core::store::Store::open(data).unwrap();
    let test = store.split(lossbench_core::layout::Split::Test).unwrap();
    let common::Predictions {
        names,
        labels: truth,
        decisions: pred,
        scores,
    } = common::predictions(run);
    assert_eq!(scores.len(), truth.len());
    assert_eq!(names, test.names);
    assert_eq!(truth, test.labels);
    let mut counts = lossbench_core::metrics::Counts::default();
    counts.add(&truth, &pred);
    let m = counts.metrics();
    assert_eq!(
        m.samples.f1,
        metrics["metrics"]["samples"]["f1"].as_f64().unwrap()
    );
    assert_eq!(
        m.micro.f1,
        metrics["metrics"]["micro"]["f1"].as_f64().unwrap()
    );
    assert!(metrics["best_epoch"].as_u64().unwrap() >= 1);
}

/// Another architecture (ResNet-50, small): stopped mid-epoch and resumed, with two
/// micro-batches per step and its data streamed, it ends bit-identical to an uninterrupted run
/// from memory. A checkpoint of one architecture is refused by another, naming a tensor.
/// The reBEN recipe on ResNet-50 (AdamW, warm-up then cosine, flips, dropout and drop-path,
/// selection by macro mAP): stopped mid-epoch and resumed, it ends bit-identical to an
/// uninterrupted run.
#[test]
fn a_resnet_run_stopped_and_resumed_equals_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = store(tmp.path());
    let out = tmp.path().join("runs");
    let args = |run_id: &str, resident: &str| -> Vec<String> {
        let resident = format!("data.resident=\"{resident}\"");
        let sets = [
            "--set",
            "train.batch_size=8",
            "--set",
            "train.accumulate=2",
            "--set",
            "train.schedule.warmup_steps=3",
            "--set",
            "train.augment.rotations=true",
            "--set",
            "lrp.probes=1",
            "--set",
            &resident,
        ];
        train_args(
            "reben",
            &data,
            &out,
            &[&["--epochs", "2", "--run-id", run_id], &sets[..]].concat(),
        )
    };
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args("whole", "host"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.join("whole/lrp/epoch-0002.parquet").is_file(),
        "LRP snapshots of a ResNet"
    );
    let train = lossbench_core::store::Store::open(&data)
        .unwrap()
        .split(lossbench_core::layout::Split::Train)
        .unwrap();
    let mut stopped = args("stopped", "off");
    stopped.extend([
        "--stop-after-steps".into(),
        (train.len.div_ceil(8) + 1).to_string(),
    ]);
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(&stopped)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(resume(&args("stopped", "off")).ends_with("epoch-0001-step-000001"));
    for ((na, ta), (_, tb)) in tensors(&out.join("whole/checkpoints/epoch-0002/model.safetensors"))
        .iter()
        .zip(tensors(&out.join("stopped/checkpoints/epoch-0002/model.safetensors")).iter())
    {
        assert!(ta.equal(tb), "{na} differs");
    }
    assert_eq!(
        val_records(&out.join("whole")),
        val_records(&out.join("stopped"))
    );
    // The K-Branch CNN resuming a ResNet's folder: refused before anything changes, naming
    // the network (and what else differs) as the reason.
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(train_args(
            "asl",
            &data,
            &out,
            &[
                "--epochs",
                "3",
                "--run-id",
                "whole",
                "--resume",
                "auto",
                "--set",
                "train.batch_size=8",
            ],
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(
        err.contains("model.arch: \"resnet50\" → \"kbranch\""),
        "{err}"
    );
}

/// A records file with a line that does not parse (torn by a crash mid-write, or edited): the
/// resumed attempt keeps it aside in epochs.rejected.jsonl with a warning naming its line,
/// instead of dropping it.
#[test]
fn record_lines_that_do_not_parse_are_kept_aside_not_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = store(tmp.path());
    let out = tmp.path().join("runs");
    let args = train_args(
        "ce",
        &data,
        &out,
        &["--epochs", "2", "--set", "train.batch_size=8"],
    );
    let stop = [&args[..], &["--stop-after-steps".into(), "6".into()]].concat();
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(&stop)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let records = out.join("ce-seed0/epochs.jsonl");
    let mut text = std::fs::read_to_string(&records).unwrap();
    assert_eq!(text.lines().count(), 1);
    text.push_str("{\"epoch\": 2, \"train_lo");
    std::fs::write(&records, &text).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(&args)
        .args(["--resume", "auto"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(
        log.contains("kept aside") && log.contains("lines=[2]"),
        "{log}"
    );
    let aside = std::fs::read_to_string(out.join("ce-seed0/epochs.rejected.jsonl")).unwrap();
    let kept: serde_json::Value = serde_json::from_str(aside.trim()).unwrap();
    assert_eq!(
        kept,
        serde_json::json!({"line": 2, "text": "{\"epoch\": 2, \"train_lo"})
    );
    assert_eq!(
        std::fs::read_to_string(&records).unwrap().lines().count(),
        2
    );
}

/// A job that asked SLURM for GPUs but whose trainer sees none (a CPU build, a node without
/// its GPUs): `run.device = "auto"` is an error naming the request, not days on the CPU.
#[test]
fn auto_device_in_a_job_that_asked_for_gpus_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = store(tmp.path());
    let out = tmp.path().join("runs");
    let mut args = train_args("ce", &data, &out, &["--epochs", "1"]);
    args.retain(|a| a != "--device" && a != "cpu");
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(&args)
        .env("SLURM_GPUS_ON_NODE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("run.device = \"auto\" in a job that asked for GPUs (SLURM_GPUS_ON_NODE=1)"),
        "{err}"
    );
    assert!(
        !out.join("ce-seed0/run.json").exists(),
        "nothing ran on the CPU instead"
    );
}

/// The peak virtual memory (VmPeak, KiB) of a whole run of `args`: the kernel's high-water
/// mark, read until the process exits.
fn peak_vm_kib(args: &[String]) -> u64 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(args)
        .env("MALLOC_ARENA_MAX", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (pid, mut peak) = (child.id(), 0);
    while child.try_wait().unwrap().is_none() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(line) = status.lines().find(|l| l.starts_with("VmPeak:"))
        {
            peak = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    peak
}

/// Out of memory in a step (here the host's, under a memory limit such as `ulimit -v` or a
/// cluster's virtual-memory limit; on a GPU, CUDA's): the run stops with exit 71, the message
/// names the run, epoch, step and batch and says what to change, run.json records `failed`
/// with it, and the newest checkpoint is intact (the run resumes from it without the limit).
#[test]
fn out_of_memory_names_the_step_and_leaves_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = store(tmp.path());
    let out = tmp.path().join("runs");
    // ResNet-50, whose activations in a batch of 30 take gigabytes more than in a batch of 2.
    let run = |batch: &str| {
        let batch = format!("train.batch_size={batch}");
        let sets = [
            "--set",
            &batch,
            "--set",
            "lrp.every=0",
            "--set",
            "model.arch=\"resnet50\"",
        ];
        train_args("ce", &data, &out, &[&["--epochs", "1"], &sets[..]].concat())
    };
    let small = peak_vm_kib(&run("2"));
    std::fs::remove_dir_all(&out).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(run("30"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let checkpoint = out.join("ce-resnet50-seed0/checkpoints/epoch-0001/model.safetensors");
    let saved = std::fs::read(&checkpoint).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: {}",
            checkpoint.display(),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let more = ["--resume", "auto", "--set", "train.epochs=2"];
    // One malloc arena: virtual memory then follows what is allocated, not how many threads
    // allocated it, and the limit falls between what set-up needs and what the step needs.
    let o = Command::new("prlimit")
        .env("MALLOC_ARENA_MAX", "1")
        .arg(format!("--as={}", (small + 300 * 1024) * 1024))
        .arg(env!("CARGO_BIN_EXE_trainer"))
        .args(run("30"))
        .args(more)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(71), "{:?}: {err}", o.status);
    assert!(err.contains("out of memory in epoch 2, step 1"), "{err}");
    // 31 patches: a last step of one patch joins the one before.
    assert!(
        err.contains("batch 30 in micro-batches of up to 31 patches"),
        "{err}"
    );
    // The CPU allocator refuses, or oneDNN cannot allocate a convolution's workspace (which it
    // says as a primitive it could not create), whichever allocation the limit hits first.
    let refused =
        err.contains("can't allocate memory") || err.contains("could not create a primitive");
    assert!(refused && !err.contains("frame #"), "{err}");
    assert!(
        err.contains("Raise train.accumulate") && err.contains("newest checkpoint is intact"),
        "{err}"
    );
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("ce-resnet50-seed0/run.json")).unwrap())
            .unwrap();
    assert_eq!(info["status"], "failed", "{info}");
    assert!(
        info["attempts"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("out of memory"),
        "{info}"
    );
    assert_eq!(std::fs::read(&checkpoint).unwrap(), saved);
    let o = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(run("30"))
        .args(more)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Memory running out while the run is set up (VGG-16-BN's 138 M weights under the same
    // limit): exit 71 too, and run.json records it (the attempt had begun).
    let vgg = [
        "--set",
        "model.arch=\"vgg16\"",
        "--set",
        "train.batch_size=2",
        "--epochs",
        "1",
    ];
    let o = Command::new("prlimit")
        .env("MALLOC_ARENA_MAX", "1")
        .arg(format!("--as={}", (small + 300 * 1024) * 1024))
        .arg(env!("CARGO_BIN_EXE_trainer"))
        .args(train_args("ce", &data, &out, &vgg))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(71), "{:?}: {err}", o.status);
    assert!(
        err.contains("out of memory building the network and its optimizer"),
        "{err}"
    );
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("ce-vgg16-seed0/run.json")).unwrap())
            .unwrap();
    assert_eq!(info["status"], "failed", "{info}");
}

/// Early stopping on validation macro mAP with patience 1: training ends at the first epoch
/// that does not beat the best, the best epoch's checkpoint is kept and tested, run.json says
/// why the run ended early, and resuming the finished run trains nothing more.
#[test]
fn early_stopping_tests_the_best_epoch_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let data = store(tmp.path());
    let out = tmp.path().join("runs");
    let sets = [
        "--epochs",
        "6",
        "--set",
        "train.batch_size=8",
        "--set",
        "selection.metric=\"map_macro\"",
        "--set",
        "selection.patience=1",
        "--set",
        "checkpoint.keep_last=1",
    ];
    let args = train_args("ce", &data, &out, &sets);
    let o = trainer(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = out.join("ce-seed0");
    let maps: Vec<f64> = std::fs::read_to_string(dir.join("epochs.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            r["val_ranking"]["map_macro"].as_f64().unwrap()
        })
        .collect();
    let stopped = maps.len() as u32;
    assert!(stopped < 6, "no early stop: {maps:?}");
    let best = 1 + (0..maps.len()).fold(0, |b, i| if maps[i] > maps[b] { i } else { b }) as u32;
    assert_eq!(stopped, best + 1, "{maps:?}");
    let test: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("test_metrics.json")).unwrap()).unwrap();
    assert_eq!(test["best_epoch"], best);
    let kept = checkpoints(&dir);
    assert!(kept.contains(&format!("epoch-{best:04}")), "{kept:?}");
    let reason = |dir: &Path| {
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
        let last = info["attempts"].as_array().unwrap().last().unwrap().clone();
        (
            last["outcome"].clone(),
            last["reason"].as_str().unwrap_or("").to_string(),
        )
    };
    let (status, why) = reason(&dir);
    assert_eq!(status, "finished");
    assert!(
        why.contains(&format!("early stopping after epoch {stopped}"))
            && why.contains(&format!("since epoch {best}")),
        "{why}"
    );
    // Resumed, the run goes straight to its test: no epoch is trained.
    let again = trainer(&[&args[..], &["--resume".into(), "auto".into()]].concat());
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(val_records(&dir).len(), maps.len());
    assert_eq!(reason(&dir).1, why);
}
