//! `collector report`: one self-contained HTML page from the merged tables (docs/results.md,
//! "Report"): per network architecture, its setups' test metrics over seeds with intervals,
//! which setup beats which beyond the noise, the threshold effect, validation curves, per-class
//! results, the LRP grid and the loss landscapes; then the runs.

mod landscape;
mod lrp;
mod matrix;
mod page;
mod runs;
mod setups;
mod study;
mod tuning;
mod vega;

pub use setups::natural_key;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::results;
use lossbench_core::lock::Mode;
use page::{Page, escape};
use setups::{Setups, arch_title};

pub struct Options {
    /// "First epoch at which each setup reaches this validation F1 (sample average)".
    pub f1_threshold: f64,
    /// The LRP grid's patch and class (default: a probe patch and one of its true classes that
    /// every setup has snapshots of).
    pub lrp_patch: Option<String>,
    pub lrp_class: Option<String>,
    /// Rows (epochs) of the LRP grid at most.
    pub lrp_epochs: usize,
    /// Bootstrap resamples of the comparison matrix.
    pub resamples: usize,
}

impl Options {
    fn check(&self) -> Result<()> {
        if !(self.f1_threshold > 0.0 && self.f1_threshold <= 1.0) {
            bail!("--f1-threshold {}: an F1 lies in (0, 1]", self.f1_threshold);
        }
        if self.lrp_epochs == 0 {
            bail!("--lrp-epochs 0: the LRP grid needs at least one epoch (row)");
        }
        if self.resamples < 100 {
            bail!(
                "--resamples {}: at least 100 are needed for a 95% interval",
                self.resamples
            );
        }
        Ok(())
    }
}

/// Writes `out/index.html` from the tables under `results`; returns its path.
pub fn render(results: &Path, out: &Path, opts: &Options) -> Result<PathBuf> {
    opts.check()?;
    results::check_merged(results)?;
    let _lock = crate::merge::lock_results(results, Mode::Shared, "collector report")?;
    let runs = results::runs(results)?;
    if runs.is_empty() {
        bail!(
            "{} holds no runs: merge run folders into it first (collector merge --runs RUNS --out {})",
            results.display(),
            results.display()
        );
    }
    let mut stores: Vec<String> = runs.iter().map(|r| r.data.clone()).collect();
    stores.dedup();
    let mut page = Page::default();
    page.raw(&format!(
        "<h1>Loss-function study on BigEarthNet-19</h1><p class=note>From {} ({} runs), {}.</p>",
        escape(&results.display().to_string()),
        runs.len(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    ));
    for arch in setups::archs(&runs) {
        let setups = Setups::of(&runs, &arch);
        page.heading(2, &arch_title(&arch));
        study::test_table(&mut page, results, &runs, &setups)?;
        matrix::section(&mut page, results, &runs, &setups, opts.resamples)?;
        study::threshold_effect(&mut page, results, &setups)?;
        study::curves(&mut page, results, &runs, &setups, opts.f1_threshold)?;
        study::classes(&mut page, results, &setups)?;
        lrp::section(&mut page, results, &setups, opts, &stores)?;
        landscape::section(&mut page, results, &runs, &setups)?;
    }
    tuning::section(&mut page, results, &runs, opts.resamples)?;
    page.raw(&runs::table(&runs));
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("index.html");
    lossbench_core::files::write_atomically(&path, page.html("lossbench report").as_bytes())?;
    Ok(path)
}
