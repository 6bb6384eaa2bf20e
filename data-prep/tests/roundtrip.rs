//! synth → data-prep → read back: the store holds exactly the source pixels and labels.

mod common;

use std::path::Path;

use lossbench_core::labels::{CORINE_TO_BEN19, NUM_CLASSES, ben19_index, corine_index};
use lossbench_core::layout::{ALL_BANDS, BAND_GROUPS, Split};
use lossbench_core::store::Store;

fn labels_from_json(path: &Path) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut out = vec![0u8; NUM_CLASSES];
    for name in v["labels"].as_array().unwrap() {
        if let Some(c) = CORINE_TO_BEN19[corine_index(name.as_str().unwrap()).unwrap()] {
            out[c as usize] = 1;
        }
    }
    out
}

/// Checks every pixel of every stored patch against its band files, and the labels against
/// `expected_labels`; returns the number of patches checked.
fn check_store(
    store: &Store,
    patch_dir: impl Fn(&str) -> std::path::PathBuf,
    expected_labels: impl Fn(&str) -> Vec<u8>,
) -> usize {
    let mut checked = 0;
    for split in Split::ALL {
        let data = store.split(split).unwrap();
        assert_eq!(data.len as u64, store.attrs.splits[&split].patches);
        let mut counts = vec![0u64; NUM_CLASSES];
        for i in 0..data.len {
            let name = &data.names[i];
            let dir = patch_dir(name);
            for (g, group) in BAND_GROUPS.iter().enumerate() {
                let values = data.read_group(g, i).unwrap();
                for (b, band) in group.bands.iter().enumerate() {
                    let n = group.pixels_per_band();
                    let expected =
                        common::raw_pixels(&dir.join(format!("{name}_{band}.tif")), group.side);
                    assert!(
                        values[b * n..(b + 1) * n] == expected[..],
                        "{split} {name} {band} differs"
                    );
                }
            }
            assert_eq!(
                data.labels_of(i),
                expected_labels(name),
                "{split} {name} labels"
            );
            for (count, &label) in counts.iter_mut().zip(data.labels_of(i)) {
                *count += label as u64;
            }
            checked += 1;
        }
        assert_eq!(
            counts, store.attrs.splits[&split].label_counts,
            "{split} label counts"
        );
        let mut sorted = data.names.clone();
        sorted.sort();
        assert_eq!(sorted, data.names, "patches are stored in name order");
    }
    checked
}

#[test]
fn v1_store_holds_every_source_pixel_and_label() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = common::synth(tmp.path(), 150, 3, "v1");
    let out = tmp.path().join("store.zarr");
    // Small shards: many shards per split, and a partial last shard.
    let printed = common::convert(&archive, &out, &["--shard-patches", "16", "--threads", "2"]);
    assert!(printed.contains("input"), "{printed}");
    let store = Store::open(&out).unwrap();
    let root = archive.join("BigEarthNet-v1.0");
    let checked = check_store(
        &store,
        |n| root.join(n),
        |n| labels_from_json(&root.join(n).join(format!("{n}_labels_metadata.json"))),
    );

    // Accounting: every patch of the archive is somewhere, and the splits are the lists'.
    let acc = &store.attrs.accounting;
    assert_eq!(acc.input_patches, 150);
    assert_eq!(acc.accounted(), 150);
    assert_eq!(checked as u64, acc.written.values().sum::<u64>());
    let lines = |f: &str| {
        std::fs::read_to_string(archive.join(f))
            .unwrap()
            .lines()
            .count() as u64
    };
    assert_eq!(acc.excluded_snow, lines("patches_with_seasonal_snow.csv"));
    assert_eq!(
        acc.excluded_cloud,
        lines("patches_with_cloud_and_shadow.csv")
    );
    assert_eq!(acc.written[&Split::Train], lines("train.csv"));
    assert_eq!(acc.written[&Split::Validation], lines("val.csv"));
    assert_eq!(acc.written[&Split::Test], lines("test.csv"));
    assert!(acc.excluded_snow > 0);
    let snow_text =
        std::fs::read_to_string(archive.join("patches_with_seasonal_snow.csv")).unwrap();
    assert!(snow_text.ends_with("\r\n"), "official lists use CRLF");

    // Band statistics over the training split, recomputed here in f64.
    let train = store.split(Split::Train).unwrap();
    for (g, group) in BAND_GROUPS.iter().enumerate() {
        let n = group.pixels_per_band();
        let mut sum = vec![0f64; group.bands.len()];
        let mut sum_sq = vec![0f64; group.bands.len()];
        for i in 0..train.len {
            let v = train.read_group(g, i).unwrap();
            for b in 0..group.bands.len() {
                for &x in &v[b * n..(b + 1) * n] {
                    sum[b] += x as f64;
                    sum_sq[b] += (x as f64) * (x as f64);
                }
            }
        }
        for (b, band) in group.bands.iter().enumerate() {
            let count = (n * train.len) as f64;
            let mean = sum[b] / count;
            let std = (sum_sq[b] / count - mean * mean).sqrt();
            let got = store.attrs.band_stats[*band];
            assert!(
                (got.mean - mean).abs() < 1e-9 * mean,
                "{band} mean {} vs {mean}",
                got.mean
            );
            assert!(
                (got.std - std).abs() < 1e-6 * std,
                "{band} std {} vs {std}",
                got.std
            );
        }
    }
    assert_eq!(store.attrs.band_stats.len(), ALL_BANDS.len());
}

