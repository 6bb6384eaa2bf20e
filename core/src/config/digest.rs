//! Digests of a run's resolved configuration (its `config.toml`), recorded in run folders and
//! tables: the collector's `config_hash` leaves out what differs between the seeds of one
//! setup; a checkpoint's leaves out what may change when a run is resumed.

use sha2::{Digest, Sha256};

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

/// Keys added after run folders were first written, with their defaults (as TOML): at its
/// default such a key digests as if absent, so a run written before it existed and one written
/// since with the same settings share their digests (the trainer tests that these are its
/// defaults).
pub const ADDED_WITH_DEFAULTS: [(&str, &str); 14] = [
    ("model.drop_path", "0.0"),
    ("selection.metric", "\"f1_samples\""),
    ("selection.patience", "0"),
    ("train.augment.flips", "false"),
    ("train.augment.rotations", "false"),
    ("train.label_smoothing", "0.0"),
    ("train.optimizer", "\"adam\""),
    ("train.schedule.decay", "\"constant\""),
    ("train.schedule.gamma", "0.1"),
    ("train.schedule.min_lr", "0.0"),
    ("train.schedule.step_epochs", "30"),
    ("train.schedule.warmup_start", "0.001"),
    ("train.schedule.warmup_steps", "0"),
    ("train.weight_decay", "0.0"),
];

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
    let mut hasher = Sha256::new();
    for (key, value) in flatten(table) {
        let at_default = ADDED_WITH_DEFAULTS.contains(&(key.as_str(), value.as_str()));
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
