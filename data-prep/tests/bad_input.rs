//! Each kind of bad input gives a clear error naming patch and file and leaves no store; with
//! --skip-bad the rest is written and every patch is accounted for.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use data_prep::geotiff::{self, Flavor, GeoRef};
use data_prep::store::read_rejects;
use lossbench_core::store::Store;

struct Case {
    name: &'static str,
    /// Breaks the archive; returns the patch and the file the error must name.
    corrupt: fn(&Path, &str) -> (String, PathBuf),
    /// Part of the expected reason.
    reason: &'static str,
    /// The same from a packed archive, where a missing file is a member missing from the stream.
    packed_reason: &'static str,
    /// Whether the bad patch is an extra input (a listed patch missing from the archive).
    extra_input: bool,
}

fn band(archive: &Path, patch: &str, band: &str) -> PathBuf {
    archive
        .join("BigEarthNet-v1.0")
        .join(patch)
        .join(format!("{patch}_{band}.tif"))
}

fn json(archive: &Path, patch: &str) -> PathBuf {
    archive
        .join("BigEarthNet-v1.0")
        .join(patch)
        .join(format!("{patch}_labels_metadata.json"))
}

const CASES: [Case; 7] = [
    Case {
        name: "missing band",
        corrupt: |a, p| {
            let f = band(a, p, "B08");
            fs::remove_file(&f).unwrap();
            (p.into(), f)
        },
        reason: "missing band file",
        packed_reason: "members missing at the end of the stream",
        extra_input: false,
    },
    Case {
        name: "wrong size",
        corrupt: |a, p| {
            let f = band(a, p, "B05");
            let geo = GeoRef {
                ulx: 0.0,
                uly: 0.0,
                gsd_m: 20.0,
                utm_zone: 33,
            };
            fs::write(
                &f,
                geotiff::encode_band(&vec![7u16; 120 * 120], 120, &geo, Flavor::V1),
            )
            .unwrap();
            (p.into(), f)
        },
        reason: "wrong size: 120x120 pixels, expected 60x60",
        packed_reason: "wrong size: 120x120 pixels, expected 60x60",
        extra_input: false,
    },
    Case {
        name: "truncated",
        corrupt: |a, p| {
            let f = band(a, p, "B02");
            let bytes = fs::read(&f).unwrap();
            fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
            (p.into(), f)
        },
        reason: "unreadable TIFF",
        packed_reason: "unreadable TIFF",
        extra_input: false,
    },
    Case {
        name: "not a TIFF",
        corrupt: |a, p| {
            let f = band(a, p, "B11");
            fs::write(&f, b"<html>404 not found</html>").unwrap();
            (p.into(), f)
        },
        reason: "not a TIFF file",
        packed_reason: "not a TIFF file",
        extra_input: false,
    },
    Case {
        name: "malformed JSON",
        corrupt: |a, p| {
            let f = json(a, p);
            fs::write(&f, "{\"labels\": [\"Pastures\", ").unwrap();
            (p.into(), f)
        },
        reason: "malformed JSON",
        packed_reason: "malformed JSON",
        extra_input: false,
    },
    Case {
        name: "unknown label",
        corrupt: |a, p| {
            let f = json(a, p);
            fs::write(&f, "{\"labels\": [\"Pastures\", \"Lava fields\"]}").unwrap();
            (p.into(), f)
        },
        reason: "unknown label \"Lava fields\"",
        packed_reason: "unknown label \"Lava fields\"",
        extra_input: false,
    },
    Case {
        name: "listed but not in the archive",
        corrupt: |a, _| {
            let f = a.join("val.csv");
            let mut text = fs::read_to_string(&f).unwrap();
            text.push_str("S2A_MSIL2A_20991231T000000_1_1\n");
            fs::write(&f, text).unwrap();
            ("S2A_MSIL2A_20991231T000000_1_1".into(), f)
        },
        reason: "listed in the validation list but not in the archive",
        packed_reason: "listed in the validation list but not in the archive",
        extra_input: true,
    },
];

