//! Layer-wise relevance propagation (LRP) for every architecture, with the rules and composites
//! of zennit (checked against it by tests/python/test_lrp_zennit.py).
//!
//! A network is taken from its weights by name, with each BatchNorm folded into the conv or
//! dense layer before it and dropout off. Relevance starts at one class logit and flows back
//! layer by layer: ReLU passes it unchanged, max-pooling passes it to the window's winner,
//! average pooling and residual sums split it in proportion to each input's contribution
//! (zennit's Norm rule), and each conv / dense layer applies its composite's rule, computed as
//! zennit does: the gradient of the rule's modified layer, weighted by relevance over the
//! stabilised modified output. The networks: [`kbranch`], [`resnet`], [`vgg`].
//!
//! This is the rules engine alone: which patches a snapshot explains is
//! [`crate::snapshot`]'s choice, and explaining chosen patches for their classes
//! ([`crate::explain::explain_patches`]) is `explain`'s.

mod kbranch;
mod resnet;
mod vgg;

use anyhow::{Context, Result, bail};

use tch::{Kind, Tensor};

use crate::model::{BN_EPS, STACKED_SIDE, stack_bands};
use lossbench_core::config::{Arch, Composite};
use lossbench_core::layout::{BAND_GROUPS, FULL_SIDE};

/// zennit's stabiliser for every rule but ε: the denominator moves away from zero by this much.
const STABILIZER: f64 = 1e-6;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rule {
    Epsilon(f64),
    ZPlus,
    Flat,
}

/// Divides safely: adds `eps` with each entry's sign (+1 for 0), as zennit's `stabilize`.
fn stabilize(z: &Tensor, eps: f64) -> Tensor {
    let sign = z.sign() + z.eq(0.0).to_kind(z.kind());
    z + sign * eps
}

/// How a conv layer slides over its input.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Geometry {
    stride: i64,
    padding: i64,
    /// An even kernel's "same" padding: one more on the right and bottom, padded before the conv.
    even_same: Option<i64>,
}

impl Geometry {
    /// "Same" padding at stride 1, as the K-Branch CNN pads.
    fn same(kernel: i64) -> Geometry {
        Geometry {
            stride: 1,
            padding: crate::model::kbranch::conv_padding(kernel),
            even_same: (kernel % 2 == 0).then_some(kernel),
        }
    }

    fn strided(stride: i64, padding: i64) -> Geometry {
        Geometry {
            stride,
            padding,
            even_same: None,
        }
    }
}

/// A conv or dense layer with BatchNorm folded in.
struct Affine {
    weight: Tensor,
    bias: Tensor,
    conv: Option<Geometry>,
}

