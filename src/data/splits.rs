//! A run's three splits, set up once: training and validation streamed or held in memory as
//! `data.resident` says (docs/training.md, "Resident data"), the test split streamed (it is read
//! once, at the end).

use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Result, bail};
use tch::Device;

use super::resident::{self, Budget, Placement};
use super::{Loading, Normalizer, ResidentSplit, Source};
use crate::config::Config;
use crate::dist::Dist;
use crate::steps::MIN_MICRO_BATCH;
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
    pub fn open(store: &Store, config: &Config, device: Device, dist: &Dist) -> Result<Splits> {
        let [train, val, test] = Split::ALL.map(|s| open_split(store, s));
        let (train, val, test) = (train?, val?, test?);
        if train.len < MIN_MICRO_BATCH {
            bail!(
                "{}: the training split has {} patch(es); BatchNorm needs at least {} per batch",
                store.path.display(),
                train.len,
                MIN_MICRO_BATCH
            );
        }
        let norm = Arc::new(Normalizer::from_store(&store.attrs)?);
        let store_id = store.attrs.identity();
        let (mut sources, placements) =
            place(config, (device, dist), &norm, [train, val], &store_id)?;
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

/// Puts the training and validation splits where `data.resident` says. The ranks of a run
/// agree on the plan (rank 0's): each computing its own from a memory figure that moves would
/// let them disagree.
fn place(
    config: &Config,
    (device, dist): (Device, &Dist),
    norm: &Normalizer,
    splits: [Arc<SplitData>; 2],
    store_id: &str,
) -> Result<(Vec<Source>, Vec<DataPlacement>)> {
    let budget = Budget {
        host_available: crate::device::host_available(),
        gpu: match device {
            Device::Cuda(i) => crate::device::gpu_memory(i),
            _ => None,
        },
    };
    let lens: Vec<usize> = splits.iter().map(|s| s.len).collect();
    let planned = resident::plan(config.data.resident, device, &lens, budget);
    const CODES: [Placement; 3] = [Placement::Stream, Placement::Host, Placement::Device];
    let mut code: Vec<f64> = match &planned {
        Ok(p) => p
            .iter()
            .map(|p| CODES.iter().position(|c| c == p).unwrap_or(0) as f64)
            .collect(),
        Err(_) => vec![-1.0; lens.len()],
    };
    dist.broadcast_f64(&mut code);
    let plan: Vec<Placement> = match (planned, dist.is_root()) {
        (Err(e), true) => return Err(e),
        _ if code.iter().any(|&c| c < 0.0) => bail!("rank 0 could not place the data"),
        _ => code.iter().map(|&c| CODES[c as usize]).collect(),
    };
    let mut sources = Vec::new();
    let mut placements = Vec::new();
    for (split, placement) in splits.into_iter().zip(plan) {
        let name = split.split.to_string();
        let threads = config.train.loader_threads;
        let (source, load_s, bytes, shared) = match placement {
            Placement::Stream => (Source::Stream(split), 0.0, 0, false),
            // The ranks of a node share one host copy when /dev/shm can hold it.
            Placement::Host if dist.local_size > 1 => {
                let r = match super::shared::load(
                    split.clone(),
                    norm,
                    device,
                    threads,
                    dist,
                    store_id,
                )? {
                    Some(r) => r,
                    None => ResidentSplit::load(split, norm, placement, device, threads)?,
                };
                let (load_s, bytes, shared) = (r.load_s, r.bytes, r.shared.is_some());
                (Source::Resident(Rc::new(r)), load_s, bytes, shared)
            }
            placement => {
                let r = ResidentSplit::load(split, norm, placement, device, threads)?;
                let (load_s, bytes) = (r.load_s, r.bytes);
                (Source::Resident(Rc::new(r)), load_s, bytes, false)
            }
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
