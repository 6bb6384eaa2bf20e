//! The landscape kinds of grid points (`1d`, `2d`, `interp`) and checkpoints (`sharpness`):
//! each point's weights and quantities, one block of points at a time.

use std::path::Path;

use anyhow::{Context, Result};
use arrow_array::RecordBatch;
use tch::{Device, Tensor};

use super::evaluator::Evaluator;
use super::rows::{self, Row, Shared};
use super::{LandscapeKind, Spec, directions};
use crate::checkpoint;

/// One point of the grid: its index and coordinates.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub index: usize,
    pub alpha: Option<f64>,
    pub beta: Option<f64>,
    /// `sharpness`: the checkpoint's epoch.
    pub epoch: Option<u32>,
}

fn linspace((from, to): (f64, f64), n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![from];
    }
    (0..n)
        .map(|i| from + (to - from) * i as f64 / (n - 1) as f64)
        .collect()
}

pub fn grid(spec: &Spec) -> Vec<Point> {
    let axis = linspace(spec.range, spec.points);
    let point = |index, alpha, beta, epoch| Point {
        index,
        alpha,
        beta,
        epoch,
    };
    match spec.kind {
        LandscapeKind::OneD | LandscapeKind::Interp => axis
            .iter()
            .enumerate()
            .map(|(i, &a)| point(i, Some(a), None, None))
            .collect(),
        LandscapeKind::TwoD => (0..spec.points * spec.points)
            .map(|k| {
                point(
                    k,
                    Some(axis[k / spec.points]),
                    Some(axis[k % spec.points]),
                    None,
                )
            })
            .collect(),
        // One point per checkpoint (a spectrum's work is not a grid: super::spectral).
        LandscapeKind::Sharpness | LandscapeKind::Spectrum => spec
            .epochs
            .iter()
            .enumerate()
            .map(|(i, &e)| point(i, None, None, Some(e)))
            .collect(),
    }
}

/// The variables of a checkpoint on the evaluation device, in the evaluator's order.
pub fn checkpoint_values(run: &Path, epoch: Option<u32>, eval: &Evaluator) -> Result<Vec<Tensor>> {
    let Some(epoch) = epoch else {
        return Ok(Vec::new());
    };
    let c = checkpoint::at_epoch(run, epoch)?;
    checkpoint::copy_into(&eval.vars, &c.model, &c.dir)?;
    Ok(eval.vars.iter().map(|(_, t)| t.detach().copy()).collect())
}

/// A landscape being computed: the spec, the evaluator, the centre and its directions (or the
/// other end).
pub struct Landscape<'a> {
    pub spec: &'a Spec,
    pub eval: &'a Evaluator,
    pub base: Vec<Tensor>,
    pub name: &'a str,
    /// `1d` / `2d`: one or two directions, per variable (zero for buffers).
    pub dirs: Option<Vec<Vec<Tensor>>>,
    /// `interp`: the other checkpoint's variables.
    pub end: Option<Vec<Tensor>>,
}

