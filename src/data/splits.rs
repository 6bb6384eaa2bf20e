//! A run's three splits, set up once: training and validation streamed or held in memory as
//! `data.resident` says (docs/training.md, "Resident data"), the test split streamed (it is read
//! once, at the end).

use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Result, bail};
use tch::Device;

use super::resident::{self, Budget, Placement};
use super::{Loading, Normalizer, ResidentSplit, Source};
use crate::dist::Dist;
use crate::failure;
use crate::steps::MIN_MICRO_BATCH;
use lossbench_core::config::Config;
use lossbench_core::layout::Split;
use lossbench_core::run_info::DataPlacement;
use lossbench_core::store::{SplitData, Store};

pub struct Splits {
    pub train: Source,
    pub val: Source,
    pub test: Arc<SplitData>,
    pub loading: Loading,
    /// Where the training and validation splits live, as recorded in `run.json`.
    pub placements: Vec<DataPlacement>,
}

/// This process's resident and proportional memory (`/proc/self/smaps_rollup`), bytes.
fn rss_pss() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    Some((field("Rss:")?, field("Pss:")?))
}

/// The store's split `split`, which must hold patches.
fn open_split(store: &Store, split: Split) -> Result<Arc<SplitData>> {
    let data = store.split(split)?;
    if data.len == 0 {
        bail!(
            "{}: the {split} split is empty; training needs patches in every split",
            store.path.display()
        );
    }
    Ok(Arc::new(data))
}

impl Splits {
    /// The splits of `store` placed as `config` says; `guard` names what a caught libtorch
    /// failure (memory running out while loading) was doing.
    pub fn open(
        store: &Store,
        config: &Config,
        device: Device,
        dist: &Dist,
        guard: &failure::Context,
    ) -> Result<Splits> {
        let opened = (|| {
            let [train, val, test] = Split::ALL.map(|s| open_split(store, s));
            Ok((train?, val?, test?))
        })();
        let (train, val, test) = dist.agree(opened)?;
        if train.len < MIN_MICRO_BATCH {
            bail!(
                "{}: the training split has {} patch(es); BatchNorm needs at least {} per batch",
                store.path.display(),
                train.len,
                MIN_MICRO_BATCH
            );
        }
        let norm = Arc::new(Normalizer::from_store(&store.attrs)?);
        let (mut sources, placements) = place(config, (device, dist), &norm, [train, val], guard)?;
        let val = sources.pop().expect("two sources");
        let train = sources.pop().expect("two sources");
        let t = &config.train;
        let loading = Loading {
            norm,
            ahead: t.prefetch_batches,
            threads: t.loader_threads,
        };
        Ok(Splits {
            train,
            val,
            test,
            loading,
            placements,
        })
    }
}

impl Splits {
    /// Logs (info, every rank) this process's memory and its share of each split the node's
    /// ranks share: with one copy per node, each of N ranks holds 1/N of it.
    pub fn log_memory(&self, rank: usize) {
        let mib = |b: u64| b / (1 << 20);
        let (rss, pss) = rss_pss().unwrap_or_default();
        let shared: Vec<String> = [&self.train, &self.val]
            .iter()
            .filter_map(|s| match s {
                Source::Resident(r) => {
                    let pss = r.shared.as_ref().and_then(|m| m.pss())?;
                    let (split, kib) = (r.split.split, |b: u64| b / 1024);
                    Some(format!("{split}: {} of {} KiB", kib(pss), kib(r.bytes)))
                }
                Source::Stream(_) => None,
            })
            .collect();
        let shared = shared.join(", ");
        tracing::info!(
            rank,
            rss_mib = mib(rss),
            pss_mib = mib(pss),
            shared,
            "memory"
        );
    }
}

