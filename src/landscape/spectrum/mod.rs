//! `trainer landscape --kind spectrum` (docs/landscape.md, "Spectrum"): at each checkpoint, the
//! Hessian's top eigenvalues (with their vectors' overlap with the landscape directions), its
//! trace by Hutchinson's estimator, its eigenvalue density by stochastic Lanczos quadrature,
//! and per layer the top eigenvalue and trace of the layer's diagonal block ([`super::spectrum`]).
//!
//! The work comes in items, each written atomically as a block of `blocks/`: per checkpoint
//! epoch E, `eEEEE-top`, `eEEEE-trace-J` (one Hutchinson probe), `eEEEE-density-J` (one
//! quadrature probe) and `eEEEE-layer-K`; items are shared out over every worker (MPI ranks x
//! array tasks) and a rerun computes only the missing ones. A Lanczos item saves its state
//! after every step under `state/` (the step's residual, then T's coefficients as the commit),
//! so a killed or timed-out worker loses one step at most. Once
//! an epoch's probes are in, whoever finds them complete writes `eEEEE-summary`: the trace and
//! its standard error over the fewest probes that meet the tolerance (so the estimate does not
//! depend on how probes were shared out), the per-layer traces, the density curve and the
//! negative mass.

use std::cell::Cell;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::evaluator::Evaluator;
use super::rows::{self, Row, Shared};
use super::spectrum::{self, Coefficients, Flat, Lanczos};
use super::{Outcome, Setup, Worker, directions, grid};

/// The least Hutchinson probes a trace estimate uses.
const TRACE_MIN_PROBES: usize = 10;

/// `trainer landscape --kind spectrum`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SpectrumArgs {
    /// `spectrum`: eigenvalues at the top of the spectrum.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// `spectrum`: Lanczos steps of the top eigenvalues and of each density probe.
    #[arg(long, default_value_t = 40)]
    pub lanczos_steps: usize,
    /// `spectrum`: Lanczos steps of each layer's top eigenvalue.
    #[arg(long, default_value_t = 20)]
    pub layer_steps: usize,
    /// `spectrum`: Hutchinson probes of the trace at most ...
    #[arg(long, default_value_t = 100)]
    pub trace_probes: usize,
    /// ... stopping once its standard error is within this share of the estimate (after 10
    /// probes).
    #[arg(long, default_value_t = 0.01)]
    pub trace_tolerance: f64,
    /// `spectrum`: stochastic Lanczos quadrature probes of the eigenvalue density.
    #[arg(long, default_value_t = 4)]
    pub density_probes: usize,
    /// `spectrum`: points of the density curve.
    #[arg(long, default_value_t = 256)]
    pub density_points: usize,
    /// `spectrum`: the density's Gaussian broadening (default: 1% of the span of the nodes).
    #[arg(long)]
    pub sigma: Option<f64>,
    /// `spectrum`: leave out the per-layer eigenvalues.
    #[arg(long)]
    pub no_layers: bool,
}

/// What a spectrum computes (in `spec.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpectrumSpec {
    pub top_k: usize,
    pub lanczos_steps: usize,
    pub layer_steps: usize,
    pub trace_probes: usize,
    pub trace_min_probes: usize,
    pub trace_tolerance: f64,
    pub density_probes: usize,
    pub density_points: usize,
    pub sigma: Option<f64>,
    pub layers: bool,
}

