//! Resuming never mixes configurations (docs/training.md, "Resuming with another
//! configuration"). Every checkpoint records what produced it ([`Fingerprint`]): a digest of the
//! resolved config without the keys that may change, the micro-batches per step (world size ×
//! `train.accumulate`, which shape the step sequence) and the store's identity. A resume whose
//! configuration differs elsewhere is refused before anything is written, listing the keys
//! that differ (old → new, from the run folder's `config.toml`).
//!
//! What may change, and is recorded per attempt in `run.json`: the operational keys
//! ([`lossbench_core::config::digest::OPERATIONAL`]: folders, device, threads, loaders, data
//! residency, checkpoints kept, LRP snapshot frequency), `run.data` (a moved or copied store
//! with the same identity), `train.epochs` (to extend a run, never below the epochs done) and
//! `train.accumulate` with the world size as long as their product stays.

use serde::{Deserialize, Serialize};

use lossbench_core::config::digest::{
    CHECKED_APART_ON_RESUME, OPERATIONAL, digest, flatten, resume_exclusions,
};
use lossbench_core::config::recipe::Decay;
use lossbench_core::config::{Config, keys};
use lossbench_core::run_folder::RunFolder;
use lossbench_core::run_info::ConfigChange;

/// What a checkpoint records of the configuration that produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// 16 hex digits of SHA-256 over the resolved config without the keys that may change.
    pub config: String,
    /// Micro-batches per step: world size × `train.accumulate`.
    pub micro_batches: usize,
    /// The store's identity ([`lossbench_core::layout::StoreAttributes::identity`]).
    pub store: String,
}

impl Fingerprint {
    pub fn of(config: &Config, world_size: usize, store: &str) -> Fingerprint {
        Fingerprint {
            config: digest(&config.table(), &resume_exclusions()),
            micro_batches: world_size * config.train.accumulate,
            store: store.to_string(),
        }
    }
}

/// The keys that differ between two configs.
pub fn changes(old: &toml::Table, new: &toml::Table) -> Vec<ConfigChange> {
    let (a, b) = (flatten(old), flatten(new));
    let get =
        |v: &[(String, String)], k: &str| v.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
    let mut keys: Vec<&String> = a.iter().chain(&b).map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (old, new) = (get(&a, k), get(&b, k));
            (old != new).then(|| ConfigChange {
                key: k.clone(),
                old,
                new,
            })
        })
        .collect()
}

/// A resume refused: the configuration differs from the one the checkpoint was made with.
#[derive(Debug, thiserror::Error)]
#[error(
    "{run}: the checkpoint {checkpoint} was made with another configuration; resuming would mix \
     them, so nothing was changed:\n{}\nUse the run's own configuration (its config.toml), change \
     only what may change (docs/training.md, \"Resuming with another configuration\"), or train \
     a new run (--run-id or another --out).",
    .reasons.iter().map(|r| format!("  {r}")).collect::<Vec<_>>().join("\n")
)]
pub struct ConfigChanged {
    pub run: String,
    pub checkpoint: String,
    pub reasons: Vec<String>,
}

/// Whether `old`'s configuration is the one a checkpoint with digest `recorded` was made
/// with (written by this version, or by one before keys were added).
fn made(old: &RunFolder, recorded: &str) -> bool {
    let without = resume_exclusions();
    [&old.written, &old.config.table()]
        .iter()
        .any(|t| digest(t, &without) == recorded)
}

