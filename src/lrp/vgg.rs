//! LRP through VGG-16-BN on the stacked bands: features (conv blocks with BatchNorm folded,
//! max-pools), the adaptive average pool (Norm rule) and the three dense layers. The first conv
//! is the first layer on the input.

use anyhow::Result;
use tch::Tensor;

use super::{Affine, Geometry, Rules, Weights, norm_relevance, pool_relevance, start_relevance};
use crate::model::vgg::{FEATURES, POOLED_SIDE};

enum Layer {
    Conv(Affine),
    Pool,
}

pub(super) struct VggLrp {
    features: Vec<Layer>,
    classifier: [Affine; 3],
}

fn max_pool(x: &Tensor) -> Tensor {
    x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
}

fn avg_pool(x: &Tensor) -> Tensor {
    x.adaptive_avg_pool2d([POOLED_SIDE, POOLED_SIDE])
}

impl VggLrp {
    pub(super) fn new(w: &Weights) -> Result<Self> {
        let mut features = Vec::new();
        let mut index = 0;
        for entry in FEATURES {
            if entry.is_some() {
                let conv = w.folded(
                    &format!("features.{index}"),
                    &format!("features.{}", index + 1),
                    Some(Geometry::strided(1, 1)),
                )?;
                features.push(Layer::Conv(conv));
                index += 3;
            } else {
                features.push(Layer::Pool);
                index += 1;
            }
        }
        let classifier = [
            w.dense("classifier.0")?,
            w.dense("classifier.3")?,
            w.dense("classifier.6")?,
        ];
        Ok(VggLrp {
            features,
            classifier,
        })
    }

    /// Forward from the stacked input; `acts` receives each feature layer's input.
    fn features_forward(&self, x: &Tensor, acts: &mut Vec<Tensor>) -> Tensor {
        let mut x = x.shallow_clone();
        for layer in &self.features {
            acts.push(x.shallow_clone());
            x = match layer {
                Layer::Conv(c) => c.forward(&x).relu(),
                Layer::Pool => max_pool(&x),
            };
        }
        x
    }

    pub(super) fn logits(&self, x: &Tensor) -> Tensor {
        let f = avg_pool(&self.features_forward(x, &mut Vec::new())).flatten(1, -1);
        let [a, b, c] = &self.classifier;
        c.forward(&b.forward(&a.forward(&f).relu()).relu())
    }

    /// The chosen logits `[B]` and the relevance of the stacked input.
    pub(super) fn explain(&self, x: &Tensor, classes: &[i64], rules: &Rules) -> (Tensor, Tensor) {
        let mut acts = Vec::new();
        let [a, b, c] = &self.classifier;
        let (features, pooled, h1, h2, logits) = tch::no_grad(|| {
            let features = self.features_forward(x, &mut acts);
            let pooled = avg_pool(&features).flatten(1, -1);
            let h1 = a.forward(&pooled).relu();
            let h2 = b.forward(&h1).relu();
            let logits = c.forward(&h2);
            (features, pooled, h1, h2, logits)
        });
        let (start, chosen) = start_relevance(&logits, classes);
        let r = c.relevance(&h2, &start, rules.dense());
        let r = b.relevance(&h1, &r, rules.dense());
        let r = a.relevance(&pooled, &r, rules.dense());
        let mut r = norm_relevance(&features, &r.view_as(&avg_pool(&features)), avg_pool);
        for (i, layer) in self.features.iter().enumerate().rev() {
            r = match layer {
                Layer::Conv(conv) => conv.relevance(&acts[i], &r, rules.conv(i == 0)),
                Layer::Pool => pool_relevance(&acts[i], &r, max_pool),
            };
        }
        (chosen, r)
    }
}
