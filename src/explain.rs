//! `trainer explain`: LRP heatmaps of any patches with a run's weights of a chosen epoch
//! (docs/lrp.md), as Parquet plus one PNG per (patch, class).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::checkpoint;
use crate::config::{self, Config};
use crate::data::{Normalizer, read_batch};
use crate::labels::{BEN19, ben19_index};
use crate::layout::Split;
use crate::lrp::{Composite, Explainer, Patches, explain_patches};
use crate::store::Store;

pub struct Request {
    pub run: PathBuf,
    /// Default: the run's best epoch so far.
    pub epoch: Option<u32>,
    pub patches: Vec<String>,
    /// Default: each patch's true and predicted classes.
    pub classes: Vec<String>,
    pub out: PathBuf,
    /// Default: the run's `run.data`.
    pub data: Option<PathBuf>,
    /// Default: the run's `lrp.composite`.
    pub composite: Option<Composite>,
}

/// A file name for a class: letters and digits kept, anything else `_`.
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Explains the requested patches; returns the number of heatmaps written.
pub fn explain(req: &Request) -> Result<usize> {
    let config: Config =
        config::load(&req.run.join("config.toml"), Vec::new()).with_context(|| {
            format!(
                "{} is not a run folder (no readable config.toml)",
                req.run.display()
            )
        })?;
    let epoch = match req.epoch {
        Some(e) => e,
        None => {
            checkpoint::latest(&req.run)?
                .with_context(|| format!("{}: no checkpoint", req.run.display()))?
                .state
                .best_epoch
        }
    };
    let weights = checkpoint::at_epoch(&req.run, epoch)?.model;
    let data = req.data.clone().unwrap_or_else(|| config.run.data.clone());
    let store = Store::open(&data).with_context(|| {
        format!(
            "opening the run's store (pass --data to point elsewhere): {}",
            data.display()
        )
    })?;
    let classes: Option<Vec<usize>> = if req.classes.is_empty() {
        None
    } else {
        Some(
            req.classes
                .iter()
                .map(|n| {
                    ben19_index(n).with_context(|| {
                        format!(
                            "--class {n:?}: not a BigEarthNet-19 class; one of: {}",
                            BEN19.join("; ")
                        )
                    })
                })
                .collect::<Result<_>>()?,
        )
    };
    let info = &store.attrs.splits[&Split::Train];
    let loss = crate::losses::Loss::new(&config.loss, &info.label_counts, info.patches);
    let explainer = Explainer::new(
        &weights,
        config.model.arch,
        req.composite.unwrap_or(config.lrp.composite),
        config.lrp.epsilon,
    )?;
    let norm = Normalizer::from_store(&store.attrs)?;
    let mut rows = Vec::new();
    let mut missing: Vec<&str> = req.patches.iter().map(String::as_str).collect();
    for split in [Split::Train, Split::Validation, Split::Test] {
        let data = store.split(split)?;
        let indices: Vec<usize> = req
            .patches
            .iter()
            .filter_map(|n| data.names.iter().position(|m| m == n))
            .collect();
        if indices.is_empty() {
            continue;
        }
        missing.retain(|n| !indices.iter().any(|&i| data.names[i] == *n));
        let batch = read_batch(&data, &norm, &indices)?;
        let predicted =
            Vec::<u8>::try_from(loss.decide(&explainer.logits(&batch.inputs)).reshape([-1]))?;
        let truth: Vec<u8> = indices
            .iter()
            .flat_map(|&i| data.labels_of(i).iter().copied())
            .collect();
        let names: Vec<String> = indices.iter().map(|&i| data.names[i].clone()).collect();
        let patches = Patches {
            inputs: &batch.inputs,
            names: &names,
            truth: &truth,
            predicted: &predicted,
        };
        rows.extend(explain_patches(
            &explainer,
            &patches,
            classes.as_deref(),
            epoch,
            true,
        )?);
    }
    if !missing.is_empty() {
        bail!(
            "no patch named {} in {}",
            missing.join(", "),
            data.display()
        );
    }
    write(&req.out, &rows)?;
    Ok(rows.len())
}

fn write(out: &Path, rows: &[crate::results::HeatmapRow]) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for r in rows {
        let dir = out.join(&r.patch);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let png = crate::render::heatmap_png(&r.map, 120, 2)?;
        let path = dir.join(format!("{}.png", file_stem(BEN19[r.class_index as usize])));
        fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
    }
    crate::results::write_heatmaps(&out.join("heatmaps.parquet"), rows)
}
