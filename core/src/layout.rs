//! The store layout: the one definition of array names, shapes, band order and attributes
//! that data-prep writes and the trainer reads (documented in docs/store.md).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::labels::NUM_CLASSES;

/// Bumped whenever a reader of an older store would misread a newer one.
pub const FORMAT_VERSION: u32 = 1;

/// Key of the project's attributes in the root group's `zarr.json`.
pub const ATTRIBUTES_KEY: &str = "lossbench";

/// The 12 Sentinel-2 L2A bands of BigEarthNet (no B10), as named in the archive.
pub const ALL_BANDS: [&str; BAND_COUNT] = [
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
];
pub const BAND_COUNT: usize = 12;

/// A group of bands stored together at one native resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BandGroup {
    /// Array name inside each split group.
    pub array: &'static str,
    /// Band names in stored channel order.
    pub bands: &'static [&'static str],
    /// Side of a patch in pixels at this resolution.
    pub side: usize,
    /// Ground sampling distance in metres.
    pub gsd_m: u32,
}

impl BandGroup {
    pub const fn pixels_per_band(&self) -> usize {
        self.side * self.side
    }
    pub const fn values_per_patch(&self) -> usize {
        self.bands.len() * self.pixels_per_band()
    }
}

/// Channel order follows the K-Branch CNN of the BigEarthNet team (docs/models.md): the 10 m
/// group is R, G, B, NIR.
pub const BAND_GROUPS: [BandGroup; 3] = [
    BandGroup {
        array: "b10m",
        bands: &["B04", "B03", "B02", "B08"],
        side: 120,
        gsd_m: 10,
    },
    BandGroup {
        array: "b20m",
        bands: &["B05", "B06", "B07", "B8A", "B11", "B12"],
        side: 60,
        gsd_m: 20,
    },
    BandGroup {
        array: "b60m",
        bands: &["B01", "B09"],
        side: 20,
        gsd_m: 60,
    },
];

/// Side of the finest band group: every map at full resolution is this square.
pub const FULL_SIDE: usize = BAND_GROUPS[0].side;

/// Values of all three band groups of one patch.
pub const VALUES_PER_PATCH: usize = BAND_GROUPS[0].values_per_patch()
    + BAND_GROUPS[1].values_per_patch()
    + BAND_GROUPS[2].values_per_patch();

/// Where a store is built before it is complete: `<out>.partial`, beside it.
pub fn partial_path(out: &std::path::Path) -> std::path::PathBuf {
    sibling(out, ".partial")
}

/// `<out><suffix>`, beside `out` (the partial build, the lock, the replaced store).
pub fn sibling(out: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(suffix);
    std::path::PathBuf::from(s)
}

pub const LABELS_ARRAY: &str = "labels";
pub const NAMES_ARRAY: &str = "names";
/// Rows per chunk of the small per-patch arrays (labels, names), which readers load whole.
pub const TABLE_CHUNK_ROWS: u64 = 16_384;

/// Group holding the rejects report: string arrays `patch`, `file`, `reason`, one row per
/// rejected patch (empty when none was rejected).
pub const REJECTS_GROUP: &str = "rejects";

