//! Job configuration, read once at start (docs/training.md, "Configuration"): a TOML file that
//! may extend another (`base = "base.toml"`), then command-line overrides. Unknown keys, wrong
//! types and bad values are errors that name the key and the file and line that set it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::losses::LossSpec;
use crate::model::Arch;
use crate::recipe::{Augment, Dropout, OptimizerKind, Schedule, Selection};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub run: RunSection,
    pub train: TrainSection,
    pub model: ModelSection,
    pub data: DataSection,
    pub loss: LossSpec,
    pub checkpoint: CheckpointSection,
    pub lrp: LrpSection,
    /// The best epoch and early stopping (docs/training.md, "Training recipes").
    #[serde(default)]
    pub selection: Selection,
    /// TensorBoard event files (docs/training.md, "Watching a run").
    #[serde(default)]
    pub tensorboard: TensorboardSection,
    /// Where the path keys were set (`run.data` → `jobs/base.toml:7`), for messages.
    #[serde(skip)]
    pub sources: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub seed: u64,
    /// The store written by data-prep.
    pub data: PathBuf,
    /// Folder holding one folder per run.
    pub out: PathBuf,
    /// Name of the job: the config file's stem unless set (`jobs/focal.toml` → `focal`).
    #[serde(default)]
    pub job: String,
    /// Name of the run folder; default `<job>-seed<seed>`, `<job>-<arch>-seed<seed>` for an
    /// architecture other than the K-Branch CNN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub device: DeviceChoice,
    /// Compute threads on the CPU; 0 = all cores.
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub epochs: u32,
    /// Patches per optimizer step (the global batch).
    pub batch_size: usize,
    /// Micro-batches per step; `batch_size` must be a multiple of it.
    pub accumulate: usize,
    pub lr: f64,
    /// L2 weight decay on the conv weights.
    pub conv_weight_decay: f64,
    pub loader_threads: usize,
    /// Batches read ahead of the one being computed.
    pub prefetch_batches: usize,
    /// bf16 autocast of the forward pass (CUDA only; an error on the CPU).
    pub bf16: bool,
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// AdamW's decoupled weight decay (every weight).
    #[serde(default)]
    pub weight_decay: f64,
    /// Targets y·(1 − ε) + ε/2 for the losses built on binary cross-entropy.
    #[serde(default)]
    pub label_smoothing: f64,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub augment: Augment,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub arch: Arch,
    /// `true` (the network's own rates), `false` (none: device-equivalence checks) or a rate.
    pub dropout: Dropout,
    /// ResNet-50's stochastic depth: the last block's residual branch is dropped with this
    /// probability, earlier blocks' with linearly less.
    #[serde(default)]
    pub drop_path: f64,
}

/// Where the training and validation splits live while training (docs/training.md, "Resident
/// data").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Residency {
    /// Read from the store every epoch by the loader threads.
    Off,
    /// Decoded once into host memory (pinned when training on CUDA).
    Host,
    /// Decoded once into the training device's memory.
    Device,
    /// Device if it fits beside the model, else host if it fits in RAM, else off; per split.
    Auto,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub resident: Residency,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Newest checkpoints kept besides the best one.
    pub keep_last: usize,
}

/// LRP snapshots during training (docs/lrp.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrpSection {
    /// A snapshot after every this many epochs; 0 = none.
    pub every: u32,
    /// Probe patches picked from the validation split (rare classes first) when `patches` is empty.
    pub probes: usize,
    /// Probe patches by name, from any split.
    #[serde(default)]
    pub patches: Vec<String>,
    pub composite: crate::lrp::Composite,
    /// ε of the epsilon rule.
    pub epsilon: f64,
}

/// TensorBoard event files of the run (`<run>/tensorboard/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorboardSection {
    /// A point of the training curves every this many optimizer steps; 0 writes no event files.
    pub every: u64,
}

impl Default for TensorboardSection {
    fn default() -> Self {
        TensorboardSection { every: 10 }
    }
}

