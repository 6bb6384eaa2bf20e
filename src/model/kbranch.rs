//! The K-Branch CNN of the BigEarthNet team (docs/models.md): one branch per band group at its
//! native resolution, fused into 19 logits. Inputs are z-scored bands (`[B,4,120,120]`,
//! `[B,6,60,60]`, `[B,2,20,20]`, f32).
//!
//! Blocks are conv ("same" padding, Xavier-uniform weights, zero bias) → BatchNorm → ReLU; fully
//! connected layers are Xavier-uniform too.

use tch::Tensor;
use tch::nn::{self, Module};

use super::batch_norm_config;
use lossbench_core::labels::NUM_CLASSES;
use lossbench_core::layout::BAND_GROUPS;

pub const CONV_DROPOUT: f64 = 0.25;
pub const DENSE_DROPOUT: f64 = 0.5;
/// Width of each branch's dense block and of the fusion block.
pub const HIDDEN: i64 = 128;

/// One branch of the network: its variable prefix, input channels and side, and per conv block
/// (output channels, kernel, 2x2 max-pool after it).
pub struct BranchSpec {
    pub name: &'static str,
    pub channels: i64,
    pub side: i64,
    pub convs: &'static [(i64, i64, bool)],
}

/// One branch per band group of the store, in the order their outputs are fused.
pub const BRANCHES: [BranchSpec; 3] = [
    branch(0, &[(32, 5, true), (32, 5, true), (64, 3, false)]),
    branch(1, &[(32, 3, true), (32, 3, false), (64, 3, false)]),
    branch(2, &[(32, 2, false), (32, 2, false), (32, 2, false)]),
];

/// The branch of band group `g`, its input shaped by the store layout.
const fn branch(g: usize, convs: &'static [(i64, i64, bool)]) -> BranchSpec {
    let group = &BAND_GROUPS[g];
    BranchSpec {
        name: group.array,
        channels: group.bands.len() as i64,
        side: group.side as i64,
        convs,
    }
}

/// "Same" convolutions: odd kernels pad symmetrically inside the conv (this padding); even
/// kernels get [`pad_even_kernel`] first.
pub fn conv_padding(kernel: i64) -> i64 {
    if kernel % 2 == 1 { kernel / 2 } else { 0 }
}

/// Even kernels pad one more on the right and bottom, as PyTorch's `padding="same"` does.
pub fn pad_even_kernel(x: &Tensor, kernel: i64) -> Tensor {
    if kernel % 2 == 0 {
        let extra = kernel - 1;
        x.constant_pad_nd([extra / 2, extra - extra / 2, extra / 2, extra - extra / 2])
    } else {
        x.shallow_clone()
    }
}

