//! Feeding the model: a seeded order per epoch and batches of z-scored f32 tensors, either read
//! from the store by loader threads ([`stream`]) or gathered from splits decoded once into host
//! or device memory ([`resident`]). Both give the same batches, bit for bit on the CPU.

pub mod mapping;
pub mod resident;
pub mod shared;
pub mod splits;
pub mod stream;

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tch::{Device, Tensor};

use lossbench_core::layout::{BAND_GROUPS, StoreAttributes};
use lossbench_core::store::SplitData;
pub use resident::ResidentSplit;
pub use splits::Splits;
pub use stream::{Prefetcher, read_batch};

/// Per-band z-scoring with the store's training-split statistics, per band group.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalizer {
    mean: Vec<Vec<f32>>,
    inv_std: Vec<Vec<f32>>,
}

impl Normalizer {
    pub fn from_store(attrs: &StoreAttributes) -> Result<Self> {
        let mut mean = Vec::new();
        let mut inv_std = Vec::new();
        for g in BAND_GROUPS {
            let stats = g
                .bands
                .iter()
                .map(|b| {
                    attrs
                        .band_stats
                        .get(*b)
                        .with_context(|| format!("the store has no statistics for band {b}"))
                })
                .collect::<Result<Vec<_>>>()?;
            mean.push(stats.iter().map(|s| s.mean as f32).collect());
            inv_std.push(
                stats
                    .iter()
                    .map(|s| {
                        if s.std > 0.0 {
                            (1.0 / s.std) as f32
                        } else {
                            1.0
                        }
                    })
                    .collect(),
            );
        }
        Ok(Normalizer { mean, inv_std })
    }

    /// z-scores one patch's values of band group `g` into `out`: (v − mean) · (1 / std) in f32.
    fn apply(&self, g: usize, values: &[u16], out: &mut [f32]) {
        let n = BAND_GROUPS[g].pixels_per_band();
        for (b, (src, dst)) in values.chunks(n).zip(out.chunks_mut(n)).enumerate() {
            let (m, s) = (self.mean[g][b], self.inv_std[g][b]);
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = (v as f32 - m) * s;
            }
        }
    }

    /// Band group `g`'s means and inverse standard deviations as `[1, C, 1, 1]` f32 tensors.
    fn tensors(&self, g: usize, device: Device) -> (Tensor, Tensor) {
        let shape = [1, self.mean[g].len() as i64, 1, 1];
        (
            Tensor::from_slice(&self.mean[g])
                .reshape(shape)
                .to_device(device),
            Tensor::from_slice(&self.inv_std[g])
                .reshape(shape)
                .to_device(device),
        )
    }
}

/// Model inputs and targets for a list of patches.
pub struct Batch {
    /// `[B,4,120,120]`, `[B,6,60,60]`, `[B,2,20,20]`, f32, z-scored.
    pub inputs: [Tensor; 3],
    /// `[B, 19]`, f32 0/1.
    pub targets: Tensor,
    /// Row i of the batch is patch `indices[i]` of the split.
    pub indices: Vec<usize>,
}

/// Where a split's batches come from.
#[derive(Clone)]
pub enum Source {
    /// Read from the store by loader threads.
    Stream(Arc<SplitData>),
    /// Gathered from the split held in memory (by the training thread: tensors stay on it).
    Resident(Rc<ResidentSplit>),
}

/// How batches are made for a sequence of patch lists.
pub struct Loading {
    pub norm: Arc<Normalizer>,
    /// Batches read ahead and loader threads (streaming only).
    pub ahead: usize,
    pub threads: usize,
}

impl Source {
    /// The split's names and labels.
    pub fn split(&self) -> &Arc<SplitData> {
        match self {
            Source::Stream(s) => s,
            Source::Resident(r) => &r.split,
        }
    }

    /// Batches of the patch lists `lists`, in order.
    pub fn batches(&self, lists: Vec<Vec<usize>>, loading: &Loading) -> Result<Batches> {
        Ok(match self {
            Source::Stream(split) => Batches::Stream(Prefetcher::start(
                split.clone(),
                loading.norm.clone(),
                lists,
                loading.ahead,
                loading.threads,
            )?),
            Source::Resident(r) => Batches::Resident {
                data: r.clone(),
                lists: lists.into_iter(),
                waited: Duration::ZERO,
            },
        })
    }
}

/// A sequence of batches being produced.
pub enum Batches {
    Stream(Prefetcher),
    Resident {
        data: Rc<ResidentSplit>,
        lists: std::vec::IntoIter<Vec<usize>>,
        waited: Duration,
    },
}

impl Batches {
    /// The next batch, or `None` after the last.
    pub fn next_batch(&mut self) -> Option<Result<Batch>> {
        match self {
            Batches::Stream(p) => p.next_batch(),
            Batches::Resident {
                data,
                lists,
                waited,
            } => {
                let indices = lists.next()?;
                let started = Instant::now();
                let batch = data.batch(&indices);
                *waited += started.elapsed();
                Some(Ok(batch))
            }
        }
    }

    /// Time spent waiting for batches (for resident data: gathering them).
    pub fn waited(&self) -> Duration {
        match self {
            Batches::Stream(p) => p.waited,
            Batches::Resident { waited, .. } => *waited,
        }
    }
}
