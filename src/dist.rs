//! Data parallelism: the ranks of one run and the sums they share, including the gradients
//! ([`GradientBuckets`]) and BatchNorm statistics ([`Dist::sum_tensors`]) of each step.
//!
//! Built with the `mpi` cargo feature, a trainer started by `mpirun` or `srun` joins MPI's
//! world; without it (or when started alone) the world is this one process and every sum is
//! the identity. The training loop is written once against [`Dist`] and is the same code in
//! both cases.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use tch::{Device, Tensor};

/// This process's place among the ranks of one run.
pub struct Dist {
    pub rank: usize,
    pub world_size: usize,
    /// Rank among the processes on this node (one GPU each).
    pub local_rank: usize,
    pub local_size: usize,
    /// The exit code of a failure ([`Dist::agree`] tells every rank).
    classify: Classify,
    #[cfg(feature = "mpi")]
    mpi: Option<mpi_world::World>,
}

/// An error's exit code (the binary's table: the trainer's is `crate::exit`).
pub type Classify = fn(&anyhow::Error) -> u8;

/// Another rank failed at a point where the ranks agree on their outcome; this one stops with
/// it, with the same exit code.
#[derive(Debug, thiserror::Error)]
#[error("rank {rank} failed: {message} (every rank stops with exit code {code})")]
pub struct PeerFailed {
    pub rank: usize,
    pub code: u8,
    /// The failing rank's error (its first [`PEER_MESSAGE_BYTES`] bytes).
    pub message: String,
}

/// Bytes of a failing rank's error message the other ranks learn ([`Dist::agree`]).
pub const PEER_MESSAGE_BYTES: usize = 1024;

/// Set once a failure was agreed between the ranks ([`Dist::agree`]): every rank knows it and
/// leaves, so MPI may end normally. A failure that was not agreed may have left other ranks in
/// a collective call: [`abort`] ends them all.
static FAILURE_AGREED: AtomicBool = AtomicBool::new(false);

/// Whether the ranks agreed on the failure this process is ending with.
pub fn failure_agreed() -> bool {
    FAILURE_AGREED.load(Ordering::SeqCst)
}

/// Ends MPI normally at the end of the process (every rank calls it): after success, or after
/// a failure every rank knows of, once every rank has said what it had to (a rank that left
/// first would make the launcher end the others, rank 0 perhaps before it recorded the failure
/// or printed its error). Without MPI, nothing.
pub fn finalize() {
    #[cfg(feature = "mpi")]
    mpi_world::finalize();
}

/// Ends every rank of the job at once with `code` (`MPI_Abort`): for a failure on this rank
/// the others may not know of, which would otherwise leave them waiting in a collective call
/// until the job's time limit. Without MPI (or a world of one), exits with `code`.
pub fn abort(code: u8) -> ! {
    #[cfg(feature = "mpi")]
    mpi_world::abort(code);
    #[allow(unreachable_code)]
    std::process::exit(i32::from(code))
}

fn unclassified(_: &anyhow::Error) -> u8 {
    1
}

/// A launcher's task count from the environment (srun's step size, or mpirun's world size).
fn launcher_tasks() -> Option<(usize, &'static str)> {
    for var in ["SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"] {
        if let Some(n) = std::env::var(var).ok().and_then(|v| v.parse().ok()) {
            return Some((n, var));
        }
    }
    None
}

impl Dist {
    /// The world of a single process.
    pub fn single() -> Self {
        Dist {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_size: 1,
            classify: unclassified,
            #[cfg(feature = "mpi")]
            mpi: None,
        }
    }

    /// Joins the launcher's world (MPI when built with the `mpi` feature). Refuses to run as one
    /// of several independent copies: a launcher that started N tasks that do not see each other
    /// (an MPI the trainer was not built for, or `srun --mpi` with the wrong plugin) would
    /// otherwise train N identical runs that overwrite each other's files.
    pub fn init(classify: Classify) -> Result<Self> {
        #[cfg(feature = "mpi")]
        let dist = Dist {
            classify,
            ..mpi_world::World::init()?
        };
        #[cfg(not(feature = "mpi"))]
        let dist = Dist {
            classify,
            ..Dist::single()
        };
        if let Some((tasks, var)) = launcher_tasks()
            && tasks != dist.world_size
        {
            let hint = if cfg!(feature = "mpi") {
                "check the launcher's MPI plugin (with OpenMPI: srun --mpi=pmix)"
            } else {
                "this trainer was built without the `mpi` feature (cargo build --features mpi)"
            };
            bail!(
                "{var}={tasks} but the MPI world has {} process(es): {hint}",
                dist.world_size
            );
        }
        Ok(dist)
    }

