//! Augmentation (`[train.augment]`, lossbench_core::config::recipe::Augment): each patch of a training batch is
//! flipped and rotated by a transform drawn from (seed, epoch, patch) alone, the same for its
//! three band groups, each at its native resolution (the groups are square). A resumed run and
//! every rank therefore draw the same transforms.

use tch::Tensor;

use crate::steps::stream_seed;
use lossbench_core::config::recipe::Augment;

/// A patch's transform: rotation by `rotate` × 90° (anticlockwise), then the flips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Transform {
    rotate: i64,
    flip_h: bool,
    flip_v: bool,
}

/// Salt of the augmentation's draws (dropout uses the same counters without it).
const SALT: u64 = 0x4155_4745;

fn transform(cfg: Augment, seed: u64, epoch: u32, patch: usize) -> Transform {
    let bits = stream_seed(&[SALT, seed, u64::from(epoch), patch as u64]) as u64;
    Transform {
        rotate: if cfg.rotations { (bits & 3) as i64 } else { 0 },
        flip_h: cfg.flips && bits & 4 != 0,
        flip_v: cfg.flips && bits & 8 != 0,
    }
}

fn apply_one(x: &Tensor, t: Transform) -> Tensor {
    let mut y = if t.rotate > 0 {
        x.rot90(t.rotate, [2, 3])
    } else {
        x.shallow_clone()
    };
    if t.flip_h {
        y = y.flip([3]);
    }
    if t.flip_v {
        y = y.flip([2]);
    }
    y
}

/// Transforms the patches of a batch (rows `indices` of the split) in place of `inputs`.
pub fn apply(inputs: &mut [Tensor; 3], indices: &[usize], cfg: Augment, seed: u64, epoch: u32) {
    if !cfg.flips && !cfg.rotations {
        return;
    }
    let mut groups: std::collections::BTreeMap<Transform, Vec<i64>> = Default::default();
    for (row, &patch) in indices.iter().enumerate() {
        groups
            .entry(transform(cfg, seed, epoch, patch))
            .or_default()
            .push(row as i64);
    }
    let identity = Transform {
        rotate: 0,
        flip_h: false,
        flip_v: false,
    };
    tch::no_grad(|| {
        for (t, rows) in groups.into_iter().filter(|(t, _)| *t != identity) {
            for x in inputs.iter_mut() {
                let rows = Tensor::from_slice(&rows).to_device(x.device());
                let moved = apply_one(&x.index_select(0, &rows), t);
                *x = x.index_copy(0, &rows, &moved);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn transforms_depend_on_seed_epoch_and_patch_and_keep_groups_aligned() {
        let cfg = Augment {
            flips: true,
            rotations: true,
        };
        let a = transform(cfg, 1, 2, 3);
        assert_eq!(a, transform(cfg, 1, 2, 3));
        let drawn: std::collections::BTreeSet<Transform> =
            (0..200).map(|p| transform(cfg, 1, 2, p)).collect();
        assert_eq!(drawn.len(), 16, "every rotation and flip pair is drawn");
        // A patch's groups move together: a corner pixel goes to the same corner in each.
        let o = (Kind::Float, Device::Cpu);
        let marked = |side: i64| {
            let x = Tensor::zeros([3, 1, side, side], o);
            let _ = x.get(0).get(0).get(0).get(0).fill_(1.0);
            let _ = x.get(1).get(0).get(0).get(0).fill_(1.0);
            let _ = x.get(2).get(0).get(0).get(0).fill_(1.0);
            x
        };
        let mut inputs = [marked(120), marked(60), marked(20)];
        apply(&mut inputs, &[5, 6, 7], cfg, 9, 1);
        for row in 0..3 {
            let corner = |x: &Tensor| {
                let s = x.size()[3] - 1;
                [(0, 0), (0, s), (s, 0), (s, s)]
                    .iter()
                    .position(|&(i, j)| x.double_value(&[row, 0, i, j]) == 1.0)
            };
            let c: Vec<_> = inputs.iter().map(corner).collect();
            assert!(
                c[0].is_some() && c.iter().all(|k| *k == c[0]),
                "row {row}: {c:?}"
            );
        }
        let off = Augment::default();
        let before = marked(20);
        let mut same = [before.copy(), marked(20), marked(20)];
        apply(&mut same, &[5, 6, 7], off, 9, 1);
        assert!(same[0].equal(&before));
    }
}
