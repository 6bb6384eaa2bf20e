//! Layer-wise relevance propagation (LRP) for the K-Branch CNN, with the rules and composites of
//! zennit (checked against it by tests/python/test_lrp_zennit.py).
//!
//! The network is taken from its weights by name, with each BatchNorm folded into the conv or
//! dense layer before it and dropout off. Relevance starts at one class logit and flows back
//! layer by layer: ReLU passes it unchanged, max-pooling passes it to the window's winner, and
//! each conv / dense layer applies its rule, computed as zennit does: the gradient of the
//! rule's modified layer, weighted by relevance over the stabilised modified output.

use std::str::FromStr;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::labels::NUM_CLASSES;
use crate::model::{BN_EPS, BRANCHES, HIDDEN, conv_padding, pad_even_kernel};
use crate::results::HeatmapRow;

/// zennit's stabiliser for every rule but ε: the denominator moves away from zero by this much.
const STABILIZER: f64 = 1e-6;

/// Which rule each layer gets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Composite {
    /// zennit's EpsilonPlusFlat: flat on each branch's first conv, z+ on the other convs,
    /// ε on the dense layers.
    EpsilonPlusFlat,
    /// ε on every layer.
    Epsilon,
    /// α1-β0 (the same as z+) on every layer.
    Alpha1Beta0,
}

impl FromStr for Composite {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "epsilon-plus-flat" => Composite::EpsilonPlusFlat,
            "epsilon" => Composite::Epsilon,
            "alpha1-beta0" => Composite::Alpha1Beta0,
            other => bail!("unknown LRP composite {other:?} (epsilon-plus-flat, epsilon, alpha1-beta0)"),
        })
    }
}

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

/// A conv (with its kernel) or dense layer with BatchNorm folded in.
struct Affine {
    weight: Tensor,
    bias: Tensor,
    kernel: Option<i64>,
}

impl Affine {
    fn apply(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
        match self.kernel {
            Some(k) => pad_even_kernel(x, k).conv2d(weight, bias, [1, 1], [conv_padding(k), conv_padding(k)], [1, 1], 1),
            None => x.linear(weight, bias),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.apply(x, &self.weight, Some(&self.bias))
    }

    /// `grad_x Σ (layer(x; weight) · s)`: the layer's transpose applied to `s`.
    fn transpose(&self, input: &Tensor, weight: &Tensor, s: &Tensor) -> Tensor {
        let x = input.detach().set_requires_grad(true);
        let out = (self.apply(&x, weight, None) * s).sum(Kind::Float);
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
                let z = self.apply(&pos_in, &pos_w, Some(&self.bias.clamp_min(0.0))) + self.apply(&neg_in, &neg_w, None);
                let s = r / stabilize(&z, STABILIZER);
                &pos_in * self.transpose(&pos_in, &pos_w, &s) + &neg_in * self.transpose(&neg_in, &neg_w, &s)
            }
            Rule::Flat => {
                let (ones_in, ones_w) = (a.ones_like(), self.weight.ones_like());
                let s = r / stabilize(&self.apply(&ones_in, &ones_w, None), STABILIZER);
                self.transpose(&ones_in, &ones_w, &s)
            }
        }
    }
}

struct BranchLayers {
    /// Conv blocks and whether a 2x2 max-pool follows.
    convs: Vec<(Affine, bool)>,
    dense: Affine,
}

/// The folded network, ready to explain.
pub struct Explainer {
    branches: Vec<BranchLayers>,
    fusion: Affine,
    head: Affine,
    pub composite: Composite,
    pub epsilon: f64,
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

/// `prefix.bn.*` folded into the layer `prefix.<layer>.{weight,bias}` before it.
fn folded(weights: &[(String, Tensor)], layer: &str, bn: &str, kernel: Option<i64>) -> Result<Affine> {
    let get = |name: String| -> Result<Tensor> {
        let t = weights.iter().find(|(n, _)| *n == name).map(|(_, t)| t).with_context(|| format!("the weights lack {name}"))?;
        Ok(t.detach().to_kind(Kind::Float).to_device(tch::Device::Cpu))
    };
    let (w, b) = (get(format!("{layer}.weight"))?, get(format!("{layer}.bias"))?);
    let (gamma, beta) = (get(format!("{bn}.weight"))?, get(format!("{bn}.bias"))?);
    let (mean, var) = (get(format!("{bn}.running_mean"))?, get(format!("{bn}.running_var"))?);
    let scale = gamma / (var + BN_EPS).sqrt();
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1, w.dim() - 1));
    Ok(Affine { weight: &w * scale.reshape(&shape), bias: (b - mean) * &scale + beta, kernel })
}

