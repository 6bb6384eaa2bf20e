//! A loss's search space (`[losses.<loss>]` of the study file): config keys, each a range on a
//! linear or log scale (`{ low, high, scale = "log" }`, `integer = true` for whole numbers) or a
//! list of choices (`{ choices = [...] }`). Values are drawn in the space where the scale is
//! uniform (logarithms for a log scale).

use std::collections::BTreeMap;

use serde::Deserialize;

/// How a range is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    #[default]
    Linear,
    Log,
}

/// One parameter's values.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Param {
    Range {
        low: f64,
        high: f64,
        #[serde(default)]
        scale: Scale,
        #[serde(default)]
        integer: bool,
    },
    Choice {
        choices: Vec<toml::Value>,
    },
}

/// A drawn value before it is written as TOML: a point of the range's uniform space, or a
/// choice's index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Point {
    Real(f64),
    Index(usize),
}

impl Param {
    /// The bounds of the range's uniform space (logarithms for a log scale).
    pub fn bounds(&self) -> Option<(f64, f64)> {
        match *self {
            Param::Range {
                low, high, scale, ..
            } => Some(match scale {
                Scale::Linear => (low, high),
                Scale::Log => (low.ln(), high.ln()),
            }),
            Param::Choice { .. } => None,
        }
    }

    /// The TOML value of a point.
    pub fn value(&self, p: Point) -> toml::Value {
        match (self, p) {
            (Param::Range { scale, integer, .. }, Point::Real(x)) => {
                let v = match scale {
                    Scale::Linear => x,
                    Scale::Log => x.exp(),
                };
                match integer {
                    true => toml::Value::Integer(v.round() as i64),
                    false => toml::Value::Float(v),
                }
            }
            (Param::Choice { choices }, Point::Index(i)) => choices[i].clone(),
            _ => unreachable!("a point of the parameter's own kind"),
        }
    }

    /// The point of a TOML value (a trial's recorded value), if it is one of this parameter.
    pub fn point(&self, v: &toml::Value) -> Option<Point> {
        match self {
            Param::Range { scale, .. } => {
                let x = v.as_float().or_else(|| v.as_integer().map(|i| i as f64))?;
                Some(Point::Real(match scale {
                    Scale::Linear => x,
                    Scale::Log => x.ln(),
                }))
            }
            Param::Choice { choices } => choices.iter().position(|c| c == v).map(Point::Index),
        }
    }

    /// Its extreme values: a range's ends, every choice.
    pub fn edges(&self) -> Vec<toml::Value> {
        match self {
            Param::Range { .. } => {
                let (low, high) = self.bounds().expect("a range has bounds");
                [low, high].map(|x| self.value(Point::Real(x))).into()
            }
            Param::Choice { choices } => choices.clone(),
        }
    }

    /// A range that is not one, or no choices: an error saying why.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Param::Range {
                low, high, scale, ..
            } => {
                if !(low.is_finite() && high.is_finite() && low < high) {
                    return Err(format!("low = {low} must be below high = {high}"));
                }
                if *scale == Scale::Log && *low <= 0.0 {
                    return Err(format!("a log scale needs low > 0, got {low}"));
                }
                Ok(())
            }
            Param::Choice { choices } if choices.is_empty() => Err("no choices".into()),
            Param::Choice { .. } => Ok(()),
        }
    }
}

/// A loss's parameters by config key.
pub type Space = BTreeMap<String, Param>;
