//! Bad inputs at scale (fuzzing crate): mutated job configs with `--set` overrides, and mutated
//! checkpoints (`state.json`, `model.safetensors`, `optimizer.safetensors`, with and without
//! checksums that match the damage), each campaign `LOSSBENCH_FUZZ_CASES` inputs (10,000 by
//! default). No panic, no hang, bounded memory, and every refusal names the file (or the
//! command line, for an override).

mod common;

use std::path::Path;

use fuzzing::{Outcome, campaign, cases};
use lossbench::checkpoint;
use lossbench_core::config;
use tch::{Device, Kind, Tensor};

#[global_allocator]
static HEAP: fuzzing::PeakAlloc = fuzzing::PeakAlloc;

/// Valid overrides a user passes, mutated as text before parsing.
const OVERRIDES: &[&str] = &[
    "train.lr=1e-3",
    "train.batch_size=32",
    "model.arch=\"resnet50\"",
    "data.resident=host",
    "loss.gamma=2",
    "lrp.patches=[\"S2A_MSIL2A_20170613T101031_0_45\"]",
    "run.seed=3",
    "checkpoint.keep_last=5",
];

#[test]
fn job_configs_and_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    let jobs = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
    let base = std::fs::read(jobs.join("base.toml")).unwrap();
    std::fs::write(tmp.path().join("base.toml"), &base).unwrap();
    let mut seeds: Vec<Vec<u8>> = vec![base];
    for entry in std::fs::read_dir(&jobs).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n != "base.toml") {
            seeds.push(std::fs::read(path).unwrap());
        }
    }
    let file = tmp.path().join("job.toml");
    let overrides = std::cell::RefCell::new(Vec::new());
    let report = campaign(
        "job TOML and --set overrides",
        cases(),
        11,
        |i, m| {
            // Half the cases mutate the file, half an override (the file then valid).
            let mut sets: Vec<String> = (0..1 + i % 3)
                .map(|k| OVERRIDES[(i + k) % OVERRIDES.len()].to_string())
                .collect();
            if i % 2 == 1 {
                let k = i % sets.len();
                sets[k] = String::from_utf8_lossy(&m.mutate(sets[k].as_bytes(), 0)).into_owned();
                *overrides.borrow_mut() = sets;
                return seeds[(i / 2) % seeds.len()].clone();
            }
            *overrides.borrow_mut() = sets;
            m.mutate(&seeds[(i / 2) % seeds.len()], 0)
        },
        |_, bytes| {
            std::fs::write(&file, bytes).unwrap();
            let parsed: Result<config::Overrides, _> = overrides
                .borrow()
                .iter()
                .map(|s| config::parse_override(s))
                .collect();
            let result = parsed.and_then(|o| config::load(&file, o));
            match result {
                Ok(_) => Outcome::Accepted,
                Err(e) => Outcome::Refused(e.to_string()),
            }
        },
        |message| {
            message.contains(file.to_str().unwrap())
                || message.contains("base.toml")
                || message.contains("the command line")
        },
    );
    report.assert_clean();
}

/// A small stand-in for a model: convolution, BatchNorm statistics and a dense layer.
fn variables(fill: f64) -> Vec<(String, Tensor)> {
    let o = (Kind::Float, Device::Cpu);
    vec![
        ("conv.weight".into(), Tensor::full([8, 3, 3, 3], fill, o)),
        ("conv.bias".into(), Tensor::full([8], fill, o)),
        ("bn.running_var".into(), Tensor::ones([8], o)),
        ("head.weight".into(), Tensor::full([19, 8], fill, o)),
    ]
}

#[test]
fn checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let state = checkpoint::State {
        epoch: 1,
        steps_into_next: 0,
        partial_loss_sum: 0.0,
        optimizer_step: 10,
        best_epoch: 1,
        best_score: 0.5,
        crc32: [0, 0],
        bytes: None,
        fingerprint: Some(lossbench::resume::Fingerprint {
            config: "0123456789abcdef".into(),
            micro_batches: 1,
            store: "s".into(),
        }),
    };
    checkpoint::save(&run, &variables(0.5), &variables(0.25), state, 2).unwrap();
    let dir = run.join("checkpoints").join("epoch-0001");
    let files = ["state.json", "model.safetensors", "optimizer.safetensors"];
    let originals: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    let model = variables(0.0);
    let report = campaign(
        "checkpoints (state.json, safetensors)",
        cases(),
        12,
        |i, m| {
            let which = i % 3;
            let mut contents = originals.clone();
            contents[which] = m.mutate(&originals[which], 0);
            // Every other damaged tensor file gets a state.json whose checksum matches it, so
            // that the safetensors reader and the shape checks see it.
            if which > 0 && (i / 3) % 2 == 0 {
                let mut s: serde_json::Value = serde_json::from_slice(&originals[0]).unwrap();
                s["crc32"][which - 1] = crc32fast::hash(&contents[which]).into();
                contents[0] = serde_json::to_vec(&s).unwrap();
            }
            for (f, c) in files.iter().zip(&contents) {
                std::fs::write(dir.join(f), c).unwrap();
            }
            Vec::new()
        },
        |_, _| {
            let loaded = checkpoint::at_epoch(&run, 1)
                .and_then(|c| checkpoint::copy_into(&model, &c.model, &c.dir));
            match loaded {
                Ok(()) => Outcome::Accepted,
                Err(e) => Outcome::Refused(format!("{e:#}")),
            }
        },
        |message| message.contains(dir.to_str().unwrap()),
    );
    report.assert_clean();
}
