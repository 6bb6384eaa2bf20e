//! The `[loss]` section of a job config: one loss by name with its parameters, or a weighted
//! mix of several (docs/losses.md). This is the one list of loss names and parameters; the
//! trainer resolves it into a runtime loss once the training split is known.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Every loss a config can name.
pub const NAMES: [&str; 11] = [
    "ce",
    "wce",
    "focal",
    "hamming",
    "huber",
    "sparsemax",
    "ranking",
    "asl",
    "zlpr",
    "poly1",
    "weighted_focal",
];

/// The published study's seven losses, by config name (a landscape evaluates all of them):
/// the first seven of [`NAMES`], the newer losses after them.
pub const STUDY_LOSSES: &[&str] = NAMES.split_at(7).0;

/// The study's losses in its tables' order (docs/study.md, Table 6.1), with their
/// abbreviations there.
pub const STUDY_TABLE: [(&str, &str); 7] = [
    ("ce", "CE"),
    ("focal", "FL"),
    ("hamming", "HAL"),
    ("huber", "HL"),
    ("sparsemax", "SML"),
    ("ranking", "RL"),
    ("wce", "W-CE"),
];

/// The losses built on binary cross-entropy, whose targets label smoothing may soften
/// (`train.label_smoothing`).
pub const SMOOTHABLE: [&str; 5] = ["ce", "wce", "focal", "weighted_focal", "poly1"];

/// One loss and its parameters, as written in a config (`name = "focal"`, `gamma = 2.0`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum SingleLoss {
    /// Sigmoid cross-entropy.
    Ce,
    /// Cross-entropy with W-CE's per-class positive weights from the training split.
    Wce,
    /// Focal loss; `alpha` weighs positives (and 1 − alpha negatives) when set.
    Focal {
        #[serde(default = "defaults::focal_gamma")]
        gamma: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alpha: Option<f64>,
    },
    /// Expected Hamming loss.
    Hamming,
    /// Modified Huber loss.
    Huber,
    /// Multi-label sparsemax loss.
    Sparsemax,
    /// Pairwise ranking hinge, decided by thresholding the logits.
    Ranking {
        #[serde(default = "defaults::one")]
        margin: f64,
        #[serde(default)]
        threshold: f64,
    },
    /// Asymmetric loss (ASL).
    Asl {
        #[serde(default)]
        gamma_pos: f64,
        #[serde(default = "defaults::asl_gamma_neg")]
        gamma_neg: f64,
        #[serde(default = "defaults::asl_clip")]
        clip: f64,
    },
    /// ZLPR ("softmax + cross-entropy" for multi-label).
    Zlpr,
    /// Poly-1 on the per-class binary cross-entropy.
    Poly1 {
        #[serde(default = "defaults::one")]
        epsilon: f64,
    },
    /// Focal loss with W-CE's per-class positive weights.
    WeightedFocal {
        #[serde(default = "defaults::focal_gamma")]
        gamma: f64,
    },
}

mod defaults {
    pub fn focal_gamma() -> f64 {
        2.0
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn asl_gamma_neg() -> f64 {
        4.0
    }
    pub fn asl_clip() -> f64 {
        0.05
    }
}

/// One part of a mix: a loss with its parameters and its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct MixPart {
    pub weight: f64,
    pub loss: SingleLoss,
}

/// A weighted sum of losses; labels are decided by the rule of the part named by `decision`
/// (default: the first part).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    pub mix: Vec<MixPart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
}

/// The `[loss]` section: `name = ...` with parameters, or `mix = [...]`.
#[derive(Debug, Clone, PartialEq)]
pub enum LossSpec {
    Single(SingleLoss),
    Mix(Mix),
}