impl Affine {
    fn apply(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
        match self.conv {
            Some(g) => {
                let x = match g.even_same {
                    Some(k) => crate::model::kbranch::pad_even_kernel(x, k),
                    None => x.shallow_clone(),
                };
                x.conv2d(
                    weight,
                    bias,
                    [g.stride, g.stride],
                    [g.padding, g.padding],
                    [1, 1],
                    1,
                )
            }
            None => x.linear(weight, bias),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.apply(x, &self.weight, Some(&self.bias))
    }

    /// `grad_x Σ (layer(x; weight) · s)`: the layer's transpose applied to `s`.
    fn transpose(&self, input: &Tensor, weight: &Tensor, s: &Tensor) -> Tensor {
        let x = input.detach().set_requires_grad(true);
        let out = (self.apply(&x, weight, None) * s).sum(x.kind());
        Tensor::run_backward(&[out], &[&x], false, false).remove(0)
    }

    /// Relevance of this layer's input `a` from the relevance `r` of its output.
    fn relevance(&self, a: &Tensor, r: &Tensor, rule: Rule) -> Tensor {
        match rule {
            Rule::Epsilon(eps) => {
                let s = r / stabilize(&self.forward(a), eps);
                a * self.transpose(a, &self.weight, &s)
            }
            Rule::ZPlus => {
                let (pos_in, neg_in) = (a.clamp_min(0.0), a.clamp_max(0.0));
                let (pos_w, neg_w) = (self.weight.clamp_min(0.0), self.weight.clamp_max(0.0));
                let z = self.apply(&pos_in, &pos_w, Some(&self.bias.clamp_min(0.0)))
                    + self.apply(&neg_in, &neg_w, None);
                let s = r / stabilize(&z, STABILIZER);
                &pos_in * self.transpose(&pos_in, &pos_w, &s)
                    + &neg_in * self.transpose(&neg_in, &neg_w, &s)
            }
            Rule::Flat => {
                let (ones_in, ones_w) = (a.ones_like(), self.weight.ones_like());
                let s = r / stabilize(&self.apply(&ones_in, &ones_w, None), STABILIZER);
                self.transpose(&ones_in, &ones_w, &s)
            }
        }
    }
}

/// zennit's Norm rule for a parameter-free linear map `f` (average pooling): each input gets
/// relevance in proportion to its contribution, R_in = x ⊙ fᵀ(R / stabilised f(x)).
fn norm_relevance(x: &Tensor, r: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let input = x.detach().set_requires_grad(true);
    let out = f(&input);
    let s = r / stabilize(&out.detach(), STABILIZER);
    let grad =
        Tensor::run_backward(&[(out * s).sum(input.kind())], &[&input], false, false).remove(0);
    x * grad
}

/// zennit's Norm rule for a residual sum `a + b`: each summand gets R · summand / stabilised sum.
fn sum_relevance(a: &Tensor, b: &Tensor, r: &Tensor) -> (Tensor, Tensor) {
    let s = r / stabilize(&(a + b), STABILIZER);
    (a * &s, b * s)
}

/// Max-pooling passes each window's relevance to its winner (the pooling's gradient).
fn pool_relevance(pre_pool: &Tensor, r: &Tensor, pool: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let x = pre_pool.detach().set_requires_grad(true);
    let out = (pool(&x) * r).sum(x.kind());
    Tensor::run_backward(&[out], &[&x], false, false).remove(0)
}

/// Which rule the convs (first or other) and dense layers get under a composite.
struct Rules {
    composite: Composite,
    epsilon: f64,
}

impl Rules {
    /// The rule of a conv; `first` marks the network's first layer(s) on the input.
    fn conv(&self, first: bool) -> Rule {
        match self.composite {
            Composite::EpsilonPlusFlat if first => Rule::Flat,
            Composite::EpsilonPlusFlat | Composite::Alpha1Beta0 => Rule::ZPlus,
            Composite::Epsilon => Rule::Epsilon(self.epsilon),
        }
    }

    fn dense(&self) -> Rule {
        match self.composite {
            Composite::Alpha1Beta0 => Rule::ZPlus,
            _ => Rule::Epsilon(self.epsilon),
        }
    }
}

/// The relevance of one (patch, class): per band at native resolution, the combined 120x120 map
/// and per-band totals (band order of the store: b10m, b20m, b60m groups).
pub struct Heatmap {
    pub logit: f32,
    /// `[4,120,120]`, `[6,60,60]`, `[2,20,20]`.
    pub bands: [Tensor; 3],
    /// 120x120: each 20 m (60 m) pixel's relevance spread evenly over the 2x2 (6x6) 10 m pixels
    /// it covers, summed over bands, so totals are conserved.
    pub combined: Tensor,
    pub band_totals: Vec<f32>,
}

/// The named tensors of a model, read in the explainer's precision on the CPU.
struct Weights<'a> {
    tensors: &'a [(String, Tensor)],
    kind: Kind,
}

