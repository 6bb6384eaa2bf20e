//! Splits held in memory (`data.resident`, docs/training.md "Resident data"): a split's uint16
//! band arrays are decoded from the store once, into one tensor per band group in host memory
//! (pinned when training on CUDA) or on the training device. Batches are then gathered by index
//! and z-scored where the data lives, with the streaming loader's arithmetic, so they equal its
//! batches (bit for bit on the CPU).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use super::{Batch, Normalizer};
use lossbench_core::config::Residency;
use lossbench_core::labels::NUM_CLASSES;
use lossbench_core::layout::{BAND_GROUPS, VALUES_PER_PATCH};
pub use lossbench_core::run_info::Placement;
use lossbench_core::store::SplitData;

/// Bytes one patch takes in memory: its band values (2 bytes each) and its f32 labels.
pub const BYTES_PER_PATCH: u64 = (VALUES_PER_PATCH * 2 + NUM_CLASSES * 4) as u64;
/// Patches decoded per step when loading: bounds the host buffer when the split goes to a GPU.
const LOAD_CHUNK: usize = 2048;
/// GPU memory `auto` leaves for the model, its optimizer state and activations: a quarter of
/// the device, at least 16 GiB.
const DEVICE_RESERVE_SHARE: f64 = 0.25;
const DEVICE_RESERVE_MIN: u64 = 16 << 30;
/// Share of the available host memory `auto` lets resident splits take.
pub(super) const HOST_SHARE: f64 = 0.8;

pub(super) fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Memory that can take resident splits.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Host memory still available to this process.
    pub host_available: Option<u64>,
    /// (free, total) memory of the training GPU; `None` when training on the CPU.
    pub gpu: Option<(u64, u64)>,
}

/// Decides where each split (patch counts `lens`, in order) lives. `auto` places each split, in
/// order, on the device if it fits beside the reserve for the model, else in host memory if it
/// fits, else streams it. `host` and `device` refuse, naming the sizes, what does not fit. On
/// the CPU, device memory is host memory: both place the splits in host memory.
pub fn plan(
    choice: Residency,
    device: Device,
    lens: &[usize],
    budget: Budget,
) -> Result<Vec<Placement>> {
    let sizes: Vec<u64> = lens.iter().map(|&n| n as u64 * BYTES_PER_PATCH).collect();
    let total: u64 = sizes.iter().sum();
    let host = budget.host_available;
    let describe = || {
        sizes
            .iter()
            .map(|&b| gib(b))
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let on_cpu = device == Device::Cpu;
    match choice {
        Residency::Off => Ok(vec![Placement::Stream; lens.len()]),
        Residency::Host | Residency::Device if on_cpu || choice == Residency::Host => {
            // On the CPU, device memory is host memory.
            if let Some(avail) = host
                && total > avail
            {
                bail!(
                    "data.resident = \"{}\": the training and validation splits need {} ({}) of host memory but {} is available; \
                     use data.resident = \"off\" or \"auto\", or ask for more memory",
                    if choice == Residency::Host {
                        "host"
                    } else {
                        "device"
                    },
                    gib(total),
                    describe(),
                    gib(avail)
                );
            }
            Ok(vec![Placement::Host; lens.len()])
        }
        Residency::Host | Residency::Device => {
            let (free, _) = budget
                .gpu
                .context("data.resident = \"device\": the GPU's free memory is unknown")?;
            if total > free {
                bail!(
                    "data.resident = \"device\": the training and validation splits need {} ({}) of GPU memory but {} is free; \
                     use data.resident = \"host\" or \"auto\"",
                    gib(total),
                    describe(),
                    gib(free)
                );
            }
            Ok(vec![Placement::Device; lens.len()])
        }
        Residency::Auto => {
            let mut device_left = budget.gpu.map(|(free, total)| {
                free.saturating_sub(
                    ((total as f64 * DEVICE_RESERVE_SHARE) as u64).max(DEVICE_RESERVE_MIN),
                )
            });
            let mut host_left = host.map_or(0, |h| (h as f64 * HOST_SHARE) as u64);
            Ok(sizes
                .iter()
                .map(|&bytes| match device_left {
                    Some(left) if bytes <= left => {
                        device_left = Some(left - bytes);
                        Placement::Device
                    }
                    _ if bytes <= host_left => {
                        host_left -= bytes;
                        Placement::Host
                    }
                    _ => Placement::Stream,
                })
                .collect())
        }
    }
}

/// A split decoded into memory.
pub struct ResidentSplit {
    /// Names and labels, as the streaming loader has them.
    pub split: Arc<SplitData>,
    /// Per band group `[N, C, S, S]` int16: the uint16 values' bits.
    groups: Vec<Tensor>,
    /// `[N, 19]` f32.
    labels: Tensor,
    /// Per band group: means and inverse standard deviations `[1, C, 1, 1]` on `compute`.
    stats: Vec<(Tensor, Tensor)>,
    /// Where batches are used.
    compute: Device,
    pub placement: Placement,
    pub load_s: f64,
    pub bytes: u64,
    /// The node's shared copy the tensors above are views of, when the ranks of a node share
    /// one (declared last: dropped after them).
    pub shared: Option<super::mapping::Mapping>,
}

/// Decodes band group `g` of patches `rows` of `split` on `pool`, a chunk of patches at a time,
/// handing each chunk (its first position and values, the uint16 values' bits) to `sink`.
pub(super) fn decode_group(
    split: &SplitData,
    rows: &[usize],
    g: usize,
    pool: &rayon::ThreadPool,
    mut sink: impl FnMut(usize, &[i16]) -> Result<()>,
) -> Result<()> {
    let per = BAND_GROUPS[g].values_per_patch();
    for start in (0..rows.len()).step_by(LOAD_CHUNK) {
        let count = LOAD_CHUNK.min(rows.len() - start);
        let mut values = vec![0i16; count * per];
        pool.install(|| {
            values
                .par_chunks_mut(per)
                .enumerate()
                .try_for_each(|(k, out)| -> Result<()> {
                    for (d, v) in out.iter_mut().zip(split.read_group(g, rows[start + k])?) {
                        *d = v as i16; // the bits of the uint16 value
                    }
                    Ok(())
                })
        })?;
        sink(start, &values)?;
    }
    Ok(())
}

/// The labels of patches `rows` as f32 0/1, row-major `[rows, 19]`.
pub(super) fn labels_of(split: &SplitData, rows: &[usize]) -> Vec<f32> {
    rows.iter()
        .flat_map(|&r| split.labels_of(r).iter().map(|&l| f32::from(l)))
        .collect()
}

/// The loader threads.
pub(super) fn loader_pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("starting the loader threads")
}

