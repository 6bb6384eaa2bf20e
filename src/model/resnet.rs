//! ResNet-50 (torchvision's layout and parameter names: bottleneck blocks [3, 4, 6, 3], stride on
//! the 3x3 conv) for the 12 bands stacked at 120x120 ([`super::stack_bands`]), with a 12-channel
//! first convolution and 19 outputs. Initialised as torchvision does: convs Kaiming-normal
//! (fan-out, ReLU gain), BatchNorm scale 1 and shift 0, the classifier PyTorch's default linear
//! initialisation.

use tch::Tensor;
use tch::nn;

use super::{batch_norm_config, kaiming_fan_out};
use lossbench_core::labels::NUM_CLASSES;

/// Blocks per stage and the stages' widths (bottleneck outputs are 4x the width).
pub const STAGES: [(usize, i64); 4] = [(3, 64), (4, 128), (6, 256), (3, 512)];
pub const EXPANSION: i64 = 4;

fn conv(p: nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding,
        bias: false,
        ws_init: kaiming_fan_out(c_out * kernel * kernel),
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, kernel, config)
}

/// 1x1 → 3x3 (with the stride) → 1x1, each with BatchNorm; the shortcut is the input, or a
/// strided 1x1 conv with BatchNorm where the shape changes.
#[derive(Debug)]
pub struct Bottleneck {
    pub conv1: nn::Conv2D,
    pub bn1: nn::BatchNorm,
    pub conv2: nn::Conv2D,
    pub bn2: nn::BatchNorm,
    pub conv3: nn::Conv2D,
    pub bn3: nn::BatchNorm,
    pub downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl Bottleneck {
    fn new(p: &nn::Path, c_in: i64, width: i64, stride: i64) -> Self {
        let c_out = width * EXPANSION;
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = p / "downsample";
            (
                conv(&d / "0", c_in, c_out, 1, stride, 0),
                nn::batch_norm2d(&d / "1", c_out, batch_norm_config()),
            )
        });
        Bottleneck {
            conv1: conv(p / "conv1", c_in, width, 1, 1, 0),
            bn1: nn::batch_norm2d(p / "bn1", width, batch_norm_config()),
            conv2: conv(p / "conv2", width, width, 3, stride, 1),
            bn2: nn::batch_norm2d(p / "bn2", width, batch_norm_config()),
            conv3: conv(p / "conv3", width, c_out, 1, 1, 0),
            bn3: nn::batch_norm2d(p / "bn3", c_out, batch_norm_config()),
            downsample,
        }
    }

    /// ReLUs and the residual addition work in place on BatchNorm outputs, as torchvision's
    /// (`ReLU(inplace=True)`, `out += identity`): BatchNorm's backward needs its input, not its
    /// output, and a deep network saves one allocation per activation.
    ///
    /// With `drop_path` > 0 (training), each patch's residual branch is dropped with that
    /// probability and kept ones scaled by 1 / (1 − p) (stochastic depth, as timm's DropPath).
    fn forward_t(&self, x: &Tensor, train: bool, drop_path: f64) -> Tensor {
        let y = x.apply(&self.conv1).apply_t(&self.bn1, train).relu_();
        let y = y.apply(&self.conv2).apply_t(&self.bn2, train).relu_();
        let mut y = y.apply(&self.conv3).apply_t(&self.bn3, train);
        if drop_path > 0.0 {
            let keep = 1.0 - drop_path;
            let shape = [y.size()[0], 1, 1, 1];
            let mask = Tensor::empty(shape, (y.kind(), y.device())).bernoulli_float_(keep);
            y = y * mask / keep;
        }
        match &self.downsample {
            Some((c, bn)) => y += x.apply(c).apply_t(bn, train),
            None => y += x,
        };
        y.relu_()
    }
}

#[derive(Debug)]
pub struct ResNet50 {
    pub conv1: nn::Conv2D,
    pub bn1: nn::BatchNorm,
    /// `layer1` .. `layer4`.
    pub stages: Vec<Vec<Bottleneck>>,
    pub fc: nn::Linear,
}

impl ResNet50 {
    pub fn new(p: &nn::Path, channels: i64) -> Self {
        let mut stages = Vec::new();
        let mut c_in = 64;
        for (i, &(blocks, width)) in STAGES.iter().enumerate() {
            let stage = p / format!("layer{}", i + 1);
            let stride = if i == 0 { 1 } else { 2 };
            let mut layer = Vec::new();
            for b in 0..blocks {
                layer.push(Bottleneck::new(
                    &(&stage / b.to_string()),
                    c_in,
                    width,
                    if b == 0 { stride } else { 1 },
                ));
                c_in = width * EXPANSION;
            }
            stages.push(layer);
        }
        ResNet50 {
            conv1: conv(p / "conv1", channels, 64, 7, 2, 3),
            bn1: nn::batch_norm2d(p / "bn1", 64, batch_norm_config()),
            stages,
            fc: nn::linear(p / "fc", c_in, NUM_CLASSES as i64, Default::default()),
        }
    }

    /// Logits from the stacked `[B, 12, 120, 120]` input; `dropout` before the classifier,
    /// `drop_path` the last block's drop-path rate (earlier blocks' rise linearly from 0 to it).
    pub fn forward_t(&self, x: &Tensor, train: bool, dropout: f64, drop_path: f64) -> Tensor {
        let mut x = x
            .apply(&self.conv1)
            .apply_t(&self.bn1, train)
            .relu_()
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        let blocks: Vec<&Bottleneck> = self.stages.iter().flatten().collect();
        let last = (blocks.len() - 1).max(1) as f64;
        for (i, block) in blocks.into_iter().enumerate() {
            x = block.forward_t(&x, train, drop_path * i as f64 / last);
        }
        let x = x.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        x.dropout(dropout, dropout > 0.0).apply(&self.fc)
    }
}