impl Explainer {
    /// From the model's named tensors (a checkpoint's `model.safetensors`, or a live model's).
    pub fn new(weights: &[(String, Tensor)], composite: Composite, epsilon: f64) -> Result<Self> {
        let branches = BRANCHES
            .iter()
            .map(|spec| -> Result<BranchLayers> {
                let convs = spec
                    .convs
                    .iter()
                    .enumerate()
                    .map(|(i, &(_, kernel, pool))| {
                        let p = format!("{}.conv{}", spec.name, i + 1);
                        Ok((folded(weights, &format!("{p}.conv"), &format!("{p}.bn"), Some(kernel))?, pool))
                    })
                    .collect::<Result<_>>()?;
                let p = format!("{}.dense", spec.name);
                Ok(BranchLayers { convs, dense: folded(weights, &format!("{p}.fc"), &format!("{p}.bn"), None)? })
            })
            .collect::<Result<_>>()?;
        let fusion = folded(weights, "fusion.fc", "fusion.bn", None)?;
        let head = weights.iter().find(|(n, _)| n == "head.weight").map(|(_, t)| t).context("the weights lack head.weight")?;
        let bias = weights.iter().find(|(n, _)| n == "head.bias").map(|(_, t)| t).context("the weights lack head.bias")?;
        let cpu = |t: &Tensor| t.detach().to_kind(Kind::Float).to_device(tch::Device::Cpu);
        let head = Affine { weight: cpu(head), bias: cpu(bias), kernel: None };
        Ok(Explainer { branches, fusion, head, composite, epsilon })
    }

    fn conv_rule(&self, index: usize) -> Rule {
        match self.composite {
            Composite::EpsilonPlusFlat if index == 0 => Rule::Flat,
            Composite::EpsilonPlusFlat | Composite::Alpha1Beta0 => Rule::ZPlus,
            Composite::Epsilon => Rule::Epsilon(self.epsilon),
        }
    }

    fn dense_rule(&self) -> Rule {
        match self.composite {
            Composite::Alpha1Beta0 => Rule::ZPlus,
            _ => Rule::Epsilon(self.epsilon),
        }
    }

    /// Logits `[B, 19]` of the folded network (eval mode).
    pub fn logits(&self, inputs: &[Tensor; 3]) -> Tensor {
        tch::no_grad(|| {
            let hidden: Vec<Tensor> =
                self.branches.iter().zip(inputs).map(|(b, x)| branch_forward(b, x, &mut Vec::new()).0).collect();
            self.head.forward(&self.fusion.forward(&Tensor::cat(&hidden, 1)).relu())
        })
    }

