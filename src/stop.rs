//! Stopping a run early and resumably: SIGTERM (a preemption, `scancel`) or SIGUSR1 (SLURM's
//! warning before a time limit, `--signal=B:USR1@300`) asks the trainer to checkpoint at the
//! next step boundary and exit with [`EXIT_REQUEUE`]; `--stop-after-steps N` asks the same
//! after N optimizer steps of this attempt, deterministically, for tests and checks. The ranks
//! agree on the request at every step, evaluated batch and epoch boundary, so a signal that
//! reaches one rank only stops them all at the same point.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::Result;
use signal_hook::consts::{SIGTERM, SIGUSR1};

/// Exit code of a trainer stopped by SIGTERM or SIGUSR1 after checkpointing: the job should be
/// requeued and resumed (`--resume auto`). 75 is EX_TEMPFAIL, "try again later".
pub const EXIT_REQUEUE: u8 = 75;

/// When the first stop signal arrived, nanoseconds of CLOCK_MONOTONIC (0: none yet).
static ARRIVED_NS: AtomicU64 = AtomicU64::new(0);

fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime is async-signal-safe and writes only `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// A request to stop, by signal, step count or epoch.
pub struct Stop {
    /// The signal received (0: none).
    signal: Arc<AtomicUsize>,
    after_steps: Option<u64>,
    /// Stop after this epoch's checkpoint, before the next epoch or the test (a tuning trial's
    /// rung, docs/tuning.md).
    after_epoch: Option<u32>,
}

impl Stop {
    /// Catches SIGTERM and SIGUSR1 from now on (their default action would kill the process).
    pub fn install(after_steps: Option<u64>, after_epoch: Option<u32>) -> Result<Stop> {
        let signal = Arc::new(AtomicUsize::new(0));
        for s in [SIGTERM, SIGUSR1] {
            signal_hook::flag::register_usize(s, signal.clone(), s as usize)?;
            // SAFETY: the action only reads the clock and stores to an atomic (signal-safe).
            unsafe {
                signal_hook::low_level::register(s, || {
                    let _ = ARRIVED_NS.compare_exchange(
                        0,
                        monotonic_ns(),
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                })?;
            }
        }
        Ok(Stop {
            signal,
            after_steps,
            after_epoch,
        })
    }

    /// Whether this process is asked to stop, having taken `steps_taken` optimizer steps.
    pub fn requested(&self, steps_taken: u64) -> bool {
        self.signal.load(Ordering::SeqCst) != 0
            || self.after_steps.is_some_and(|n| steps_taken >= n)
    }

    /// Whether training stops once epoch `epoch` is checkpointed (the same on every rank).
    pub fn after_epoch(&self, epoch: u32) -> bool {
        self.after_epoch.is_some_and(|n| epoch >= n)
    }

    /// Why, as `run.json` records it: the signal and how long stopping took, or the step count.
    pub fn reason(&self) -> String {
        match self.signal.load(Ordering::SeqCst) as i32 {
            0 => match (self.after_steps, self.after_epoch) {
                (Some(n), _) => format!("--stop-after-steps {n}"),
                (None, Some(n)) => format!("--stop-after-epoch {n}"),
                (None, None) => "another rank was signalled".into(),
            },
            s => {
                let name = if s == SIGTERM { "SIGTERM" } else { "SIGUSR1" };
                let arrived = ARRIVED_NS.load(Ordering::SeqCst);
                let took = monotonic_ns().saturating_sub(arrived) as f64 / 1e9;
                format!("{name}; checkpointed {took:.1} s after it arrived")
            }
        }
    }
}
