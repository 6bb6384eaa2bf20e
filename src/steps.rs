//! An epoch cut into optimizer steps and micro-batches: the epoch's seeded order of training
//! patches, `batch_size` patches per step, each step cut in order into `world_size ×
//! accumulate` micro-batches of which rank r trains `r·accumulate .. (r+1)·accumulate`
//! (docs/training.md, "Data parallelism"). The plan depends on (seed, epoch, batch size,
//! micro-batches per step) only, so every rank and every resumed attempt makes the same one.

use std::ops::Range;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// The order of a split's patches in `epoch`: a permutation that depends on (seed, epoch) only.
pub fn epoch_order(len: usize, seed: u64, epoch: u32) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64);
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rng);
    order
}

/// BatchNorm in training mode needs two patches in a batch: the variance of one value is
/// undefined (libtorch would put NaN into the running variance, where PyTorch raises).
pub const MIN_MICRO_BATCH: usize = 2;

/// An epoch's steps, each a list of micro-batches (patch indices), and which of them this rank
/// trains.
pub struct EpochPlan {
    pub steps: Vec<Vec<Vec<usize>>>,
    rank: usize,
    accumulate: usize,
}

impl EpochPlan {
    /// The plan of `epoch` for a training split of `len` patches.
    pub fn new(
        len: usize,
        seed: u64,
        epoch: u32,
        batch_size: usize,
        (rank, world): (usize, usize),
        accumulate: usize,
    ) -> EpochPlan {
        let order = epoch_order(len, seed, epoch);
        let steps = step_ranges(order.len(), batch_size)
            .into_iter()
            .map(|r| micro_batches(&order[r], world * accumulate))
            .collect();
        EpochPlan {
            steps,
            rank,
            accumulate,
        }
    }

    /// This rank's micro-batches of a step, as indices among the step's.
    pub fn mine(&self, micro: &[Vec<usize>]) -> Range<usize> {
        let k = self.accumulate;
        (self.rank * k).min(micro.len())..((self.rank + 1) * k).min(micro.len())
    }

    /// This rank's micro-batches of the steps from `first` on, in order: what its loader reads.
    pub fn my_batches(&self, first: usize) -> Vec<Vec<usize>> {
        self.steps[first..]
            .iter()
            .flat_map(|m| m[self.mine(m)].iter().cloned())
            .collect()
    }
}

/// Optimizer steps per epoch of a training split of `len` patches.
pub fn steps_per_epoch(len: usize, batch_size: usize) -> u64 {
    step_ranges(len, batch_size).len() as u64
}

/// The ranges of an epoch's order that make its steps: `batch_size` patches each; a last step
/// shorter than [`MIN_MICRO_BATCH`] joins the one before, so that no patch is left out.
fn step_ranges(len: usize, batch_size: usize) -> Vec<Range<usize>> {
    let mut ranges: Vec<Range<usize>> = (0..len)
        .step_by(batch_size)
        .map(|s| s..(s + batch_size).min(len))
        .collect();
    if ranges.len() > 1 && ranges.last().is_some_and(|r| r.len() < MIN_MICRO_BATCH) {
        let last = ranges.pop().expect("two ranges");
        ranges.last_mut().expect("one range").end = last.end;
    }
    ranges
}

/// Splits one step's patches, in order, into at most `k` micro-batches whose sizes differ by
/// at most one, each of at least [`MIN_MICRO_BATCH`] patches (fewer micro-batches when the step
/// is too short for `k`).
fn micro_batches(step: &[usize], k: usize) -> Vec<Vec<usize>> {
    let count = k.min(step.len() / MIN_MICRO_BATCH).max(1);
    let (base, extra) = (step.len() / count, step.len() % count);
    let mut rest = step;
    (0..count)
        .map(|i| {
            let (head, tail) = rest.split_at(base + usize::from(i < extra));
            rest = tail;
            head.to_vec()
        })
        .collect()
}

/// A well-mixed seed for torch's generator from several counters (splitmix64 steps): dropout
/// of a micro-batch derives from (seed, epoch, step, micro-batch).
pub fn stream_seed(parts: &[u64]) -> i64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for &p in parts {
        h = lossbench_core::splitmix::mix(h.wrapping_add(p));
    }
    (h >> 1) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_orders_are_seeded_permutations() {
        let a = epoch_order(100, 7, 3);
        assert_eq!(a, epoch_order(100, 7, 3));
        assert_ne!(a, epoch_order(100, 7, 4));
        assert_ne!(a, epoch_order(100, 8, 3));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn micro_batches_cover_the_step_in_order_with_two_patches_at_least() {
        let step: Vec<usize> = (0..10).collect();
        assert_eq!(
            micro_batches(&step, 3),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]]
        );
        assert_eq!(
            micro_batches(&step[..5], 4),
            vec![vec![0, 1, 2], vec![3, 4]]
        );
        assert_eq!(micro_batches(&step[..3], 2), vec![vec![0, 1, 2]]);
        assert_eq!(micro_batches(&step[..1], 2), vec![vec![0]]);
        for len in 2..60 {
            for k in 1..9 {
                let patches: Vec<usize> = step.iter().copied().cycle().take(len).collect();
                let m = micro_batches(&patches, k);
                assert!(
                    m.len() <= k && m.iter().all(|b| b.len() >= MIN_MICRO_BATCH),
                    "{len} patches, k = {k}: {m:?}"
                );
                assert_eq!(m.iter().map(Vec::len).sum::<usize>(), len);
            }
        }
    }

    #[test]
    fn a_last_step_of_one_patch_joins_the_step_before() {
        assert_eq!(step_ranges(17, 8), vec![0..8, 8..17]);
        assert_eq!(step_ranges(18, 8), vec![0..8, 8..16, 16..18]);
        assert_eq!(step_ranges(16, 8), vec![0..8, 8..16]);
        assert_eq!(step_ranges(1, 8), vec![0..1]);
    }

    #[test]
    fn ranks_share_each_step_and_read_their_own_batches() {
        let plans: Vec<EpochPlan> = (0..2)
            .map(|r| EpochPlan::new(20, 3, 1, 8, (r, 2), 1))
            .collect();
        assert_eq!(plans[0].steps, plans[1].steps);
        let mine: Vec<Vec<Vec<usize>>> = plans.iter().map(|p| p.my_batches(0)).collect();
        let mut all: Vec<usize> = mine.concat().concat();
        all.sort_unstable();
        assert_eq!(all, (0..20).collect::<Vec<_>>());
        assert_eq!(mine[0].len(), 3);
    }

    #[test]
    fn stream_seeds_differ_per_counter() {
        let a = stream_seed(&[1, 2, 3, 0]);
        assert_eq!(a, stream_seed(&[1, 2, 3, 0]));
        assert!(a >= 0);
        for other in [[1, 2, 3, 1], [1, 2, 4, 0], [1, 3, 3, 0], [2, 2, 3, 0]] {
            assert_ne!(a, stream_seed(&other));
        }
    }
}
