//! `collector compare --a JOB --b JOB`: is job A better than job B beyond the noise? Each
//! job's headline test metrics over its seeds (mean, std, Student-t 95% interval,
//! [`crate::stats`]) and the paired bootstrap of their differences over the test patches, per
//! seed and pooled ([`bootstrap`]); docs/results.md, "Comparing two jobs".

pub mod bootstrap;

use std::path::Path;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::results::{self, RunRow};
use crate::stats::{SeedSummary, summarise};
use bootstrap::{Difference, Metric, Pair, Scored};

/// The resamples of a comparison unless told otherwise: the Monte Carlo error of the 2.5% and
/// 97.5% percentiles of 2,000 resamples is about 0.06 standard errors of the difference.
pub const DEFAULT_RESAMPLES: usize = 2000;

/// One side of a comparison: a job's finished runs of one configuration.
#[derive(Debug, Serialize)]
pub struct Side {
    pub job: String,
    pub arch: String,
    pub loss: String,
    pub config_hash: String,
    /// (seed, run id), by seed.
    pub runs: Vec<(u64, String)>,
    /// Each metric over the seeds.
    pub summaries: Vec<(Metric, SeedSummary)>,
}

/// The outcome of `collector compare`.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub a: Side,
    pub b: Side,
    pub patches: usize,
    pub resamples: usize,
    pub seed: u64,
    /// Per paired seed, then pooled over them (absent with one seed).
    pub per_seed: Vec<(u64, Vec<Difference>)>,
    pub pooled: Option<Vec<Difference>>,
    /// Seeds only one side has (left out).
    pub unpaired: Vec<u64>,
}

/// The finished runs of `spec`: a job name, or `JOB@HASH` for one of its configurations (a
/// prefix of the config hash).
fn select<'r>(runs: &'r [RunRow], spec: &str) -> Result<Vec<&'r RunRow>> {
    let (job, hash) = spec.split_once('@').unwrap_or((spec, ""));
    let of_job: Vec<&RunRow> = runs.iter().filter(|r| r.job == job).collect();
    if of_job.is_empty() {
        let mut jobs: Vec<&str> = runs.iter().map(|r| r.job.as_str()).collect();
        jobs.sort();
        jobs.dedup();
        bail!(
            "no run of job {job:?} in the results; jobs: {}",
            jobs.join(", ")
        );
    }
    let chosen: Vec<&RunRow> = of_job
        .into_iter()
        .filter(|r| r.status == "finished" && r.config_hash.starts_with(hash))
        .collect();
    let mut hashes: Vec<&str> = chosen.iter().map(|r| r.config_hash.as_str()).collect();
    hashes.sort();
    hashes.dedup();
    match hashes.len() {
        0 => bail!("job {spec:?} has no finished run (a run is compared once it has tested)"),
        1 => {}
        _ => {
            let count = |h: &str| chosen.iter().filter(|r| r.config_hash == h).count();
            let list: Vec<String> = hashes
                .iter()
                .map(|h| format!("{job}@{} ({} runs)", &h[..8.min(h.len())], count(h)))
                .collect();
            bail!(
                "job {job:?} has finished runs of {} configurations; name one: {}",
                hashes.len(),
                list.join(", ")
            );
        }
    }
    let mut seeds: Vec<u64> = chosen.iter().map(|r| r.seed).collect();
    seeds.sort();
    if let Some(w) = seeds.windows(2).find(|w| w[0] == w[1]) {
        let twins: Vec<&str> = chosen
            .iter()
            .filter(|r| r.seed == w[0])
            .map(|r| r.run_id.as_str())
            .collect();
        bail!(
            "job {spec:?} has several finished runs of seed {}: {}; merge one of them",
            w[0],
            twins.join(", ")
        );
    }
    Ok(chosen)
}

/// A side's runs with their predictions, by seed.
struct Loaded<'r> {
    runs: Vec<(&'r RunRow, Scored)>,
}

fn load<'r>(
    results: &Path,
    runs: Vec<&'r RunRow>,
    patches: &mut Option<(String, Vec<String>)>,
) -> Result<Loaded<'r>> {
    let mut out = Vec::new();
    for r in runs {
        let p = results::predictions(results, &r.run_id)?;
        let (names, scored) = (p.patches, Scored::new(p.truth, &p.scores, p.decisions));
        match patches {
            None => *patches = Some((r.run_id.clone(), names)),
            Some((first, known)) if *known != names => bail!(
                "runs {first} and {} were tested on different patches ({} and {}): compare runs \
                 of the same store",
                r.run_id,
                known.len(),
                names.len()
            ),
            Some(_) => {}
        }
        out.push((r, scored));
    }
    out.sort_by_key(|(r, _)| r.seed);
    Ok(Loaded { runs: out })
}

fn side(loaded: &Loaded) -> Side {
    let first = loaded.runs[0].0;
    let values: Vec<[f64; 4]> = loaded.runs.iter().map(|(_, s)| s.observed()).collect();
    let summaries = Metric::ALL
        .iter()
        .enumerate()
        .filter_map(|(k, &m)| {
            let v: Vec<f64> = values
                .iter()
                .map(|v| v[k])
                .filter(|x| !x.is_nan())
                .collect();
            summarise(&v).map(|s| (m, s))
        })
        .collect();
    Side {
        job: first.job.clone(),
        arch: first.arch.clone(),
        loss: first.loss.clone(),
        config_hash: first.config_hash.clone(),
        runs: loaded
            .runs
            .iter()
            .map(|(r, _)| (r.seed, r.run_id.clone()))
            .collect(),
        summaries,
    }
}