/// Where a key's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File {
        path: PathBuf,
        line: usize,
    },
    /// A flag of the command line (`--data`).
    Flag(&'static str),
    /// A `--set KEY=VALUE` of the command line, as typed.
    Set(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Flag(flag) => write!(f, "the command line ({flag})"),
            Origin::Set(item) => write!(f, "the command line (--set {item})"),
        }
    }
}

impl Origin {
    /// The folder a relative path written here is relative to: a config file's own folder,
    /// the working directory for the command line.
    fn base(&self) -> PathBuf {
        match self {
            Origin::File { path, .. } => {
                let file = lossbench_core::paths::absolute(path);
                file.parent()
                    .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
            }
            Origin::Flag(_) | Origin::Set(_) => lossbench_core::paths::absolute(Path::new(".")),
        }
    }
}

/// The keys holding paths: resolved against their origin's base (docs/training.md, "Paths").
const PATH_KEYS: [(&str, &str); 2] = [("run", "data"), ("run", "out")];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{origin}: `{key}`: {message}")]
    Key {
        key: String,
        origin: Origin,
        message: String,
    },
    #[error("config {path}: {message}")]
    Other { path: PathBuf, message: String },
}

/// Dotted key → where it was last set.
type Origins = BTreeMap<String, Origin>;

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Records the line of every key (and table) in `table`, prefixed by `prefix`.
fn record_origins(
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    path: &Path,
    text: &str,
    out: &mut Origins,
) {
    for (key, value) in table {
        let dotted = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        out.insert(
            dotted.clone(),
            Origin::File {
                path: path.to_path_buf(),
                line: line_of(text, key.span().start),
            },
        );
        if let toml::de::DeValue::Table(inner) = value.get_ref() {
            record_origins(inner, &dotted, path, text, out);
        }
    }
}

