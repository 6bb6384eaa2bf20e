//! Data parallelism: the ranks of one run and the sums they share.
//!
//! Built with the `mpi` cargo feature, a trainer started by `mpirun` or `srun` joins MPI's
//! world; without it (or when started alone) the world is this one process and every sum is
//! the identity. The training loop is written once against [`Dist`] and is the same code in
//! both cases.

use anyhow::{Result, bail};

/// This process's place among the ranks of one run.
pub struct Dist {
    pub rank: usize,
    pub world_size: usize,
    /// Rank among the processes on this node (one GPU each).
    pub local_rank: usize,
    pub local_size: usize,
    #[cfg(feature = "mpi")]
    mpi: Option<mpi_world::World>,
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
            #[cfg(feature = "mpi")]
            mpi: None,
        }
    }

    /// Joins the launcher's world (MPI when built with the `mpi` feature). Refuses to run as one
    /// of several independent copies: a launcher that started N tasks that do not see each other
    /// (an MPI the trainer was not built for, or `srun --mpi` with the wrong plugin) would
    /// otherwise train N identical runs that overwrite each other's files.
    pub fn init() -> Result<Self> {
        #[cfg(feature = "mpi")]
        let dist = mpi_world::World::init()?;
        #[cfg(not(feature = "mpi"))]
        let dist = Dist::single();
        if let Some((tasks, var)) = launcher_tasks()
            && tasks != dist.world_size
        {
            let hint = if cfg!(feature = "mpi") {
                "check the launcher's MPI plugin (with OpenMPI: srun --mpi=pmix)"
            } else {
                "this trainer was built without the `mpi` feature (cargo build --features mpi)"
            };
            bail!("{var}={tasks} but the MPI world has {} process(es): {hint}", dist.world_size);
        }
        Ok(dist)
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
    pub fn sum_buffers_overlapped(&self, buffers: &mut [Vec<f32>], mut fill: impl FnMut(usize, &mut Vec<f32>)) {
        #[cfg(feature = "mpi")]
        if let Some(w) = &self.mpi {
            w.sum_overlapped(buffers, fill);
            return;
        }
        for (i, b) in buffers.iter_mut().enumerate() {
            fill(i, b);
        }
    }

    /// Waits until every rank reaches this point.
    pub fn barrier(&self) {
        #[cfg(feature = "mpi")]
        if let Some(w) = &self.mpi {
            w.barrier();
        }
    }
}

#[cfg(feature = "mpi")]
mod mpi_world {
    use std::cell::RefCell;

    use anyhow::{Context, Result};
    use mpi::collective::SystemOperation;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    use super::Dist;

    /// MPI state; dropping it finalizes MPI.
    pub struct World {
        world: SimpleCommunicator,
        /// Receive buffers of [`World::sum_overlapped`], kept between steps: the gradients are
        /// tens of MB, reduced every step.
        received: RefCell<Vec<Vec<f32>>>,
        _universe: Universe,
    }

    impl World {
        pub fn init() -> Result<Dist> {
            let universe = mpi::initialize().context("MPI_Init failed (or MPI was already initialised)")?;
            let world = universe.world();
            // Ranks that share memory share a node: the local rank picks the GPU and the share
            // of the cores.
            let node = world.split_shared(world.rank());
            let dist = Dist {
                rank: world.rank() as usize,
                world_size: world.size() as usize,
                local_rank: node.rank() as usize,
                local_size: node.size() as usize,
                mpi: None,
            };
            Ok(Dist { mpi: Some(World { world, received: RefCell::new(Vec::new()), _universe: universe }), ..dist })
        }

        pub fn sum<T: Equivalence + Copy + Default>(&self, values: &mut [T]) {
            let send = values.to_vec();
            self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
        }

        pub fn sum_overlapped(&self, buffers: &mut [Vec<f32>], mut fill: impl FnMut(usize, &mut Vec<f32>)) {
            let mut sums = self.received.borrow_mut();
            sums.resize_with(buffers.len(), Vec::new);
            mpi::request::scope(|scope| {
                let mut pending = Vec::with_capacity(buffers.len());
                for (i, (send, sum)) in buffers.iter_mut().zip(sums.iter_mut()).enumerate() {
                    fill(i, send);
                    sum.resize(send.len(), 0.0);
                    let send: &Vec<f32> = send;
                    pending.push(self.world.immediate_all_reduce_into(scope, &send[..], &mut sum[..], SystemOperation::sum()));
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

        pub fn barrier(&self) {
            self.world.barrier();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_process_world_sums_to_itself() {
        let d = Dist::single();
        assert!(d.is_root());
        let mut v = vec![1.5f64, -2.0];
        d.sum_f64(&mut v);
        assert_eq!(v, [1.5, -2.0]);
        let mut buffers = vec![vec![0.0f32; 3], vec![0.0; 2]];
        d.sum_buffers_overlapped(&mut buffers, |i, b| b.iter_mut().for_each(|x| *x = i as f32 + 1.0));
        assert_eq!(buffers, [vec![1.0; 3], vec![2.0; 2]]);
        d.barrier();
    }
}