/// The splits, in the order they are written; the group names inside the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    /// Accepts the names used by the official files and by v2.0's `split` column.
    pub fn parse(s: &str) -> Option<Split> {
        match s {
            "train" => Some(Split::Train),
            "validation" | "val" => Some(Split::Validation),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Mean and population standard deviation of one band over the training split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BandStats {
    pub mean: f64,
    pub std: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub patches: u64,
    /// Patches carrying each class, in class order (the Table 5.2 analog).
    pub label_counts: Vec<u64>,
}

/// Where every input patch went. `input_patches` equals the sum of all other fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accounting {
    pub input_patches: u64,
    pub written: BTreeMap<Split, u64>,
    pub excluded_snow: u64,
    pub excluded_cloud: u64,
    pub excluded_no_label: u64,
    /// Split files were given and the patch is in none of them.
    pub excluded_not_in_split_lists: u64,
    pub rejected: u64,
}

impl Accounting {
    pub fn accounted(&self) -> u64 {
        self.written.values().sum::<u64>()
            + self.excluded_snow
            + self.excluded_cloud
            + self.excluded_no_label
            + self.excluded_not_in_split_lists
            + self.rejected
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub format: String,
    pub path: String,
    pub snow_list: Option<String>,
    pub cloud_list: Option<String>,
    /// How splits were assigned: split files, the v2 `split` column, or a seeded random split.
    pub splits: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

/// Everything data-prep records in the root group's attributes under [`ATTRIBUTES_KEY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreAttributes {
    pub format_version: u32,
    pub tool: Tool,
    pub classes: Vec<String>,
    /// Array name → band names in channel order.
    pub band_groups: BTreeMap<String, Vec<String>>,
    pub splits: BTreeMap<Split, SplitInfo>,
    /// Band name → statistics over the training split, exact from integer sums.
    pub band_stats: BTreeMap<String, BandStats>,
    pub source: Source,
    pub options: serde_json::Value,
    pub accounting: Accounting,
    /// A random id data-prep gives every store it writes: runs record it and refuse a store
    /// whose id changed under them (a `convert --overwrite` in place). Absent in stores written
    /// before ids existed, which are identified by their attributes instead ([`Self::identity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_id: Option<String>,
}

impl StoreAttributes {
    /// What identifies the store's content: its id, or for a store written before ids, a
    /// digest of its attributes (`attrs-` and 16 hex digits).
    pub fn identity(&self) -> String {
        if let Some(id) = &self.store_id {
            return id.clone();
        }
        let text = serde_json::to_string(self).unwrap_or_default();
        // FNV-1a, 64 bits: stable across builds and platforms.
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("attrs-{hash:016x}")
    }

    /// Checks that a reader can rely on the attributes: this build's format, the 19 classes,
    /// every split with a label count per class and none above its patch count, statistics for
    /// every band when the training split has patches. Readers then index them without further checks.
    pub fn validate(&self) -> Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "store format version {} is not the version {} this build reads; rerun data-prep",
                self.format_version, FORMAT_VERSION
            ));
        }
        if self.classes.len() != NUM_CLASSES {
            return Err(format!(
                "store lists {} classes, expected {NUM_CLASSES}",
                self.classes.len()
            ));
        }
        for split in Split::ALL {
            let info = self
                .splits
                .get(&split)
                .ok_or_else(|| format!("attribute `splits` lacks the {split} split"))?;
            if info.label_counts.len() != NUM_CLASSES {
                return Err(format!(
                    "split {split}: {} label counts, expected {NUM_CLASSES}",
                    info.label_counts.len()
                ));
            }
            if let Some((c, n)) = info
                .label_counts
                .iter()
                .enumerate()
                .find(|&(_, &n)| n > info.patches)
            {
                return Err(format!(
                    "split {split}: class {c} is carried by {n} patches but the split has {}",
                    info.patches
                ));
            }
        }
        // Statistics come from the training split; a store whose patches were all rejected has none.
        let trained = self.splits[&Split::Train].patches > 0;
        if let Some(missing) = ALL_BANDS
            .iter()
            .find(|b| trained && !self.band_stats.contains_key(**b))
        {
            return Err(format!("attribute `band_stats` lacks band {missing}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_groups_cover_the_twelve_bands_once() {
        let mut all: Vec<&str> = BAND_GROUPS
            .iter()
            .flat_map(|g| g.bands.iter().copied())
            .collect();
        all.sort();
        let mut expected = ALL_BANDS.to_vec();
        expected.sort();
        assert_eq!(all, expected);
        assert_eq!(VALUES_PER_PATCH, 4 * 14_400 + 6 * 3_600 + 2 * 400);
    }

    #[test]
    fn inconsistent_attributes_are_refused_with_the_reason() {
        let stats = BandStats {
            mean: 1.0,
            std: 1.0,
        };
        let ok = StoreAttributes {
            format_version: FORMAT_VERSION,
            tool: Tool {
                name: "t".into(),
                version: "0".into(),
            },
            classes: vec![String::new(); NUM_CLASSES],
            band_groups: BTreeMap::new(),
            splits: Split::ALL
                .iter()
                .map(|&s| {
                    (
                        s,
                        SplitInfo {
                            patches: 5,
                            label_counts: vec![1; NUM_CLASSES],
                        },
                    )
                })
                .collect(),
            band_stats: ALL_BANDS.iter().map(|b| (b.to_string(), stats)).collect(),
            source: Source {
                format: String::new(),
                path: String::new(),
                snow_list: None,
                cloud_list: None,
                splits: String::new(),
            },
            options: serde_json::Value::Null,
            accounting: Accounting::default(),
            store_id: None,
        };
        assert_eq!(ok.validate(), Ok(()));
        let mut a = ok.clone();
        a.splits.remove(&Split::Validation);
        assert_eq!(
            a.validate().unwrap_err(),
            "attribute `splits` lacks the validation split"
        );
        let mut a = ok.clone();
        a.splits.get_mut(&Split::Train).unwrap().label_counts[3] = 6;
        assert_eq!(
            a.validate().unwrap_err(),
            "split train: class 3 is carried by 6 patches but the split has 5"
        );
        let mut a = ok.clone();
        a.band_stats.remove("B8A");
        assert!(a.validate().unwrap_err().contains("B8A"));
        let mut a = ok;
        a.splits.get_mut(&Split::Test).unwrap().label_counts.pop();
        assert!(a.validate().unwrap_err().contains("18 label counts"));
    }

    #[test]
    fn split_names_round_trip() {
        for s in Split::ALL {
            assert_eq!(Split::parse(s.name()), Some(s));
        }
        assert_eq!(Split::parse("val"), Some(Split::Validation));
        assert_eq!(Split::parse("dev"), None);
    }
}
