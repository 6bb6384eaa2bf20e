//! The networks a run can train (docs/models.md): the study's K-Branch CNN, which takes each
//! band group at its native resolution, and ResNet-50 / VGG-16-BN, which take the 12 bands
//! stacked at 120x120. Initialisation is a function of the seed alone: variables are created on
//! the CPU from torch's generator seeded with it, whatever device trains them. ReLUs (and
//! ResNet's residual additions) work in place, as torchvision's networks do: the layers before
//! them (BatchNorm, linear) need their input for the backward pass, not their output.

pub mod kbranch;
pub mod resnet;
pub mod vgg;

use tch::nn;
use tch::{Kind, Tensor};

pub use kbranch::KBranch;
pub use resnet::ResNet50;
pub use vgg::Vgg16;

use lossbench_core::config::Arch;
use lossbench_core::config::recipe::Dropout;
use lossbench_core::layout::BAND_GROUPS;

/// BatchNorm's ε (tch's and PyTorch's default).
pub const BN_EPS: f64 = 1e-5;
/// Input channels of the stacked networks: all 12 bands.
pub const STACKED_CHANNELS: i64 = 12;
/// The side the 20 m and 60 m bands are upsampled to for the stacked networks.
pub const STACKED_SIDE: i64 = BAND_GROUPS[0].side as i64;

/// The layer or block a variable belongs to (by its name): the units of the per-layer Hessian
/// spectrum (docs/landscape.md). K-Branch CNN: each conv and dense block of a branch, the
/// fusion block, the head; ResNet-50: the stem, each bottleneck block (`layer3.2`), the
/// classifier; VGG-16-BN: each conv with its BatchNorm (named by the conv's index,
/// `features.7`), each classifier layer.
pub fn unit(arch: Arch, variable: &str) -> String {
    let parts: Vec<&str> = variable.split('.').collect();
    match arch {
        Arch::KBranch if parts[0].starts_with('b') && parts.len() > 2 => parts[..2].join("."),
        Arch::KBranch => parts[0].to_string(),
        Arch::ResNet50 if parts[0].starts_with("layer") && parts.len() > 2 => parts[..2].join("."),
        Arch::ResNet50 if parts[0] == "fc" => "fc".into(),
        Arch::ResNet50 => "stem".into(),
        Arch::Vgg16 => vgg::unit(&parts),
    }
}

/// A network of any architecture, with the rates of its regularisation in training.
#[derive(Debug)]
pub enum Model {
    /// Dropout after the conv blocks and after the dense layers.
    KBranch {
        net: Box<KBranch>,
        conv_dropout: f64,
        dense_dropout: f64,
    },
    /// Dropout before the classifier; drop-path of the last residual branch.
    ResNet50 {
        net: Box<ResNet50>,
        dropout: f64,
        drop_path: f64,
    },
    /// Dropout in the classifier.
    Vgg16 { net: Box<Vgg16>, dropout: f64 },
}

/// `model.dropout` and `model.drop_path` (lossbench_core::config::recipe::Dropout).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Regularization {
    pub dropout: Dropout,
    pub drop_path: f64,
}

impl Regularization {
    /// No dropout, no drop-path: evaluation, LRP and landscapes use the network as a function.
    pub const OFF: Regularization = Regularization {
        dropout: Dropout::Switch(false),
        drop_path: 0.0,
    };
    /// The network's own dropout (the study's).
    pub const OWN: Regularization = Regularization {
        dropout: Dropout::Switch(true),
        drop_path: 0.0,
    };
}

/// BatchNorm as PyTorch initialises it (scale 1, shift 0), not tch's random scale.
pub(crate) fn batch_norm_config() -> nn::BatchNormConfig {
    nn::BatchNormConfig {
        ws_init: nn::Init::Const(1.0),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    }
}

/// Kaiming-normal with the fan-out and ReLU's gain, torchvision's conv initialisation.
pub(crate) fn kaiming_fan_out(fan_out: i64) -> nn::Init {
    nn::Init::Randn {
        mean: 0.0,
        stdev: (2.0 / fan_out as f64).sqrt(),
    }
}

/// The 12 bands at 120x120 for the stacked networks: the 10 m bands, then the 20 m and 60 m
/// bands bilinearly upsampled (half-pixel centres, as PyTorch's `interpolate` with
/// `align_corners=False`), in the store's band order.
pub fn stack_bands([x10, x20, x60]: &[Tensor; 3]) -> Tensor {
    let up = |x: &Tensor| x.upsample_bilinear2d([STACKED_SIDE, STACKED_SIDE], false, None, None);
    Tensor::cat(&[x10.shallow_clone(), up(x20), up(x60)], 1)
}

