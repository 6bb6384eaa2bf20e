//! What defines a landscape, kept as `spec.json` beside its blocks and checked on every rerun:
//! what every kind shares (the run, the seed, the subsets, BatchNorm's mode), and each kind's
//! own part ([`KindSpec`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::spectrum::SpectrumSpec;

/// What `--kind` asks for (in `spec.json`, the tag of [`KindSpec`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LandscapeKind {
    #[value(name = "1d")]
    OneD,
    #[value(name = "2d")]
    TwoD,
    Interp,
    Sharpness,
    /// The Hessian's top eigenvalues, trace, eigenvalue density and per-layer values.
    Spectrum,
}

impl LandscapeKind {
    pub fn name(self) -> &'static str {
        match self {
            LandscapeKind::OneD => "1d",
            LandscapeKind::TwoD => "2d",
            LandscapeKind::Interp => "interp",
            LandscapeKind::Sharpness => "sharpness",
            LandscapeKind::Spectrum => "spectrum",
        }
    }
}

/// How BatchNorm normalises at a grid point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BnMode {
    /// The checkpoint's running statistics (as at validation).
    Eval,
    /// Each evaluation batch's own statistics, recomputed at every point.
    Batch,
}

/// Everything that defines a landscape; stored as `spec.json` and checked on a rerun.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// What is computed: the kind and what only it has.
    #[serde(flatten)]
    pub of: KindSpec,
    /// The run folder.
    pub run: PathBuf,
    pub seed: u64,
    pub bn: BnMode,
    /// Rows of the training and validation splits in the subsets.
    pub train_rows: Vec<usize>,
    pub val_rows: Vec<usize>,
    pub batch: usize,
    pub data: PathBuf,
}

/// A grid's axes around one checkpoint (`1d`, `2d`, `interp`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Axes {
    /// The checkpoint (for `interp`, the start).
    pub epoch: u32,
    /// α (and β) from, to; `interp`: t.
    pub range: (f64, f64),
    /// Points per axis.
    pub points: usize,
    /// Points per block.
    pub block: usize,
}

/// Each kind's own part of a [`Spec`] (`spec.json` holds it beside the shared fields, tagged
/// by `kind`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum KindSpec {
    #[serde(rename = "1d")]
    OneD {
        #[serde(flatten)]
        axes: Axes,
        include_bias_bn: bool,
    },
    #[serde(rename = "2d")]
    TwoD {
        #[serde(flatten)]
        axes: Axes,
        include_bias_bn: bool,
    },
    #[serde(rename = "interp")]
    Interp {
        #[serde(flatten)]
        axes: Axes,
        /// The other end: a run folder and its epoch.
        to: (PathBuf, u32),
    },
    /// One checkpoint per block.
    #[serde(rename = "sharpness")]
    Sharpness {
        epochs: Vec<u32>,
        iterations: usize,
        tolerance: f64,
    },
    #[serde(rename = "spectrum")]
    Spectrum {
        epochs: Vec<u32>,
        /// Of the directions its top eigenvectors are compared with.
        include_bias_bn: bool,
        spectrum: SpectrumSpec,
    },
}

impl Spec {
    pub fn kind(&self) -> LandscapeKind {
        match self.of {
            KindSpec::OneD { .. } => LandscapeKind::OneD,
            KindSpec::TwoD { .. } => LandscapeKind::TwoD,
            KindSpec::Interp { .. } => LandscapeKind::Interp,
            KindSpec::Sharpness { .. } => LandscapeKind::Sharpness,
            KindSpec::Spectrum { .. } => LandscapeKind::Spectrum,
        }
    }

    /// The grid's axes (none for the kinds over checkpoints).
    pub fn axes(&self) -> Option<&Axes> {
        match &self.of {
            KindSpec::OneD { axes, .. }
            | KindSpec::TwoD { axes, .. }
            | KindSpec::Interp { axes, .. } => Some(axes),
            KindSpec::Sharpness { .. } | KindSpec::Spectrum { .. } => None,
        }
    }

    /// The checkpoint a grid is centred on (none for the kinds over checkpoints).
    pub fn centre(&self) -> Option<u32> {
        self.axes().map(|a| a.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(of: KindSpec) -> Spec {
        Spec {
            of,
            run: "/runs/ce-seed0".into(),
            seed: 0,
            bn: BnMode::Eval,
            train_rows: vec![1, 4],
            val_rows: vec![2],
            batch: 64,
            data: "/data/store.zarr".into(),
        }
    }

    /// The one flat `spec.json` of earlier versions, with every kind's fields (those of other
    /// kinds at their defaults).
    fn earlier(kind: &str, epoch: &str, to: &str, epochs: &str, spectrum: &str) -> String {
        format!(
            r#"{{"kind": "{kind}", "run": "/runs/ce-seed0", "epoch": {epoch}, "to": {to},
            "seed": 0, "range": [-1.0, 1.0], "points": 51, "include_bias_bn": false,
            "bn": "eval", "train_rows": [1, 4], "val_rows": [2], "batch": 64, "block": 16,
            "epochs": {epochs}, "iterations": 50, "tolerance": 0.001,
            "data": "/data/store.zarr"{spectrum}}}"#
        )
    }

    /// A rerun of a landscape an earlier version wrote finds the same landscape (its
    /// `spec.json` is checked against the rerun's), and every kind's spec reads back as
    /// written.
    #[test]
    fn earlier_versions_specs_read_as_the_same_landscape() {
        let axes = Axes {
            epoch: 3,
            range: (-1.0, 1.0),
            points: 51,
            block: 16,
        };
        let spectrum = SpectrumSpec {
            top_k: 5,
            lanczos_steps: 40,
            layer_steps: 20,
            trace_probes: 100,
            trace_min_probes: 10,
            trace_tolerance: 0.01,
            density_probes: 4,
            density_points: 256,
            sigma: None,
            layers: true,
        };
        let spectrum_json = format!(
            ", \"spectrum\": {}",
            serde_json::to_string(&spectrum).unwrap()
        );
        let cases = [
            (
                earlier("2d", "3", "null", "[]", ""),
                shared(KindSpec::TwoD {
                    axes: axes.clone(),
                    include_bias_bn: false,
                }),
            ),
            (
                earlier("interp", "3", r#"["/runs/ce-seed1", 5]"#, "[]", ""),
                shared(KindSpec::Interp {
                    axes: axes.clone(),
                    to: ("/runs/ce-seed1".into(), 5),
                }),
            ),
            (
                earlier("sharpness", "null", "null", "[1, 2]", ""),
                shared(KindSpec::Sharpness {
                    epochs: vec![1, 2],
                    iterations: 50,
                    tolerance: 0.001,
                }),
            ),
            (
                earlier("spectrum", "null", "null", "[2]", &spectrum_json),
                shared(KindSpec::Spectrum {
                    epochs: vec![2],
                    include_bias_bn: false,
                    spectrum,
                }),
            ),
        ];
        for (json, spec) in cases {
            let read: Spec = serde_json::from_str(&json).unwrap();
            assert_eq!(read, spec, "{json}");
            let again: Spec = serde_json::from_slice(&serde_json::to_vec(&spec).unwrap()).unwrap();
            assert_eq!(again, spec);
        }
    }
}
