//! LRP snapshots during training (docs/lrp.md): after every `lrp.every` epochs, the probe
//! patches are explained for their true and predicted classes with the current weights and
//! written to `lrp/epoch-NNNN.parquet`.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tch::Device;

use crate::data::Normalizer;
use crate::explain::{Patches, explain_patches};
use crate::losses::Loss;
use crate::lrp::Explainer;
use crate::network::Network;
use lossbench_core::config::{Config, LrpSection};
use lossbench_core::heatmaps::HeatmapRow;
use lossbench_core::labels::NUM_CLASSES;
use lossbench_core::run_folder;
use lossbench_core::store::SplitData;

/// The patches every snapshot explains: their split and indices in it.
pub struct Probes {
    split: Arc<SplitData>,
    indices: Vec<usize>,
}

impl Probes {
    /// The configured names (looked up in validation, test, then training, all in one split),
    /// or the default pick from the validation split.
    pub fn resolve(config: &Config, [train, val, test]: [&Arc<SplitData>; 3]) -> Result<Probes> {
        let names = &config.lrp.patches;
        if names.is_empty() {
            let indices = pick_probes(&val.labels, config.lrp.probes);
            return Ok(Probes {
                split: val.clone(),
                indices,
            });
        }
        for split in [val, test, train] {
            let found: Vec<Option<usize>> = names
                .iter()
                .map(|n| split.names.iter().position(|m| m == n))
                .collect();
            if found.iter().all(Option::is_some) {
                let indices = found.into_iter().flatten().collect();
                return Ok(Probes {
                    split: split.clone(),
                    indices,
                });
            }
        }
        bail!(
            "lrp.patches: the patches {names:?} are not all in one split of {}",
            config.run.data.display()
        )
    }

    /// Writes `<run>/lrp/epoch-NNNN.parquet` of the network's current weights; returns its rows.
    pub fn snapshot(
        &self,
        net: &Network,
        loss: &Loss,
        norm: &Normalizer,
        lrp: &LrpSection,
        run: &Path,
        epoch: u32,
    ) -> Result<Vec<HeatmapRow>> {
        if self.indices.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let (split, indices) = (&self.split, &self.indices);
        let batch = crate::data::read_batch(split, norm, indices)?;
        let predicted = tch::no_grad(|| {
            loss.decide(&net.forward(&batch.inputs, false))
                .to_device(Device::Cpu)
                .reshape([-1])
        });
        let predicted = Vec::<u8>::try_from(predicted).context("reading decisions")?;
        let truth: Vec<u8> = indices
            .iter()
            .flat_map(|&i| split.labels_of(i).iter().copied())
            .collect();
        let names: Vec<String> = indices.iter().map(|&i| split.names[i].clone()).collect();
        let explainer =
            Explainer::new(&net.weights(), net.model.arch(), lrp.composite, lrp.epsilon)?;
        let patches = Patches {
            inputs: &batch.inputs,
            names: &names,
            truth: &truth,
            predicted: &predicted,
        };
        let rows = explain_patches(&explainer, &patches, None, epoch, false)?;
        let file = run_folder::snapshot_file(run, epoch);
        let dir = file.parent().expect("a snapshot lies in a folder");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        lossbench_core::heatmaps::write(&file, &rows)?;
        let seconds = format!("{:.1}", started.elapsed().as_secs_f64());
        tracing::info!(epoch, maps = rows.len(), seconds, "LRP snapshot written");
        Ok(rows)
    }
}

/// The default probe set: `count` patches of a split (row-major `[N, 19]` labels) such that
/// rare classes are covered: for each class from the rarest up, the first patch carrying it
/// unless one already chosen does; then the first patches not chosen yet. Deterministic.
pub fn pick_probes(labels: &[u8], count: usize) -> Vec<usize> {
    let n = labels.len() / NUM_CLASSES;
    let carries = |i: usize, c: usize| labels[i * NUM_CLASSES + c] == 1;
    let mut frequency: Vec<(usize, usize)> = (0..NUM_CLASSES)
        .map(|c| ((0..n).filter(|&i| carries(i, c)).count(), c))
        .filter(|&(k, _)| k > 0)
        .collect();
    frequency.sort();
    let mut chosen: Vec<usize> = Vec::new();
    for (_, c) in frequency {
        if chosen.len() == count {
            break;
        }
        if !chosen.iter().any(|&i| carries(i, c))
            && let Some(i) = (0..n).find(|&i| carries(i, c) && !chosen.contains(&i))
        {
            chosen.push(i);
        }
    }
    chosen.extend(
        (0..n)
            .filter(|i| !chosen.contains(i))
            .take(count.saturating_sub(chosen.len()))
            .collect::<Vec<_>>(),
    );
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_cover_rare_classes_first() {
        // Four patches; class 2 is carried by patch 3 only, class 1 by patches 1 and 2.
        let mut labels = vec![0u8; 4 * NUM_CLASSES];
        for (patch, class) in [(0, 0), (1, 0), (1, 1), (2, 1), (3, 0), (3, 2)] {
            labels[patch * NUM_CLASSES + class] = 1;
        }
        assert_eq!(pick_probes(&labels, 2), vec![3, 1]);
        assert_eq!(pick_probes(&labels, 4), vec![3, 1, 0, 2]);
        assert_eq!(pick_probes(&labels, 9).len(), 4);
    }
}