impl SpectrumArgs {
    pub fn spec(&self) -> Result<SpectrumSpec> {
        let a = self;
        if a.top_k == 0 || a.lanczos_steps < a.top_k.max(2) {
            bail!(
                "--top-k {} and --lanczos-steps {}: at least one eigenvalue, and more steps than eigenvalues",
                a.top_k,
                a.lanczos_steps
            );
        }
        if a.layer_steps < 2 || a.density_probes == 0 || a.density_points < 2 {
            bail!(
                "--layer-steps (at least 2), --density-probes (1) and --density-points (2) are too small"
            );
        }
        if a.trace_probes < TRACE_MIN_PROBES
            || a.trace_tolerance.is_nan()
            || a.trace_tolerance <= 0.0
        {
            bail!(
                "--trace-probes at least {TRACE_MIN_PROBES} and a positive --trace-tolerance, got {} and {}",
                a.trace_probes,
                a.trace_tolerance
            );
        }
        if a.sigma.is_some_and(|s| !(s > 0.0 && s.is_finite())) {
            bail!("--sigma must be positive");
        }
        Ok(SpectrumSpec {
            top_k: a.top_k,
            lanczos_steps: a.lanczos_steps,
            layer_steps: a.layer_steps,
            trace_probes: a.trace_probes,
            trace_min_probes: TRACE_MIN_PROBES,
            trace_tolerance: a.trace_tolerance,
            density_probes: a.density_probes,
            density_points: a.density_points,
            sigma: a.sigma,
            layers: !a.no_layers,
        })
    }
}

/// One unit of work of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Top,
    Trace(usize),
    Density(usize),
    Layer(usize),
}

impl Item {
    fn stem(self, epoch: u32) -> String {
        match self {
            Item::Top => format!("e{epoch:04}-top"),
            Item::Trace(j) => format!("e{epoch:04}-trace-{j:04}"),
            Item::Density(j) => format!("e{epoch:04}-density-{j:03}"),
            Item::Layer(k) => format!("e{epoch:04}-layer-{k:03}"),
        }
    }

    /// The random stream of the item's start vector or probe.
    fn key(self, seed: u64, epoch: u32) -> u64 {
        let (what, j) = match self {
            Item::Top => (1, 0),
            Item::Trace(j) => (2, j),
            Item::Density(j) => (3, j),
            Item::Layer(k) => (4, k),
        };
        crate::steps::stream_seed(&[seed, u64::from(epoch), what, j as u64]) as u64
    }
}

fn items(s: &SpectrumSpec, units: usize) -> Vec<Item> {
    let mut out = vec![Item::Top];
    out.extend((0..s.trace_probes).map(Item::Trace));
    out.extend((0..s.density_probes).map(Item::Density));
    if s.layers {
        out.extend((0..units).map(Item::Layer));
    }
    out
}

/// The units (layers or blocks) of the trainable variables, each with its ranges in the flat
/// vector, in the variables' order.
fn units(eval: &Evaluator, flat: &Flat) -> Vec<(String, Vec<Range<i64>>)> {
    let arch = eval.model.arch();
    let mut out: Vec<(String, Vec<Range<i64>>)> = Vec::new();
    for ((name, _), range) in eval.trainable().iter().zip(flat.ranges()) {
        let unit = arch.unit(name);
        match out.iter_mut().find(|(u, _)| *u == unit) {
            Some((_, ranges)) => ranges.push(range),
            None => out.push((unit, vec![range])),
        }
    }
    out
}

/// What computing items needs besides the setup.
struct Work<'a> {
    setup: &'a Setup<'a>,
    spectrum: &'a SpectrumSpec,
    eval: &'a Evaluator,
    flat: Flat,
    units: Vec<(String, Vec<Range<i64>>)>,
    /// Hessian-vector products computed and their seconds.
    hvps: Cell<(usize, f64)>,
}