fn xavier(fan_in: i64, fan_out: i64) -> nn::Init {
    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// Conv → BatchNorm → ReLU with "same" padding; even kernels pad one more on the right and
/// bottom, as PyTorch's `padding="same"` does.
#[derive(Debug)]
struct ConvBlock {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    kernel: i64,
}

impl ConvBlock {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, kernel: i64) -> Self {
        let config = nn::ConvConfig {
            padding: conv_padding(kernel),
            ws_init: xavier(c_in * kernel * kernel, c_out * kernel * kernel),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        ConvBlock {
            conv: nn::conv2d(p / "conv", c_in, c_out, kernel, config),
            bn: nn::batch_norm2d(p / "bn", c_out, batch_norm_config()),
            kernel,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.conv
            .forward(&pad_even_kernel(x, self.kernel))
            .apply_t(&self.bn, train)
            .relu_()
    }
}

/// Fully connected → BatchNorm → ReLU.
#[derive(Debug)]
struct DenseBlock {
    linear: nn::Linear,
    bn: nn::BatchNorm,
}

impl DenseBlock {
    fn new(p: &nn::Path, d_in: i64, d_out: i64) -> Self {
        let config = nn::LinearConfig {
            ws_init: xavier(d_in, d_out),
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        DenseBlock {
            linear: nn::linear(p / "fc", d_in, d_out, config),
            bn: nn::batch_norm1d(p / "bn", d_out, batch_norm_config()),
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.linear.forward(x).apply_t(&self.bn, train).relu_()
    }
}

/// One branch: conv blocks, each optionally followed by 2x2 max-pooling, then a dense block.
#[derive(Debug)]
struct Branch {
    convs: Vec<(ConvBlock, bool)>,
    dense: DenseBlock,
}

/// Dropout at probability `p` (none at 0).
fn dropout(x: Tensor, p: f64) -> Tensor {
    if p > 0.0 { x.dropout(p, true) } else { x }
}

impl Branch {
    fn new(p: &nn::Path, spec: &BranchSpec) -> Self {
        let p = p / spec.name;
        let (mut c, mut s) = (spec.channels, spec.side);
        let mut convs = Vec::new();
        for (i, &(c_out, kernel, pool)) in spec.convs.iter().enumerate() {
            convs.push((
                ConvBlock::new(&(&p / format!("conv{}", i + 1)), c, c_out, kernel),
                pool,
            ));
            c = c_out;
            if pool {
                s /= 2;
            }
        }
        Branch {
            convs,
            dense: DenseBlock::new(&(&p / "dense"), c * s * s, HIDDEN),
        }
    }

    /// `(conv, dense)`: the dropout rates after the conv blocks and after the dense block.
    fn forward_t(&self, x: &Tensor, train: bool, (conv, dense): (f64, f64)) -> Tensor {
        let mut x = x.shallow_clone();
        for (block, pool) in &self.convs {
            x = block.forward_t(&x, train);
            if *pool {
                x = x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
            }
            x = dropout(x, conv);
        }
        dropout(self.dense.forward_t(&x.flatten(1, -1), train), dense)
    }
}

#[derive(Debug)]
pub struct KBranch {
    b10m: Branch,
    b20m: Branch,
    b60m: Branch,
    fusion: DenseBlock,
    head: nn::Linear,
}

impl KBranch {
    /// Creates the variables under `p` from torch's generator (seeded by the caller).
    pub fn new(p: &nn::Path) -> Self {
        let head_config = nn::LinearConfig {
            ws_init: xavier(HIDDEN, NUM_CLASSES as i64),
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        let [b10m, b20m, b60m] = &BRANCHES;
        KBranch {
            b10m: Branch::new(p, b10m),
            b20m: Branch::new(p, b20m),
            b60m: Branch::new(p, b60m),
            fusion: DenseBlock::new(&(p / "fusion"), 3 * HIDDEN, HIDDEN),
            head: nn::linear(p / "head", HIDDEN, NUM_CLASSES as i64, head_config),
        }
    }

    /// Logits `[B, 19]`. Batch statistics are on when `train`; `rates` are the dropout rates
    /// after the conv blocks and after the dense layers (0 for none).
    pub fn forward_t(
        &self,
        [x10, x20, x60]: &[Tensor; 3],
        train: bool,
        rates: (f64, f64),
    ) -> Tensor {
        let fused = Tensor::cat(
            &[
                self.b10m.forward_t(x10, train, rates),
                self.b20m.forward_t(x20, train, rates),
                self.b60m.forward_t(x60, train, rates),
            ],
            1,
        );
        dropout(self.fusion.forward_t(&fused, train), rates.1).apply(&self.head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    use crate::model::{Model, Regularization};
    use lossbench_core::config::Arch;

    fn inputs(batch: i64) -> [Tensor; 3] {
        tch::manual_seed(99);
        let o = (Kind::Float, Device::Cpu);
        [
            Tensor::randn([batch, 4, 120, 120], o),
            Tensor::randn([batch, 6, 60, 60], o),
            Tensor::randn([batch, 2, 20, 20], o),
        ]
    }

    #[test]
    fn shapes_and_size() {
        let _rng = crate::torch_rng();
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Model::new(&vs.root(), Arch::KBranch, 5, Regularization::OWN);
        let out = model.forward_t(&inputs(3), false);
        assert_eq!(out.size(), vec![3, 19]);
        let params: i64 = vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum();
        // The two flatten -> 128 layers dominate: 2 x 57,600 x 128, plus 12,800 x 128.
        assert!(
            (16_000_000..16_600_000).contains(&params),
            "{params} parameters"
        );
        let conv_weights = vs
            .variables()
            .iter()
            .filter(|(_, t)| Model::decays(t))
            .count();
        assert_eq!(conv_weights, 9);
    }

    #[test]
    fn eval_is_deterministic_and_train_mode_draws_dropout_from_the_seed() {
        let _rng = crate::torch_rng();
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Model::new(&vs.root(), Arch::KBranch, 1, Regularization::OWN);
        let x = inputs(4);
        let e1 = model.forward_t(&x, false);
        let e2 = model.forward_t(&x, false);
        assert!(e1.equal(&e2));
        let train = |seed| {
            tch::manual_seed(seed);
            tch::no_grad(|| model.forward_t(&x, true))
        };
        assert!(train(7).equal(&train(7)));
        assert!(!train(7).equal(&train(8)));
        // Without dropout, training mode depends on the batch statistics alone.
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Model::new(&vs.root(), Arch::KBranch, 1, Regularization::OFF);
        let train = |seed| {
            tch::manual_seed(seed);
            tch::no_grad(|| model.forward_t(&x, true))
        };
        assert!(train(7).equal(&train(8)));
    }
}