impl Weights<'_> {
    fn get(&self, name: &str) -> Result<Tensor> {
        let t = self
            .tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .with_context(|| format!("the weights lack {name}"))?;
        Ok(t.detach().to_kind(self.kind).to_device(tch::Device::Cpu))
    }

    /// The layer `<layer>.{weight,bias}` (a missing bias is zero) with the BatchNorm `<bn>.*`
    /// after it folded in: w' = w·γ/√(σ²+ε), b' = (b−μ)·γ/√(σ²+ε) + β.
    fn folded(&self, layer: &str, bn: &str, conv: Option<Geometry>) -> Result<Affine> {
        let w = self.get(&format!("{layer}.weight"))?;
        let bias_name = format!("{layer}.bias");
        let b = if self.tensors.iter().any(|(n, _)| *n == bias_name) {
            self.get(&bias_name)?
        } else {
            Tensor::zeros([w.size()[0]], (w.kind(), tch::Device::Cpu))
        };
        let (gamma, beta) = (
            self.get(&format!("{bn}.weight"))?,
            self.get(&format!("{bn}.bias"))?,
        );
        let (mean, var) = (
            self.get(&format!("{bn}.running_mean"))?,
            self.get(&format!("{bn}.running_var"))?,
        );
        let scale = gamma / (var + BN_EPS).sqrt();
        let mut shape = vec![-1i64];
        shape.extend(std::iter::repeat_n(1, w.dim() - 1));
        Ok(Affine {
            weight: &w * scale.reshape(&shape),
            bias: (b - mean) * &scale + beta,
            conv,
        })
    }

    /// A dense layer without BatchNorm.
    fn dense(&self, layer: &str) -> Result<Affine> {
        Ok(Affine {
            weight: self.get(&format!("{layer}.weight"))?,
            bias: self.get(&format!("{layer}.bias"))?,
            conv: None,
        })
    }
}

/// A folded network of one architecture.
enum Network {
    KBranch(kbranch::KBranchLrp),
    ResNet50(resnet::ResNetLrp),
    Vgg16(vgg::VggLrp),
}

/// The folded network, ready to explain.
pub struct Explainer {
    network: Network,
    rules: Rules,
    /// The precision of every computation: f32, or f64 for the reference comparisons
    /// (examples/lrp_reference.rs), where float32 rounding through 50 layers would blur them.
    kind: Kind,
}

/// Rows explained per pass: bounds the memory of the saved activations.
const ROWS_PER_PASS: i64 = 8;

impl Explainer {
    /// From the model's named tensors (a checkpoint's `model.safetensors`, or a live model's),
    /// computing in f32.
    pub fn new(
        weights: &[(String, Tensor)],
        arch: Arch,
        composite: Composite,
        epsilon: f64,
    ) -> Result<Self> {
        Self::with_precision(weights, arch, composite, epsilon, Kind::Float)
    }

    /// The same, computing in `kind` (`Kind::Float` or `Kind::Double`). Heatmaps keep the band
    /// maps in that precision; logits, combined maps and band totals are f32.
    pub fn with_precision(
        weights: &[(String, Tensor)],
        arch: Arch,
        composite: Composite,
        epsilon: f64,
        kind: Kind,
    ) -> Result<Self> {
        let w = Weights {
            tensors: weights,
            kind,
        };
        let network = match arch {
            Arch::KBranch => Network::KBranch(kbranch::KBranchLrp::new(&w)?),
            Arch::ResNet50 => Network::ResNet50(resnet::ResNetLrp::new(&w)?),
            Arch::Vgg16 => Network::Vgg16(vgg::VggLrp::new(&w)?),
        };
        Ok(Explainer {
            network,
            rules: Rules { composite, epsilon },
            kind,
        })
    }

    pub fn composite(&self) -> Composite {
        self.rules.composite
    }

    /// Logits `[B, 19]` of the folded network (eval mode).
    pub fn logits(&self, inputs: &[Tensor; 3]) -> Tensor {
        let inputs = self.on_cpu(inputs);
        tch::no_grad(|| match &self.network {
            Network::KBranch(n) => n.logits(&inputs),
            Network::ResNet50(n) => n.logits(&stack_bands(&inputs)),
            Network::Vgg16(n) => n.logits(&stack_bands(&inputs)),
        })
    }

