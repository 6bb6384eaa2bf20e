//! The trainer binary end to end on a tiny synthetic store: records per epoch, the resolved
//! config beside them, and clear errors for bad configs.

use std::path::Path;
use std::process::Command;

fn store(dir: &Path) -> std::path::PathBuf {
    let archive = dir.join("archive");
    data_prep::synth::synth(&data_prep::synth::SynthOptions {
        patches: 70,
        seed: 9,
        format: data_prep::archive::ArchiveFormat::V1,
        out: archive.clone(),
    })
    .unwrap();
    let out = dir.join("store.zarr");
    data_prep::convert::convert(&data_prep::convert::ConvertOptions {
        archive,
        out: out.clone(),
        format: None,
        lists: Default::default(),
        split_seed: 0,
        skip_bad: false,
        overwrite: false,
        store: data_prep::store::StoreOptions { codec: data_prep::store::Codec::Blosc, level: 3, shard_patches: 16 },
    })
    .unwrap();
    out
}

fn trainer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).output().unwrap()
}

fn job(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs").join(format!("{name}.toml")).display().to_string()
}

#[test]
fn trains_and_records_every_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = store(tmp.path());
    let out = tmp.path().join("runs");
    for loss in ["wce", "sparsemax"] {
        let o = trainer(&[
            "train", "--config", &job(loss), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(),
            "--epochs", "2", "--seed", "3", "--device", "cpu", "--set", "train.batch_size=8", "--set", "train.accumulate=2",
        ]);
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
        assert!(config.contains(&format!("name = \"{loss}\"")) && config.contains("batch_size = 8"), "{config}");
        if loss == "wce" {
            assert!(config.contains("W-CE positive weights"), "{config}");
        }
    }
}

#[test]
fn bad_configs_are_refused_naming_the_key() {
    let o = trainer(&["train", "--config", &job("ce"), "--set", "train.lrr=3"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the command line: `train.lrr`: unknown field `lrr`"), "{err}");
    let o = trainer(&["train", "--config", "no/such.toml"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot read config no/such.toml: No such file"), "{err}");
}
