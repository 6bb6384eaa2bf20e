//! `trainer explain`: LRP heatmaps of any patches with a run's weights of a chosen epoch
//! (docs/lrp.md), as Parquet plus one PNG per (patch, class).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::checkpoint;
use crate::data::{Normalizer, read_batch};
use crate::dist::Dist;
use crate::lrp::{Composite, Explainer, Patches, explain_patches};
use crate::run_folder::RunFolder;
use lossbench_core::heatmaps::HeatmapRow;
use lossbench_core::labels::{BEN19, ben19_index};
use lossbench_core::layout::Split;
use lossbench_core::lock::Mode;
use lossbench_core::store::SplitData;

#[derive(Debug, Clone, clap::Args)]
pub struct Request {
    /// The run folder.
    #[arg(long)]
    pub run: PathBuf,
    /// The epoch whose checkpoint to use (default: the best epoch).
    #[arg(long)]
    pub epoch: Option<u32>,
    /// Patch names (any split). Repeatable.
    #[arg(long = "patch", required = true)]
    pub patches: Vec<String>,
    /// BigEarthNet-19 class names (default: each patch's true and predicted classes). Repeatable.
    #[arg(long = "class")]
    pub classes: Vec<String>,
    /// Output folder: heatmaps.parquet and <patch>/<class>.png.
    #[arg(long)]
    pub out: PathBuf,
    /// The store (default: the run's run.data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// epsilon-plus-flat | epsilon | alpha1-beta0 (default: the run's lrp.composite).
    #[arg(long)]
    pub composite: Option<Composite>,
}

/// A file name for a class: letters and digits kept, anything else `_`.
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Whether `inner` lies inside the folder `outer` (both as they resolve now).
fn inside(inner: &Path, outer: &Path) -> bool {
    let outer = outer.canonicalize().unwrap_or_else(|_| outer.to_path_buf());
    let mut at = inner.to_path_buf();
    // The output folder may not exist yet: resolve its nearest existing ancestor.
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p.to_path_buf(),
            _ => at = PathBuf::from("."),
        }
    }
    at.canonicalize().is_ok_and(|a| a.starts_with(&outer))
}

/// Explains the requested patches; returns the number of heatmaps written and the epoch whose
/// weights explained them.
pub fn explain(req: &Request, dist: &Dist) -> Result<(usize, u32)> {
    let folder = RunFolder::open(&req.run)?;
    // Writing into the run folder: as a landscape does, beside no training attempt.
    let _lock = if inside(&req.out, &req.run) {
        crate::folder_lock::lock(&req.run, Mode::Shared, "trainer explain", dist)?
    } else {
        None
    };
    let config = &folder.config;
    let epoch = match req.epoch {
        Some(e) => e,
        None => folder.best_epoch()?,
    };
    let weights = checkpoint::at_epoch(&req.run, epoch)?.model;
    let store = folder.store(req.data.as_deref())?;
    let classes = class_indices(&req.classes)?;
    let info = &store.attrs.splits[&Split::Train];
    let lrp = (
        req.composite.unwrap_or(config.lrp.composite),
        config.lrp.epsilon,
    );
    let explaining = Explaining {
        explainer: Explainer::new(&weights, config.model.arch, lrp.0, lrp.1)?,
        loss: crate::losses::Loss::new(&config.loss, &info.label_counts, info.patches),
        norm: Normalizer::from_store(&store.attrs)?,
        classes,
        epoch,
    };
    let mut rows = Vec::new();
    let mut missing: Vec<&str> = req.patches.iter().map(String::as_str).collect();
    for split in Split::ALL {
        let data = store.split(split)?;
        let indices: Vec<usize> = req
            .patches
            .iter()
            .filter_map(|n| data.names.iter().position(|m| m == n))
            .collect();
        missing.retain(|n| !indices.iter().any(|&i| data.names[i] == *n));
        rows.extend(explaining.patches(&data, &indices)?);
    }
    if !missing.is_empty() {
        bail!(
            "no patch named {} in {}",
            missing.join(", "),
            store.path.display()
        );
    }
    write(&req.out, &rows)?;
    Ok((rows.len(), epoch))
}

/// `--class` names as class indices; `None` without any (each patch's true and predicted).
fn class_indices(names: &[String]) -> Result<Option<Vec<usize>>> {
    if names.is_empty() {
        return Ok(None);
    }
    let index = |n: &String| {
        ben19_index(n).with_context(|| {
            format!(
                "--class {n:?}: not a BigEarthNet-19 class; one of: {}",
                BEN19.join("; ")
            )
        })
    };
    Ok(Some(names.iter().map(index).collect::<Result<_>>()?))
}

/// What explaining patches needs.
struct Explaining {
    explainer: Explainer,
    loss: crate::losses::Loss,
    norm: Normalizer,
    classes: Option<Vec<usize>>,
    epoch: u32,
}

impl Explaining {
    /// The heatmaps of patches `indices` of one split.
    fn patches(&self, data: &SplitData, indices: &[usize]) -> Result<Vec<HeatmapRow>> {
        if indices.is_empty() {
            return Ok(Vec::new());
        }
        let batch = read_batch(data, &self.norm, indices)?;
        let logits = self.explainer.logits(&batch.inputs);
        let predicted = Vec::<u8>::try_from(self.loss.decide(&logits).reshape([-1]))?;
        let truth: Vec<u8> = indices
            .iter()
            .flat_map(|&i| data.labels_of(i).to_vec())
            .collect();
        let names: Vec<String> = indices.iter().map(|&i| data.names[i].clone()).collect();
        let patches = Patches {
            inputs: &batch.inputs,
            names: &names,
            truth: &truth,
            predicted: &predicted,
        };
        explain_patches(
            &self.explainer,
            &patches,
            self.classes.as_deref(),
            self.epoch,
            true,
        )
    }
}

fn write(out: &Path, rows: &[HeatmapRow]) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for r in rows {
        let dir = out.join(&r.patch);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let png = lossbench_core::images::heatmap_with_bar_png(&r.map, 120, 2)?;
        let path = dir.join(format!("{}.png", file_stem(BEN19[r.class_index as usize])));
        fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
    }
    lossbench_core::heatmaps::write(&out.join("heatmaps.parquet"), rows)
}
