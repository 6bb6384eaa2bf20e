//! `trainer landscape --kind spectrum` (docs/landscape.md, "Spectrum"): at each checkpoint, the
//! Hessian's top eigenvalues (with their vectors' overlap with the landscape directions), its
//! trace by Hutchinson's estimator, its eigenvalue density by stochastic Lanczos quadrature,
//! and per layer the top eigenvalue and trace of the layer's diagonal block: the numerical
//! methods in [`lanczos`], the items computed in [`work`].
//!
//! The work comes in items, each written atomically as a block of `blocks/`: per checkpoint
//! epoch E, `eEEEE-top`, `eEEEE-trace-J` (one Hutchinson probe), `eEEEE-density-J` (one
//! quadrature probe) and `eEEEE-layer-K`; items are shared out over every worker (MPI ranks x
//! array tasks) and a rerun computes only the missing ones. A Lanczos item saves its state
//! after every step under `state/` (the step's residual, then T's coefficients as the commit),
//! so a killed or timed-out worker loses one step at most. After its share of the items, each
//! worker writes the `eEEEE-summary` of every epoch whose probes it finds in: the trace and
//! its standard error over the fewest probes that meet the tolerance (so the estimate does not
//! depend on how probes were shared out), the per-layer traces, the density curve and the
//! negative mass.

mod lanczos;
mod work;

use anyhow::{Result, bail};
use arrow_array::RecordBatch;
use serde::{Deserialize, Serialize};

use super::blocks::{self, Client};
use super::{KindSpec, Outcome, Setup, Worker};
use work::Work;

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

/// The spectrum's client of the blocks loop: block b is item b mod n of checkpoint b / n (n
/// items per checkpoint).
struct Items<'a> {
    work: Work<'a>,
    epochs: &'a [u32],
    per_epoch: Vec<Item>,
    /// The checkpoint the network holds.
    loaded: Option<u32>,
    /// Seconds of a forward pass (the cost model's unit), timed at the first checkpoint loaded.
    forward: Option<f64>,
}

impl Items<'_> {
    fn of(&self, b: usize) -> (u32, Item) {
        let n = self.per_epoch.len();
        (self.epochs[b / n], self.per_epoch[b % n])
    }
}

impl Client for Items<'_> {
    fn stems(&self) -> Vec<String> {
        (0..self.epochs.len() * self.per_epoch.len())
            .map(|b| {
                let (epoch, item) = self.of(b);
                item.stem(epoch)
            })
            .collect()
    }

    fn wanted(&self, b: usize) -> Result<bool> {
        let (epoch, item) = self.of(b);
        Ok(!matches!(item, Item::Trace(_)) || !self.work.trace_complete(epoch)?)
    }

    fn load(&mut self, b: usize) -> Result<()> {
        let (epoch, _) = self.of(b);
        if self.loaded != Some(epoch) {
            self.work.load(epoch)?;
            self.loaded = Some(epoch);
            if self.forward.is_none() {
                self.forward = Some(self.work.forward_seconds());
            }
        }
        Ok(())
    }

    fn compute(&mut self, b: usize) -> Result<RecordBatch> {
        let (epoch, item) = self.of(b);
        self.work.batch(&self.work.compute(item, epoch)?)
    }

    fn written(&mut self, b: usize) -> Result<()> {
        let (epoch, item) = self.of(b);
        self.work.remove_state(&item.stem(epoch));
        Ok(())
    }
}

/// This worker's missing items of every epoch, then the summaries it finds complete.
pub fn run(setup: &Setup, worker: &Worker) -> Result<Outcome> {
    let KindSpec::Spectrum {
        epochs,
        include_bias_bn,
        spectrum,
    } = &setup.spec.of
    else {
        bail!("a spectrum's spec");
    };
    let work = Work::new(setup, spectrum, *include_bias_bn)?;
    let per_epoch = items(spectrum, work.units.len());
    let mut client = Items {
        work,
        epochs,
        per_epoch,
        loaded: None,
        forward: None,
    };
    let mut outcome = blocks::run(setup.dir, setup.spec, worker, &mut client)?;
    // One summary per checkpoint besides its items.
    outcome.blocks += epochs.len();
    if setup.dir.is_dir() {
        for &epoch in epochs {
            client.work.write_summary(epoch)?;
        }
    }
    if let Some(forward) = client.forward {
        client.work.log_cost(forward);
    }
    Ok(outcome)
}
