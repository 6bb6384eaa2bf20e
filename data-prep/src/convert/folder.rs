//! The folder route: an unpacked archive, every patch planned from its metadata first, then
//! converted split by split in name order.

use std::path::Path;

use anyhow::{Result, bail};

use crate::archive::{self};
use crate::plan::{self};
use lossbench_core::layout::Split;

use super::sinks::{CHUNK, Input, Sinks, Work};
use super::{ConvertOptions, Outcome, bad_input_message, resident_mib};

/// An unpacked archive: every patch planned from its metadata first, then converted split by
/// split in name order.
pub(super) fn convert_folder(opts: &ConvertOptions, partial: &Path) -> Result<Outcome> {
    let archive = archive::open(&opts.archive, opts.format)?;
    tracing::info!(format = %archive.format, root = %archive.root.display(), patches = archive.patches.len(),
        bad_metadata = archive.rejects.len(), "read archive metadata");
    let plan = plan::make_plan(&opts.archive, archive, &opts.lists, opts.split_seed)?;
    tracing::info!(
        to_write = plan.splits.values().map(Vec::len).sum::<usize>(),
        rss_mib = resident_mib(),
        "planned every patch"
    );
    if !opts.skip_bad && !plan.rejects.is_empty() {
        bail!(bad_input_message(&plan.rejects, false));
    }
    let total: usize = plan.splits.values().map(Vec::len).sum();
    let progress = lossbench_core::progress::bar(total as u64, "patches");
    let capacities = Split::ALL.map(|s| plan.splits[&s].len() as u64);
    let mut sinks = Sinks::create(
        partial,
        capacities,
        opts,
        plan.accounting.clone(),
        plan.rejects.clone(),
    )?;
    for (&split, patches) in &plan.splits {
        for chunk in patches.chunks(CHUNK) {
            let work = chunk.iter().map(|p| Work {
                split,
                name: p.name.clone(),
                labels: p.labels,
                input: Input::Folder(p.dir.clone()),
            });
            sinks.process(work.collect())?;
            progress.inc(chunk.len() as u64);
        }
    }
    progress.finish_and_clear();
    sinks.finish(partial, plan.source)
}