impl ResidentSplit {
    /// Decodes every patch of `split` with `threads` loader threads into `placement` memory.
    pub fn load(
        split: Arc<SplitData>,
        norm: &Normalizer,
        placement: Placement,
        compute: Device,
        threads: usize,
    ) -> Result<Self> {
        let rows: Vec<usize> = (0..split.len).collect();
        Self::load_rows(split, &rows, norm, placement, compute, threads)
    }

    /// Decodes patches `rows` of `split`; batches then index these rows by position (0 is
    /// `rows[0]`).
    pub fn load_rows(
        split: Arc<SplitData>,
        rows: &[usize],
        norm: &Normalizer,
        placement: Placement,
        compute: Device,
        threads: usize,
    ) -> Result<Self> {
        let started = Instant::now();
        let home = match placement {
            Placement::Device => compute,
            Placement::Host => Device::Cpu,
            Placement::Stream => bail!("a streamed split is not loaded into memory"),
        };
        let pinned = home == Device::Cpu && compute != Device::Cpu;
        let n = rows.len();
        let pool = loader_pool(threads)?;
        let what = format!("{} patches into memory", split.split);
        let progress = lossbench_core::progress::bar(n as u64 * BAND_GROUPS.len() as u64, &what);
        let mut groups = Vec::new();
        for (g, group) in BAND_GROUPS.iter().enumerate() {
            let (c, side) = (group.bands.len() as i64, group.side as i64);
            let mut whole = Tensor::empty([n as i64, c, side, side], (Kind::Int16, home));
            if pinned {
                whole = whole.pin_memory(compute);
            }
            decode_group(&split, rows, g, &pool, |start, values| {
                let count = values.len() / group.values_per_patch();
                let chunk = Tensor::from_slice(values).reshape([count as i64, c, side, side]);
                whole.narrow(0, start as i64, count as i64).copy_(&chunk);
                progress.inc(count as u64);
                Ok(())
            })?;
            groups.push(whole);
        }
        progress.finish_and_clear();
        let labels = Tensor::from_slice(&labels_of(&split, rows))
            .reshape([n as i64, NUM_CLASSES as i64])
            .to_device(home);
        let mut r = Self::assemble(split, groups, labels, norm, compute, placement);
        r.load_s = started.elapsed().as_secs_f64();
        tracing::info!(split = %r.split.split, patches = n, size = gib(r.bytes), seconds = format!("{:.1}", r.load_s), "{placement}");
        Ok(r)
    }

    /// A resident split of decoded tensors (its load time and sharing set by the caller).
    pub(super) fn assemble(
        split: Arc<SplitData>,
        groups: Vec<Tensor>,
        labels: Tensor,
        norm: &Normalizer,
        compute: Device,
        placement: Placement,
    ) -> ResidentSplit {
        let stats = (0..BAND_GROUPS.len())
            .map(|g| norm.tensors(g, compute))
            .collect();
        let bytes = labels.size()[0] as u64 * BYTES_PER_PATCH;
        let (load_s, shared) = (0.0, None);
        ResidentSplit {
            split,
            groups,
            labels,
            stats,
            compute,
            placement,
            load_s,
            bytes,
            shared,
        }
    }

