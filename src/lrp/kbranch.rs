//! LRP through the K-Branch CNN: three branches of conv blocks (each branch's first conv is a
//! first layer on the input), their dense layers, the fusion layer and the head.

use anyhow::Result;
use tch::Tensor;

use super::{Affine, Geometry, Rules, Weights, pool_relevance, start_relevance};
use crate::model::kbranch::{BRANCHES, HIDDEN};

struct BranchLayers {
    /// Conv blocks and whether a 2x2 max-pool follows.
    convs: Vec<(Affine, bool)>,
    dense: Affine,
}

pub(super) struct KBranchLrp {
    branches: Vec<BranchLayers>,
    fusion: Affine,
    head: Affine,
}

fn max_pool(x: &Tensor) -> Tensor {
    x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
}

/// Forward through one branch; `acts` receives each conv block's input and, when pooled, its
/// output before pooling, then the conv output that feeds the dense layer. Returns the
/// branch's hidden vector and the dense layer's input.
fn branch_forward(b: &BranchLayers, x: &Tensor, acts: &mut Vec<Tensor>) -> (Tensor, Tensor) {
    let mut x = x.shallow_clone();
    for (conv, pool) in &b.convs {
        acts.push(x.shallow_clone());
        let y = conv.forward(&x).relu();
        acts.push(y.shallow_clone());
        x = if *pool { max_pool(&y) } else { y };
    }
    acts.push(x.shallow_clone());
    let d = x.flatten(1, -1);
    (b.dense.forward(&d).relu(), d)
}

impl KBranchLrp {
    pub(super) fn new(w: &Weights) -> Result<Self> {
        let branches = BRANCHES
            .iter()
            .map(|spec| -> Result<BranchLayers> {
                let convs = spec
                    .convs
                    .iter()
                    .enumerate()
                    .map(|(i, &(_, kernel, pool))| {
                        let p = format!("{}.conv{}", spec.name, i + 1);
                        Ok((
                            w.folded(
                                &format!("{p}.conv"),
                                &format!("{p}.bn"),
                                Some(Geometry::same(kernel)),
                            )?,
                            pool,
                        ))
                    })
                    .collect::<Result<_>>()?;
                let p = format!("{}.dense", spec.name);
                Ok(BranchLayers {
                    convs,
                    dense: w.folded(&format!("{p}.fc"), &format!("{p}.bn"), None)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(KBranchLrp {
            branches,
            fusion: w.folded("fusion.fc", "fusion.bn", None)?,
            head: w.dense("head")?,
        })
    }

    pub(super) fn logits(&self, inputs: &[Tensor; 3]) -> Tensor {
        let hidden: Vec<Tensor> = self
            .branches
            .iter()
            .zip(inputs)
            .map(|(b, x)| branch_forward(b, x, &mut Vec::new()).0)
            .collect();
        self.head
            .forward(&self.fusion.forward(&Tensor::cat(&hidden, 1)).relu())
    }

    /// The chosen logits `[B]` and the relevance of each band group's input.
    pub(super) fn explain(
        &self,
        inputs: &[Tensor; 3],
        classes: &[i64],
        rules: &Rules,
    ) -> (Tensor, [Tensor; 3]) {
        // Forward, keeping every layer's input.
        let mut saved: Vec<Vec<Tensor>> = Vec::new();
        let mut hidden = Vec::new();
        let mut dense_in = Vec::new();
        tch::no_grad(|| {
            for (b, x) in self.branches.iter().zip(inputs) {
                let mut acts = Vec::new();
                let (h, d) = branch_forward(b, x, &mut acts);
                saved.push(acts);
                hidden.push(h);
                dense_in.push(d);
            }
        });
        let fused = Tensor::cat(&hidden, 1);
        let head_in = tch::no_grad(|| self.fusion.forward(&fused).relu());
        let logits = tch::no_grad(|| self.head.forward(&head_in));
        let (start, chosen) = start_relevance(&logits, classes);

        let r = self.head.relevance(&head_in, &start, rules.dense());
        let r = self.fusion.relevance(&fused, &r, rules.dense());
        let parts = r.split(HIDDEN, 1);
        let mut bands = Vec::new();
        for (((b, acts), d), r) in self.branches.iter().zip(&saved).zip(&dense_in).zip(parts) {
            let r = b.dense.relevance(d, &r, rules.dense());
            // acts: per conv block, its input and (when pooled) its pre-pool output.
            let mut r = r.reshape(acts.last().expect("a conv output").size());
            for (i, (conv, pool)) in b.convs.iter().enumerate().rev() {
                if *pool {
                    r = pool_relevance(&acts[2 * i + 1], &r, max_pool);
                }
                r = conv.relevance(&acts[2 * i], &r, rules.conv(i == 0));
            }
            bands.push(r);
        }
        let [b10, b20, b60]: [Tensor; 3] = bands
            .try_into()
            .unwrap_or_else(|_| unreachable!("three branches"));
        (chosen, [b10, b20, b60])
    }
}