    /// Sets libtorch's CPU compute threads of this rank: `configured` (`run.threads`), or with 0
    /// the node's cores shared by its ranks (all of them for a single rank).
    pub fn set_compute_threads(&self, configured: usize) {
        let threads = match configured {
            0 if self.local_size > 1 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .div_ceil(self.local_size),
            n => n,
        };
        if threads > 0 {
            tch::set_num_threads(threads as i32);
        }
    }

    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Sums `values` element-wise over all ranks, in place.
    pub fn sum_f64(&self, values: &mut [f64]) {
        #[cfg(feature = "mpi")]
        if let Some(w) = &self.mpi {
            w.sum(values);
        }
        let _ = values;
    }

    pub fn sum_u64(&self, values: &mut [u64]) {
        #[cfg(feature = "mpi")]
        if let Some(w) = &self.mpi {
            w.sum(values);
        }
        let _ = values;
    }

    pub fn sum_f32(&self, values: &mut [f32]) {
        #[cfg(feature = "mpi")]
        if let Some(w) = &self.mpi {
            w.sum(values);
        }
        let _ = values;
    }

    /// Sums several large buffers over all ranks. `fill(i, buffer)` writes buffer `i` (a copy
    /// from the device); each buffer's reduction starts as soon as it is filled, so it runs
    /// while the next buffer is copied. On return every buffer holds the sums.
    pub fn sum_buffers_overlapped(
        &self,
        buffers: &mut [Vec<f32>],
        mut fill: impl FnMut(usize, &mut Vec<f32>),
    ) {
        #[cfg(feature = "mpi")]
        if let Some(w) = &self.mpi {
            w.sum_overlapped(buffers, fill);
            return;
        }
        for (i, b) in buffers.iter_mut().enumerate() {
            fill(i, b);
        }
    }

    /// Every rank's outcome of a part that may fail on some ranks only (rank 0's writes, each
    /// rank's loading): on every rank `Ok` if all succeeded, else the error: its own, or
    /// [`PeerFailed`] naming the lowest failing rank and its exit code. Every rank must call it
    /// at the same point; after a failure, every rank knows it ([`failure_agreed`]).
    pub fn agree<T>(&self, result: Result<T>) -> Result<T> {
        let code = match &result {
            Ok(_) => 0,
            Err(e) => (self.classify)(e).max(1),
        };
        let Some((rank, code)) = self.first_failure(code) else {
            return result;
        };
        FAILURE_AGREED.store(true, Ordering::SeqCst);
        let mine = match &result {
            Err(e) if self.rank == rank => format!("{e:#}"),
            _ => String::new(),
        };
        let message = self.text_of(rank, &mine);
        result.and_then(|_| {
            Err(PeerFailed {
                rank,
                code,
                message,
            }
            .into())
        })
    }

