//! Deciding the fate of every patch from its name and metadata alone, before any pixel is read:
//! excluded (snow, cloud, no 19-class label, in no split list), rejected (bad metadata, listed
//! but absent), or assigned to a split. [`Rules`] decides one patch at a time, so a packed
//! archive read as one stream gets the same decisions as an unpacked folder.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::archive::{self, Archive, ArchiveFormat, PatchRecord, Reject};
use lossbench_core::layout::{Accounting, Source, Split};

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

/// Why a patch is left out without being bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    Snow,
    Cloud,
    NoLabel,
    NotInSplitLists,
}

/// What becomes of one patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Write(Split),
    Excluded(Exclusion),
}

/// How splits are assigned when no list or column says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SplitRule {
    Lists,
    Column,
    Random(u64),
}

/// The decisions for every patch of one archive.
#[derive(Debug)]
pub struct Rules {
    snow: HashSet<String>,
    cloud: HashSet<String>,
    /// From the split lists: name → (split, the list's path).
    listed: HashMap<String, (Split, PathBuf)>,
    split_rule: SplitRule,
    pub source: Source,
}

/// Where an unset list is looked for: the folders given, in order (the archive's folder, the
/// patch-folder root and its parent; for a packed archive, the folder holding it).
fn find_file(dirs: &[PathBuf], names: &[&str]) -> Option<PathBuf> {
    dirs.iter()
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
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

/// The split of a patch without lists or column: 52 / 24 / 24 % by a seeded hash of its name,
/// so a patch's split depends on its name and the seed only, whatever else the archive holds
/// and in whatever order it is read.
pub fn random_split(name: &str, seed: u64) -> Split {
    // FNV-1a over the name, then splitmix64 steps with the seed: stable across platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    for part in [seed, h] {
        h = h.wrapping_add(part).wrapping_add(0x9E37_79B9_7F4A_7C15);
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
    }
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    if u < 0.52 {
        Split::Train
    } else if u < 0.76 {
        Split::Validation
    } else {
        Split::Test
    }
}

/// Every name of the three split lists, with its split and list; a name in two lists is
/// refused.
fn read_split_lists(paths: &[PathBuf; 3]) -> Result<HashMap<String, (Split, PathBuf)>> {
    let mut listed: HashMap<String, (Split, PathBuf)> = HashMap::new();
    for (split, path) in Split::ALL.into_iter().zip(paths.iter()) {
        for name in archive::read_name_list(path)? {
            if let Some((other, other_path)) = listed.insert(name.clone(), (split, path.clone())) {
                bail!(
                    "patch {name} is listed in both {} ({other}) and {} ({split})",
                    other_path.display(),
                    path.display()
                );
            }
        }
    }
    Ok(listed)
}

impl Rules {
    /// Reads the lists (given, or found in `dirs`); `has_flags` says whether the metadata
    /// carries snow / cloud flags (v2.0 does), `has_splits` whether it carries the split.
    pub fn new(
        format: ArchiveFormat,
        dirs: &[PathBuf],
        root: &Path,
        lists: &ListFiles,
        has_flags: bool,
        has_splits: bool,
        split_seed: u64,
    ) -> Result<Rules> {
        let uses_lists = format == ArchiveFormat::V1 || !has_flags;
        let snow_path = lists
            .snow
            .clone()
            .or_else(|| uses_lists.then(|| find_file(dirs, &[SNOW_LIST])).flatten());
        let cloud_path = lists
            .cloud
            .clone()
            .or_else(|| uses_lists.then(|| find_file(dirs, &[CLOUD_LIST])).flatten());
        let split_paths = lists.splits.clone().or_else(|| {
            (format == ArchiveFormat::V1)
                .then(|| find_split_lists(dirs))
                .flatten()
        });
        let read_set = |p: &Option<PathBuf>| -> Result<HashSet<String>> {
            Ok(match p {
                Some(p) => archive::read_name_list(p)?.into_iter().collect(),
                None => Default::default(),
            })
        };
        let (snow, cloud) = (read_set(&snow_path)?, read_set(&cloud_path)?);
        if snow_path.is_none() && !has_flags {
            tracing::warn!(
                "no snow list ({SNOW_LIST}) found or given: no patch is excluded for seasonal snow"
            );
        }
        if cloud_path.is_none() && !has_flags {
            tracing::warn!(
                "no cloud list ({CLOUD_LIST}) found or given: no patch is excluded for cloud or shadow"
            );
        }
        let listed = match &split_paths {
            Some(paths) => read_split_lists(paths)?,
            None => HashMap::new(),
        };
        let (split_rule, splits) = match (&split_paths, has_splits) {
            (Some(p), _) => (
                SplitRule::Lists,
                format!(
                    "split lists {}, {}, {}",
                    p[0].display(),
                    p[1].display(),
                    p[2].display()
                ),
            ),
            (None, true) => (SplitRule::Column, "the metadata's split column".to_string()),
            (None, false) => (
                SplitRule::Random(split_seed),
                format!("seeded random 52/24/24 split by patch name, seed {split_seed}"),
            ),
        };
        let source = Source {
            format: format.to_string(),
            path: root.display().to_string(),
            snow_list: snow_path.map(|p| p.display().to_string()),
            cloud_list: cloud_path.map(|p| p.display().to_string()),
            splits,
        };
        Ok(Rules {
            snow,
            cloud,
            listed,
            split_rule,
            source,
        })
    }

