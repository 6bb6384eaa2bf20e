//! A spectrum's items computed: Lanczos runs (saved after every step and resumed), Hutchinson
//! probes, quadrature probes and per-layer runs, and an epoch's summary once its probes are in.

use std::cell::Cell;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use arrow_array::RecordBatch;
use tch::{Device, Kind, Tensor};

use super::lanczos::{self, Coefficients, Lanczos};
use super::{Item, SpectrumSpec};
use crate::landscape::Setup;
use crate::landscape::blocks;
use crate::landscape::directions;
use crate::landscape::evaluator::{Evaluator, Flat};
use crate::landscape::rows::{self, Row, Shared};

/// The units (layers or blocks) of the trainable variables, each with its ranges in the flat
/// vector, in the variables' order.
fn units(eval: &Evaluator, flat: &Flat) -> Vec<(String, Vec<Range<i64>>)> {
    let arch = eval.net.model.arch();
    let mut out: Vec<(String, Vec<Range<i64>>)> = Vec::new();
    for ((name, _), range) in eval.trainable().iter().zip(flat.ranges()) {
        let unit = crate::model::unit(arch, name);
        match out.iter_mut().find(|(u, _)| *u == unit) {
            Some((_, ranges)) => ranges.push(range),
            None => out.push((unit, vec![range])),
        }
    }
    out
}

/// What computing items needs besides the setup.
pub struct Work<'a> {
    setup: &'a Setup<'a>,
    spectrum: &'a SpectrumSpec,
    /// Of the directions the top eigenvectors are compared with.
    include_bias_bn: bool,
    eval: Evaluator,
    flat: Flat,
    pub units: Vec<(String, Vec<Range<i64>>)>,
    /// Hessian-vector products computed and their seconds.
    hvps: Cell<(usize, f64)>,
}

impl<'a> Work<'a> {
    pub fn new(
        setup: &'a Setup<'a>,
        spectrum: &'a SpectrumSpec,
        include_bias_bn: bool,
    ) -> Result<Work<'a>> {
        let eval = setup.evaluator()?;
        let flat = Flat::of(
            &eval
                .trainable()
                .into_iter()
                .map(|(_, t)| t)
                .collect::<Vec<_>>(),
        );
        let units = units(&eval, &flat);
        Ok(Work {
            setup,
            spectrum,
            include_bias_bn,
            eval,
            flat,
            units,
            hvps: Cell::new((0, 0.0)),
        })
    }
}