impl Work<'_> {
    fn block_path(&self, stem: &str) -> PathBuf {
        self.setup
            .dir
            .join("blocks")
            .join(format!("{stem}.parquet"))
    }

    fn write(&self, stem: &str, rows: &[Row]) -> Result<()> {
        let spec = self.setup.spec;
        let shared = Shared {
            name: self.setup.name,
            kind: spec.kind.name(),
            other: "",
            seed: spec.seed,
        };
        let batch = rows::batch(&shared, rows)?;
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
        spectrum::rademacher(
            self.flat.len,
            item.key(self.setup.spec.seed, epoch),
            self.eval.device,
            Kind::Float,
        )
    }

    fn compute(&self, item: Item, epoch: u32) -> Result<Vec<Row>> {
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
                    spectrum::hutchinson(&self.start(item, epoch), &|v| self.hvp(v), &ranges);
                let mut rows = vec![Row::at(at, j as u32, "hutchinson", total)];
                for ((unit, _), value) in self.units.iter().zip(per_unit) {
                    rows.push(Row::at(at, j as u32, "hutchinson", value).with_unit(unit));
                }
                rows
            }
            Item::Density(j) => {
                let run = whole_lanczos()?;
                spectrum::quadrature(&run.coefficients)
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
        let drawn = directions::draw(
            &trainable,
            self.setup.spec.seed,
            2,
            self.setup.spec.include_bias_bn,
        );
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
        spectrum::probes_used(totals, s.trace_min_probes, s.trace_tolerance)
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
        let (trace, se) = spectrum::mean_se(&totals[..used]);
        let mut out = vec![
            Row::at(at, 0, "trace", trace),
            Row::at(at, 0, "trace_se", se),
            Row::at(at, 0, "trace_probes", used as f64),
        ];
        for ((unit, _), values) in self.units.iter().zip(&per_unit) {
            let (mean, se) = spectrum::mean_se(&values[..used.min(values.len())]);
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
    let curve = spectrum::density(probes, &grid, sigma);
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
        .map(|i| read(i).map(|r| spectrum::unit_vector(&r)))
        .collect::<Result<_>>()?;
    let residual = read(k)?.to_device(device);
    Ok(Some((coefficients, Tensor::stack(&rows, 0), residual)))
}

/// This worker's missing items of every epoch, then the summaries it finds complete.
pub fn run(setup: &Setup, worker: &Worker) -> Result<Outcome> {
    let spectrum = setup.spec.spectrum.as_ref().context("a spectrum's spec")?;
    let eval = setup.evaluator()?;
    let flat = Flat::of(
        &eval
            .trainable()
            .into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>(),
    );
    let units = units(&eval, &flat);
    let c = Work {
        setup,
        spectrum,
        eval: &eval,
        flat,
        units,
        hvps: Cell::new((0, 0.0)),
    };
    let per_epoch = items(spectrum, c.units.len());
    let mut outcome = Outcome {
        folder: setup.dir.to_path_buf(),
        blocks: (per_epoch.len() + 1) * setup.spec.epochs.len(),
        computed: 0,
        already_done: 0,
    };
    let mut created = false;
    let mut forward = None;
    for (e, &epoch) in setup.spec.epochs.iter().enumerate() {
        let mut loaded = false;
        for (i, &item) in per_epoch.iter().enumerate() {
            if (e * per_epoch.len() + i) % worker.count != worker.index {
                continue;
            }
            let stem = item.stem(epoch);
            if c.block_path(&stem).is_file() {
                outcome.already_done += 1;
                continue;
            }
            if let Item::Trace(_) = item
                && c.trace_probes_used(&c.trace_prefix(epoch)?.0).is_some()
            {
                continue; // the estimate has its probes
            }
            if !created {
                super::create(setup.dir, setup.spec)?;
                created = true;
            }
            if !loaded {
                grid::checkpoint_values(&setup.spec.run, Some(epoch), &eval)?;
                loaded = true;
                if forward.is_none() {
                    forward = Some(eval.forward_seconds());
                }
            }
            let rows = c.compute(item, epoch)?;
            c.write(&stem, &rows)?;
            let _ = fs::remove_dir_all(setup.dir.join("state").join(&stem));
            outcome.computed += 1;
            tracing::info!(epoch, item = %stem, "spectrum item written");
        }
        if setup.dir.is_dir() {
            c.write_summary(epoch)?;
        }
    }
    if let Some(forward) = forward {
        c.log_cost(forward);
    }
    Ok(outcome)
}

impl Work<'_> {
    /// The epoch's summary, unless written or its probes are not all in yet.
    fn write_summary(&self, epoch: u32) -> Result<()> {
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
    fn log_cost(&self, forward: f64) {
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
