//! What a landscape evaluates: the run's network on seeded subsets of training and validation
//! patches held in memory, the run's loss and every loss of the study, dropout off, BatchNorm
//! as the spec says; the quantities at the current weights, and Hessian-vector products of the
//! training loss ([`super::hessian`]) on flat vectors ([`Flat`]).

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use super::{BnMode, Spec};
use crate::checkpoint;
use crate::data::resident::Placement;
use crate::data::{Normalizer, ResidentSplit};
use crate::losses::Loss;
use crate::model::Regularization;
use crate::network::Network;
use lossbench_core::config::Config;
use lossbench_core::config::loss::STUDY_LOSSES;
use lossbench_core::config::{LossSpec, SingleLoss};
use lossbench_core::layout::Split;
use lossbench_core::metrics::Counts;
use lossbench_core::store::Store;

/// The evaluation set-up: the network, the subsets in memory, the losses.
pub struct Evaluator {
    pub device: Device,
    /// The run's network, dropout off (its BatchNorm as the spec says).
    pub net: Network,
    /// Every variable, by name (sorted): the model's, to overwrite at each point.
    pub vars: Vec<(String, Tensor)>,
    pub train: ResidentSplit,
    val: ResidentSplit,
    pub own: Loss,
    study: Vec<(&'static str, Loss)>,
    pub batch: usize,
    pub bn: BnMode,
    /// The training subset's size.
    rows: usize,
}

impl Evaluator {
    pub fn new(
        config: &Config,
        spec: &Spec,
        device: Device,
        store: &Store,
        threads: usize,
    ) -> Result<Evaluator> {
        let norm = Normalizer::from_store(&store.attrs)?;
        let counts = &store.attrs.splits[&Split::Train];
        let own = Loss::new(&config.loss, &counts.label_counts, counts.patches);
        let study = STUDY_LOSSES
            .iter()
            .map(|&n| {
                let spec =
                    LossSpec::Single(SingleLoss::with_defaults(n).map_err(anyhow::Error::msg)?);
                Ok((n, Loss::new(&spec, &counts.label_counts, counts.patches)))
            })
            .collect::<Result<_>>()?;
        let load = |split: Split, rows: &[usize]| -> Result<ResidentSplit> {
            ResidentSplit::load_rows(
                Arc::new(store.split(split)?),
                rows,
                &norm,
                if device == Device::Cpu {
                    Placement::Host
                } else {
                    Placement::Device
                },
                device,
                threads,
            )
        };
        let (train, val) = (
            load(Split::Train, &spec.train_rows)?,
            load(Split::Validation, &spec.val_rows)?,
        );
        // Dropout off; BatchNorm per the spec.
        let net = Network::new(
            config.model.arch,
            config.run.seed,
            Regularization::OFF,
            device,
            false,
        );
        let vars = net.named_variables();
        Ok(Evaluator {
            device,
            net,
            vars,
            train,
            val,
            own,
            study,
            batch: spec.batch,
            bn: spec.bn,
            rows: spec.train_rows.len(),
        })
    }

    /// Sets every variable from `values` (by name, the same order as `vars`).
    pub fn set(&self, values: &[Tensor]) {
        tch::no_grad(|| {
            for ((_, var), v) in self.vars.iter().zip(values) {
                let mut var = var.shallow_clone();
                var.copy_(v);
            }
        });
    }

    /// Sets every variable to a checkpoint's of the run folder `run` (none: leaves them) and
    /// returns copies of them, in the order of `vars`.
    pub fn checkpoint(&self, run: &Path, epoch: Option<u32>) -> Result<Vec<Tensor>> {
        let Some(epoch) = epoch else {
            return Ok(Vec::new());
        };
        let c = checkpoint::at_epoch(run, epoch)?;
        self.net.restore(&c.model, &c.dir)?;
        Ok(self.vars.iter().map(|(_, t)| t.detach().copy()).collect())
    }

    fn logits(&self, data: &ResidentSplit, rows: usize, grad: bool) -> Vec<(Tensor, Tensor)> {
        let positions: Vec<usize> = (0..rows).collect();
        positions
            .chunks(self.batch)
            .map(|idx| {
                let b = data.batch(idx);
                let run = || {
                    self.net
                        .model
                        .forward_t(&b.inputs, self.bn == BnMode::Batch)
                };
                let logits = if grad { run() } else { tch::no_grad(run) };
                (logits, b.targets)
            })
            .collect()
    }