    /// The fate of a patch with good metadata.
    pub fn fate(&self, p: &PatchRecord) -> Fate {
        if p.snow || self.snow.contains(&p.name) {
            Fate::Excluded(Exclusion::Snow)
        } else if p.cloud || self.cloud.contains(&p.name) {
            Fate::Excluded(Exclusion::Cloud)
        } else if p.labels.iter().all(|&l| l == 0) {
            Fate::Excluded(Exclusion::NoLabel)
        } else {
            match self.split_rule {
                SplitRule::Lists => match self.listed.get(&p.name) {
                    Some(&(split, _)) => Fate::Write(split),
                    None => Fate::Excluded(Exclusion::NotInSplitLists),
                },
                SplitRule::Column => {
                    Fate::Write(p.split.unwrap_or_else(|| random_split(&p.name, 0)))
                }
                SplitRule::Random(seed) => Fate::Write(random_split(&p.name, seed)),
            }
        }
    }

    /// Patches the split lists name that the archive does not hold (`seen` says which it
    /// holds), as rejects, by name.
    pub fn listed_but_absent(&self, seen: impl Fn(&str) -> bool) -> Vec<Reject> {
        let mut missing: Vec<Reject> = self
            .listed
            .iter()
            .filter(|(name, _)| !seen(name))
            .map(|(name, (split, path))| Reject {
                patch: name.clone(),
                file: path.clone(),
                reason: format!("listed in the {split} list but not in the archive"),
            })
            .collect();
        missing.sort_by(|a, b| a.patch.cmp(&b.patch));
        missing
    }
}

/// Counts one decision into the accounting.
pub fn count(accounting: &mut Accounting, fate: Fate) {
    match fate {
        Fate::Write(_) => {} // counted as written by the conversion
        Fate::Excluded(Exclusion::Snow) => accounting.excluded_snow += 1,
        Fate::Excluded(Exclusion::Cloud) => accounting.excluded_cloud += 1,
        Fate::Excluded(Exclusion::NoLabel) => accounting.excluded_no_label += 1,
        Fate::Excluded(Exclusion::NotInSplitLists) => accounting.excluded_not_in_split_lists += 1,
    }
}

/// An unpacked archive's plan: every patch decided up front.
#[derive(Debug)]
pub struct Plan {
    /// Patches per split, sorted by name: their order in the store.
    pub splits: BTreeMap<Split, Vec<PatchRecord>>,
    /// Everything but `written` and pixel-level rejects, which the conversion adds.
    pub accounting: Accounting,
    pub rejects: Vec<Reject>,
    pub source: Source,
}

/// Where lists of an unpacked archive are looked for: the folder the user named, the archive
/// root, and the root's parent (the official archive unpacks the lists beside `BigEarthNet-v1.0/`).
fn search_dirs(given: &Path, root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![given.to_path_buf(), root.to_path_buf()];
    if let Some(parent) = root.parent() {
        dirs.push(parent.to_path_buf());
    }
    dirs.dedup();
    dirs
}

pub fn make_plan(
    given: &Path,
    archive: Archive,
    lists: &ListFiles,
    split_seed: u64,
) -> Result<Plan> {
    let dirs = search_dirs(given, &archive.root);
    let has_splits = archive.patches.iter().any(|p| p.split.is_some());
    let rules = Rules::new(
        archive.format,
        &dirs,
        &archive.root,
        lists,
        archive.has_exclusion_flags,
        has_splits,
        split_seed,
    )?;
    let Archive {
        patches,
        mut rejects,
        ..
    } = archive;
    let mut accounting = Accounting {
        input_patches: (patches.len() + rejects.len()) as u64,
        rejected: rejects.len() as u64,
        ..Default::default()
    };
    let mut by_split: BTreeMap<Split, Vec<PatchRecord>> =
        Split::ALL.iter().map(|&s| (s, Vec::new())).collect();
    let held: HashSet<String> = patches
        .iter()
        .map(|p| p.name.clone())
        .chain(rejects.iter().map(|r| r.patch.clone()))
        .collect();
    for p in patches {
        let fate = rules.fate(&p);
        count(&mut accounting, fate);
        if let Fate::Write(split) = fate {
            by_split
                .get_mut(&split)
                .expect("every split")
                .push(PatchRecord {
                    split: Some(split),
                    ..p
                });
        }
    }
    // Listed patches that the archive does not hold (a patch whose metadata was rejected is held).
    let missing = rules.listed_but_absent(|name| held.contains(name));
    accounting.input_patches += missing.len() as u64;
    accounting.rejected += missing.len() as u64;
    rejects.extend(missing);
    for v in by_split.values_mut() {
        v.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(Plan {
        splits: by_split,
        accounting,
        rejects,
        source: rules.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_split_is_about_52_24_24_and_depends_on_name_and_seed_only() {
        let names: Vec<String> = (0..20_000)
            .map(|i| format!("S2A_MSIL2A_20170613T101031_{}_{}", i % 100, i / 100))
            .collect();
        let count = |seed| {
            let mut n = [0usize; 3];
            for name in &names {
                n[random_split(name, seed) as usize] += 1;
            }
            n
        };
        let n = count(7);
        for (got, share) in n.iter().zip([0.52, 0.24, 0.24]) {
            assert!(
                (*got as f64 / names.len() as f64 - share).abs() < 0.01,
                "{n:?}"
            );
        }
        assert_eq!(n, count(7));
        assert_ne!(n, count(8));
        assert_eq!(
            random_split("S2B_MSIL2A_20170924T93020_69_24", 0),
            random_split("S2B_MSIL2A_20170924T93020_69_24", 0)
        );
    }
}