impl SingleLoss {
    /// The name written in configs (`ce`, `weighted_focal`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            SingleLoss::Ce => "ce",
            SingleLoss::Wce => "wce",
            SingleLoss::Focal { .. } => "focal",
            SingleLoss::Hamming => "hamming",
            SingleLoss::Huber => "huber",
            SingleLoss::Sparsemax => "sparsemax",
            SingleLoss::Ranking { .. } => "ranking",
            SingleLoss::Asl { .. } => "asl",
            SingleLoss::Zlpr => "zlpr",
            SingleLoss::Poly1 { .. } => "poly1",
            SingleLoss::WeightedFocal { .. } => "weighted_focal",
        }
    }

    /// The study's defaults for a name.
    pub fn with_defaults(name: &str) -> Result<SingleLoss, String> {
        toml::Value::Table(toml::Table::from_iter([(
            "name".to_string(),
            toml::Value::String(name.into()),
        )]))
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())
    }

    /// Parameter values out of range: `Err((parameter, why))`.
    fn check(&self) -> Result<(), (&'static str, String)> {
        let at_least_zero = |key, v: f64| {
            if v >= 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err((key, format!("must be 0 or more, got {v}")))
            }
        };
        match *self {
            SingleLoss::Focal { gamma, alpha } => {
                at_least_zero("gamma", gamma)?;
                if let Some(a) = alpha
                    && !(a > 0.0 && a < 1.0)
                {
                    return Err(("alpha", format!("must be between 0 and 1, got {a}")));
                }
            }
            SingleLoss::WeightedFocal { gamma } => at_least_zero("gamma", gamma)?,
            SingleLoss::Ranking { margin, threshold } => {
                if !(margin > 0.0 && margin.is_finite()) {
                    return Err(("margin", format!("must be a positive number, got {margin}")));
                }
                if !threshold.is_finite() {
                    return Err(("threshold", "must be a finite number".into()));
                }
            }
            SingleLoss::Asl {
                gamma_pos,
                gamma_neg,
                clip,
            } => {
                at_least_zero("gamma_pos", gamma_pos)?;
                at_least_zero("gamma_neg", gamma_neg)?;
                if !(0.0..1.0).contains(&clip) {
                    return Err(("clip", format!("must be in [0, 1), got {clip}")));
                }
            }
            SingleLoss::Poly1 { epsilon } => {
                if !epsilon.is_finite() || epsilon < -1.0 {
                    return Err((
                        "epsilon",
                        format!("must be a finite number of at least -1, got {epsilon}"),
                    ));
                }
            }
            SingleLoss::Ce
            | SingleLoss::Wce
            | SingleLoss::Hamming
            | SingleLoss::Huber
            | SingleLoss::Sparsemax
            | SingleLoss::Zlpr => {}
        }
        Ok(())
    }
}

impl LossSpec {
    /// Whether label smoothing is defined for it: every part is a loss on binary cross-entropy.
    pub fn smoothable(&self) -> bool {
        let ok = |l: &SingleLoss| SMOOTHABLE.contains(&l.name());
        match self {
            LossSpec::Single(l) => ok(l),
            LossSpec::Mix(m) => m.mix.iter().all(|p| ok(&p.loss)),
        }
    }

    /// `ce`, ..., or `mix`: the `loss` column of the result tables.
    pub fn name(&self) -> &'static str {
        match self {
            LossSpec::Single(l) => l.name(),
            LossSpec::Mix(_) => "mix",
        }
    }

    /// Value checks beyond types: `Err((key below [loss], why))`.
    pub fn check(&self) -> Result<(), (String, String)> {
        match self {
            LossSpec::Single(l) => l.check().map_err(|(k, m)| (k.to_string(), m)),
            LossSpec::Mix(m) => {
                if m.mix.is_empty() {
                    return Err(("mix".into(), "needs at least one loss".into()));
                }
                for (i, part) in m.mix.iter().enumerate() {
                    if !(part.weight > 0.0 && part.weight.is_finite()) {
                        return Err((
                            format!("mix[{i}].weight"),
                            format!("must be a positive number, got {}", part.weight),
                        ));
                    }
                    part.loss
                        .check()
                        .map_err(|(k, msg)| (format!("mix[{i}].{k}"), msg))?;
                }
                if let Some(d) = &m.decision
                    && !m.mix.iter().any(|p| p.loss.name() == d)
                {
                    let names: Vec<&str> = m.mix.iter().map(|p| p.loss.name()).collect();
                    return Err((
                        "decision".into(),
                        format!("{d:?} is none of the mixed losses ({})", names.join(", ")),
                    ));
                }
                Ok(())
            }
        }
    }
}

fn table<E: serde::de::Error>(value: toml::Value, what: &str) -> Result<toml::Table, E> {
    match value {
        toml::Value::Table(t) => Ok(t),
        other => Err(E::custom(format!(
            "{what}: expected a table, found {}",
            other.type_str()
        ))),
    }
}

/// The message of a nested deserialisation error, without toml's position (the config loader
/// names the file and line).
fn message<E: serde::de::Error>(e: toml::de::Error) -> E {
    E::custom(e.message())
}

impl<'de> Deserialize<'de> for MixPart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut t = table::<D::Error>(toml::Value::deserialize(d)?, "a mixed loss")?;
        let weight = match t.remove("weight") {
            Some(toml::Value::Float(w)) => w,
            Some(toml::Value::Integer(w)) => w as f64,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "`weight`: expected a number, found {}",
                    other.type_str()
                )));
            }
            None => return Err(D::Error::missing_field("weight")),
        };
        Ok(MixPart {
            weight,
            loss: single::<D::Error>(t)?,
        })
    }
}