    /// The quantities at the current weights: losses on the training subset, F1 on the
    /// validation subset.
    pub fn quantities(&self, train_rows: usize, val_rows: usize) -> Result<Vec<(String, f64)>> {
        let (logits, targets): (Vec<Tensor>, Vec<Tensor>) = self
            .logits(&self.train, train_rows, false)
            .into_iter()
            .unzip();
        let (z, y) = (Tensor::cat(&logits, 0), Tensor::cat(&targets, 0));
        let mut out = vec![(
            "loss".to_string(),
            self.own.compute(&z, &y).double_value(&[]),
        )];
        for (name, loss) in &self.study {
            out.push((
                format!("loss:{name}"),
                loss.compute(&z, &y).double_value(&[]),
            ));
        }
        let mut counts = Counts::default();
        for (z, y) in self.logits(&self.val, val_rows, false) {
            let pred =
                Vec::<u8>::try_from(self.own.decide(&z).to_device(Device::Cpu).reshape([-1]))?;
            let truth =
                Vec::<u8>::try_from(y.to_device(Device::Cpu).to_kind(Kind::Uint8).reshape([-1]))?;
            counts.add(&truth, &pred);
        }
        let m = counts.metrics();
        out.extend([
            ("f1_samples".into(), m.samples.f1),
            ("f1_micro".into(), m.micro.f1),
            ("f1_macro".into(), m.macro_avg.f1),
        ]);
        Ok(out)
    }

    /// The trainable variables (sorted by name) and their names: the order of flat vectors.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .filter(|(_, v)| v.requires_grad())
            .map(|(n, v)| (n.clone(), v.shallow_clone()))
            .collect()
    }

    /// The training subset in forward passes of `batch` patches.
    fn training_batches(&self) -> Vec<Vec<usize>> {
        let positions: Vec<usize> = (0..self.rows).collect();
        positions
            .chunks(self.batch)
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// Batch `b`'s loss weighted by its share of the subset: their sum is the subset's loss.
    fn batch_loss(&self, batches: &[Vec<usize>], b: usize) -> Tensor {
        let batch = self.train.batch(&batches[b]);
        let logits = self
            .net
            .model
            .forward_t(&batch.inputs, self.bn == BnMode::Batch);
        self.own.compute(&logits, &batch.targets) * (batches[b].len() as f64 / self.rows as f64)
    }

    /// Seconds of one forward pass over the training subset (no gradients; the fastest of 3):
    /// the unit of the spectrum's cost model (docs/landscape.md, "Spectrum").
    pub fn forward_seconds(&self) -> f64 {
        let batches = self.training_batches();
        let once = || {
            let started = std::time::Instant::now();
            tch::no_grad(|| {
                for b in 0..batches.len() {
                    std::hint::black_box(self.batch_loss(&batches, b).double_value(&[]));
                }
            });
            started.elapsed().as_secs_f64()
        };
        (0..3).map(|_| once()).fold(f64::INFINITY, f64::min)
    }

    /// The Hessian-vector product of the training subset's loss at the current weights, on
    /// flat vectors laid out as `flat` (of [`Evaluator::trainable`]).
    pub fn hvp(&self, flat: &Flat, v: &Tensor) -> Tensor {
        let params: Vec<Tensor> = self.trainable().into_iter().map(|(_, t)| t).collect();
        let batches = self.training_batches();
        let hv = super::hessian::hessian_vector(
            &params,
            batches.len(),
            &|b| self.batch_loss(&batches, b),
            &flat.split(v),
        );
        flat.join(&hv)
    }

    /// The dominant Hessian eigenvalue of the run's loss on the training subset, by power
    /// iteration.
    pub fn sharpness(&self, seed: u64, iterations: usize, tolerance: f64) -> super::hessian::Eigen {
        let params: Vec<Tensor> = self.trainable().into_iter().map(|(_, t)| t).collect();
        let batches = self.training_batches();
        super::hessian::dominant_eigenvalue(
            &params,
            batches.len(),
            &|b| self.batch_loss(&batches, b),
            seed,
            iterations,
            tolerance,
        )
    }
}

/// The parameters as one flat vector and back.
pub struct Flat {
    sizes: Vec<i64>,
    shapes: Vec<Vec<i64>>,
    pub len: i64,
}

impl Flat {
    pub fn of(params: &[Tensor]) -> Flat {
        let shapes: Vec<Vec<i64>> = params.iter().map(Tensor::size).collect();
        let sizes: Vec<i64> = shapes.iter().map(|s| s.iter().product()).collect();
        Flat {
            len: sizes.iter().sum(),
            sizes,
            shapes,
        }
    }

    /// Views of a flat vector shaped as the parameters.
    pub fn split(&self, v: &Tensor) -> Vec<Tensor> {
        v.split_with_sizes(&self.sizes, 0)
            .into_iter()
            .zip(&self.shapes)
            .map(|(t, s)| t.view(s.as_slice()))
            .collect()
    }

    pub fn join(&self, parts: &[Tensor]) -> Tensor {
        let flat: Vec<Tensor> = parts.iter().map(|t| t.reshape([-1])).collect();
        Tensor::cat(&flat, 0)
    }

    /// The range of each parameter in the flat vector.
    pub fn ranges(&self) -> Vec<std::ops::Range<i64>> {
        let mut start = 0;
        self.sizes
            .iter()
            .map(|&n| {
                start += n;
                start - n..start
            })
            .collect()
    }
}