/// Compares jobs `a` and `b` of the results folder `results`.
pub fn compare(
    results: &Path,
    a: &str,
    b: &str,
    resamples: usize,
    seed: u64,
) -> Result<Comparison> {
    if resamples < 100 {
        bail!("--resamples {resamples}: at least 100 are needed for a 95% interval");
    }
    results::check_merged(results)?;
    let _lock = crate::merge::lock_results(
        results,
        lossbench_core::lock::Mode::Shared,
        "collector compare",
    )?;
    let runs = results::runs(results)?;
    let (ra, rb) = (select(&runs, a)?, select(&runs, b)?);
    let mut patches = None;
    let (la, lb) = (
        load(results, ra, &mut patches)?,
        load(results, rb, &mut patches)?,
    );
    let seeds_b: Vec<u64> = lb.runs.iter().map(|(r, _)| r.seed).collect();
    let pairs: Vec<Pair> = la
        .runs
        .iter()
        .filter_map(|(ra, sa)| {
            let (_, sb) = lb.runs.iter().find(|(rb, _)| rb.seed == ra.seed)?;
            Some(Pair {
                seed: ra.seed,
                a: sa,
                b: sb,
            })
        })
        .collect();
    let mut unpaired: Vec<u64> = la
        .runs
        .iter()
        .map(|(r, _)| r.seed)
        .chain(seeds_b.iter().copied())
        .filter(|s| !pairs.iter().any(|p| p.seed == *s))
        .collect();
    unpaired.sort();
    unpaired.dedup();
    if pairs.is_empty() {
        bail!(
            "{a} and {b} share no seed: the paired comparison needs runs of the same seed (seeds \
             {:?} and {seeds_b:?})",
            la.runs.iter().map(|(r, _)| r.seed).collect::<Vec<_>>()
        );
    }
    // Every seed pair alone, then pooled: one pass over the resamples for all of them.
    let mut comparisons: Vec<&[Pair]> = pairs.chunks(1).collect();
    if pairs.len() > 1 {
        comparisons.push(&pairs);
    }
    let mut differences = bootstrap::compare_all(&comparisons, resamples, seed);
    let pooled = (pairs.len() > 1).then(|| differences.pop().expect("the pooled comparison"));
    let per_seed = pairs.iter().map(|p| p.seed).zip(differences).collect();
    Ok(Comparison {
        a: side(&la),
        b: side(&lb),
        patches: patches.map_or(0, |(_, p)| p.len()),
        resamples,
        seed,
        per_seed,
        pooled,
        unpaired,
    })
}

/// The metric's name in text.
pub fn title(m: Metric) -> &'static str {
    match m {
        Metric::MicroF1 => "F1 micro",
        Metric::MacroF1 => "F1 macro",
        Metric::SamplesF1 => "F1 sample",
        Metric::MapMacro => "mAP macro",
    }
}

fn summary_cell(s: &SeedSummary) -> String {
    match s.ci95 {
        Some((lo, hi)) => format!("{:.4} ± {:.4} [{lo:.4}, {hi:.4}]", s.mean, s.std),
        None => format!("{:.4} (one run)", s.mean),
    }
}

impl Comparison {
    /// The comparison as text for a terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let describe = |name: &str, s: &Side| {
            let seeds: Vec<String> = s.runs.iter().map(|(seed, _)| seed.to_string()).collect();
            format!(
                "{name} = {} ({}, loss {}, config {}): {} run(s), seeds {}\n",
                s.job,
                s.arch,
                s.loss,
                &s.config_hash[..8.min(s.config_hash.len())],
                s.runs.len(),
                seeds.join(" ")
            )
        };
        out += &describe("A", &self.a);
        out += &describe("B", &self.b);
        out += &format!(
            "{} test patches; {} resamples from seed {}\n",
            self.patches, self.resamples, self.seed
        );
        if !self.unpaired.is_empty() {
            out += &format!(
                "seeds left out (only one job has them): {:?}\n",
                self.unpaired
            );
        }
        out += &format!(
            "\nover seeds: mean ± std [95% interval, Student t]\n{:<10} {:<40} {}\n",
            "metric", "A", "B"
        );
        for m in Metric::ALL {
            let cell = |s: &Side| {
                s.summaries
                    .iter()
                    .find(|(x, _)| *x == m)
                    .map_or("-".into(), |(_, s)| summary_cell(s))
            };
            out += &format!("{:<10} {:<40} {}\n", title(m), cell(&self.a), cell(&self.b));
        }
        out +=
            "\nA − B, paired bootstrap over the test patches (* : the 95% interval excludes 0)\n";
        out += &format!(
            "{:<10} {:<7} {:>9}  {:<22} {:>9}\n",
            "metric", "seed", "A − B", "95% interval", "A better"
        );
        let mut rows: Vec<(String, &Vec<Difference>)> = self
            .per_seed
            .iter()
            .map(|(s, d)| (s.to_string(), d))
            .collect();
        if let Some(p) = &self.pooled {
            rows.push(("pooled".into(), p));
        }
        for m in Metric::ALL {
            for (seed, diffs) in &rows {
                let d = diffs.iter().find(|d| d.metric == m).expect("every metric");
                out += &format!(
                    "{:<10} {:<7} {:>+9.4}  [{:>+8.4}, {:>+8.4}]   {:>7.1}% {}\n",
                    title(m),
                    seed,
                    d.observed,
                    d.low,
                    d.high,
                    100.0 * d.a_better,
                    if d.excludes_zero() { "*" } else { "" }
                );
            }
        }
        out
    }
}