impl Work<'_> {
    fn block_path(&self, stem: &str) -> PathBuf {
        blocks::path(self.setup.dir, stem)
    }

    /// Sets the network to the checkpoint of `epoch`.
    pub fn load(&self, epoch: u32) -> Result<()> {
        self.eval.checkpoint(&self.setup.spec.run, Some(epoch))?;
        Ok(())
    }

    /// Seconds of a forward pass over the training subset at the current weights.
    pub fn forward_seconds(&self) -> f64 {
        self.eval.forward_seconds()
    }

    /// Drops the saved Lanczos state of the item `stem` (once its block is written).
    pub fn remove_state(&self, stem: &str) {
        let _ = fs::remove_dir_all(self.setup.dir.join("state").join(stem));
    }

    /// Whether the trace estimate of `epoch` has its probes (further ones are not wanted).
    pub fn trace_complete(&self, epoch: u32) -> Result<bool> {
        Ok(self
            .trace_probes_used(&self.trace_prefix(epoch)?.0)
            .is_some())
    }

    /// Rows of an item as a block.
    pub fn batch(&self, rows: &[Row]) -> Result<RecordBatch> {
        let spec = self.setup.spec;
        let shared = Shared {
            name: self.setup.name,
            kind: spec.kind().name(),
            other: "",
            seed: spec.seed,
        };
        rows::batch(&shared, rows)
    }

    fn write(&self, stem: &str, rows: &[Row]) -> Result<()> {
        let batch = self.batch(rows)?;
        lossbench_core::tables::write_parquet(&self.block_path(stem), &rows::schema(), &[batch])
    }

    fn hvp(&self, v: &Tensor) -> Tensor {
        let started = Instant::now();
        let hv = self.eval.hvp(&self.flat, v);
        let (n, seconds) = self.hvps.get();
        self.hvps
            .set((n + 1, seconds + started.elapsed().as_secs_f64()));
        hv
    }

    /// A Lanczos run of `steps` steps from `start` (restricted to `mask` where given), resumed
    /// from and saved to `state/<stem>/` after every step.
    fn lanczos(
        &self,
        stem: &str,
        start: &Tensor,
        steps: usize,
        mask: Option<&Tensor>,
    ) -> Result<Lanczos> {
        let state = self.setup.dir.join("state").join(stem);
        let mut run = match Lanczos::new(start, steps, self.eval.device) {
            Ok(run) => run,
            Err(e) if self.eval.device != Device::Cpu => {
                tracing::info!("{e:#}: the basis goes to the CPU");
                Lanczos::new(start, steps, Device::Cpu)?
            }
            Err(e) => return Err(e),
        };
        if let Some((coefficients, rows, residual)) = load_state(&state, self.eval.device)? {
            tracing::info!(
                item = stem,
                steps = coefficients.steps(),
                "resuming a Lanczos run"
            );
            run.resume(coefficients, &rows, &residual);
        }
        let hvp = |v: &Tensor| match mask {
            Some(m) => self.hvp(&(v * m)) * m,
            None => self.hvp(v),
        };
        while !run.done() {
            run.step(&hvp);
            save_state(&state, &run, start)?;
        }
        Ok(run)
    }

    fn start(&self, item: Item, epoch: u32) -> Tensor {
        lanczos::rademacher(
            self.flat.len,
            item.key(self.setup.spec.seed, epoch),
            self.eval.device,
            Kind::Float,
        )
    }

    pub fn compute(&self, item: Item, epoch: u32) -> Result<Vec<Row>> {
        let at = Some(epoch);
        let stem = item.stem(epoch);
        // The top eigenvalues' and each density probe's run: over the whole network.
        let whole_lanczos = || {
            self.lanczos(
                &stem,
                &self.start(item, epoch),
                self.spectrum.lanczos_steps,
                None,
            )
        };
        Ok(match item {
            Item::Top => self.top_rows(&whole_lanczos()?, at)?,
            Item::Trace(j) => {
                let ranges: Vec<Vec<Range<i64>>> =
                    self.units.iter().map(|(_, r)| r.clone()).collect();
                let (total, per_unit) =
                    lanczos::hutchinson(&self.start(item, epoch), &|v| self.hvp(v), &ranges);
                let mut rows = vec![Row::at(at, j as u32, "hutchinson", total)];
                for ((unit, _), value) in self.units.iter().zip(per_unit) {
                    rows.push(Row::at(at, j as u32, "hutchinson", value).with_unit(unit));
                }
                rows
            }
            Item::Density(j) => {
                let run = whole_lanczos()?;
                lanczos::quadrature(&run.coefficients)
                    .into_iter()
                    .map(|(node, weight)| {
                        Row::at(at, j as u32, "density_node", weight).with_alpha(node)
                    })
                    .collect()
            }
            Item::Layer(k) => {
                let (unit, ranges) = &self.units[k];
                let mask = Tensor::zeros([self.flat.len], (Kind::Float, self.eval.device));
                for r in ranges {
                    let _ = mask.narrow(0, r.start, r.end - r.start).fill_(1.0);
                }
                let start = self.start(item, epoch) * &mask;
                let run = self.lanczos(&stem, &start, self.spectrum.layer_steps, Some(&mask))?;
                let (top, _) = run.top(1);
                vec![
                    Row::at(at, k as u32, "layer_eigenvalue", top[0]).with_unit(unit),
                    Row::at(
                        at,
                        k as u32,
                        "layer_lanczos_steps",
                        run.coefficients.steps() as f64,
                    )
                    .with_unit(unit),
                ]
            }
        })
    }

    /// The top eigenvalues, a bound on each one's error (β·|last component of its vector in
    /// T|), and their vectors' overlap (|cos|) with the landscape directions d₁, d₂ of the same
    /// seed.
    fn top_rows(&self, run: &Lanczos, at: Option<u32>) -> Result<Vec<Row>> {
        let k = self.spectrum.top_k;
        let (values, ritz) = run.top(k);
        let c = &run.coefficients;
        let (all, vectors) = c.eigen();
        let m = all.len() as i64;
        let beta = c.beta.last().copied().unwrap_or(0.0);
        let trainable: Vec<(String, Tensor)> = self
            .eval
            .trainable()
            .into_iter()
            .map(|(n, t)| (n, t.detach().to_device(Device::Cpu)))
            .collect();
        let drawn = directions::draw(&trainable, self.setup.spec.seed, 2, self.include_bias_bn);
        let flat_directions: Vec<Tensor> = drawn
            .iter()
            .map(|d| {
                self.flat
                    .join(&d.iter().map(|(_, t)| t.shallow_clone()).collect::<Vec<_>>())
            })
            .collect();
        let mut rows = vec![Row::at(at, 0, "lanczos_steps", c.steps() as f64)];
        for (i, value) in values.iter().enumerate() {
            let point = i as u32;
            let last = vectors.double_value(&[m - 1, m - 1 - i as i64]).abs();
            rows.push(Row::at(at, point, "eigenvalue", *value));
            rows.push(Row::at(at, point, "ritz_residual", beta * last));
            let u = ritz.get(i as i64).to_kind(Kind::Double);
            for (d, name) in flat_directions.iter().zip(["overlap:d1", "overlap:d2"]) {
                let d = d.to_kind(Kind::Double);
                let cos = u.dot(&d).double_value(&[])
                    / (u.norm().double_value(&[]) * d.norm().double_value(&[]));
                rows.push(Row::at(at, point, name, cos.abs()));
            }
        }
        Ok(rows)
    }

    /// The Hutchinson values of an epoch's probes present from probe 0 on, in order: the
    /// totals, and per unit.
    fn trace_prefix(&self, epoch: u32) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
        let mut totals = Vec::new();
        let mut per_unit = vec![Vec::new(); self.units.len()];
        for j in 0..self.spectrum.trace_probes {
            let path = self.block_path(&Item::Trace(j).stem(epoch));
            if !path.is_file() {
                break;
            }
            for r in rows::read(&path)? {
                match r.unit.as_deref() {
                    None => totals.push(r.value),
                    Some(u) => {
                        if let Some(k) = self.units.iter().position(|(n, _)| n == u) {
                            per_unit[k].push(r.value);
                        }
                    }
                }
            }
        }
        Ok((totals, per_unit))
    }

    /// The probes the trace estimate uses, once known: the fewest that meet the tolerance, or
    /// the whole budget.
    fn trace_probes_used(&self, totals: &[f64]) -> Option<usize> {
        let s = self.spectrum;
        lanczos::probes_used(totals, s.trace_min_probes, s.trace_tolerance)
            .or((totals.len() == s.trace_probes).then_some(s.trace_probes))
    }

    /// The epoch's summary, once its trace and density probes are in.
    fn summary(&self, epoch: u32) -> Result<Option<Vec<Row>>> {
        let at = Some(epoch);
        let (totals, per_unit) = self.trace_prefix(epoch)?;
        let Some(used) = self.trace_probes_used(&totals) else {
            return Ok(None);
        };
        let mut probes = Vec::new();
        for j in 0..self.spectrum.density_probes {
            let path = self.block_path(&Item::Density(j).stem(epoch));
            if !path.is_file() {
                return Ok(None);
            }
            probes.push(
                rows::read(&path)?
                    .iter()
                    .map(|r| (r.alpha.unwrap_or(0.0), r.value))
                    .collect::<Vec<_>>(),
            );
        }
        let (trace, se) = lanczos::mean_se(&totals[..used]);
        let mut out = vec![
            Row::at(at, 0, "trace", trace),
            Row::at(at, 0, "trace_se", se),
            Row::at(at, 0, "trace_probes", used as f64),
        ];
        for ((unit, _), values) in self.units.iter().zip(&per_unit) {
            let (mean, se) = lanczos::mean_se(&values[..used.min(values.len())]);
            out.push(Row::at(at, 0, "layer_trace", mean).with_unit(unit));
            out.push(Row::at(at, 0, "layer_trace_se", se).with_unit(unit));
        }
        out.extend(density_rows(&probes, self.spectrum, at));
        Ok(Some(out))
    }
}

