//! `trainer explain`: LRP heatmaps of any patches with a run's weights of a chosen epoch
//! (docs/lrp.md), as Parquet plus one PNG per (patch, class).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tch::Tensor;

use crate::checkpoint;
use crate::data::{Normalizer, read_batch};
use crate::dist::Dist;
use crate::lrp::Explainer;
use lossbench_core::config::Composite;
use lossbench_core::heatmaps::HeatmapRow;
use lossbench_core::labels::{BEN19, NUM_CLASSES, ben19_index};
use lossbench_core::layout::Split;
use lossbench_core::lock::Mode;
use lossbench_core::run_folder::RunFolder;
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
        None => checkpoint::best_epoch(&folder.dir)?,
    };
    let weights = checkpoint::at_epoch(&req.run, epoch)?.model;
    let store = folder.store(
        req.data.as_deref(),
        checkpoint::recorded_store(&folder.dir)?,
    )?;
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

/// Patches to explain: model inputs (one row each), names, and their true and predicted labels
/// (row-major `[B, 19]` 0/1).
pub struct Patches<'a> {
    pub inputs: &'a [Tensor; 3],
    pub names: &'a [String],
    pub truth: &'a [u8],
    pub predicted: &'a [u8],
}

/// Explains patches for their true and predicted classes, or for `classes` when given.
pub fn explain_patches(
    explainer: &Explainer,
    patches: &Patches,
    classes: Option<&[usize]>,
    epoch: u32,
    with_bands: bool,
) -> Result<Vec<HeatmapRow>> {
    let Patches {
        inputs,
        names,
        truth,
        predicted,
    } = *patches;
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for row in 0..names.len() {
        let at = |v: &[u8], c: usize| v[row * NUM_CLASSES + c] == 1;
        for c in 0..NUM_CLASSES {
            let wanted = match classes {
                Some(list) => list.contains(&c),
                None => at(truth, c) || at(predicted, c),
            };
            if wanted {
                pairs.push((row, c));
            }
        }
    }
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let rows = Tensor::from_slice(&pairs.iter().map(|&(r, _)| r as i64).collect::<Vec<_>>());
    let selected = [
        inputs[0].index_select(0, &rows),
        inputs[1].index_select(0, &rows),
        inputs[2].index_select(0, &rows),
    ];
    let maps = explainer.explain(
        &selected,
        &pairs.iter().map(|&(_, c)| c as i64).collect::<Vec<_>>(),
    )?;
    let flat =
        |t: &Tensor| Vec::<f32>::try_from(t.reshape([-1])).context("reading a relevance map");
    pairs
        .iter()
        .zip(maps)
        .map(|(&(row, c), h)| {
            let bands = if with_bands {
                let mut all = Vec::with_capacity(lossbench_core::layout::VALUES_PER_PATCH);
                for b in &h.bands {
                    all.extend(flat(b)?);
                }
                Some(all)
            } else {
                None
            };
            Ok(HeatmapRow {
                epoch,
                patch: names[row].clone(),
                class_index: c as u8,
                is_true: truth[row * NUM_CLASSES + c] == 1,
                is_predicted: predicted[row * NUM_CLASSES + c] == 1,
                logit: h.logit,
                map: flat(&h.combined)?,
                band_totals: h.band_totals,
                bands,
            })
        })
        .collect()
}
