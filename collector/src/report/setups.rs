//! What the report compares: per network architecture, its *setups*, a job's runs of one
//! configuration (`config_hash`) that differ only in their seed. A setup is named after its
//! job (the study's losses by the thesis's abbreviations); a job with runs of several
//! configurations names each `job@hash`.

use std::collections::{BTreeMap, BTreeSet};

use lossbench_core::config::Arch;
use lossbench_core::config::loss::STUDY_TABLE;

use crate::results::RunRow;

/// An architecture's title, for a table's `arch` name.
pub fn arch_title(arch: &str) -> String {
    Arch::named(arch).map_or_else(|| arch.to_string(), |a| a.title().to_string())
}

/// The architectures of `runs`, in the report's order.
pub fn archs(runs: &[RunRow]) -> Vec<String> {
    let mut archs: Vec<String> = runs
        .iter()
        .map(|r| r.arch.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    archs.sort_by_key(|a| {
        Arch::ALL
            .iter()
            .position(|k| k.name() == a)
            .unwrap_or(Arch::ALL.len())
    });
    archs
}

/// A job's name in the report: the study's abbreviation first where it has one.
fn job_label(job: &str) -> String {
    STUDY_TABLE
        .iter()
        .find(|(n, _)| *n == job)
        .map_or_else(|| job.to_string(), |(_, l)| format!("{l} ({job})"))
}

/// The setups of one architecture.
pub struct Setups {
    /// Labels in the report's order: the study's jobs in its order, then the others by name.
    pub order: Vec<String>,
    /// Run id → its setup's label.
    by_run: BTreeMap<String, String>,
}

impl Setups {
    pub fn of(runs: &[RunRow], arch: &str) -> Setups {
        let mine: Vec<&RunRow> = runs.iter().filter(|r| r.arch == arch).collect();
        let mut hashes: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for r in &mine {
            hashes.entry(&r.job).or_default().insert(&r.config_hash);
        }
        let label = |r: &RunRow| {
            if hashes[r.job.as_str()].len() > 1 {
                format!(
                    "{}@{}",
                    job_label(&r.job),
                    &r.config_hash[..8.min(r.config_hash.len())]
                )
            } else {
                job_label(&r.job)
            }
        };
        let by_run: BTreeMap<String, String> =
            mine.iter().map(|r| (r.run_id.clone(), label(r))).collect();
        let rank = |r: &RunRow| {
            STUDY_TABLE
                .iter()
                .position(|(n, _)| *n == r.job)
                .unwrap_or(STUDY_TABLE.len())
        };
        let mut ordered: Vec<(usize, String)> = mine.iter().map(|r| (rank(r), label(r))).collect();
        ordered.sort();
        ordered.dedup();
        Setups {
            order: ordered.into_iter().map(|(_, l)| l).collect(),
            by_run,
        }
    }

    /// The setup of a run of this architecture.
    pub fn of_run(&self, run_id: &str) -> Option<&str> {
        self.by_run.get(run_id).map(String::as_str)
    }
}

/// Natural order of names: digit runs compare as numbers (`ce-seed2` before `ce-seed10`).
pub fn natural_key(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut n = c.to_digit(10).unwrap_or(0) as u64;
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(d as u64);
                chars.next();
            }
            out.push((std::mem::take(&mut text), n));
        } else {
            text.push(c);
        }
    }
    out.push((text, u64::MAX));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, job: &str, hash: &str) -> RunRow {
        RunRow {
            run_id: id.into(),
            job: job.into(),
            loss: job.into(),
            arch: "kbranch".into(),
            seed: id.chars().last().and_then(|c| c.to_digit(10)).unwrap_or(0) as u64,
            config_hash: hash.into(),
            status: "finished".into(),
            loss_params: String::new(),
            code_revision: String::new(),
            best_epoch: None,
            epochs_done: 0,
            epochs_planned: 0,
            attempts: 1,
            wall_s: None,
            folder: String::new(),
            data: String::new(),
        }
    }

    #[test]
    fn setups_follow_the_study_and_split_jobs_by_configuration() {
        let runs = [
            run("mine-seed0", "mine", "aaaa"),
            run("wce-seed0", "wce", "bbbb"),
            run("ce-seed0", "ce", "cccc"),
            run("focal-seed0", "focal", "dddddddddd"),
            run("focal-g1-seed0", "focal", "eeeeeeeeee"),
        ];
        let s = Setups::of(&runs, "kbranch");
        assert_eq!(
            s.order,
            [
                "CE (ce)",
                "FL (focal)@dddddddd",
                "FL (focal)@eeeeeeee",
                "W-CE (wce)",
                "mine"
            ]
        );
        assert_eq!(s.of_run("focal-g1-seed0"), Some("FL (focal)@eeeeeeee"));
    }

    #[test]
    fn natural_order_compares_numbers_as_numbers() {
        let mut names = vec!["wce-seed0", "ce-seed10", "ce-seed2", "ce-seed1"];
        names.sort_by_key(|n| natural_key(n));
        assert_eq!(names, ["ce-seed1", "ce-seed2", "ce-seed10", "wce-seed0"]);
    }
}
