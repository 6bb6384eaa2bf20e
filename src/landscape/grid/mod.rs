//! The landscape kinds of grid points (`1d`, `2d`, `interp`) and checkpoints (`sharpness`):
//! each point's weights and quantities, one block of points at a time: a client of
//! [`super::blocks`], block b being the points [b·block, (b+1)·block) of [`points::grid`].

mod points;

use std::path::Path;

use anyhow::{Context, Result};
use arrow_array::RecordBatch;
use tch::{Device, Tensor};

use super::blocks::Client;
use super::evaluator::Evaluator;
use super::rows::{self, Row, Shared};
use super::{KindSpec, LandscapeKind, Setup, Spec, directions};
use points::Point;

/// A landscape being computed: the spec, the evaluator, the centre and its directions (or the
/// other end).
struct Landscape<'a> {
    spec: &'a Spec,
    eval: Evaluator,
    base: Vec<Tensor>,
    name: &'a str,
    /// `1d` / `2d`: one or two directions, per variable (zero for buffers).
    dirs: Option<Vec<Vec<Tensor>>>,
    /// `interp`: the other checkpoint's variables.
    end: Option<Vec<Tensor>>,
}

impl<'a> Landscape<'a> {
    /// Draws the directions (seeded: the same on every worker and every rerun) and saves them
    /// once beside the blocks, or loads the other end.
    fn prepare(&mut self, dir: &Path, writer: bool) -> Result<()> {
        let spec = self.spec;
        match &spec.of {
            &KindSpec::OneD {
                include_bias_bn, ..
            }
            | &KindSpec::TwoD {
                include_bias_bn, ..
            } => {
                let count = if spec.kind() == LandscapeKind::OneD {
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
                let drawn = directions::draw(&trainable, spec.seed, count, include_bias_bn);
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
            KindSpec::Interp {
                to: (run, epoch), ..
            } => {
                self.end = Some(self.eval.checkpoint(run, Some(*epoch))?);
                // That set the model to the end: nothing else reads it before a point sets it.
            }
            KindSpec::Sharpness { .. } | KindSpec::Spectrum { .. } => {}
        }
        Ok(())
    }

    /// The rows of one block: every quantity at every point.
    fn block(&self, points: &[Point]) -> Result<RecordBatch> {
        let spec = self.spec;
        let mut out: Vec<Row> = Vec::new();
        for &p in points {
            let values = match spec.of {
                KindSpec::Sharpness {
                    iterations,
                    tolerance,
                    ..
                } => {
                    // Loading the checkpoint sets the model's variables to it.
                    self.eval.checkpoint(&spec.run, p.epoch)?;
                    let e = self.eval.sharpness(spec.seed, iterations, tolerance);
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
                checkpoint: p.epoch.or(spec.centre()),
                point: p.index as u32,
                alpha: p.alpha,
                beta: p.beta,
                unit: None,
                quantity: q,
                value: v,
            }));
        }
        let other = match &spec.of {
            KindSpec::Interp { to: (r, e), .. } => format!("{}@{e}", r.display()),
            _ => String::new(),
        };
        let shared = Shared {
            name: self.name,
            kind: spec.kind().name(),
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

/// The grid kinds' client of the blocks loop: the landscape is set up with the first block
/// this worker computes.
pub struct Grid<'a> {
    setup: &'a Setup<'a>,
    points: Vec<Point>,
    /// Writes the directions (once, beside the blocks).
    writes_shared: bool,
    landscape: Option<Landscape<'a>>,
    prepared: bool,
}

impl<'a> Grid<'a> {
    pub fn new(setup: &'a Setup<'a>, writes_shared: bool) -> Grid<'a> {
        Grid {
            setup,
            points: points::grid(setup.spec),
            writes_shared,
            landscape: None,
            prepared: false,
        }
    }

    /// Points per block: a grid's `--block`, one checkpoint per block for `sharpness`.
    fn block(&self) -> usize {
        self.setup.spec.axes().map_or(1, |a| a.block)
    }

    fn chunk(&self, b: usize) -> &[Point] {
        let block = self.block();
        &self.points[b * block..((b + 1) * block).min(self.points.len())]
    }
}

impl Client for Grid<'_> {
    fn stems(&self) -> Vec<String> {
        let blocks = self.points.len().div_ceil(self.block());
        (0..blocks).map(|b| format!("block-{b:05}")).collect()
    }

    fn load(&mut self, _b: usize) -> Result<()> {
        if self.landscape.is_none() {
            let s = self.setup;
            let eval = s.evaluator()?;
            let base = eval.checkpoint(&s.spec.run, s.spec.centre())?;
            self.landscape = Some(Landscape {
                spec: s.spec,
                eval,
                base,
                name: s.name,
                dirs: None,
                end: None,
            });
        }
        Ok(())
    }

    fn compute(&mut self, b: usize) -> Result<RecordBatch> {
        let landscape = self.landscape.as_mut().context("a loaded landscape")?;
        if !self.prepared {
            landscape.prepare(self.setup.dir, self.writes_shared)?;
            self.prepared = true;
        }
        let landscape = self.landscape.as_ref().context("a loaded landscape")?;
        landscape.block(self.chunk(b))
    }
}
