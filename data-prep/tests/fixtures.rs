//! The torchgeo fixtures (another project's writer, real layouts, wrongly sized bands on
//! purpose): every patch is found, labels and splits are read right, the bands are refused.

mod common;

use std::collections::BTreeMap;

use data_prep::archive;
use data_prep::plan::{ListFiles, make_plan};
use data_prep::store::read_rejects;
use lossbench_core::layout::Split;
use lossbench_core::store::Store;

fn classes(v: &[u8]) -> Vec<usize> {
    (0..v.len()).filter(|&c| v[c] == 1).collect()
}

/// patch → (split, 19-class indices), from a plan.
fn planned(path: &std::path::Path) -> BTreeMap<String, (Split, Vec<usize>)> {
    let a = archive::open(path, None).unwrap();
    assert!(a.rejects.is_empty(), "{:?}", a.rejects);
    let plan = make_plan(path, a, &ListFiles::default(), 0).unwrap();
    let mut out = BTreeMap::new();
    for (split, patches) in plan.splits {
        for p in patches {
            out.insert(p.name.clone(), (split, classes(&p.labels)));
        }
    }
    out
}

#[test]
fn v1_fixture_labels_and_split_files_are_read_right() {
    let v1 = common::fixtures().join("v1");
    let got = planned(&v1);
    // By hand from the JSON files and bigearthnet-{train,val,test}.csv (two-column form):
    // 61_39: Non-irrigated arable land, Broad-leaved forest, Water courses
    // 61_40: Discontinuous urban fabric, Non-irrigated arable land, Land principally occupied
    //        by agriculture..., Broad-leaved forest, Inland marshes, Water courses
    // 61_41: Discontinuous urban fabric, Non-irrigated arable land, Broad-leaved forest, Coniferous forest
    // 61_42: Non-irrigated arable land, Coniferous forest
    let expected: BTreeMap<String, (Split, Vec<usize>)> = [
        (
            "S2A_MSIL2A_20170613T101031_61_39",
            Split::Train,
            vec![2, 8, 17],
        ),
        (
            "S2A_MSIL2A_20170613T101031_61_40",
            Split::Train,
            vec![0, 2, 6, 8, 15, 17],
        ),
        (
            "S2A_MSIL2A_20170613T101031_61_41",
            Split::Validation,
            vec![0, 2, 8, 9],
        ),
        ("S2A_MSIL2A_20170613T101031_61_42", Split::Test, vec![2, 9]),
    ]
    .into_iter()
    .map(|(n, s, c)| (n.to_string(), (s, c)))
    .collect();
    assert_eq!(got, expected);
}

#[test]
fn v2_fixture_labels_and_split_column_are_read_right() {
    let v2 = common::fixtures().join("v2");
    let got = planned(&v2);
    // By hand from metadata.parquet (19-class names already).
    let expected: BTreeMap<String, (Split, Vec<usize>)> = [
        (
            "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57",
            Split::Train,
            vec![0, 1, 5],
        ),
        (
            "S2A_MSIL2A_20170614T102021_N9999_R122_T32TQT_45_38",
            Split::Train,
            vec![8, 10, 13],
        ),
        (
            "S2B_MSIL2A_20170615T102019_N9999_R122_T32TNS_45_23",
            Split::Validation,
            vec![2, 4, 17],
        ),
        (
            "S2A_MSIL2A_20170618T101021_N9999_R022_T32TQR_89_34",
            Split::Test,
            vec![9, 11],
        ),
    ]
    .into_iter()
    .map(|(n, s, c)| (n.to_string(), (s, c)))
    .collect();
    assert_eq!(got, expected);
}

#[test]
fn fixture_bands_are_refused_or_rejected_with_skip_bad() {
    let tmp = tempfile::tempdir().unwrap();
    for (version, reason) in [
        ("v1", "wrong size: 2x2 pixels, expected 120x120"),
        ("v2", "expected single-band unsigned 16-bit"),
    ] {
        let archive = common::fixtures().join(version);
        let out = tmp.path().join(format!("{version}.zarr"));
        let (a, o) = (archive.to_str().unwrap(), out.to_str().unwrap());
        let err = common::run_err(&["convert", "--archive", a, "--out", o]);
        assert!(err.contains(reason), "{version}: {err}");
        assert!(
            err.contains("_B04.tif"),
            "{version}: the error names the file: {err}"
        );
        assert!(!out.exists());

        let printed = common::run_ok(&["convert", "--archive", a, "--out", o, "--skip-bad"]);
        assert!(printed.contains("rejected (bad input)"), "{printed}");
        let store = Store::open(&out).unwrap();
        let acc = &store.attrs.accounting;
        assert_eq!(
            (acc.input_patches, acc.rejected, acc.accounted()),
            (4, 4, 4),
            "{version}: {acc:?}"
        );
        let rejects = read_rejects(&out).unwrap();
        assert_eq!(rejects.len(), 4);
        assert!(
            rejects.iter().all(|r| r.reason.contains(reason)),
            "{rejects:?}"
        );
    }
    // The v2 fixture's 20 m and 60 m bands are also at the wrong size (120 x 120).
    let b01 = std::fs::read_dir(
        common::fixtures()
            .join("v2/BigEarthNet-S2/S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP/S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"),
    )
    .unwrap()
    .map(|e| e.unwrap().path())
    .find(|p| p.to_string_lossy().ends_with("_B01.tif"))
    .unwrap();
    let err = data_prep::geotiff::decode_band(&std::fs::read(b01).unwrap(), 20).unwrap_err();
    assert_eq!(
        err.to_string(),
        "wrong size: 120x120 pixels, expected 20x20 for this band"
    );
}