#[test]
fn v2_store_holds_every_source_pixel_and_label() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = common::synth(tmp.path(), 80, 4, "v2");
    let out = tmp.path().join("store.zarr");
    common::convert(&archive, &out, &["--shard-patches", "8"]);
    let store = Store::open(&out).unwrap();
    // Expected labels and splits straight from metadata.parquet, read with the parquet crate.
    let file = std::fs::File::open(archive.join("metadata.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut expected = std::collections::HashMap::new();
    for batch in reader {
        let batch = batch.unwrap();
        use arrow_array::Array;
        let ids = batch
            .column_by_name("patch_id")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap()
            .clone();
        let labels = batch
            .column_by_name("labels")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::ListArray>()
            .unwrap()
            .clone();
        let splits = batch
            .column_by_name("split")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap()
            .clone();
        for r in 0..batch.num_rows() {
            let list = labels.value(r);
            let names = list
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap();
            let mut v = vec![0u8; NUM_CLASSES];
            for n in names.iter().flatten() {
                v[ben19_index(n).unwrap()] = 1;
            }
            expected.insert(ids.value(r).to_string(), (v, splits.value(r).to_string()));
        }
    }
    let root = archive.join("BigEarthNet-S2");
    check_store(
        &store,
        |n| {
            root.join(data_prep::archive::v2_tile_of(n).unwrap())
                .join(n)
        },
        |n| expected[n].0.clone(),
    );
    for split in Split::ALL {
        for n in &store.split(split).unwrap().names {
            assert_eq!(
                expected[n].1,
                split.name(),
                "{n} is in the split its metadata names"
            );
        }
    }
    assert_eq!(store.attrs.accounting.accounted(), 80);
    assert!(store.attrs.accounting.excluded_snow > 0);
}

#[test]
fn same_inputs_and_options_give_byte_identical_stores() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = common::synth(tmp.path(), 90, 5, "v1");
    let a = tmp.path().join("a.zarr");
    let b = tmp.path().join("b.zarr");
    common::convert(&archive, &a, &["--threads", "1", "--shard-patches", "8"]);
    common::convert(&archive, &b, &["--threads", "2", "--shard-patches", "8"]);
    common::assert_same_tree(&a, &b);
    // The same seed gives the same archive.
    let again = tmp.path().join("again");
    std::fs::create_dir(&again).unwrap();
    let archive2 = common::synth(&again, 90, 5, "v1");
    common::assert_same_tree(&archive, &archive2);
}

#[test]
fn without_split_lists_a_seeded_random_split_is_made() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = common::synth(tmp.path(), 100, 6, "v1");
    for f in ["train.csv", "val.csv", "test.csv"] {
        std::fs::remove_file(archive.join(f)).unwrap();
    }
    let names = |out: &Path| -> Vec<Vec<String>> {
        let s = Store::open(out).unwrap();
        Split::ALL
            .iter()
            .map(|&sp| s.split(sp).unwrap().names)
            .collect()
    };
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    common::convert(&archive, &a, &["--split-seed", "1"]);
    common::convert(&archive, &b, &["--split-seed", "1"]);
    common::convert(&archive, &c, &["--split-seed", "2"]);
    let store = Store::open(&a).unwrap();
    assert!(
        store.attrs.source.splits.contains("random"),
        "{}",
        store.attrs.source.splits
    );
    // Each patch's split follows from its name and the seed (plan.rs tests the 52/24/24 shares).
    for (split, names) in Split::ALL.into_iter().zip(names(&a)) {
        assert!(!names.is_empty());
        assert!(
            names
                .iter()
                .all(|n| data_prep::plan::random_split(n, 1) == split),
            "{split}"
        );
    }
    assert_eq!(names(&a), names(&b));
    assert_ne!(names(&a), names(&c));
}
