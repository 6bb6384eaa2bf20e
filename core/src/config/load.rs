//! Loading a job config: the layers of files (`base = "base.toml"`), the command line's
//! overrides, paths resolved against where they were written, and errors that name the key and
//! the file and line (or flag) that set it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::{Config, DeviceChoice};

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
    /// Another file's setting, as that file names it (a tuning study's `[recipe]` key).
    Named(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Flag(flag) => write!(f, "the command line ({flag})"),
            Origin::Set(item) => write!(f, "the command line (--set {item})"),
            Origin::Named(what) => f.write_str(what),
        }
    }
}

impl Origin {
    /// The folder a relative path written here is relative to: a config file's own folder,
    /// the working directory for the command line.
    fn base(&self) -> PathBuf {
        match self {
            Origin::File { path, .. } => {
                let file = crate::paths::absolute(path);
                file.parent()
                    .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
            }
            Origin::Flag(_) | Origin::Set(_) | Origin::Named(_) => {
                crate::paths::absolute(Path::new("."))
            }
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

/// A flag of the trainer's command line that overrides one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Flag {
    Seed(u64),
    Data(PathBuf),
    Out(PathBuf),
    Epochs(u32),
    Device(DeviceChoice),
    RunId(String),
}

impl Flag {
    /// The override it makes: the key, its value, and the flag as where it was set.
    pub fn into_override(self) -> (String, toml::Value, Origin) {
        let path = |p: PathBuf| toml::Value::String(p.display().to_string());
        let (key, value, flag) = match self {
            Flag::Seed(v) => ("run.seed", toml::Value::Integer(v as i64), "--seed"),
            Flag::Data(v) => ("run.data", path(v), "--data"),
            Flag::Out(v) => ("run.out", path(v), "--out"),
            Flag::Epochs(v) => (
                "train.epochs",
                toml::Value::Integer(i64::from(v)),
                "--epochs",
            ),
            Flag::Device(v) => (
                "run.device",
                toml::Value::try_from(v).expect("a device choice is a string"),
                "--device",
            ),
            Flag::RunId(v) => ("run.run_id", toml::Value::String(v), "--run-id"),
        };
        (key.to_string(), value, Origin::Flag(flag))
    }
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
        let resolved = crate::paths::absolute_from(&origin.base(), Path::new(value));
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
