//! LRP through ResNet-50 on the stacked bands, as zennit's ResNet canonizer sets it up: every
//! BatchNorm folded into its conv, each bottleneck's residual addition a sum whose relevance is
//! split in proportion to the two summands (Norm rule), the global average pool under the Norm
//! rule too. `conv1` is the first layer on the input.

use anyhow::Result;
use tch::Tensor;

use super::{
    Affine, Geometry, Rules, Weights, norm_relevance, pool_relevance, start_relevance,
    sum_relevance,
};
use crate::model::resnet::STAGES;

struct Block {
    conv1: Affine,
    conv2: Affine,
    conv3: Affine,
    downsample: Option<Affine>,
}

/// A block's forward values that its relevance pass needs.
struct BlockActs {
    input: Tensor,
    a1: Tensor,
    a2: Tensor,
    main: Tensor,
    shortcut: Tensor,
}

impl Block {
    fn forward(&self, x: &Tensor) -> (Tensor, BlockActs) {
        let a1 = self.conv1.forward(x).relu();
        let a2 = self.conv2.forward(&a1).relu();
        let main = self.conv3.forward(&a2);
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x),
            None => x.shallow_clone(),
        };
        let out = (&main + &shortcut).relu();
        (
            out,
            BlockActs {
                input: x.shallow_clone(),
                a1,
                a2,
                main,
                shortcut,
            },
        )
    }

    fn relevance(&self, acts: &BlockActs, r: &Tensor, rules: &Rules) -> Tensor {
        let (r_shortcut, r_main) = sum_relevance(&acts.shortcut, &acts.main, r);
        let r_main = self.conv3.relevance(&acts.a2, &r_main, rules.conv(false));
        let r_main = self.conv2.relevance(&acts.a1, &r_main, rules.conv(false));
        let r_main = self
            .conv1
            .relevance(&acts.input, &r_main, rules.conv(false));
        let r_shortcut = match &self.downsample {
            Some(d) => d.relevance(&acts.input, &r_shortcut, rules.conv(false)),
            None => r_shortcut,
        };
        r_main + r_shortcut
    }
}

pub(super) struct ResNetLrp {
    conv1: Affine,
    blocks: Vec<Block>,
    fc: Affine,
}

fn max_pool(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false)
}

fn avg_pool(x: &Tensor) -> Tensor {
    x.adaptive_avg_pool2d([1, 1])
}

impl ResNetLrp {
    pub(super) fn new(w: &Weights) -> Result<Self> {
        let mut blocks = Vec::new();
        for (i, &(count, _)) in STAGES.iter().enumerate() {
            for b in 0..count {
                let p = format!("layer{}.{b}", i + 1);
                let stride = if i > 0 && b == 0 { 2 } else { 1 };
                let downsample_weight = format!("{p}.downsample.0.weight");
                let downsample = if w.tensors.iter().any(|(n, _)| *n == downsample_weight) {
                    Some(w.folded(
                        &format!("{p}.downsample.0"),
                        &format!("{p}.downsample.1"),
                        Some(Geometry::strided(stride, 0)),
                    )?)
                } else {
                    None
                };
                blocks.push(Block {
                    conv1: w.folded(
                        &format!("{p}.conv1"),
                        &format!("{p}.bn1"),
                        Some(Geometry::strided(1, 0)),
                    )?,
                    conv2: w.folded(
                        &format!("{p}.conv2"),
                        &format!("{p}.bn2"),
                        Some(Geometry::strided(stride, 1)),
                    )?,
                    conv3: w.folded(
                        &format!("{p}.conv3"),
                        &format!("{p}.bn3"),
                        Some(Geometry::strided(1, 0)),
                    )?,
                    downsample,
                });
            }
        }
        Ok(ResNetLrp {
            conv1: w.folded("conv1", "bn1", Some(Geometry::strided(2, 3)))?,
            blocks,
            fc: w.dense("fc")?,
        })
    }

    pub(super) fn logits(&self, x: &Tensor) -> Tensor {
        let mut x = max_pool(&self.conv1.forward(x).relu());
        for b in &self.blocks {
            x = b.forward(&x).0;
        }
        self.fc.forward(&avg_pool(&x).flatten(1, -1))
    }

    /// The chosen logits `[B]` and the relevance of the stacked input.
    pub(super) fn explain(&self, x: &Tensor, classes: &[i64], rules: &Rules) -> (Tensor, Tensor) {
        let (stem, acts, features, pooled, logits) = tch::no_grad(|| {
            let stem = self.conv1.forward(x).relu();
            let mut h = max_pool(&stem);
            let mut acts = Vec::new();
            for b in &self.blocks {
                let (out, a) = b.forward(&h);
                acts.push(a);
                h = out;
            }
            let pooled = avg_pool(&h).flatten(1, -1);
            let logits = self.fc.forward(&pooled);
            (stem, acts, h, pooled, logits)
        });
        let (start, chosen) = start_relevance(&logits, classes);
        let r = self.fc.relevance(&pooled, &start, rules.dense());
        let mut r = norm_relevance(&features, &r.view_as(&avg_pool(&features)), avg_pool);
        for (b, a) in self.blocks.iter().zip(&acts).rev() {
            r = b.relevance(a, &r, rules);
        }
        let r = pool_relevance(&stem, &r, max_pool);
        (chosen, self.conv1.relevance(x, &r, rules.conv(true)))
    }
}