/// Overlays `top` on `base`, table by table.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Reads `path` and the files it extends, innermost first.
fn read_layers(
    path: &Path,
    depth: usize,
    origins: &mut Origins,
) -> Result<toml::Table, ConfigError> {
    if depth > 8 {
        return Err(ConfigError::Other {
            path: path.into(),
            message: "`base` chain deeper than 8 files (a cycle?)".into(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    let spanned = toml::de::DeTable::parse(&text).map_err(|e| ConfigError::Syntax {
        path: path.into(),
        message: e.to_string(),
    })?;
    let mut own: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        path: path.into(),
        message: e.to_string(),
    })?;
    let base_origin = || {
        let at = spanned
            .get_ref()
            .iter()
            .find(|(k, _)| k.get_ref() == "base")
            .map_or(0, |(k, _)| k.span().start);
        Origin::File {
            path: path.into(),
            line: line_of(&text, at),
        }
    };
    let mut table = match own.remove("base") {
        Some(toml::Value::String(base)) => {
            let base_path = path.parent().unwrap_or(Path::new(".")).join(&base);
            read_layers(&base_path, depth + 1, origins).map_err(|e| match e {
                // Say which file asked for the base it cannot find.
                ConfigError::Read {
                    path: missing,
                    source,
                } if missing == base_path => ConfigError::Key {
                    key: "base".into(),
                    origin: base_origin(),
                    message: format!("cannot read {}: {source}", missing.display()),
                },
                other => other,
            })?
        }
        Some(other) => {
            return Err(ConfigError::Key {
                key: "base".into(),
                origin: base_origin(),
                message: format!("expected a file name, found {}", other.type_str()),
            });
        }
        None => toml::Table::new(),
    };
    record_origins(spanned.get_ref(), "", path, &text, origins);
    merge(&mut table, own);
    Ok(table)
}

/// Command-line overrides: dotted keys (`run.seed`, `train.epochs`, ...), values and where
/// each was given.
pub type Overrides = Vec<(String, toml::Value, Origin)>;

/// Parses `--set KEY=VALUE`, the value as a TOML value (a bare word is taken as a string; a
/// number TOML cannot hold is an error, not a string).
pub fn parse_override(item: &str) -> Result<(String, toml::Value, Origin), ConfigError> {
    let origin = Origin::Set(item.to_string());
    let (key, value) = item.split_once('=').ok_or_else(|| ConfigError::Key {
        key: item.to_string(),
        origin: origin.clone(),
        message: "expected --set KEY=VALUE".into(),
    })?;
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"));
    let digits = value.trim().trim_start_matches(['+', '-']);
    if parsed.is_none()
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return Err(ConfigError::Key {
            key: key.trim().to_string(),
            origin,
            message: format!("{value} is out of range: integers lie within ±{}", i64::MAX),
        });
    }
    Ok((
        key.trim().to_string(),
        parsed.unwrap_or_else(|| toml::Value::String(value.to_string())),
        origin,
    ))
}

/// Sets the dotted `key` in `table`, creating the tables on its way; a value that is not a
/// table on the way is an error naming it.
fn set_override(
    table: &mut toml::Table,
    key: &str,
    value: toml::Value,
    origin: &Origin,
) -> Result<(), ConfigError> {
    let bad = |message: String| ConfigError::Key {
        key: key.to_string(),
        origin: origin.clone(),
        message,
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.trim().is_empty()) {
        return Err(bad("not a dotted key such as `train.lr`".into()));
    }
    let (leaf, path) = parts.split_last().expect("split yields one part at least");
    let mut t = table;
    for (i, part) in path.iter().enumerate() {
        let entry = t
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        t = match entry {
            toml::Value::Table(inner) => inner,
            other => {
                return Err(bad(format!(
                    "`{}` is not a table (its value is of type {})",
                    parts[..=i].join("."),
                    other.type_str()
                )));
            }
        };
    }
    t.insert(leaf.to_string(), value);
    Ok(())
}

/// Makes the path keys absolute against their origin's base.
fn resolve_paths(table: &mut toml::Table, origins: &Origins) {
    for (section, key) in PATH_KEYS {
        let dotted = format!("{section}.{key}");
        let Some(toml::Value::String(value)) = table.get(section).and_then(|s| s.get(key)) else {
            continue;
        };
        let Some(origin) = origins.get(&dotted) else {
            continue;
        };
        let resolved = lossbench_core::paths::absolute_from(&origin.base(), Path::new(value));
        if let Some(toml::Value::Table(t)) = table.get_mut(section) {
            t.insert(
                key.into(),
                toml::Value::String(resolved.display().to_string()),
            );
        }
    }
}

/// Reads a job config, applies overrides and checks every value.
pub fn load(path: &Path, overrides: Overrides) -> Result<Config, ConfigError> {
    let mut origins = Origins::new();
    let mut table = read_layers(path, 0, &mut origins)?;
    for (key, value, origin) in overrides {
        set_override(&mut table, &key, value, &origin)?;
        // The tables an override creates are the command line's too (an unknown one is blamed
        // on it, not on the file).
        let parts: Vec<&str> = key.split('.').collect();
        for end in 1..parts.len() {
            origins
                .entry(parts[..end].join("."))
                .or_insert_with(|| origin.clone());
        }
        origins.insert(key.clone(), origin);
    }
    resolve_paths(&mut table, &origins);
    if table.get("run").is_none_or(|r| r.get("job").is_none()) {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        if let Some(toml::Value::Table(run)) = table.get_mut("run") {
            run.insert("job".into(), toml::Value::String(stem));
        }
    }
    let origin_of = |key: &str| origin_of(&origins, path, key);
    let mut config: Config =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let (key, message) = blamed_key(&e);
            ConfigError::Key {
                origin: origin_of(&key),
                key,
                message,
            }
        })?;
    config.check().map_err(|(key, message)| ConfigError::Key {
        origin: origin_of(&key),
        key,
        message,
    })?;
    for (section, key) in PATH_KEYS {
        let dotted = format!("{section}.{key}");
        config
            .sources
            .insert(dotted.clone(), origin_of(&dotted).to_string());
    }
    Ok(config)
}

/// Where `key` was set: the key itself, else the nearest enclosing table that was written down,
/// else the config file.
fn origin_of(origins: &Origins, path: &Path, key: &str) -> Origin {
    let mut k = key.to_string();
    loop {
        if let Some(o) = origins.get(&k) {
            return o.clone();
        }
        match k.rfind('.') {
            Some(i) => k.truncate(i),
            None => {
                return Origin::File {
                    path: path.to_path_buf(),
                    line: 1,
                };
            }
        }
    }
}