/// The density curve, its broadening and the negative mass of the quadrature probes: the weight
/// of nodes below −σ. Most of a network's eigenvalues are near 0, and the node that stands for
/// them lands a rounding error to either side of it; within the broadening it counts as 0.
fn density_rows(probes: &[Vec<(f64, f64)>], s: &SpectrumSpec, at: Option<u32>) -> Vec<Row> {
    let nodes = probes.iter().flatten().map(|(t, _)| *t);
    let (lo, hi) = nodes.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), t| {
        (a.min(t), b.max(t))
    });
    let sigma = s.sigma.unwrap_or(((hi - lo) * 0.01).max(f64::MIN_POSITIVE));
    let (from, to) = (lo - 5.0 * sigma, hi + 5.0 * sigma);
    let grid: Vec<f64> = (0..s.density_points)
        .map(|i| from + (to - from) * i as f64 / (s.density_points - 1) as f64)
        .collect();
    let curve = lanczos::density(probes, &grid, sigma);
    let negative: f64 = probes
        .iter()
        .map(|p| {
            p.iter()
                .filter(|(t, _)| *t < -sigma)
                .map(|(_, w)| w)
                .sum::<f64>()
        })
        .sum::<f64>()
        / probes.len() as f64;
    let mut out: Vec<Row> = grid
        .iter()
        .zip(curve)
        .enumerate()
        .map(|(i, (x, y))| Row::at(at, i as u32, "density", y).with_alpha(*x))
        .collect();
    out.push(Row::at(at, 0, "density_sigma", sigma));
    out.push(Row::at(at, 0, "negative_mass", negative));
    out
}