impl<'a> Landscape<'a> {
    /// Draws the directions (seeded: the same on every worker and every rerun) and saves them
    /// once beside the blocks, or loads the other end.
    pub fn prepare(mut self, dir: &Path, writer: bool) -> Result<Landscape<'a>> {
        let spec = self.spec;
        match spec.kind {
            LandscapeKind::OneD | LandscapeKind::TwoD => {
                let count = if spec.kind == LandscapeKind::OneD {
                    1
                } else {
                    2
                };
                let trainable: Vec<(String, Tensor)> = self
                    .eval
                    .vars
                    .iter()
                    .zip(&self.base)
                    .filter(|((_, v), _)| v.requires_grad())
                    .map(|((n, _), b)| (n.clone(), b.to_device(Device::Cpu)))
                    .collect();
                let drawn = directions::draw(&trainable, spec.seed, count, spec.include_bias_bn);
                let path = dir.join("directions.safetensors");
                if writer && !path.is_file() {
                    let named: Vec<(String, Tensor)> = drawn
                        .iter()
                        .enumerate()
                        .flat_map(|(k, d)| {
                            d.iter()
                                .map(move |(n, t)| (format!("d{}/{n}", k + 1), t.shallow_clone()))
                        })
                        .collect();
                    // A temporary name of this writer's own: other tasks may save the same
                    // directions at the same moment.
                    let tmp = lossbench_core::files::temp_path(&path);
                    Tensor::write_safetensors(&named, &tmp)
                        .with_context(|| format!("writing {}", tmp.display()))?;
                    lossbench_core::files::commit(&tmp, &path)?;
                }
                // Per variable in the evaluator's order: the direction, or zero for buffers.
                let per_var = |d: &directions::Direction| -> Vec<Tensor> {
                    self.eval
                        .vars
                        .iter()
                        .map(|(n, v)| {
                            d.iter().find(|(m, _)| m == n).map_or_else(
                                || v.zeros_like(),
                                |(_, t)| t.to_device(self.eval.device),
                            )
                        })
                        .collect()
                };
                self.dirs = Some(drawn.iter().map(per_var).collect());
            }
            LandscapeKind::Interp => {
                let (run, epoch) = spec.to.as_ref().expect("interp has an end");
                self.end = Some(checkpoint_values(run, Some(*epoch), self.eval)?);
                // checkpoint_values set the model to the end: nothing else reads it before a point sets it.
            }
            LandscapeKind::Sharpness | LandscapeKind::Spectrum => {}
        }
        Ok(self)
    }

    /// The rows of one block: every quantity at every point.
    pub fn block(&self, points: &[Point]) -> Result<RecordBatch> {
        let spec = self.spec;
        let mut out: Vec<Row> = Vec::new();
        for &p in points {
            let values = match spec.kind {
                LandscapeKind::Sharpness => {
                    // Loading the checkpoint sets the model's variables to it.
                    checkpoint_values(&spec.run, p.epoch, self.eval)?;
                    let e = self
                        .eval
                        .sharpness(spec.seed, spec.iterations, spec.tolerance);
                    if !e.converged {
                        tracing::warn!(
                            epoch = p.epoch,
                            iterations = e.iterations,
                            "power iteration did not converge (raise --iterations)"
                        );
                    }
                    vec![
                        ("lambda_max".to_string(), e.value),
                        ("power_iterations".to_string(), e.iterations as f64),
                        (
                            "power_converged".to_string(),
                            f64::from(u8::from(e.converged)),
                        ),
                    ]
                }
                _ => {
                    self.eval.set(&self.weights_at(p));
                    self.eval
                        .quantities(spec.train_rows.len(), spec.val_rows.len())?
                }
            };
            out.extend(values.into_iter().map(|(q, v)| Row {
                checkpoint: p.epoch.or(spec.epoch),
                point: p.index as u32,
                alpha: p.alpha,
                beta: p.beta,
                unit: None,
                quantity: q,
                value: v,
            }));
        }
        let other = spec
            .to
            .as_ref()
            .map(|(r, e)| format!("{}@{e}", r.display()))
            .unwrap_or_default();
        let shared = Shared {
            name: self.name,
            kind: spec.kind.name(),
            other: &other,
            seed: spec.seed,
        };
        rows::batch(&shared, &out)
    }

    /// The variables at a grid point.
    fn weights_at(&self, p: Point) -> Vec<Tensor> {
        let (a, b) = (p.alpha.unwrap_or(0.0), p.beta.unwrap_or(0.0));
        match (&self.dirs, &self.end) {
            (Some(d), _) => (0..self.base.len())
                .map(|i| {
                    let mut w = &self.base[i] + &d[0][i] * a;
                    if let Some(d2) = d.get(1) {
                        w += &d2[i] * b;
                    }
                    w
                })
                .collect(),
            (None, Some(end)) => self
                .base
                .iter()
                .zip(end)
                .map(|(s, e)| s * (1.0 - a) + e * a)
                .collect(),
            (None, None) => self.base.iter().map(Tensor::shallow_clone).collect(),
        }
    }
}
