//! Deciding the fate of every patch before any pixel is read: excluded (snow, cloud, no
//! 19-class label, in no split list), rejected (bad metadata, listed but absent), or assigned
//! to a split.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::archive::{self, Archive, PatchRecord, Reject};
use crate::layout::{Accounting, Source, Split};

pub const SNOW_LIST: &str = "patches_with_seasonal_snow.csv";
pub const CLOUD_LIST: &str = "patches_with_cloud_and_shadow.csv";

/// The official list files; `None` means look for them beside the archive.
#[derive(Debug, Clone, Default)]
pub struct ListFiles {
    pub snow: Option<PathBuf>,
    pub cloud: Option<PathBuf>,
    /// train, validation, test lists: all three or none.
    pub splits: Option<[PathBuf; 3]>,
}

#[derive(Debug)]
pub struct Plan {
    /// Patches per split, sorted by name: their order in the store.
    pub splits: BTreeMap<Split, Vec<PatchRecord>>,
    /// Everything but `written` and pixel-level rejects, which the conversion adds.
    pub accounting: Accounting,
    pub rejects: Vec<Reject>,
    pub source: Source,
}

/// Where an unset list is looked for: the folder the user named, the archive root, and the
/// root's parent (the official archive unpacks the lists beside `BigEarthNet-v1.0/`).
fn search_dirs(given: &Path, archive: &Archive) -> Vec<PathBuf> {
    let mut dirs = vec![given.to_path_buf(), archive.root.clone()];
    if let Some(parent) = archive.root.parent() {
        dirs.push(parent.to_path_buf());
    }
    dirs.dedup();
    dirs
}

fn find_file(dirs: &[PathBuf], names: &[&str]) -> Option<PathBuf> {
    dirs.iter().flat_map(|d| names.iter().map(move |n| d.join(n))).find(|p| p.is_file())
}

fn find_split_lists(dirs: &[PathBuf]) -> Option<[PathBuf; 3]> {
    for prefix in ["", "bigearthnet-"] {
        for d in dirs {
            let paths = ["train", "val", "test"].map(|s| d.join(format!("{prefix}{s}.csv")));
            if paths.iter().all(|p| p.is_file()) {
                return Some(paths);
            }
        }
    }
    None
}