    /// A result every rank reaches alike at the same point, from values they share (the summed
    /// loss of a step): a failure is agreed without a collective, so that rank 0 records it
    /// and no rank aborts the others before it has.
    pub fn together<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            FAILURE_AGREED.store(true, Ordering::SeqCst);
        }
        result
    }

    /// Rank `from`'s `text` (up to [`PEER_MESSAGE_BYTES`] bytes), on every rank.
    fn text_of(&self, from: usize, text: &str) -> String {
        let mut bytes = vec![0u64; PEER_MESSAGE_BYTES];
        if self.rank == from {
            for (b, &t) in bytes.iter_mut().zip(text.as_bytes()) {
                *b = u64::from(t);
            }
        }
        self.sum_u64(&mut bytes);
        let bytes: Vec<u8> = bytes
            .iter()
            .take_while(|&&b| b != 0)
            .map(|&b| b as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The lowest rank passing a non-zero `code`, and its code (every rank must call this).
    fn first_failure(&self, code: u8) -> Option<(usize, u8)> {
        let mut codes = vec![0u64; self.world_size];
        codes[self.rank] = u64::from(code);
        self.sum_u64(&mut codes);
        let rank = codes.iter().position(|&c| c != 0)?;
        Some((rank, codes[rank] as u8))
    }

    /// Whether any rank passes `true`.
    pub fn any(&self, flag: bool) -> bool {
        let mut v = [u64::from(flag)];
        self.sum_u64(&mut v);
        v[0] > 0
    }

    /// The value of this node's first rank (local rank 0), on every rank of the node.
    pub fn node_broadcast_u64(&self, value: u64) -> u64 {
        #[cfg(feature = "mpi")]
        if let Some(w) = &self.mpi {
            return w.node_broadcast(value);
        }
        value
    }

    /// Waits until every rank of this node reaches this point.
    pub fn node_barrier(&self) {
        #[cfg(feature = "mpi")]
        if let Some(w) = &self.mpi {
            w.node_barrier();
        }
    }

    /// Replaces the floating-point tensors among `tensors` by their sums over ranks (one
    /// all-reduce of their values flattened on the host); other tensors are left alone.
    pub fn sum_tensors(&self, tensors: &mut [Tensor]) {
        let floats: Vec<usize> = (0..tensors.len())
            .filter(|&i| tensors[i].is_floating_point())
            .collect();
        let mut flat: Vec<f32> = floats
            .iter()
            .flat_map(|&i| {
                Vec::<f32>::try_from(
                    tensors[i]
                        .to_device(Device::Cpu)
                        .to_kind(tch::Kind::Float)
                        .reshape([-1]),
                )
                .expect("a float tensor converted to f32")
            })
            .collect();
        self.sum_f32(&mut flat);
        let mut offset = 0;
        tch::no_grad(|| {
            for &i in &floats {
                let t = &mut tensors[i];
                let n = t.numel();
                let sums = Tensor::from_slice(&flat[offset..offset + n])
                    .reshape(t.size())
                    .to_device(t.device())
                    .to_kind(t.kind());
                t.copy_(&sums);
                offset += n;
            }
        });
    }
}

/// Gradient buffers summed over ranks hold at most this many floats (64 MiB): few calls, each
/// large enough to run at the network's bandwidth.
const BUCKET_FLOATS: i64 = 16 << 20;

/// Sums the gradients of a fixed list of parameters over ranks, in a few large flat buffers;
/// each buffer's sum runs while the next one is copied from the device. The buffers are kept
/// between steps.
pub struct GradientBuckets {
    /// Parameter indices per buffer, in order.
    buckets: Vec<Vec<usize>>,
    buffers: Vec<Vec<f32>>,
}

impl GradientBuckets {
    pub fn new(params: &[Tensor]) -> Self {
        let mut buckets: Vec<Vec<usize>> = vec![Vec::new()];
        let mut filled = 0;
        for (i, p) in params.iter().enumerate() {
            let n = p.numel() as i64;
            if filled + n > BUCKET_FLOATS && filled > 0 {
                buckets.push(Vec::new());
                filled = 0;
            }
            buckets.last_mut().expect("one bucket at least").push(i);
            filled += n;
        }
        let buffers = vec![Vec::new(); buckets.len()];
        GradientBuckets { buckets, buffers }
    }

    /// Replaces every parameter's gradient by its sum over ranks. A rank that trained nothing
    /// in this step (a short last step of an epoch, when it is the first step of a resumed
    /// attempt) has no gradients yet: it contributes zeros.
    pub fn sum(&mut self, dist: &Dist, params: &[Tensor]) {
        let missing: Vec<Tensor> = params
            .iter()
            .filter(|p| !p.grad().defined())
            .map(|p| p.sum(tch::Kind::Float) * 0.0)
            .collect();
        if let Some(zero) = missing.into_iter().reduce(|a, b| a + b) {
            zero.backward();
        }
        let grad = |p: usize| {
            let g = params[p].grad();
            assert!(g.defined(), "parameter {p} has no gradient");
            g
        };
        let buckets = &self.buckets;
        dist.sum_buffers_overlapped(&mut self.buffers, |i, buffer| {
            let flat = Tensor::cat(
                &buckets[i]
                    .iter()
                    .map(|&p| grad(p).reshape([-1]))
                    .collect::<Vec<_>>(),
                0,
            );
            let flat = flat.to_device(Device::Cpu);
            let n = flat.numel();
            buffer.resize(n, 0.0);
            flat.copy_data(buffer, n);
        });
        tch::no_grad(|| {
            for (bucket, sums) in buckets.iter().zip(&self.buffers) {
                let flat = Tensor::from_slice(sums).to_device(params[bucket[0]].device());
                let mut offset = 0;
                for &p in bucket {
                    let mut g = grad(p);
                    let n = g.numel() as i64;
                    g.copy_(&flat.narrow(0, offset, n).view_as(&g));
                    offset += n;
                }
            }
        });
    }
}

#[cfg(feature = "mpi")]
mod mpi_world {
    use std::cell::RefCell;
    use std::sync::Mutex;

    use anyhow::{Context, Result};
    use mpi::collective::SystemOperation;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    use super::Dist;

    /// MPI's environment: initialised once, finalised by [`finalize`] at the end of the
    /// process, never by a drop (a rank that fails alone must not finalise while the others
    /// wait for it: it aborts them instead).
    static UNIVERSE: Mutex<Option<Universe>> = Mutex::new(None);

    pub fn finalize() {
        let universe = UNIVERSE.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(u) = &universe {
            u.world().barrier();
        }
        drop(universe);
    }

    pub fn abort(code: u8) {
        if mpi::environment::is_initialized() && !mpi::environment::is_finalized() {
            SimpleCommunicator::world().abort(i32::from(code));
        }
    }

    /// The communicators of this process (freed when dropped, before [`finalize`]).
    pub struct World {
        world: SimpleCommunicator,
        /// The ranks of this node (sharing memory).
        node: SimpleCommunicator,
        /// Receive buffers of [`World::sum_overlapped`], kept between steps: the gradients are
        /// tens of MB, reduced every step.
        received: RefCell<Vec<Vec<f32>>>,
    }

    impl World {
        pub fn init() -> Result<Dist> {
            let universe =
                mpi::initialize().context("MPI_Init failed (or MPI was already initialised)")?;
            let world = universe.world();
            // Ranks that share memory share a node: the local rank picks the GPU and the share
            // of the cores.
            let node = world.split_shared(world.rank());
            let dist = Dist {
                rank: world.rank() as usize,
                world_size: world.size() as usize,
                local_rank: node.rank() as usize,
                local_size: node.size() as usize,
                ..Dist::single()
            };
            *UNIVERSE.lock().unwrap_or_else(|e| e.into_inner()) = Some(universe);
            Ok(Dist {
                mpi: Some(World {
                    world,
                    node,
                    received: RefCell::new(Vec::new()),
                }),
                ..dist
            })
        }

        pub fn sum<T: Equivalence + Copy + Default>(&self, values: &mut [T]) {
            let send = values.to_vec();
            self.world
                .all_reduce_into(&send[..], values, SystemOperation::sum());
        }

        pub fn sum_overlapped(
            &self,
            buffers: &mut [Vec<f32>],
            mut fill: impl FnMut(usize, &mut Vec<f32>),
        ) {
            let mut sums = self.received.borrow_mut();
            sums.resize_with(buffers.len(), Vec::new);
            mpi::request::scope(|scope| {
                let mut pending = Vec::with_capacity(buffers.len());
                for (i, (send, sum)) in buffers.iter_mut().zip(sums.iter_mut()).enumerate() {
                    fill(i, send);
                    sum.resize(send.len(), 0.0);
                    let send: &Vec<f32> = send;
                    pending.push(self.world.immediate_all_reduce_into(
                        scope,
                        &send[..],
                        &mut sum[..],
                        SystemOperation::sum(),
                    ));
                }
                for request in pending {
                    request.wait();
                }
            });
            // The sums become the buffers; the sent buffers are the next call's receive buffers.
            for (b, s) in buffers.iter_mut().zip(sums.iter_mut()) {
                std::mem::swap(b, s);
            }
        }

        pub fn node_broadcast(&self, mut value: u64) -> u64 {
            self.node.process_at_rank(0).broadcast_into(&mut value);
            value
        }

        pub fn node_barrier(&self) {
            self.node.barrier();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_at_most_their_size_in_parameter_order() {
        let t = |n: i64| Tensor::zeros([n], (tch::Kind::Float, Device::Cpu));
        let params = [
            t(10),
            t(BUCKET_FLOATS - 5),
            t(3),
            t(BUCKET_FLOATS + 1),
            t(1),
        ];
        assert_eq!(
            GradientBuckets::new(&params).buckets,
            [vec![0], vec![1, 2], vec![3], vec![4]]
        );
    }

    #[test]
    fn a_single_process_world_sums_to_itself() {
        let d = Dist::single();
        assert!(d.is_root());
        let mut v = vec![1.5f64, -2.0];
        d.sum_f64(&mut v);
        assert_eq!(v, [1.5, -2.0]);
        let mut buffers = vec![vec![0.0f32; 3], vec![0.0; 2]];
        d.sum_buffers_overlapped(&mut buffers, |i, b| {
            b.iter_mut().for_each(|x| *x = i as f32 + 1.0)
        });
        assert_eq!(buffers, [vec![1.0; 3], vec![2.0; 2]]);
    }
}