    /// Explains row `i` of `inputs` for class `classes[i]`: relevance starts at that logit.
    pub fn explain(&self, inputs: &[Tensor; 3], classes: &[i64]) -> Result<Vec<Heatmap>> {
        let n = inputs[0].size()[0];
        if classes.len() as i64 != n {
            bail!("{} classes for {n} inputs", classes.len());
        }
        let inputs = self.on_cpu(inputs);
        let mut out = Vec::with_capacity(classes.len());
        for start in (0..n).step_by(ROWS_PER_PASS as usize) {
            let len = ROWS_PER_PASS.min(n - start);
            let part = [
                inputs[0].narrow(0, start, len),
                inputs[1].narrow(0, start, len),
                inputs[2].narrow(0, start, len),
            ];
            let cls = &classes[start as usize..(start + len) as usize];
            let (logits, bands) = match &self.network {
                Network::KBranch(net) => net.explain(&part, cls, &self.rules),
                Network::ResNet50(net) => {
                    explain_stacked(&part, cls, |x, c| net.explain(x, c, &self.rules))
                }
                Network::Vgg16(net) => {
                    explain_stacked(&part, cls, |x, c| net.explain(x, c, &self.rules))
                }
            };
            out.extend(heatmaps(&logits, &bands)?);
        }
        Ok(out)
    }

    fn on_cpu(&self, inputs: &[Tensor; 3]) -> [Tensor; 3] {
        inputs
            .each_ref()
            .map(|t| t.detach().to_kind(self.kind).to_device(tch::Device::Cpu))
    }
}

/// The relevance a logit starts with: that class's logit, every other class 0.
fn start_relevance(logits: &Tensor, classes: &[i64]) -> (Tensor, Tensor) {
    let index = Tensor::from_slice(classes).reshape([-1, 1]);
    let chosen = logits.gather(1, &index, false);
    (
        logits.zeros_like().scatter(1, &index, &chosen),
        chosen.reshape([-1]),
    )
}

/// A stacked network's explanation: relevance of the stacked 12-band input, carried back
/// through the upsampling (its transpose, which conserves totals) to each band group's native
/// resolution.
fn explain_stacked(
    inputs: &[Tensor; 3],
    classes: &[i64],
    net: impl Fn(&Tensor, &[i64]) -> (Tensor, Tensor),
) -> (Tensor, [Tensor; 3]) {
    let (logits, r) = net(&tch::no_grad(|| stack_bands(inputs)), classes);
    let channels: Vec<i64> = inputs.iter().map(|t| t.size()[1]).collect();
    let parts = r.split_with_sizes(&channels, 1);
    let native = |g: usize| -> Tensor {
        if inputs[g].size()[2] == STACKED_SIDE {
            return parts[g].shallow_clone();
        }
        let x = inputs[g].detach().set_requires_grad(true);
        let up = x.upsample_bilinear2d([STACKED_SIDE, STACKED_SIDE], false, None, None);
        Tensor::run_backward(&[(up * &parts[g]).sum(x.kind())], &[&x], false, false).remove(0)
    };
    (logits, [native(0), native(1), native(2)])
}

/// Per-row heatmaps from the chosen logits `[B]` and the band relevance of each group.
fn heatmaps(logits: &Tensor, bands: &[Tensor; 3]) -> Result<Vec<Heatmap>> {
    let logits = Vec::<f32>::try_from(logits.to_kind(Kind::Float))?;
    (0..logits.len())
        .map(|i| {
            let maps = bands.each_ref().map(|b| b.get(i as i64));
            let combined = maps
                .iter()
                .zip(BAND_GROUPS)
                .map(|(m, g)| {
                    spread(
                        &m.sum_dim_intlist(0, false, Kind::Float),
                        (FULL_SIDE / g.side) as i64,
                    )
                })
                .reduce(|a, b| a + b)
                .expect("three band groups");
            let mut band_totals = Vec::new();
            for m in &maps {
                band_totals.extend(Vec::<f32>::try_from(m.sum_dim_intlist(
                    [1, 2].as_slice(),
                    false,
                    Kind::Float,
                ))?);
            }
            Ok(Heatmap {
                logit: logits[i],
                bands: maps,
                combined,
                band_totals,
            })
        })
        .collect()
}