/// The key a deserialisation error is about, and its message's first line (the path is
/// reported separately).
fn blamed_key(e: &serde_path_to_error::Error<toml::de::Error>) -> (String, String) {
    let key = e.path().to_string();
    let message = e
        .inner()
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    // An unknown key is reported at the table holding it: name the key itself.
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next())
        .map(str::to_string);
    // An unknown loss is the `name` key's fault, not its table's.
    let key = if key == "loss" && message.starts_with("unknown variant") {
        "loss.name".to_string()
    } else {
        key
    };
    let key = match unknown {
        Some(field) if key == "." => field,
        Some(field) if !key.ends_with(&format!(".{field}")) && key != field => {
            format!("{key}.{field}")
        }
        _ => key,
    };
    (key, message)
}

impl Config {
    /// Where `key` was set, for messages ("jobs/base.toml:7", "the command line (--data)").
    pub fn source(&self, key: &str) -> &str {
        self.sources
            .get(key)
            .map_or("a config file", String::as_str)
    }

    /// Value checks beyond types: `Err((key, why))`.
    fn check(&self) -> Result<(), (String, String)> {
        self.check_sections().map_err(|(k, m)| (k.to_string(), m))?;
        self.check_recipe().map_err(|(k, m)| (k.to_string(), m))?;
        let schedule = self.train.schedule.check();
        schedule.map_err(|(k, m)| (format!("train.schedule.{k}"), m))?;
        self.loss.check().map_err(|(k, m)| (format!("loss.{k}"), m))
    }

    /// The recipe's values, and the combinations that do not exist.
    fn check_recipe(&self) -> Result<(), (&'static str, String)> {
        let (t, m) = (&self.train, &self.model);
        let unit = |key, v: f64, top: f64| {
            if (0.0..top).contains(&v) {
                Ok(())
            } else {
                Err((key, format!("must be at least 0 and below {top}, got {v}")))
            }
        };
        unit("train.weight_decay", t.weight_decay, f64::INFINITY)?;
        unit("train.label_smoothing", t.label_smoothing, 0.5)?;
        unit("model.drop_path", m.drop_path, 1.0)?;
        if let Dropout::Rate(r) = m.dropout {
            unit("model.dropout", r, 1.0)?;
        }
        if t.weight_decay > 0.0 && t.optimizer == OptimizerKind::Adam {
            let why = "is AdamW's decoupled decay: set train.optimizer = \"adamw\", or use \
                       train.conv_weight_decay with Adam";
            return Err(("train.weight_decay", why.into()));
        }
        if m.drop_path > 0.0 && m.arch != Arch::ResNet50 {
            let why = format!(
                "drops residual branches, which only resnet50 has (not {})",
                m.arch.name()
            );
            return Err(("model.drop_path", why));
        }
        if t.label_smoothing > 0.0 && !self.loss.smoothable() {
            let why = format!(
                "is defined for the losses on binary cross-entropy ({}), not {}",
                crate::losses::SMOOTHABLE.join(", "),
                self.loss.name()
            );
            return Err(("train.label_smoothing", why));
        }
        Ok(())
    }