impl Serialize for MixPart {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = match toml::Value::try_from(&self.loss).map_err(serde::ser::Error::custom)? {
            toml::Value::Table(t) => t,
            _ => return Err(serde::ser::Error::custom("a loss serialises to a table")),
        };
        t.insert("weight".into(), toml::Value::Float(self.weight));
        t.serialize(s)
    }
}

/// A single loss from its table. serde checks the parameters of losses that have some; a loss
/// without parameters (a unit variant) would silently ignore any, so keys are also checked
/// against what the parsed loss writes back.
fn single<E: serde::de::Error>(t: toml::Table) -> Result<SingleLoss, E> {
    let loss: SingleLoss = toml::Value::Table(t.clone())
        .try_into()
        .map_err(message::<E>)?;
    let known = match toml::Value::try_from(&loss) {
        Ok(toml::Value::Table(k)) => k,
        _ => return Ok(loss),
    };
    if let Some(key) = t.keys().find(|k| !known.contains_key(*k)) {
        return Err(E::custom(format!(
            "unknown field `{key}`: loss `{}` takes no parameters",
            loss.name()
        )));
    }
    Ok(loss)
}

impl<'de> Deserialize<'de> for LossSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = table::<D::Error>(toml::Value::deserialize(d)?, "[loss]")?;
        if t.contains_key("mix") {
            toml::Value::Table(t)
                .try_into()
                .map(LossSpec::Mix)
                .map_err(message::<D::Error>)
        } else {
            single::<D::Error>(t).map(LossSpec::Single)
        }
    }
}

impl Serialize for LossSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LossSpec::Single(l) => l.serialize(s),
            LossSpec::Mix(m) => m.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LossSpec, String> {
        let v: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
        v.try_into()
            .map_err(|e: toml::de::Error| e.message().to_string())
    }

    #[test]
    fn names_parameters_and_defaults() {
        assert_eq!(
            parse("name = \"ce\"").unwrap(),
            LossSpec::Single(SingleLoss::Ce)
        );
        assert_eq!(
            parse("name = \"focal\"").unwrap(),
            LossSpec::Single(SingleLoss::Focal {
                gamma: 2.0,
                alpha: None
            })
        );
        assert_eq!(
            parse("name = \"asl\"\nclip = 0.1").unwrap(),
            LossSpec::Single(SingleLoss::Asl {
                gamma_pos: 0.0,
                gamma_neg: 4.0,
                clip: 0.1
            })
        );
        let e = parse("name = \"mse\"").unwrap_err();
        assert!(
            e.contains("unknown variant `mse`") && e.contains("weighted_focal"),
            "{e}"
        );
        let e = parse("name = \"ce\"\ngamma = 2").unwrap_err();
        assert!(
            e.contains("unknown field `gamma`: loss `ce` takes no parameters"),
            "{e}"
        );
        let e = parse("mix = [{ name = \"zlpr\", weight = 1, margin = 2 }]").unwrap_err();
        assert!(e.contains("unknown field `margin`"), "{e}");
        let e = parse("name = \"focal\"\ngama = 2").unwrap_err();
        assert!(
            e.contains("unknown field `gama`") && e.contains("`gamma`"),
            "{e}"
        );
        for name in NAMES {
            assert_eq!(SingleLoss::with_defaults(name).unwrap().name(), name);
        }
    }

    #[test]
    fn mixes_parse_check_and_round_trip() {
        let text = "mix = [{ name = \"focal\", weight = 0.5, gamma = 1.0 }, { name = \"sparsemax\", weight = 0.5 }]\ndecision = \"sparsemax\"";
        let spec = parse(text).unwrap();
        let LossSpec::Mix(m) = &spec else {
            panic!("{spec:?}")
        };
        assert_eq!(
            m.mix[0],
            MixPart {
                weight: 0.5,
                loss: SingleLoss::Focal {
                    gamma: 1.0,
                    alpha: None
                }
            }
        );
        assert_eq!(spec.name(), "mix");
        spec.check().unwrap();
        let written = toml::to_string(&spec).unwrap();
        assert_eq!(parse(&written).unwrap(), spec, "{written}");
        let bad = parse("mix = [{ name = \"ce\", weight = 0.5 }]\ndecision = \"focal\"").unwrap();
        assert!(
            bad.check()
                .unwrap_err()
                .1
                .contains("none of the mixed losses")
        );
        let bad = parse("mix = [{ name = \"ce\", weight = -1 }]").unwrap();
        assert_eq!(bad.check().unwrap_err().0, "mix[0].weight");
        assert!(
            parse("mix = [{ name = \"ce\" }]")
                .unwrap_err()
                .contains("weight")
        );
        let bad = parse("mix = [{ name = \"focal\", weight = 1, alpha = 2.0 }]").unwrap();
        assert_eq!(bad.check().unwrap_err().0, "mix[0].alpha");
    }
}