/// Saves a Lanczos run's state after its newest step k: the residual r_k (r_0, the start, with
/// the first step), then T's coefficients (the commit: a state is what they say). Basis row i
/// is r_i / ‖r_i‖, so one vector per step is written.
fn save_state(dir: &Path, run: &Lanczos, start: &Tensor) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let k = run.coefficients.steps();
    let residual_file = |i: usize, t: &Tensor| -> Result<()> {
        let path = dir.join(format!("residual-{i:04}.safetensors"));
        let tmp = lossbench_core::files::temp_path(&path);
        Tensor::write_safetensors(&[("v", t.to_device(Device::Cpu))], &tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        lossbench_core::files::commit(&tmp, &path)
    };
    if k == 1 {
        residual_file(0, start)?;
    }
    residual_file(k, run.residual())?;
    lossbench_core::files::write_atomically(
        &dir.join("coefficients.json"),
        &serde_json::to_vec(&run.coefficients)?,
    )
}

/// A saved Lanczos state: coefficients, basis rows and residual (on `device`).
fn load_state(dir: &Path, device: Device) -> Result<Option<(Coefficients, Tensor, Tensor)>> {
    let path = dir.join("coefficients.json");
    let Ok(bytes) = fs::read(&path) else {
        return Ok(None);
    };
    let coefficients: Coefficients = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: unreadable", path.display()))?;
    let read = |i: usize| -> Result<Tensor> {
        let path = dir.join(format!("residual-{i:04}.safetensors"));
        let tensors = Tensor::read_safetensors(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        tensors
            .into_iter()
            .next()
            .map(|(_, t)| t)
            .with_context(|| format!("{}: empty", path.display()))
    };
    let k = coefficients.steps();
    let rows: Vec<Tensor> = (0..k)
        .map(|i| read(i).map(|r| lanczos::unit_vector(&r)))
        .collect::<Result<_>>()?;
    let residual = read(k)?.to_device(device);
    Ok(Some((coefficients, Tensor::stack(&rows, 0), residual)))
}

impl Work<'_> {
    /// The epoch's summary, unless written or its probes are not all in yet.
    pub fn write_summary(&self, epoch: u32) -> Result<()> {
        let summary = format!("e{epoch:04}-summary");
        if !self.block_path(&summary).is_file()
            && let Some(rows) = self.summary(epoch)?
        {
            self.write(&summary, &rows)?;
            tracing::info!(epoch, "spectrum summary written");
        }
        Ok(())
    }

    /// The seconds of a Hessian-vector product against those of a forward pass (`forward`):
    /// the cost model's unit (docs/landscape.md, "Spectrum").
    pub fn log_cost(&self, forward: f64) {
        let (hvps, seconds) = self.hvps.get();
        if hvps == 0 {
            return;
        }
        let each = seconds / hvps as f64;
        tracing::info!(
            hvps,
            hvp_seconds = each,
            forward_seconds = forward,
            ratio = each / forward,
            "Hessian-vector products against a forward pass over the subset"
        );
    }
}
