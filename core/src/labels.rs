//! The BigEarthNet label nomenclatures and the canonical 43 → 19 class mapping
//! (docs/bigearthnet.md). Order matters: indices here are the indices stored in the
//! `labels` arrays, so never sort these lists.

/// The 43 CORINE Land Cover level-3 names used by BigEarthNet-S2 v1.0, in CLC code order.
pub const CORINE_43: [&str; 43] = [
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
];

/// The BigEarthNet-19 class names in canonical order.
pub const BEN19: [&str; 19] = [
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
];

pub const NUM_CLASSES: usize = BEN19.len();

/// For each of the 43 CORINE classes, its BigEarthNet-19 class, or `None` where the 19-class
/// nomenclature drops it (indices 3-10, 30, 32 and 37).
pub const CORINE_TO_BEN19: [Option<u8>; 43] = {
    let mut map = [None; 43];
    let pairs: [(usize, u8); 32] = [
        (0, 0),
        (1, 0),
        (2, 1),
        (11, 2),
        (12, 2),
        (13, 2),
        (14, 3),
        (15, 3),
        (16, 3),
        (18, 3),
        (17, 4),
        (19, 5),
        (20, 6),
        (21, 7),
        (22, 8),
        (23, 9),
        (24, 10),
        (25, 11),
        (31, 11),
        (26, 12),
        (27, 12),
        (28, 13),
        (29, 14),
        (33, 15),
        (34, 15),
        (35, 16),
        (36, 16),
        (38, 17),
        (39, 17),
        (40, 18),
        (41, 18),
        (42, 18),
    ];
    let mut i = 0;
    while i < pairs.len() {
        map[pairs[i].0] = Some(pairs[i].1);
        i += 1;
    }
    map
};

/// Class counts of the official BigEarthNet-19 splits, train + validation + test
/// (docs/bigearthnet.md); the synthetic generator follows these proportions.
pub const BEN19_OFFICIAL_COUNTS: [u32; 19] = [
    38_783 + 18_180 + 17_928,
    6_182 + 2_875 + 2_808,
    100_394 + 46_604 + 47_150,
    15_862 + 6_676 + 6_812,
    50_981 + 23_846 + 24_170,
    53_534 + 25_031 + 25_638,
    67_260 + 31_325 + 32_052,
    15_790 + 7_598 + 7_261,
    73_411 + 33_759 + 34_130,
    86_569 + 38_674 + 39_532,
    91_930 + 41_996 + 42_641,
    6_663 + 2_560 + 2_799,
    8_438 + 3_970 + 3_859,
    77_593 + 35_146 + 36_211,
    1_197 + 118 + 221,
    11_620 + 5_131 + 5_349,
    1_037 + 219 + 310,
    35_349 + 15_751 + 16_177,
    39_114 + 17_740 + 18_023,
];

/// Patches in the official BigEarthNet-19 splits (the denominator of the counts above).
pub const BEN19_OFFICIAL_PATCHES: u32 = 269_695 + 123_723 + 125_866;

pub fn corine_index(name: &str) -> Option<usize> {
    CORINE_43.iter().position(|n| *n == name)
}

pub fn ben19_index(name: &str) -> Option<usize> {
    BEN19.iter().position(|n| *n == name)
}

/// A patch's labels as a 19-long 0/1 vector.
pub type LabelVector = [u8; NUM_CLASSES];

/// Maps CORINE names to a 19-class vector. `Err(name)` for a name that is not one of the 43.
pub fn from_corine_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<LabelVector, String> {
    let mut v = [0u8; NUM_CLASSES];
    for name in names {
        let i = corine_index(name).ok_or_else(|| name.to_string())?;
        if let Some(c) = CORINE_TO_BEN19[i] {
            v[c as usize] = 1;
        }
    }
    Ok(v)
}

/// Maps BigEarthNet-19 names (as v2.0 stores them) to a vector. `Err(name)` for an unknown name.
pub fn from_ben19_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<LabelVector, String> {
    let mut v = [0u8; NUM_CLASSES];
    for name in names {
        let c = ben19_index(name).ok_or_else(|| name.to_string())?;
        v[c] = 1;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_matches_the_documented_table() {
        let dropped: Vec<usize> = (0..43).filter(|&i| CORINE_TO_BEN19[i].is_none()).collect();
        assert_eq!(dropped, vec![3, 4, 5, 6, 7, 8, 9, 10, 30, 32, 37]);
        // Every 19-class index is reached, and the sources are those of the table.
        let sources =
            |c: u8| -> Vec<usize> { (0..43).filter(|&i| CORINE_TO_BEN19[i] == Some(c)).collect() };
        assert_eq!(sources(0), vec![0, 1]);
        assert_eq!(sources(2), vec![11, 12, 13]);
        assert_eq!(sources(3), vec![14, 15, 16, 18]);
        assert_eq!(sources(11), vec![25, 31]);
        assert_eq!(sources(12), vec![26, 27]);
        assert_eq!(sources(15), vec![33, 34]);
        assert_eq!(sources(16), vec![35, 36]);
        assert_eq!(sources(17), vec![38, 39]);
        assert_eq!(sources(18), vec![40, 41, 42]);
        for c in 0..19u8 {
            assert!(!sources(c).is_empty(), "class {c} has no source");
        }
    }

    #[test]
    fn names_map_to_vectors() {
        let v = from_corine_names(["Discontinuous urban fabric", "Sea and ocean", "Bare rock"])
            .unwrap();
        assert_eq!(v[0], 1);
        assert_eq!(v[18], 1);
        assert_eq!(v.iter().map(|&x| x as u32).sum::<u32>(), 2);
        assert_eq!(from_corine_names(["Lava"]).unwrap_err(), "Lava");
        assert_eq!(from_ben19_names(["Inland waters"]).unwrap()[17], 1);
        assert!(from_ben19_names(["Water courses"]).is_err());
    }
}