/// Checks a resume of a checkpoint made with `recorded` (and `old`, the run folder, when its
/// `config.toml` is readable) by `new` on `world_size` ranks with the store `store`, `epochs_done` epochs
/// done. Returns the changes it allows; refuses anything else, listing the reasons.
pub fn check(
    recorded: Option<&Fingerprint>,
    old: Option<&RunFolder>,
    new: &Config,
    world_size: usize,
    store: &str,
    epochs_done: u32,
) -> Result<Vec<ConfigChange>, Vec<String>> {
    let now = Fingerprint::of(new, world_size, store);
    let changes = old
        .map(|o| changes(&o.config.table(), &new.table()))
        .unwrap_or_default();
    let allowed = |c: &ConfigChange| {
        OPERATIONAL.contains(&c.key.as_str()) || CHECKED_APART_ON_RESUME.contains(&c.key.as_str())
    };
    let mut reasons: Vec<String> = changes
        .iter()
        .filter(|c| !allowed(c))
        .map(ConfigChange::to_string)
        .collect();
    let epochs_changed = changes.iter().find(|c| c.key == keys::EPOCHS);
    if let Some(c) = epochs_changed
        && new.train.schedule.decay == Decay::Cosine
    {
        reasons.push(format!(
            "{c}: the cosine schedule's horizon is the last epoch, so the learning rates of \
             the epochs done would change; train a new run for a longer schedule"
        ));
    }
    match recorded {
        Some(r) => {
            let explained = old.is_some_and(|o| made(o, &r.config));
            if r.config != now.config && reasons.is_empty() && !explained {
                reasons.push(format!(
                    "the configuration digest {} differs from the checkpoint's {} (the run's config.toml does not show how)",
                    now.config, r.config
                ));
            }
            if r.micro_batches != now.micro_batches {
                reasons.push(format!(
                    "micro-batches per step (ranks × train.accumulate): {} → {} ({world_size} rank(s) × {}); keep the product",
                    r.micro_batches, now.micro_batches, new.train.accumulate
                ));
            }
            if r.store != now.store {
                reasons.push(format!(
                    "the store: {} → {} (run.data = {} is another store, or it was converted again)",
                    r.store,
                    now.store,
                    new.run.data.display()
                ));
            }
        }
        None if old.is_none() => reasons.push(
            "the checkpoint records no configuration and the run has no readable config.toml to compare with".into(),
        ),
        None => {}
    }
    if new.train.epochs < epochs_done {
        reasons.push(format!(
            "train.epochs = {} but {epochs_done} epochs are done; give {epochs_done} or more",
            new.train.epochs
        ));
    }
    if reasons.is_empty() {
        Ok(changes)
    } else {
        Err(reasons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &[(&str, toml::Value)]) -> Config {
        let jobs = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("jobs")
            .join("focal.toml");
        let overrides = extra
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.clone(),
                    lossbench_core::config::Origin::Flag("--set"),
                )
            })
            .collect();
        lossbench_core::config::load(&jobs, overrides).unwrap()
    }

    fn old_of(c: &Config) -> RunFolder {
        RunFolder::of(std::path::Path::new("/runs/focal-seed0"), c.table()).unwrap()
    }

    #[test]
    fn operational_changes_pass_and_others_are_listed() {
        let base = config(&[]);
        let recorded = Fingerprint::of(&base, 1, "s1");
        let old = old_of(&base);
        let int = toml::Value::Integer;
        let ok = config(&[("train.epochs", int(100)), ("run.threads", int(3))]);
        let allowed = check(Some(&recorded), Some(&old), &ok, 1, "s1", 5).unwrap();
        let keys: Vec<&str> = allowed.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["run.threads", "train.epochs"]);
        let bad = config(&[
            ("train.batch_size", int(2048)),
            ("loss.gamma", toml::Value::Float(3.0)),
        ]);
        let reasons = check(Some(&recorded), Some(&old), &bad, 1, "s1", 5).unwrap_err();
        assert_eq!(
            reasons,
            ["loss.gamma: 2.0 → 3.0", "train.batch_size: 1024 → 2048"]
        );
        // Two ranks with accumulate 1 replace one with accumulate 2; not one with accumulate 1.
        let two = config(&[("train.accumulate", int(2))]);
        let recorded2 = Fingerprint::of(&two, 1, "s1");
        assert!(check(Some(&recorded2), Some(&old_of(&two)), &base, 2, "s1", 1).is_ok());
        let r = check(Some(&recorded2), Some(&old_of(&two)), &base, 1, "s1", 1).unwrap_err();
        assert!(
            r[0].starts_with("micro-batches per step (ranks × train.accumulate): 2 → 1"),
            "{r:?}"
        );
        let r = check(Some(&recorded), Some(&old), &base, 1, "s2", 1).unwrap_err();
        assert!(r[0].starts_with("the store: s1 → s2"), "{r:?}");
        let fewer = config(&[("train.epochs", int(3))]);
        let r = check(Some(&recorded), Some(&old), &fewer, 1, "s1", 5).unwrap_err();
        assert_eq!(
            r,
            ["train.epochs = 3 but 5 epochs are done; give 5 or more"]
        );
    }

    /// A run folder written before the recipe's keys existed: its config.toml and checkpoint
    /// digest lack them, and the same job resumes it (the keys' defaults are the old recipe).
    #[test]
    fn a_config_written_before_new_keys_resumes() {
        let base = config(&[]);
        let mut written = base.table();
        let train = written["train"].as_table_mut().unwrap();
        for key in [
            "optimizer",
            "weight_decay",
            "label_smoothing",
            "schedule",
            "augment",
        ] {
            train.remove(key).unwrap();
        }
        written.remove("selection").unwrap();
        written["model"]
            .as_table_mut()
            .unwrap()
            .remove("drop_path")
            .unwrap();
        let recorded = Fingerprint {
            config: digest(&written, &resume_exclusions()),
            micro_batches: 1,
            store: "s1".into(),
        };
        // Added keys at their defaults digest as if absent (lossbench_core::config::digest).
        assert_eq!(recorded, Fingerprint::of(&base, 1, "s1"));
        let old =
            RunFolder::of(std::path::Path::new("/runs/focal-seed0"), written.clone()).unwrap();
        assert_eq!(
            check(Some(&recorded), Some(&old), &base, 1, "s1", 2),
            Ok(vec![])
        );
        let other = config(&[("train.optimizer", toml::Value::String("adamw".into()))]);
        let r = check(Some(&recorded), Some(&old), &other, 1, "s1", 2).unwrap_err();
        assert_eq!(r, ["train.optimizer: \"adam\" → \"adamw\""]);
    }

    #[test]
    fn a_cosine_schedule_keeps_its_epochs() {
        let cosine = ("train.schedule.decay", toml::Value::String("cosine".into()));
        let base = config(std::slice::from_ref(&cosine));
        let recorded = Fingerprint::of(&base, 1, "s1");
        let longer = config(&[cosine, ("train.epochs", toml::Value::Integer(120))]);
        let r = check(Some(&recorded), Some(&old_of(&base)), &longer, 1, "s1", 3).unwrap_err();
        assert!(
            r[0].starts_with("train.epochs: 80 → 120: the cosine schedule"),
            "{r:?}"
        );
    }
}