    /// Explains row `i` of `inputs` for class `classes[i]`: relevance starts at that logit.
    pub fn explain(&self, inputs: &[Tensor; 3], classes: &[i64]) -> Result<Vec<Heatmap>> {
        let n = inputs[0].size()[0];
        if classes.len() as i64 != n {
            bail!("{} classes for {n} inputs", classes.len());
        }
        let inputs: Vec<Tensor> = inputs.iter().map(|t| t.detach().to_kind(Kind::Float).to_device(tch::Device::Cpu)).collect();
        // Forward, keeping every layer's input.
        let mut saved: Vec<Vec<Tensor>> = Vec::new();
        let mut hidden = Vec::new();
        let mut dense_in = Vec::new();
        tch::no_grad(|| {
            for (b, x) in self.branches.iter().zip(&inputs) {
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
        let index = Tensor::from_slice(classes).reshape([-1, 1]);
        let start = logits.zeros_like().scatter(1, &index, &logits.gather(1, &index, false));

        let r = self.head.relevance(&head_in, &start, self.dense_rule());
        let r = self.fusion.relevance(&fused, &r, self.dense_rule());
        let parts = r.split(HIDDEN, 1);
        let mut bands = Vec::new();
        for (((b, acts), d), r) in self.branches.iter().zip(&saved).zip(&dense_in).zip(parts) {
            let r = b.dense.relevance(d, &r, self.dense_rule());
            // acts: per conv block, its input and (when pooled) its pre-pool output.
            let mut r = r.reshape(acts.last().expect("a conv output").size());
            for (i, (conv, pool)) in b.convs.iter().enumerate().rev() {
                if *pool {
                    r = pool_relevance(&acts[2 * i + 1], &r);
                }
                r = conv.relevance(&acts[2 * i], &r, self.conv_rule(i));
            }
            bands.push(r);
        }
        let logits = Vec::<f32>::try_from(logits.gather(1, &index, false).reshape([-1]))?;
        (0..n as usize)
            .map(|i| {
                let band = |g: usize| bands[g].get(i as i64);
                let maps = [band(0), band(1), band(2)];
                let combined = maps[0].sum_dim_intlist(0, false, Kind::Float)
                    + spread(&maps[1].sum_dim_intlist(0, false, Kind::Float), 2)
                    + spread(&maps[2].sum_dim_intlist(0, false, Kind::Float), 6);
                let band_totals: Vec<f32> = maps
                    .iter()
                    .flat_map(|m| Vec::<f32>::try_from(m.sum_dim_intlist([1, 2].as_slice(), false, Kind::Float)).unwrap_or_default())
                    .collect();
                Ok(Heatmap { logit: logits[i], bands: maps, combined, band_totals })
            })
            .collect()
    }
}

/// The default probe set: `count` patches of a split (row-major `[N, 19]` labels) such that
/// rare classes are covered: for each class from the rarest up, the first patch carrying it
/// unless one already chosen does; then the first patches not chosen yet. Deterministic.
pub fn pick_probes(labels: &[u8], count: usize) -> Vec<usize> {
    let n = labels.len() / NUM_CLASSES;
    let carries = |i: usize, c: usize| labels[i * NUM_CLASSES + c] == 1;
    let mut frequency: Vec<(usize, usize)> =
        (0..NUM_CLASSES).map(|c| ((0..n).filter(|&i| carries(i, c)).count(), c)).filter(|&(k, _)| k > 0).collect();
    frequency.sort();
    let mut chosen: Vec<usize> = Vec::new();
    for (_, c) in frequency {
        if chosen.len() == count {
            break;
        }
        if !chosen.iter().any(|&i| carries(i, c))
            && let Some(i) = (0..n).find(|&i| carries(i, c) && !chosen.contains(&i))
        {
            chosen.push(i);
        }
    }
    chosen.extend((0..n).filter(|i| !chosen.contains(i)).take(count.saturating_sub(chosen.len())).collect::<Vec<_>>());
    chosen
}

/// Patches to explain: model inputs (one row each), names, and their true and predicted labels
/// (row-major `[B, 19]` 0/1).
pub struct Patches<'a> {
    pub inputs: &'a [Tensor; 3],
    pub names: &'a [String],
    pub truth: &'a [u8],
    pub predicted: &'a [u8],
}

/// Explains patches for their true and predicted classes, or for `classes` when given.
pub fn explain_patches(
    explainer: &Explainer,
    patches: &Patches,
    classes: Option<&[usize]>,
    epoch: u32,
    with_bands: bool,
) -> Result<Vec<HeatmapRow>> {
    let Patches { inputs, names, truth, predicted } = *patches;
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for row in 0..names.len() {
        let at = |v: &[u8], c: usize| v[row * NUM_CLASSES + c] == 1;
        for c in 0..NUM_CLASSES {
            let wanted = match classes {
                Some(list) => list.contains(&c),
                None => at(truth, c) || at(predicted, c),
            };
            if wanted {
                pairs.push((row, c));
            }
        }
    }
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let rows = Tensor::from_slice(&pairs.iter().map(|&(r, _)| r as i64).collect::<Vec<_>>());
    let selected = [inputs[0].index_select(0, &rows), inputs[1].index_select(0, &rows), inputs[2].index_select(0, &rows)];
    let maps = explainer.explain(&selected, &pairs.iter().map(|&(_, c)| c as i64).collect::<Vec<_>>())?;
    let flat = |t: &Tensor| Vec::<f32>::try_from(t.reshape([-1])).context("reading a relevance map");
    pairs
        .iter()
        .zip(maps)
        .map(|(&(row, c), h)| {
            let bands = if with_bands {
                let mut all = Vec::with_capacity(crate::results::BAND_MAP_VALUES);
                for b in &h.bands {
                    all.extend(flat(b)?);
                }
                Some(all)
            } else {
                None
            };
            Ok(HeatmapRow {
                epoch,
                patch: names[row].clone(),
                class_index: c as u8,
                is_true: truth[row * NUM_CLASSES + c] == 1,
                is_predicted: predicted[row * NUM_CLASSES + c] == 1,
                logit: h.logit,
                map: flat(&h.combined)?,
                band_totals: h.band_totals,
                bands,
            })
        })
        .collect()
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
        x = if *pool { y.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false) } else { y };
    }
    acts.push(x.shallow_clone());
    let d = x.flatten(1, -1);
    (b.dense.forward(&d).relu(), d)
}