/// Memory for resident splits that every rank has: each rank's host and GPU figures gathered,
/// the smallest taken, so that the plan fits the tightest rank (another GPU of the job may have
/// less free memory than rank 0's).
fn smallest_budget(device: Device, dist: &Dist) -> Budget {
    let gpu = match device {
        Device::Cuda(i) => crate::device::gpu_memory(i),
        _ => None,
    };
    let host = crate::device::host_available();
    let mut all = vec![0u64; 3 * dist.world_size];
    let mine = &mut all[3 * dist.rank..3 * dist.rank + 3];
    // u64::MAX for "unknown": the others' figures decide.
    mine[0] = host.unwrap_or(u64::MAX);
    mine[1] = gpu.map_or(u64::MAX, |g| g.0);
    mine[2] = gpu.map_or(u64::MAX, |g| g.1);
    // Summed over ranks, each slot holds its rank's figures (the others add zeros).
    dist.sum_u64(&mut all);
    let least = |k: usize| {
        let v = all.chunks(3).map(|c| c[k]).min().unwrap_or(u64::MAX);
        (v != u64::MAX).then_some(v)
    };
    Budget {
        host_available: least(0),
        gpu: least(1).zip(least(2)),
    }
}

/// Puts the training and validation splits where `data.resident` says, by one plan every rank
/// computes from the same figures ([`smallest_budget`]); every split's loading is agreed, so a
/// rank that fails to load (memory running out on its GPU or host) ends every rank.
fn place(
    config: &Config,
    (device, dist): (Device, &Dist),
    norm: &Normalizer,
    splits: [Arc<SplitData>; 2],
    guard: &failure::Context,
) -> Result<(Vec<Source>, Vec<DataPlacement>)> {
    let budget = smallest_budget(device, dist);
    let lens: Vec<usize> = splits.iter().map(|s| s.len).collect();
    let plan = dist.agree(resident::plan(config.data.resident, device, &lens, budget))?;
    let mut sources = Vec::new();
    let mut placements = Vec::new();
    for (split, placement) in splits.into_iter().zip(plan) {
        let name = split.split.to_string();
        let threads = config.train.loader_threads;
        let loaded = failure::catch(|| load_split(split, placement, norm, (device, dist), threads))
            .unwrap_or_else(|caught| Err(guard.error(caught)));
        let (source, placement, shared) = dist.agree(loaded)?;
        let (load_s, bytes) = match &source {
            Source::Resident(r) => (r.load_s, r.bytes),
            Source::Stream(_) => (0.0, 0),
        };
        placements.push(DataPlacement {
            split: name,
            placement,
            load_s,
            bytes,
            shared,
        });
        sources.push(source);
    }
    Ok((sources, placements))
}

/// One split where the plan says: with several ranks on the node, in host memory as one shared
/// copy per node; without one (the shared-memory folder too small), as a private copy per rank
/// if the node's memory holds one for each of its ranks, else streamed. Returns the source, its
/// placement and whether it is shared.
fn load_split(
    split: Arc<SplitData>,
    placement: Placement,
    norm: &Normalizer,
    (device, dist): (Device, &Dist),
    threads: usize,
) -> Result<(Source, Placement, bool)> {
    let resident = |r: ResidentSplit| Source::Resident(Rc::new(r));
    match placement {
        Placement::Stream => Ok((Source::Stream(split), placement, false)),
        Placement::Host if dist.local_size > 1 => {
            if let Some(r) = super::shared::load(split.clone(), norm, device, threads, dist)? {
                return Ok((resident(r), placement, true));
            }
            let bytes = split.len as u64 * resident::BYTES_PER_PATCH;
            let node = bytes * dist.local_size as u64;
            let fits = crate::device::host_available()
                .is_none_or(|a| node as f64 <= a as f64 * resident::HOST_SHARE);
            if fits {
                tracing::warn!(split = %split.split, "each rank of the node holds its own copy");
                let r = ResidentSplit::load(split, norm, placement, device, threads)?;
                Ok((resident(r), placement, false))
            } else {
                tracing::warn!(
                    split = %split.split, copies = dist.local_size, each = resident::gib(bytes),
                    "one copy per rank would not fit the node's memory: streamed from the store"
                );
                Ok((Source::Stream(split), Placement::Stream, false))
            }
        }
        placement => {
            let r = ResidentSplit::load(split, norm, placement, device, threads)?;
            Ok((resident(r), placement, false))
        }
    }
}