    fn check_sections(&self) -> Result<(), (&'static str, String)> {
        let t = &self.train;
        let positive = |key, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err((key, format!("must be a positive number, got {v}")))
            }
        };
        let at_least_one = |key, v: usize| {
            if v >= 1 {
                Ok(())
            } else {
                Err((key, "must be at least 1".to_string()))
            }
        };
        if t.epochs == 0 {
            return Err(("train.epochs", "must be at least 1".into()));
        }
        at_least_one("train.batch_size", t.batch_size)?;
        at_least_one("train.accumulate", t.accumulate)?;
        if !t.batch_size.is_multiple_of(t.accumulate) {
            return Err((
                "train.accumulate",
                format!("must divide train.batch_size = {}", t.batch_size),
            ));
        }
        positive("train.lr", t.lr)?;
        if !(t.conv_weight_decay >= 0.0 && t.conv_weight_decay.is_finite()) {
            return Err((
                "train.conv_weight_decay",
                format!("must be 0 or more, got {}", t.conv_weight_decay),
            ));
        }
        at_least_one("train.loader_threads", t.loader_threads)?;
        at_least_one("train.prefetch_batches", t.prefetch_batches)?;
        at_least_one("checkpoint.keep_last", self.checkpoint.keep_last)?;
        if self.lrp.every > 0 && self.lrp.patches.is_empty() {
            at_least_one("lrp.probes", self.lrp.probes)?;
        }
        positive("lrp.epsilon", self.lrp.epsilon)?;
        if let Some(id) = &self.run.run_id
            && (id.is_empty() || id.contains(['/', '\\']) || id.starts_with('.'))
        {
            return Err((
                "run.run_id",
                format!("{id:?} is not usable as a folder name"),
            ));
        }
        Ok(())
    }

    /// The run's folder name.
    pub fn run_id(&self) -> String {
        self.run
            .run_id
            .clone()
            .unwrap_or_else(|| match self.model.arch {
                Arch::KBranch => format!("{}-seed{}", self.run.job, self.run.seed),
                arch => format!("{}-{}-seed{}", self.run.job, arch.name(), self.run.seed),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::{Decay, SelectMetric};

    fn jobs() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs")
    }

    #[test]
    fn every_shipped_job_loads_with_the_study_defaults() {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(jobs()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            // The base layer, and tuning studies (docs/tuning.md), are not jobs.
            if name == "base" || name.starts_with("tune") {
                continue;
            }
            let c = load(&path, vec![]).unwrap();
            if name == "reben" {
                let t = &c.train;
                assert_eq!(
                    (t.batch_size, t.lr, t.epochs, t.weight_decay),
                    (512, 1e-3, 100, 0.01)
                );
                assert_eq!(
                    (t.optimizer, t.schedule.decay, t.schedule.warmup_steps),
                    (OptimizerKind::Adamw, Decay::Cosine, 1000)
                );
                assert_eq!(
                    (c.model.arch, c.model.dropout, c.model.drop_path),
                    (Arch::ResNet50, Dropout::Rate(0.15), 0.15)
                );
                assert_eq!(
                    (c.selection.metric, c.selection.patience),
                    (SelectMetric::MapMacro, 5)
                );
                assert!(t.augment.flips && !t.augment.rotations);
                continue;
            }
            assert_eq!(
                (c.train.batch_size, c.train.lr, c.train.epochs),
                (1024, 1e-4, 80)
            );
            assert_eq!(
                (c.model.arch, c.data.resident),
                (Arch::KBranch, Residency::Auto)
            );
            assert_eq!(c.run_id(), format!("{name}-seed0"));
            names.push((name, c.loss.name()));
        }
        // The study's seven are there, each job named after its loss.
        for loss in crate::losses::STUDY_LOSSES {
            assert!(
                names.iter().any(|(n, l)| n == loss && *l == loss),
                "{names:?}"
            );
        }
    }

    /// The keys added after run folders were first written digest as absent at their
    /// defaults (lossbench_core::config_digest): those must be this config's defaults, and the
    /// study's jobs must leave them there.
    #[test]
    fn added_keys_default_as_the_digest_assumes() {
        let c = load(&jobs().join("ce.toml"), vec![]).unwrap();
        let flat = lossbench_core::config_digest::flatten(&crate::resume::table(&c));
        for (key, default) in lossbench_core::config_digest::ADDED_WITH_DEFAULTS {
            let value = flat.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
            assert_eq!(value, Some(default), "{key}");
        }
    }

    fn set(item: &str) -> (String, toml::Value, Origin) {
        parse_override(item).unwrap()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn job_with(extra: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(jobs().join("base.toml"), dir.path().join("base.toml")).unwrap();
        let p = write(
            dir.path(),
            "job.toml",
            &format!("base = \"base.toml\"\n\n[loss]\nname = \"focal\"\n{extra}"),
        );
        (dir, p)
    }

    #[test]
    fn errors_name_the_key_file_and_line() {
        let (_d, p) = job_with("\n[train]\nlrr = 0.1\n");
        let e = load(&p, vec![]).unwrap_err().to_string();
        assert!(
            e.contains("job.toml:7: `train.lrr`: unknown field `lrr`"),
            "{e}"
        );

        let (_d, p) = job_with("\n[train]\nepochs = \"many\"\n");
        let e = load(&p, vec![]).unwrap_err().to_string();
        assert!(
            e.contains("job.toml:7") && e.contains("train.epochs"),
            "{e}"
        );

        let (_d, p) = job_with("\n[train]\nlr = -1.0\n");
        let e = load(&p, vec![]).unwrap_err().to_string();
        assert!(
            e.contains("job.toml:7") && e.contains("train.lr") && e.contains("positive"),
            "{e}"
        );

        let (_d, p) = job_with("alpha = 1.5\n");
        let e = load(&p, vec![]).unwrap_err().to_string();
        assert!(
            e.contains("job.toml:5") && e.contains("loss.alpha") && e.contains("between 0 and 1"),
            "{e}"
        );

        let (_d, p) = job_with("gama = 3\n");
        let e = load(&p, vec![]).unwrap_err().to_string();
        assert!(
            e.contains(
                "job.toml:5: `loss.gama`: unknown field `gama`, expected `gamma` or `alpha`"
            ),
            "{e}"
        );

        let (_d, p) = job_with("");
        let e = load(&p, vec![set("train.accumulate=3")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the command line (--set train.accumulate=3): `train.accumulate`"),
            "{e}"
        );
        // A key the config does not have, set on the command line: blamed on it, not the file.
        let e = load(&p, vec![set("foo.bar=1")]).unwrap_err().to_string();
        assert!(
            e.starts_with("the command line (--set foo.bar=1): `foo`: unknown field `foo`"),
            "{e}"
        );
        let e = parse_override("train.batch_size=99999999999999999999")
            .unwrap_err()
            .to_string();
        assert!(e.contains("out of range"), "{e}");

        let (d, _) = job_with("");
        let p = write(
            d.path(),
            "bad.toml",
            "base = \"base.toml\"\n[loss]\nname = \"mse\"\n",
        );
        let e = load(&p, vec![]).unwrap_err().to_string();
        assert!(
            e.contains("bad.toml:3: `loss.name`: unknown variant `mse`, expected one of `ce`"),
            "{e}"
        );

        let p = write(d.path(), "syntax.toml", "[train\n");
        let e = load(&p, vec![]).unwrap_err().to_string();
        assert!(e.contains("syntax.toml") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn overrides_win_and_name_the_run() {
        let (_d, p) = job_with("");
        let c = load(&p, vec![set("run.seed=4"), set("train.epochs=2")]).unwrap();
        assert_eq!(
            (c.run.seed, c.train.epochs, c.run.job.as_str()),
            (4, 2, "job")
        );
        assert_eq!(c.run_id(), "job-seed4");
        let c = load(&p, vec![set("model.arch=\"resnet50\"")]).unwrap();
        assert_eq!(c.run_id(), "job-resnet50-seed0");
        let c = load(&p, vec![set("loss.gamma=3.0")]).unwrap();
        assert_eq!(
            c.loss,
            LossSpec::Single(crate::losses::SingleLoss::Focal {
                gamma: 3.0,
                alpha: None
            })
        );
    }

    /// Overrides through a value that is not a table are errors naming it, never panics.
    #[test]
    fn overrides_through_values_are_refused() {
        let (_d, p) = job_with("");
        for (overrides, key, says) in [
            (
                vec![set("train.lr.x=1")],
                "train.lr.x",
                "`train.lr` is not a table (its value is of type float)",
            ),
            (
                vec![set("run=1"), set("run.seed=2")],
                "run.seed",
                "`run` is not a table (its value is of type integer)",
            ),
            (vec![set("train..lr=1")], "train..lr", "not a dotted key"),
        ] {
            let e = load(&p, overrides).unwrap_err().to_string();
            assert!(
                e.contains("the command line") && e.contains(key) && e.contains(says),
                "{e}"
            );
        }
    }
}
