//! LRP snapshots during training (docs/lrp.md): after every `lrp.every` epochs, the probe
//! patches are explained for their true and predicted classes with the current weights and
//! written to `lrp/epoch-NNNN.parquet`.

use std::fs;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tch::Device;

use crate::config::Config;
use crate::lrp::{Explainer, Patches, explain_patches, pick_probes};
use crate::run::Run;
use crate::store::SplitData;

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
            return Ok(Probes {
                split: val.clone(),
                indices: pick_probes(&val.labels, config.lrp.probes),
            });
        }
        for split in [val, test, train] {
            let found: Vec<Option<usize>> = names
                .iter()
                .map(|n| split.names.iter().position(|m| m == n))
                .collect();
            if found.iter().all(Option::is_some) {
                return Ok(Probes {
                    split: split.clone(),
                    indices: found.into_iter().flatten().collect(),
                });
            }
        }
        bail!(
            "lrp.patches: the patches {names:?} are not all in one split of {}",
            config.run.data.display()
        )
    }

    /// Writes `lrp/epoch-NNNN.parquet` of the run's current weights.
    pub fn snapshot(&self, run: &Run, epoch: u32) -> Result<()> {
        if self.indices.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let (split, indices) = (&self.split, &self.indices);
        let batch = crate::data::read_batch(split, &run.loading.norm, indices)?;
        let predicted = tch::no_grad(|| {
            run.loss
                .decide(&run.forward(&batch.inputs, false))
                .to_device(Device::Cpu)
                .reshape([-1])
        });
        let predicted = Vec::<u8>::try_from(predicted).context("reading decisions")?;
        let truth: Vec<u8> = indices
            .iter()
            .flat_map(|&i| split.labels_of(i).iter().copied())
            .collect();
        let names: Vec<String> = indices.iter().map(|&i| split.names[i].clone()).collect();
        let lrp = &run.config.lrp;
        let explainer =
            Explainer::new(&run.weights(), run.model.arch(), lrp.composite, lrp.epsilon)?;
        let patches = Patches {
            inputs: &batch.inputs,
            names: &names,
            truth: &truth,
            predicted: &predicted,
        };
        let rows = explain_patches(&explainer, &patches, None, epoch, false)?;
        let dir = run.dir.join("lrp");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::results::write_heatmaps(&dir.join(format!("epoch-{epoch:04}.parquet")), &rows)?;
        tracing::info!(
            epoch,
            maps = rows.len(),
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            "LRP snapshot written"
        );
        Ok(())
    }
}
