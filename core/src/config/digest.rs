//! Digests of a run's resolved configuration (its `config.toml`), recorded in run folders and
//! tables: the collector's `config_hash` leaves out what differs between the seeds of one
//! setup; a checkpoint's leaves out what may change when a run is resumed. The key lists here
//! are checked against the config's types (tests below).

use std::sync::LazyLock;

use sha2::{Digest, Sha256};

use super::Config;

/// Keys that change how a run is executed, not what it computes (docs/training.md, "Resuming
/// with another configuration"): where its folder is, the device, threads, loaders, where the
/// data is held, how many checkpoints are kept, how often TensorBoard's curves get a point.
pub const OPERATIONAL: [&str; 9] = [
    "run.out",
    "run.device",
    "run.threads",
    "train.loader_threads",
    "train.prefetch_batches",
    "data.resident",
    "checkpoint.keep_last",
    "lrp.every",
    "tensorboard.every",
];

/// Keys a resume may change besides the operational ones, each checked on its own by the
/// trainer (docs/training.md): a moved store of the same identity, the folder's own name, more
/// epochs, `train.accumulate` with the world size as long as their product stays.
pub const CHECKED_APART_ON_RESUME: [&str; 4] =
    ["run.data", "run.run_id", "train.epochs", "train.accumulate"];

/// The keys a checkpoint's digest leaves out: what a resume may change.
pub fn resume_exclusions() -> Vec<&'static str> {
    let mut without: Vec<&str> = OPERATIONAL.to_vec();
    without.extend(CHECKED_APART_ON_RESUME);
    without
}

/// Keys (or whole tables) added after run folders were first written. At its default such a
/// key digests as if absent, so a run written before it existed and one written since with
/// the same settings share their digests.
const ADDED: [&str; 7] = [
    "model.drop_path",
    "selection",
    "train.augment",
    "train.label_smoothing",
    "train.optimizer",
    "train.schedule",
    "train.weight_decay",
];

/// The added keys' defaults as dotted keys and TOML text: those of the config's types, which
/// take them with `#[serde(default)]`.
pub fn added_with_defaults() -> &'static [(String, String)] {
    static DEFAULTS: LazyLock<Vec<(String, String)>> = LazyLock::new(|| {
        let defaults: Config = toml::from_str(MINIMAL).expect("the minimal config parses");
        flatten(&defaults.table())
            .into_iter()
            .filter(|(key, _)| {
                ADDED
                    .iter()
                    .any(|a| key == a || key.starts_with(&format!("{a}.")))
            })
            .collect()
    });
    &DEFAULTS
}

/// A config of the keys without defaults only (their values do not matter here).
const MINIMAL: &str = r#"
[run]
seed = 0
data = "."
out = "."
device = "auto"
threads = 0
[train]
epochs = 1
batch_size = 1
accumulate = 1
lr = 1.0
conv_weight_decay = 0.0
loader_threads = 1
prefetch_batches = 1
bf16 = false
[model]
arch = "kbranch"
dropout = true
[data]
resident = "auto"
[loss]
name = "ce"
[checkpoint]
keep_last = 1
[lrp]
every = 0
probes = 1
composite = "epsilon"
epsilon = 1.0
"#;

/// The collector's `config_hash`: the config without the operational keys and what names one
/// seed of a setup (so the seeds of a setup share it), and with the store's identity `store`
/// instead of the path `run.data` (one store under two paths is one setup).
pub fn setup_digest(table: &toml::Table, store: &str) -> String {
    let mut without: Vec<&str> = OPERATIONAL.to_vec();
    without.extend(["run.seed", "run.run_id", "run.data"]);
    let mut with_store = table.clone();
    with_store.insert("store".into(), toml::Value::String(store.to_string()));
    digest(&with_store, &without)
}

/// The dotted keys of a config table and their values, as TOML text, in key order.
pub fn flatten(table: &toml::Table) -> Vec<(String, String)> {
    fn walk(table: &toml::Table, prefix: &str, out: &mut Vec<(String, String)>) {
        for (key, value) in table {
            let dotted = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => walk(inner, &dotted, out),
                other => out.push((dotted, other.to_string())),
            }
        }
    }
    let mut out = Vec::new();
    walk(table, "", &mut out);
    out.sort();
    out
}

/// 16 hex digits of SHA-256 over the config's keys and values, without the keys `without`
/// (dotted, e.g. `run.seed`) and the added keys at their defaults.
pub fn digest(table: &toml::Table, without: &[&str]) -> String {
    let added = added_with_defaults();
    let mut hasher = Sha256::new();
    for (key, value) in flatten(table) {
        let at_default = added.iter().any(|(k, v)| *k == key && *v == value);
        if !without.contains(&key.as_str()) && !at_default {
            hasher.update(format!("{key}={value}\n").as_bytes());
        }
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_key_is_a_key_of_the_config() {
        let keys: Vec<String> = flatten(&toml::from_str::<Config>(MINIMAL).unwrap().table())
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let listed = OPERATIONAL
            .iter()
            .chain(&CHECKED_APART_ON_RESUME)
            .chain(&ADDED);
        for key in listed.filter(|k| **k != "run.run_id") {
            assert!(
                keys.iter()
                    .any(|k| k == key || k.starts_with(&format!("{key}."))),
                "{key} is not a key of the config"
            );
        }
        let gamma = ("train.schedule.gamma".to_string(), "0.1".to_string());
        assert!(added_with_defaults().contains(&gamma));
    }

    #[test]
    fn digests_ignore_the_left_out_keys_and_key_order() {
        let a: toml::Table =
            toml::from_str("[run]\nseed = 1\nout = \"a\"\n[loss]\nname = \"ce\"").unwrap();
        let b: toml::Table =
            toml::from_str("[loss]\nname = \"ce\"\n[run]\nout = \"b\"\nseed = 2").unwrap();
        let c: toml::Table = toml::from_str("[run]\nseed = 1\n[loss]\nname = \"focal\"").unwrap();
        let without = ["run.seed", "run.out"];
        assert_eq!(digest(&a, &without), digest(&b, &without));
        assert_ne!(digest(&a, &without), digest(&c, &without));
        assert_ne!(digest(&a, &[]), digest(&b, &[]));
        assert_eq!(digest(&a, &[]).len(), 16);
        assert_eq!(
            flatten(&a)[0],
            ("loss.name".to_string(), "\"ce\"".to_string())
        );
        // An added key at its default digests as if absent; at another value it counts.
        let with = |v: &str| {
            toml::from_str::<toml::Table>(&format!(
                "[loss]\nname = \"ce\"\n[train]\noptimizer = \"{v}\""
            ))
            .unwrap()
        };
        let none: toml::Table = toml::from_str("[loss]\nname = \"ce\"").unwrap();
        assert_eq!(digest(&with("adam"), &[]), digest(&none, &[]));
        assert_ne!(digest(&with("adamw"), &[]), digest(&none, &[]));
    }
}