/// Each pixel's value spread evenly over the `f`x`f` block of finer pixels it covers.
fn spread(map: &Tensor, f: i64) -> Tensor {
    if f == 1 {
        return map.shallow_clone();
    }
    map.repeat_interleave_self_int(f, Some(0), None)
        .repeat_interleave_self_int(f, Some(1), None)
        / (f * f) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;

    /// A freshly initialised model's weights, with every bias zero (BatchNorm then folds to a
    /// pure scale), so that no relevance leaks into biases.
    fn unbiased(arch: Arch, seed: u64) -> Vec<(String, Tensor)> {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _ = crate::model::Model::new(&vs.root(), arch, seed, crate::model::Regularization::OWN);
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                if name.ends_with(".bias") {
                    let _ = t.zero_();
                }
            }
        });
        vs.variables().into_iter().collect()
    }

    fn inputs(n: i64) -> [Tensor; 3] {
        let o = (Kind::Float, tch::Device::Cpu);
        tch::manual_seed(4);
        [
            Tensor::randn([n, 4, 120, 120], o),
            Tensor::randn([n, 6, 60, 60], o),
            Tensor::randn([n, 2, 20, 20], o),
        ]
    }

    /// Without biases the input relevance sums to the logit, up to ε, for every architecture
    /// and composite; the combined map keeps the bands' total.
    #[test]
    fn relevance_is_conserved() {
        let _rng = crate::torch_rng();
        for (arch, rows, classes) in [
            (Arch::KBranch, 3, vec![0, 7, 18]),
            (Arch::ResNet50, 1, vec![4]),
            (Arch::Vgg16, 1, vec![11]),
        ] {
            let weights = unbiased(arch, 3);
            let x = inputs(rows);
            for composite in [
                Composite::EpsilonPlusFlat,
                Composite::Epsilon,
                Composite::Alpha1Beta0,
            ] {
                let e = Explainer::new(&weights, arch, composite, 1e-6).unwrap();
                let maps = e.explain(&x, &classes).unwrap();
                assert_eq!(maps.len(), classes.len());
                for h in maps {
                    let total: f64 = h.band_totals.iter().map(|&t| t as f64).sum();
                    let combined = h.combined.sum(Kind::Double).double_value(&[]);
                    let logit = h.logit as f64;
                    // float32 sums: the error scales with the size of what is summed.
                    let scale = h
                        .combined
                        .abs()
                        .sum(Kind::Double)
                        .double_value(&[])
                        .max(logit.abs());
                    assert!(
                        (total - logit).abs() <= 1e-4 * scale,
                        "{arch:?} {composite:?}: {total} vs logit {logit}"
                    );
                    assert!(
                        (combined - total).abs() <= 1e-4 * scale,
                        "{arch:?}: combined {combined} vs bands {total}"
                    );
                    assert_eq!(h.combined.size(), [120, 120]);
                    assert_eq!(h.bands[1].size(), [6, 60, 60]);
                    assert_eq!(h.bands[2].size(), [2, 20, 20]);
                }
            }
        }
    }

    #[test]
    fn folded_networks_give_the_models_logits() {
        let _rng = crate::torch_rng();
        for arch in [Arch::KBranch, Arch::ResNet50, Arch::Vgg16] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let m =
                crate::model::Model::new(&vs.root(), arch, 8, crate::model::Regularization::OWN);
            let x = inputs(2);
            // Non-trivial BatchNorm statistics, so folding is exercised.
            tch::no_grad(|| {
                for (name, mut t) in vs.variables() {
                    if name.ends_with("running_mean") {
                        let _ = t.uniform_(-0.5, 0.5);
                    } else if name.ends_with("running_var") {
                        let _ = t.uniform_(0.5, 2.0);
                    }
                }
            });
            let expected = tch::no_grad(|| m.forward_t(&x, false));
            let e = Explainer::new(
                &vs.variables().into_iter().collect::<Vec<_>>(),
                arch,
                Composite::EpsilonPlusFlat,
                1e-6,
            )
            .unwrap();
            let got = e.logits(&x);
            let err = (&got - &expected).abs().max().double_value(&[])
                / expected.abs().max().double_value(&[]).max(1.0);
            assert!(err < 1e-4, "{arch:?}: folded logits differ by {err}");
        }
    }

    #[test]
    fn composites_parse() {
        assert_eq!(
            "alpha1-beta0".parse::<Composite>().unwrap(),
            Composite::Alpha1Beta0
        );
        assert!(
            "zplus"
                .parse::<Composite>()
                .unwrap_err()
                .to_string()
                .contains("unknown LRP composite")
        );
    }
}