#[test]
fn every_bad_input_is_named_and_accounted_for() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = common::synth(tmp.path(), 40, 11, "v1");
    // A patch that is in a split list, so that its pixels are read.
    let victim = fs::read_to_string(pristine.join("train.csv"))
        .unwrap()
        .lines()
        .nth(3)
        .unwrap()
        .to_string();
    for (k, case) in CASES.iter().enumerate() {
        let archive = tmp.path().join(format!("case{k}"));
        copy_dir(&pristine, &archive);
        let (patch, file) = (case.corrupt)(&archive, &victim);
        let out = tmp.path().join(format!("case{k}.zarr"));
        let (a, o) = (archive.to_str().unwrap(), out.to_str().unwrap());

        let err = common::run_err(&["convert", "--archive", a, "--out", o]);
        assert!(
            err.contains(&patch),
            "{}: error does not name the patch:\n{err}",
            case.name
        );
        assert!(
            err.contains(file.to_str().unwrap()),
            "{}: error does not name the file:\n{err}",
            case.name
        );
        assert!(
            err.contains(case.reason),
            "{}: error does not say {:?}:\n{err}",
            case.name,
            case.reason
        );
        assert!(
            !out.exists(),
            "{}: a store exists after the error",
            case.name
        );
        assert!(
            !lossbench_core::layout::partial_path(&out).exists(),
            "{}: partial left behind",
            case.name
        );

        common::run_ok(&["convert", "--archive", a, "--out", o, "--skip-bad"]);
        let store = Store::open(&out).unwrap();
        let acc = &store.attrs.accounting;
        assert_eq!(
            acc.input_patches,
            40 + case.extra_input as u64,
            "{}",
            case.name
        );
        assert_eq!(acc.accounted(), acc.input_patches, "{}: {acc:?}", case.name);
        assert_eq!(acc.rejected, 1, "{}", case.name);
        let rejects = read_rejects(&out).unwrap();
        assert_eq!(rejects.len(), 1);
        assert_eq!(rejects[0].patch, patch);
        assert_eq!(rejects[0].file, file);
        assert!(
            rejects[0].reason.contains(case.reason),
            "{}: {}",
            case.name,
            rejects[0].reason
        );
        for split in lossbench_core::layout::Split::ALL {
            assert!(!store.split(split).unwrap().names.contains(&patch));
        }

        // The same archive packed as downloaded: the same patch named, the member's file name.
        let packed = common::pack_with_system_tar(
            &archive,
            &tmp.path().join(format!("case{k}-packed")),
            Some("gz"),
        );
        let out = tmp.path().join(format!("case{k}-packed.zarr"));
        let (a, o) = (packed.to_str().unwrap(), out.to_str().unwrap());
        let err = common::run_err(&["convert", "--archive", a, "--out", o]);
        let file_name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            err.contains(&patch) && err.contains(file_name) && err.contains(case.packed_reason),
            "{} (packed):\n{err}",
            case.name
        );
        assert!(
            !out.exists() && !lossbench_core::layout::partial_path(&out).exists(),
            "{} (packed): left behind",
            case.name
        );
        common::run_ok(&["convert", "--archive", a, "--out", o, "--skip-bad"]);
        let acc = Store::open(&out).unwrap().attrs.accounting;
        assert_eq!(
            (acc.input_patches, acc.rejected, acc.accounted()),
            (40 + case.extra_input as u64, 1, acc.input_patches),
            "{} (packed)",
            case.name
        );
        let rejects = read_rejects(&out).unwrap();
        assert!(
            rejects.len() == 1
                && rejects[0].patch == patch
                && rejects[0].reason.contains(case.packed_reason),
            "{rejects:?}"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn an_existing_store_is_kept_unless_overwrite_is_given() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = common::synth(tmp.path(), 20, 12, "v1");
    let out = tmp.path().join("s.zarr");
    common::convert(&archive, &out, &[]);
    let err = common::run_err(&[
        "convert",
        "--archive",
        archive.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("already exists") && err.contains("--overwrite"),
        "{err}"
    );
    common::convert(&archive, &out, &["--overwrite"]);
    Store::open(&out).unwrap();
}

/// The usual mistakes with `--archive`, as a user makes them: a path that does not exist is
/// named as given; a file that only looks like an archive by its name is refused as such
/// before anything else is said about it (no warnings about lists it would have needed); no
/// output is created either way.
#[test]
fn a_missing_or_false_archive_is_named_before_anything_else() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("store.zarr");
    let err = common::run_err(&[
        "convert",
        "--archive",
        "nope.tar.gz",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("--archive nope.tar.gz: does not exist"),
        "{err}"
    );
    let fake = tmp.path().join("BigEarthNet-S2-v1.0.tar.gz");
    std::fs::write(&fake, b"<html>Service unavailable</html>").unwrap();
    let err = common::run_err(&[
        "convert",
        "--archive",
        fake.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("not a gzip file, though its name says so"),
        "{err}"
    );
    assert!(!err.contains("snow list") && !err.contains("WARN"), "{err}");
    assert!(!out.exists() && !tmp.path().join("store.zarr.partial").exists());
}

/// A tar header that claims a member of 8 GB (a damaged or hostile archive): refused naming
/// the member and the offset, before any allocation of that size.
#[test]
fn a_member_claiming_a_huge_size_is_named_not_allocated() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let archive = common::synth(tmp.path(), 3, 12, "v1");
    let packed = tmp.path().join("BigEarthNet-S2-v1.0.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&packed).unwrap());
    let mut header = tar::Header::new_gnu();
    let name =
        "BigEarthNet-v1.0/S2A_MSIL2A_20170613T101031_0_0/S2A_MSIL2A_20170613T101031_0_0_B01.tif";
    header.set_path(name).unwrap();
    header.set_size(8 << 30);
    header.set_cksum();
    builder.append(&header, std::io::repeat(0).take(0)).unwrap();
    drop(builder);
    for list in ["train.csv", "val.csv", "test.csv"] {
        std::fs::copy(archive.join(list), tmp.path().join(list)).unwrap();
    }
    let out = tmp.path().join("store.zarr");
    let err = common::run_err(&[
        "convert",
        "--archive",
        packed.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains(&format!("member {name} claims 8589934592 bytes")),
        "{err}"
    );
    assert!(
        err.contains("a damaged header") && err.contains("at byte 0"),
        "{err}"
    );
}