    /// Rows `indices` (positions among the loaded rows) as a batch on the compute device:
    /// gathered, widened back to their uint16 values, z-scored as (v − mean) · (1 / std) in f32.
    pub fn batch(&self, indices: &[usize]) -> Batch {
        let home = self.labels.device();
        let index: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let index = Tensor::from_slice(&index).to_device(home);
        let to_compute = |t: Tensor| match (home, self.compute) {
            (a, b) if a == b => t,
            (_, device) => t
                .pin_memory(device)
                .to_device_(device, t.kind(), true, false),
        };
        let inputs: Vec<Tensor> = self
            .groups
            .iter()
            .zip(&self.stats)
            .map(|(group, (mean, inv_std))| {
                let raw = to_compute(group.index_select(0, &index));
                let values = raw
                    .to_kind(Kind::Int)
                    .bitwise_and(0xFFFF)
                    .to_kind(Kind::Float);
                (values - mean) * inv_std
            })
            .collect();
        let targets = to_compute(self.labels.index_select(0, &index));
        let [x10, x20, x60]: [Tensor; 3] = inputs
            .try_into()
            .unwrap_or_else(|_| unreachable!("three band groups"));
        Batch {
            inputs: [x10, x20, x60],
            targets,
            indices: indices.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Loading, Source};
    use crate::steps::epoch_order;
    use lossbench_core::layout::Split;
    use lossbench_core::store::Store;

    /// The resident loader's batches are the streaming loader's, bit for bit on the CPU.
    #[test]
    fn resident_batches_equal_streamed_ones_bitwise() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open(&data_prep::synth::synthetic_store(dir.path(), 40, 3).unwrap()).unwrap();
        let norm = Arc::new(Normalizer::from_store(&store.attrs).unwrap());
        let split = Arc::new(store.split(Split::Train).unwrap());
        let resident = std::rc::Rc::new(
            ResidentSplit::load(split.clone(), &norm, Placement::Device, Device::Cpu, 2).unwrap(),
        );
        assert_eq!(resident.bytes, split.len as u64 * BYTES_PER_PATCH);
        let lists: Vec<Vec<usize>> = epoch_order(split.len, 4, 2)
            .chunks(5)
            .map(<[usize]>::to_vec)
            .collect();
        let loading = Loading {
            norm,
            ahead: 2,
            threads: 2,
        };
        let mut streamed = Source::Stream(split)
            .batches(lists.clone(), &loading)
            .unwrap();
        let mut held = Source::Resident(resident).batches(lists, &loading).unwrap();
        while let Some(a) = streamed.next_batch() {
            let (a, b) = (a.unwrap(), held.next_batch().unwrap().unwrap());
            assert_eq!(a.indices, b.indices);
            for (x, y) in a.inputs.iter().zip(&b.inputs) {
                assert!(x.equal(y), "inputs differ");
            }
            assert!(a.targets.equal(&b.targets));
        }
        assert!(held.next_batch().is_none());
    }

    #[test]
    fn plans_place_what_fits_and_refuse_what_does_not() {
        let gib = 1u64 << 30;
        let patches = |bytes: u64| (bytes / BYTES_PER_PATCH) as usize;
        let cuda = Device::Cuda(0);
        // An H200-like GPU: 140 GiB free of 141; splits the size of the study's fit beside the reserve.
        let big = Budget {
            host_available: Some(500 * gib),
            gpu: Some((140 * gib, 141 * gib)),
        };
        let lens = [patches(40 * gib), patches(24 * gib)];
        assert_eq!(
            plan(Residency::Auto, cuda, &lens, big).unwrap(),
            [Placement::Device, Placement::Device]
        );
        // A 40 GiB GPU keeps 16 GiB for the model: the training split goes to the host, the
        // smaller validation split to the GPU; a small host streams both.
        let small = Budget {
            host_available: Some(100 * gib),
            gpu: Some((39 * gib, 40 * gib)),
        };
        let lens_small_val = [patches(40 * gib), patches(20 * gib)];
        assert_eq!(
            plan(Residency::Auto, cuda, &lens_small_val, small).unwrap(),
            [Placement::Host, Placement::Device]
        );
        let tiny = Budget {
            host_available: Some(10 * gib),
            gpu: None,
        };
        assert_eq!(
            plan(Residency::Auto, Device::Cpu, &lens, tiny).unwrap(),
            [Placement::Stream, Placement::Stream]
        );
        assert_eq!(
            plan(Residency::Off, cuda, &lens, big).unwrap(),
            [Placement::Stream, Placement::Stream]
        );
        let e = plan(Residency::Device, cuda, &lens, small)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "need 64.00 GiB (40.00 GiB + 24.00 GiB) of GPU memory but 39.00 GiB is free"
            ),
            "{e}"
        );
        let e = plan(Residency::Host, Device::Cpu, &lens, tiny)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("of host memory but 10.00 GiB is available"),
            "{e}"
        );
        assert_eq!(
            plan(Residency::Host, cuda, &lens, big).unwrap(),
            [Placement::Host, Placement::Host]
        );
    }
}