impl Model {
    /// Creates the variables under `p` (a CPU var store; move it to the device afterwards),
    /// initialised from `seed`.
    pub fn new(p: &nn::Path, arch: Arch, seed: u64, reg: Regularization) -> Model {
        tch::manual_seed(seed as i64);
        match arch {
            Arch::KBranch => Model::KBranch {
                net: Box::new(KBranch::new(p)),
                conv_dropout: reg.dropout.rate(kbranch::CONV_DROPOUT),
                dense_dropout: reg.dropout.rate(kbranch::DENSE_DROPOUT),
            },
            Arch::ResNet50 => Model::ResNet50 {
                net: Box::new(ResNet50::new(p, STACKED_CHANNELS)),
                dropout: reg.dropout.rate(0.0),
                drop_path: reg.drop_path,
            },
            Arch::Vgg16 => Model::Vgg16 {
                net: Box::new(Vgg16::new(p, STACKED_CHANNELS)),
                dropout: reg.dropout.rate(vgg::DROPOUT),
            },
        }
    }

    pub fn arch(&self) -> Arch {
        match self {
            Model::KBranch { .. } => Arch::KBranch,
            Model::ResNet50 { .. } => Arch::ResNet50,
            Model::Vgg16 { .. } => Arch::Vgg16,
        }
    }

    /// Logits `[B, 19]` of z-scored band groups; batch statistics, dropout and drop-path when
    /// `train`.
    pub fn forward_t(&self, inputs: &[Tensor; 3], train: bool) -> Tensor {
        let on = |rate: f64| if train { rate } else { 0.0 };
        match self {
            Model::KBranch {
                net,
                conv_dropout,
                dense_dropout,
            } => net.forward_t(inputs, train, (on(*conv_dropout), on(*dense_dropout))),
            Model::ResNet50 {
                net,
                dropout,
                drop_path,
            } => net.forward_t(&stack_bands(inputs), train, on(*dropout), on(*drop_path)),
            Model::Vgg16 { net, dropout } => {
                net.forward_t(&stack_bands(inputs), train, on(*dropout))
            }
        }
    }

    /// Whether a variable gets the L2 weight decay: conv kernels (the 4-D weights), as the
    /// original K-Branch model decays its conv weights.
    pub fn decays(variable: &Tensor) -> bool {
        variable.dim() == 4 && variable.kind() == Kind::Float
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Every variable of each network falls in a unit, the units as docs/models.md names the
    /// layers and blocks.
    #[test]
    fn variables_group_into_the_documented_units() {
        let _rng = crate::torch_rng();
        for (arch, count, some) in [
            (
                Arch::KBranch,
                14,
                ["b10m.conv1", "b60m.dense", "fusion", "head"],
            ),
            (Arch::ResNet50, 18, ["stem", "layer1.0", "layer4.2", "fc"]),
            (
                Arch::Vgg16,
                16,
                ["features.0", "features.3", "features.40", "classifier.6"],
            ),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let _model = Model::new(&vs.root(), arch, 1, Regularization::OFF);
            let units: std::collections::BTreeSet<String> =
                vs.variables().keys().map(|n| unit(arch, n)).collect();
            assert_eq!(units.len(), count, "{arch:?}: {units:?}");
            for u in some {
                assert!(units.contains(u), "{arch:?}: {u} not in {units:?}");
            }
        }
        assert_eq!(unit(Arch::Vgg16, "features.4.running_mean"), "features.3");
    }

    /// The deeper networks at their published sizes (without the 1000-class heads) and with
    /// every parameter named as torchvision names it.
    #[test]
    fn stacked_networks_have_torchvisions_shapes_and_names() {
        let _rng = crate::torch_rng();
        for (arch, low, high, first) in [
            (Arch::ResNet50, 23_500_000, 23_600_000, "conv1.weight"),
            (Arch::Vgg16, 134_000_000, 134_400_000, "features.0.weight"),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = Model::new(&vs.root(), arch, 1, Regularization::OWN);
            let params: i64 = vs
                .trainable_variables()
                .iter()
                .map(|t| t.numel() as i64)
                .sum();
            assert!((low..high).contains(&params), "{arch:?}: {params}");
            let vars = vs.variables();
            assert_eq!(vars[first].size()[1], STACKED_CHANNELS, "{arch:?}");
            let x = [
                Tensor::zeros([2, 4, 120, 120], (Kind::Float, Device::Cpu)),
                Tensor::zeros([2, 6, 60, 60], (Kind::Float, Device::Cpu)),
                Tensor::zeros([2, 2, 20, 20], (Kind::Float, Device::Cpu)),
            ];
            assert_eq!(tch::no_grad(|| model.forward_t(&x, false)).size(), [2, 19]);
        }
    }

    #[test]
    fn stacking_keeps_10m_bands_and_upsamples_the_others() {
        let o = (Kind::Float, Device::Cpu);
        let x = [
            Tensor::ones([1, 4, 120, 120], o),
            Tensor::full([1, 6, 60, 60], 2.0, o),
            Tensor::full([1, 2, 20, 20], 3.0, o),
        ];
        let s = stack_bands(&x);
        assert_eq!(s.size(), [1, 12, 120, 120]);
        let at = |c: i64| s.double_value(&[0, c, 50, 50]);
        assert_eq!((at(0), at(4), at(11)), (1.0, 2.0, 3.0));
    }
}