pub fn make_plan(given: &Path, archive: Archive, lists: &ListFiles, split_seed: u64) -> Result<Plan> {
    let dirs = search_dirs(given, &archive);
    let uses_lists = archive.format == archive::ArchiveFormat::V1 || !archive.has_exclusion_flags;
    let snow_path = lists.snow.clone().or_else(|| uses_lists.then(|| find_file(&dirs, &[SNOW_LIST])).flatten());
    let cloud_path = lists.cloud.clone().or_else(|| uses_lists.then(|| find_file(&dirs, &[CLOUD_LIST])).flatten());
    let split_paths =
        lists.splits.clone().or_else(|| (archive.format == archive::ArchiveFormat::V1).then(|| find_split_lists(&dirs)).flatten());

    let read_set = |p: &Option<PathBuf>| -> Result<std::collections::HashSet<String>> {
        Ok(match p {
            Some(p) => archive::read_name_list(p)?.into_iter().collect(),
            None => Default::default(),
        })
    };
    let snow = read_set(&snow_path)?;
    let cloud = read_set(&cloud_path)?;
    if snow_path.is_none() && !archive.has_exclusion_flags {
        tracing::warn!("no snow list ({SNOW_LIST}) found or given: no patch is excluded for seasonal snow");
    }
    if cloud_path.is_none() && !archive.has_exclusion_flags {
        tracing::warn!("no cloud list ({CLOUD_LIST}) found or given: no patch is excluded for cloud or shadow");
    }

    let mut listed: HashMap<String, (Split, &Path)> = HashMap::new();
    if let Some(paths) = &split_paths {
        for (split, path) in Split::ALL.into_iter().zip(paths.iter()) {
            for name in archive::read_name_list(path)? {
                if let Some((other, other_path)) = listed.insert(name.clone(), (split, path)) {
                    bail!("patch {name} is listed in both {} ({other}) and {} ({split})", other_path.display(), path.display());
                }
            }
        }
    }

    let Archive { format, root, patches, mut rejects, has_exclusion_flags: _ } = archive;
    let mut accounting =
        Accounting { input_patches: (patches.len() + rejects.len()) as u64, rejected: rejects.len() as u64, ..Default::default() };
    let mut by_split: BTreeMap<Split, Vec<PatchRecord>> = Split::ALL.iter().map(|&s| (s, Vec::new())).collect();
    let mut unassigned = Vec::new();
    for mut p in patches {
        let in_list = listed.remove(&p.name);
        if p.snow || snow.contains(&p.name) {
            accounting.excluded_snow += 1;
        } else if p.cloud || cloud.contains(&p.name) {
            accounting.excluded_cloud += 1;
        } else if p.labels.iter().all(|&l| l == 0) {
            accounting.excluded_no_label += 1;
        } else if split_paths.is_some() {
            match in_list {
                Some((split, _)) => {
                    p.split = Some(split);
                    by_split.get_mut(&split).unwrap().push(p);
                }
                None => accounting.excluded_not_in_split_lists += 1,
            }
        } else if let Some(split) = p.split {
            by_split.get_mut(&split).unwrap().push(p);
        } else {
            unassigned.push(p);
        }
    }
    // Listed patches that the archive does not hold (or whose metadata was rejected above).
    let rejected_names: std::collections::HashSet<&str> = rejects.iter().map(|r| r.patch.as_str()).collect();
    let mut missing: Vec<Reject> = listed
        .into_iter()
        .filter(|(name, _)| !rejected_names.contains(name.as_str()))
        .map(|(name, (split, path))| Reject {
            patch: name,
            file: path.to_path_buf(),
            reason: format!("listed in the {split} list but not in the archive"),
        })
        .collect();
    missing.sort_by(|a, b| a.patch.cmp(&b.patch));
    accounting.input_patches += missing.len() as u64;
    accounting.rejected += missing.len() as u64;
    rejects.extend(missing);

    let splits_desc = match (&split_paths, unassigned.is_empty()) {
        (Some(p), _) => format!("split lists {}, {}, {}", p[0].display(), p[1].display(), p[2].display()),
        (None, true) => "the metadata's split column".to_string(),
        (None, false) => format!("seeded random 52/24/24 split, seed {split_seed}"),
    };
    assign_random(unassigned, split_seed, &mut by_split);
    for v in by_split.values_mut() {
        v.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let source = Source {
        format: format.to_string(),
        path: root.display().to_string(),
        snow_list: snow_path.map(|p| p.display().to_string()),
        cloud_list: cloud_path.map(|p| p.display().to_string()),
        splits: splits_desc,
    };
    Ok(Plan { splits: by_split, accounting, rejects, source })
}

/// 52 / 24 / 24 % of the patches, by a shuffle of the name-sorted list seeded by `seed`:
/// the same archive and seed always give the same split.
fn assign_random(mut patches: Vec<PatchRecord>, seed: u64, into: &mut BTreeMap<Split, Vec<PatchRecord>>) {
    if patches.is_empty() {
        return;
    }
    patches.sort_by(|a, b| a.name.cmp(&b.name));
    patches.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n = patches.len();
    let n_train = (n * 52).div_ceil(100);
    let n_val = (n * 24) / 100;
    for (i, mut p) in patches.into_iter().enumerate() {
        let split = if i < n_train {
            Split::Train
        } else if i < n_train + n_val {
            Split::Validation
        } else {
            Split::Test
        };
        p.split = Some(split);
        into.get_mut(&split).unwrap().push(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> PatchRecord {
        let mut labels = [0u8; 19];
        labels[2] = 1;
        PatchRecord { name: name.into(), dir: PathBuf::new(), labels, snow: false, cloud: false, split: None }
    }

    #[test]
    fn random_split_is_52_24_24_and_deterministic() {
        let patches: Vec<_> = (0..1000).map(|i| record(&format!("p{i:04}"))).collect();
        let run = |seed| {
            let mut m: BTreeMap<Split, Vec<PatchRecord>> = Split::ALL.iter().map(|&s| (s, Vec::new())).collect();
            assign_random(patches.clone(), seed, &mut m);
            m
        };
        let a = run(7);
        assert_eq!(a[&Split::Train].len(), 520);
        assert_eq!(a[&Split::Validation].len(), 240);
        assert_eq!(a[&Split::Test].len(), 240);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
    }
}
