//! VGG-16 with BatchNorm (torchvision's `vgg16_bn` layout and parameter names) for the 12 bands
//! stacked at 120x120 ([`super::stack_bands`]), with a 12-channel first convolution and 19
//! outputs. At 120x120 the last feature map is 3x3; the adaptive average pool brings it to 7x7
//! for the classifier, as torchvision's model does. Initialised as torchvision does: convs
//! Kaiming-normal (fan-out, ReLU gain) with zero bias, BatchNorm 1 / 0, linear layers N(0, 0.01)
//! with zero bias.

use tch::Tensor;
use tch::nn;

use super::{batch_norm_config, kaiming_fan_out};
use lossbench_core::labels::NUM_CLASSES;

/// Output channels of each 3x3 conv; `None` is a 2x2 max-pool (torchvision's configuration "D").
pub const FEATURES: [Option<i64>; 18] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
    Some(512),
    Some(512),
    Some(512),
    None,
];
pub const POOLED_SIDE: i64 = 7;
pub const HIDDEN: i64 = 4096;
pub const DROPOUT: f64 = 0.5;

/// One entry of `features`: conv + BatchNorm (+ ReLU), or a max-pool.
#[derive(Debug)]
pub enum Feature {
    Conv(Box<(nn::Conv2D, nn::BatchNorm)>),
    Pool,
}

#[derive(Debug)]
pub struct Vgg16 {
    pub features: Vec<Feature>,
    /// `classifier.0`, `.3`, `.6`.
    pub classifier: [nn::Linear; 3],
}

fn linear(p: nn::Path, d_in: i64, d_out: i64) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: nn::Init::Randn {
            mean: 0.0,
            stdev: 0.01,
        },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(p, d_in, d_out, config)
}

/// The unit of a variable named by `parts` (`features.8.weight`): its conv's index for the
/// features (a conv at i, its BatchNorm at i + 1), the layer for the classifier.
pub fn unit(parts: &[&str]) -> String {
    let index: usize = parts.get(1).and_then(|i| i.parse().ok()).unwrap_or(0);
    if parts[0] != "features" {
        return parts[..2.min(parts.len())].join(".");
    }
    let mut at = 0;
    let mut conv = 0;
    for entry in FEATURES {
        if at > index {
            break;
        }
        if entry.is_some() {
            conv = at;
        }
        at += if entry.is_some() { 3 } else { 1 };
    }
    format!("features.{conv}")
}

impl Vgg16 {
    pub fn new(p: &nn::Path, channels: i64) -> Self {
        let f = p / "features";
        let mut features = Vec::new();
        let (mut index, mut c_in) = (0, channels);
        for entry in FEATURES {
            match entry {
                Some(c_out) => {
                    let config = nn::ConvConfig {
                        padding: 1,
                        ws_init: kaiming_fan_out(c_out * 9),
                        bs_init: nn::Init::Const(0.0),
                        ..Default::default()
                    };
                    let conv = nn::conv2d(&f / index.to_string(), c_in, c_out, 3, config);
                    let bn =
                        nn::batch_norm2d(&f / (index + 1).to_string(), c_out, batch_norm_config());
                    features.push(Feature::Conv(Box::new((conv, bn))));
                    index += 3;
                    c_in = c_out;
                }
                None => {
                    features.push(Feature::Pool);
                    index += 1;
                }
            }
        }
        let c = p / "classifier";
        let classifier = [
            linear(&c / "0", c_in * POOLED_SIDE * POOLED_SIDE, HIDDEN),
            linear(&c / "3", HIDDEN, HIDDEN),
            linear(&c / "6", HIDDEN, NUM_CLASSES as i64),
        ];
        Vgg16 {
            features,
            classifier,
        }
    }

    /// Logits from the stacked `[B, 12, 120, 120]` input; dropout at `rate` in the classifier.
    pub fn forward_t(&self, x: &Tensor, train: bool, rate: f64) -> Tensor {
        let mut x = x.shallow_clone();
        for f in &self.features {
            x = match f {
                Feature::Conv(layer) => x.apply(&layer.0).apply_t(&layer.1, train).relu_(),
                Feature::Pool => x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false),
            };
        }
        let x = x
            .adaptive_avg_pool2d([POOLED_SIDE, POOLED_SIDE])
            .flatten(1, -1);
        let [fc1, fc2, fc3] = &self.classifier;
        let x = x.apply(fc1).relu_().dropout(rate, rate > 0.0);
        let x = x.apply(fc2).relu_().dropout(rate, rate > 0.0);
        x.apply(fc3)
    }
}
