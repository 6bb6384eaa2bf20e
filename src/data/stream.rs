//! Batches read from the store by a pool of loader threads, and a prefetcher that keeps them
//! ready ahead of the compute so that it does not wait on I/O.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rayon::prelude::*;
use tch::Tensor;

use super::{Batch, Normalizer};
use lossbench_core::labels::NUM_CLASSES;
use lossbench_core::layout::BAND_GROUPS;
use lossbench_core::store::SplitData;

/// Reads and z-scores patches `indices` of `split`, in parallel on the current rayon pool.
pub fn read_batch(split: &SplitData, norm: &Normalizer, indices: &[usize]) -> Result<Batch> {
    let b = indices.len() as i64;
    let mut inputs = Vec::with_capacity(3);
    for (g, group) in BAND_GROUPS.iter().enumerate() {
        let per = group.values_per_patch();
        let mut values = vec![0f32; indices.len() * per];
        values
            .par_chunks_mut(per)
            .zip(indices.par_iter())
            .try_for_each(|(out, &i)| -> Result<()> {
                norm.apply(g, &split.read_group(g, i)?, out);
                Ok(())
            })?;
        let side = group.side as i64;
        inputs.push(Tensor::from_slice(&values).reshape([b, group.bands.len() as i64, side, side]));
    }
    let labels: Vec<f32> = indices
        .iter()
        .flat_map(|&i| split.labels_of(i).iter().map(|&l| l as f32))
        .collect();
    let targets = Tensor::from_slice(&labels).reshape([b, NUM_CLASSES as i64]);
    let [x10, x20, x60]: [Tensor; 3] = inputs
        .try_into()
        .map_err(|_| anyhow::anyhow!("three band groups"))?;
    Ok(Batch {
        inputs: [x10, x20, x60],
        targets,
        indices: indices.to_vec(),
    })
}

/// Reads a sequence of batches on background threads, at most `ahead` batches in advance.
pub struct Prefetcher {
    rx: Receiver<Result<Batch>>,
    worker: Option<JoinHandle<()>>,
    /// Time spent waiting for the next batch.
    pub waited: Duration,
}

impl Prefetcher {
    pub fn start(
        split: Arc<SplitData>,
        norm: Arc<Normalizer>,
        batches: Vec<Vec<usize>>,
        ahead: usize,
        threads: usize,
    ) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("loader-{i}"))
            .build()
            .context("starting the loader threads")?;
        let (tx, rx) = sync_channel(ahead);
        let worker = std::thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || {
                for indices in batches {
                    let batch = pool.install(|| read_batch(&split, &norm, &indices));
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return; // the consumer stopped listening, or the error was delivered
                    }
                }
            })
            .context("starting the prefetch thread")?;
        Ok(Prefetcher {
            rx,
            worker: Some(worker),
            waited: Duration::ZERO,
        })
    }

    /// The next batch, or `None` after the last.
    pub fn next_batch(&mut self) -> Option<Result<Batch>> {
        let start = Instant::now();
        let next = self.rx.recv().ok();
        self.waited += start.elapsed();
        next
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Unblock the worker (its send fails once the receiver is gone), then wait for it.
        let (_, dead) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::epoch_order;
    use lossbench_core::layout::Split;
    use lossbench_core::store::Store;

    fn store(dir: &std::path::Path) -> Store {
        Store::open(&data_prep::synth::synthetic_store(dir, 40, 3).unwrap()).unwrap()
    }

    #[test]
    fn batches_hold_the_z_scored_store_values_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let norm = Arc::new(Normalizer::from_store(&store.attrs).unwrap());
        let split = Arc::new(store.split(Split::Train).unwrap());
        let order = epoch_order(split.len, 1, 0);
        let batches: Vec<Vec<usize>> = order.chunks(4).map(<[usize]>::to_vec).collect();
        let mut pf = Prefetcher::start(split.clone(), norm, batches.clone(), 2, 2).unwrap();
        let mut seen = 0;
        for expected in &batches {
            let batch = pf.next_batch().unwrap().unwrap();
            assert_eq!(&batch.indices, expected);
            let (k, i) = (1, expected[1]);
            let raw = split.read_group(0, i).unwrap();
            let b04 = &store.attrs.band_stats["B04"];
            let want = (raw[5] as f64 - b04.mean) / b04.std;
            assert!((batch.inputs[0].double_value(&[k, 0, 0, 5]) - want).abs() < 1e-4);
            assert_eq!(
                batch.inputs[1].size(),
                vec![expected.len() as i64, 6, 60, 60]
            );
            for c in 0..19 {
                assert_eq!(
                    batch.targets.double_value(&[k, c]),
                    split.labels_of(i)[c as usize] as f64
                );
            }
            seen += expected.len();
        }
        assert!(pf.next_batch().is_none());
        assert_eq!(seen, split.len);
    }

    #[test]
    fn dropping_a_prefetcher_midway_stops_its_threads() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let norm = Arc::new(Normalizer::from_store(&store.attrs).unwrap());
        let split = Arc::new(store.split(Split::Train).unwrap());
        let batches = vec![vec![0, 1]; 50];
        let mut pf = Prefetcher::start(split, norm, batches, 1, 1).unwrap();
        assert!(pf.next_batch().unwrap().is_ok());
        drop(pf); // must return, not hang
    }
}