/// Max-pooling passes each window's relevance to its winner (the pooling's gradient).
fn pool_relevance(pre_pool: &Tensor, r: &Tensor) -> Tensor {
    let x = pre_pool.detach().set_requires_grad(true);
    let out = (x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false) * r).sum(Kind::Float);
    Tensor::run_backward(&[out], &[&x], false, false).remove(0)
}

/// Each pixel's value spread evenly over the `f`x`f` block of finer pixels it covers.
fn spread(map: &Tensor, f: i64) -> Tensor {
    map.repeat_interleave_self_int(f, Some(0), None).repeat_interleave_self_int(f, Some(1), None) / (f * f) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;

    fn model(seed: u64) -> Vec<(String, Tensor)> {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _ = crate::model::KBranch::new(&vs.root(), seed);
        vs.variables().into_iter().collect()
    }

    fn inputs(n: i64) -> [Tensor; 3] {
        let o = (Kind::Float, tch::Device::Cpu);
        tch::manual_seed(4);
        [Tensor::randn([n, 4, 120, 120], o), Tensor::randn([n, 6, 60, 60], o), Tensor::randn([n, 2, 20, 20], o)]
    }

    /// A freshly initialised model has zero biases (and BatchNorm folds to a pure scale), so no
    /// relevance leaks into biases: the input relevance sums to the logit, up to ε.
    #[test]
    fn relevance_is_conserved() {
        let _rng = crate::TORCH_RNG.lock().unwrap();
        let weights = model(3);
        let x = inputs(3);
        for composite in [Composite::EpsilonPlusFlat, Composite::Epsilon, Composite::Alpha1Beta0] {
            let e = Explainer::new(&weights, composite, 1e-6).unwrap();
            let maps = e.explain(&x, &[0, 7, 18]).unwrap();
            for h in maps {
                let total: f64 = h.band_totals.iter().map(|&t| t as f64).sum();
                let combined = h.combined.sum(Kind::Double).double_value(&[]);
                let logit = h.logit as f64;
                // float32 sums: the error scales with the size of what is summed.
                let scale = h.combined.abs().sum(Kind::Double).double_value(&[]).max(logit.abs());
                assert!((total - logit).abs() <= 1e-4 * scale, "{composite:?}: {total} vs logit {logit}");
                assert!((combined - total).abs() <= 1e-4 * total.abs().max(1e-3), "combined {combined} vs bands {total}");
                assert_eq!(h.combined.size(), [120, 120]);
                assert_eq!(h.bands[1].size(), [6, 60, 60]);
            }
        }
    }

    #[test]
    fn folded_network_gives_the_models_logits() {
        let _rng = crate::TORCH_RNG.lock().unwrap();
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let m = crate::model::KBranch::new(&vs.root(), 8);
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
        let expected = m.forward_t(&x[0], &x[1], &x[2], false);
        let e = Explainer::new(&vs.variables().into_iter().collect::<Vec<_>>(), Composite::EpsilonPlusFlat, 1e-6).unwrap();
        let got = e.logits(&x);
        let err = (&got - &expected).abs().max().double_value(&[]);
        assert!(err < 1e-4, "folded logits differ by {err}");
    }

    #[test]
    fn probes_cover_rare_classes_first() {
        // Four patches; class 2 is carried by patch 3 only, class 1 by patches 1 and 2.
        let mut labels = vec![0u8; 4 * NUM_CLASSES];
        for (patch, class) in [(0, 0), (1, 0), (1, 1), (2, 1), (3, 0), (3, 2)] {
            labels[patch * NUM_CLASSES + class] = 1;
        }
        assert_eq!(pick_probes(&labels, 2), vec![3, 1]);
        assert_eq!(pick_probes(&labels, 4), vec![3, 1, 0, 2]);
        assert_eq!(pick_probes(&labels, 9).len(), 4);
    }

    #[test]
    fn composites_parse() {
        assert_eq!("alpha1-beta0".parse::<Composite>().unwrap(), Composite::Alpha1Beta0);
        assert!("zplus".parse::<Composite>().unwrap_err().to_string().contains("unknown LRP composite"));
    }
}
