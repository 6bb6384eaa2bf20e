//! A run folder's `config.toml` read back by this version. The trainer writes the resolved
//! config there; folders of earlier versions lack what was added since, and the first
//! versions wrote a few keys under other names. Each is read as those versions ran: keys with
//! defaults take them (the types' `#[serde(default)]`), and the tables the first versions
//! lacked are filled with what they did (the K-Branch CNN with its own dropout, data streamed
//! from the store, no LRP snapshots), their loss parameters moved to today's names. Nothing
//! else is guessed: a table this version cannot read is an error naming the key.

use super::Config;

/// The table of what the first versions did, for each table they did not write.
const FIRST_VERSIONS: &str = r#"
[model]
arch = "kbranch"
dropout = true

[data]
resident = "off"

[lrp]
every = 0
probes = 8
patches = []
composite = "epsilon-plus-flat"
epsilon = 1e-6
"#;

/// Keys the first versions did not write inside tables they did, with what they did
/// (`train.bf16`: no autocast).
const FIRST_VERSIONS_KEYS: [(&str, &str, bool); 1] = [("train", "bf16", false)];

/// The first versions' loss parameters (in `[loss]`, beside `name`), by today's name for the
/// loss that takes it.
const RENAMED_LOSS_KEYS: [(&str, &str, &str); 3] = [
    ("focal_gamma", "focal", "gamma"),
    ("ranking_margin", "ranking", "margin"),
    ("ranking_threshold", "ranking", "threshold"),
];

/// `written` (a run folder's `config.toml`) as a config of this version; `Err((key, why))`
/// when it cannot be one.
pub fn read(written: &toml::Table) -> Result<Config, (String, String)> {
    let mut table = written.clone();
    let first: toml::Table = toml::from_str(FIRST_VERSIONS).expect("the defaults parse");
    for (name, value) in first {
        table.entry(name).or_insert(value);
    }
    for (section, key, value) in FIRST_VERSIONS_KEYS {
        if let Some(toml::Value::Table(t)) = table.get_mut(section) {
            t.entry(key).or_insert(toml::Value::Boolean(value));
        }
    }
    if let Some(toml::Value::Table(loss)) = table.get_mut("loss") {
        let name = loss
            .get("name")
            .and_then(toml::Value::as_str)
            .map(str::to_string);
        for (old, owner, new) in RENAMED_LOSS_KEYS {
            if let Some(v) = loss.remove(old)
                && name.as_deref() == Some(owner)
            {
                loss.entry(new).or_insert(v);
            }
        }
    }
    let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
        .map_err(|e| (e.path().to_string(), e.inner().message().to_string()))?;
    // Runs written before jobs were recorded ran the job of their loss.
    if config.run.job.is_empty() {
        config.run.job = config.loss.name().to_string();
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Arch, Residency, SingleLoss};

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    const FIRST: &str = "[run]\nseed = 3\ndata = \"s.zarr\"\nout = \"runs\"\ndevice = \"auto\"\n\
        threads = 0\n[train]\nepochs = 80\nbatch_size = 1024\naccumulate = 1\nlr = 1e-4\n\
        conv_weight_decay = 2e-5\nloader_threads = 2\nprefetch_batches = 2\n[loss]\nname = \
        \"focal\"\nfocal_gamma = 3.0\nranking_margin = 1.0\nranking_threshold = 0.0\n\
        [checkpoint]\nkeep_last = 2\n";

    #[test]
    fn the_first_versions_read_as_they_ran() {
        let c = read(&table(FIRST)).unwrap();
        assert_eq!(c.model.arch, Arch::KBranch);
        assert_eq!(c.data.resident, Residency::Off);
        assert_eq!(c.lrp.every, 0);
        assert_eq!(
            c.loss,
            super::super::LossSpec::Single(SingleLoss::Focal {
                gamma: 3.0,
                alpha: None
            })
        );
        assert_eq!((c.run.job.as_str(), c.run.seed), ("focal", 3));
        assert!(!c.train.bf16);
    }

    #[test]
    fn what_cannot_be_read_names_its_key() {
        let bad = FIRST.replace("epochs = 80", "epochs = \"many\"");
        let (key, why) = read(&table(&bad)).unwrap_err();
        assert_eq!(key, "train.epochs");
        assert!(why.contains("invalid type"), "{why}");
    }
}
