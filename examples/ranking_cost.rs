//! The time of the ranking metrics and of tuning per-class thresholds on a split's scores, for
//! the benchmark against scikit-learn (scripts/bench/bench_metrics.py):
//!
//!   ranking_cost SCORES.f32 TRUTH.u8 ROUNDS
//!
//! SCORES holds `[patches, 19]` float32 and TRUTH `[patches, 19]` uint8 (0/1), row-major, raw
//! little-endian. Prints JSON: the patches, the macro and micro mAP (to check both sides scored
//! the same data) and the seconds of each round of `ranking` and of `thresholds::tune`.

use std::time::Instant;

use anyhow::{Context, Result};
use lossbench::thresholds;
use lossbench_core::ranking;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [scores, truth, rounds] = args.as_slice() else {
        anyhow::bail!("usage: ranking_cost SCORES.f32 TRUTH.u8 ROUNDS");
    };
    let bytes = std::fs::read(scores).with_context(|| format!("reading {scores}"))?;
    let scores: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let truth = std::fs::read(truth).with_context(|| format!("reading {truth}"))?;
    let rounds: usize = rounds.parse().context("ROUNDS")?;
    let (mut ranking_s, mut tuning_s, mut last) = (Vec::new(), Vec::new(), None);
    for _ in 0..rounds {
        let started = Instant::now();
        last = Some(ranking::ranking(&scores, &truth));
        ranking_s.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        std::hint::black_box(thresholds::tune(&scores, &truth));
        tuning_s.push(started.elapsed().as_secs_f64());
    }
    let r = last.context("ROUNDS must be at least 1")?;
    let out = serde_json::json!({
        "patches": truth.len() / lossbench_core::labels::NUM_CLASSES,
        "map_macro": r.map_macro,
        "map_micro": r.map_micro,
        "ranking_s": ranking_s,
        "tuning_s": tuning_s,
    });
    println!("{out}");
    Ok(())
}
