//! Packed archives (.tar.gz, .tar.zst, .tar) read as one stream: packed by the system `tar`
//! in name order they give the folder conversion's store byte for byte; with their members
//! scattered they give the same patches; damaged streams are refused naming the offset; every
//! patch is accounted for.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use data_prep::store::read_rejects;
use lossbench_core::layout::{Split, partial_path};
use lossbench_core::store::Store;
use rand::SeedableRng;
use rand::seq::SliceRandom;

/// The store's arrays (every split and the rejects), byte for byte, and its attributes but the
/// source.
fn assert_same_store(a: &Path, b: &Path) {
    let arrays = |s: &Path| -> BTreeMap<PathBuf, Vec<u8>> {
        common::tree(s)
            .into_iter()
            .filter(|(p, _)| p != Path::new("zarr.json"))
            .collect()
    };
    let (x, y) = (arrays(a), arrays(b));
    assert_eq!(
        x.keys().collect::<Vec<_>>(),
        y.keys().collect::<Vec<_>>(),
        "{} vs {}",
        a.display(),
        b.display()
    );
    let differ: Vec<&PathBuf> = x
        .iter()
        .filter(|(k, v)| y[*k] != **v)
        .map(|(k, _)| k)
        .collect();
    assert!(
        differ.is_empty() && x.len() > 30,
        "{} vs {}: {differ:?}",
        a.display(),
        b.display()
    );
    let (mut x, y) = (Store::open(a).unwrap().attrs, Store::open(b).unwrap().attrs);
    assert_ne!(x.source, y.source, "the source should name the input");
    x.source = y.source.clone();
    assert_ne!(x.store_id, y.store_id, "every conversion gets its own id");
    x.store_id = y.store_id.clone();
    assert_eq!(x, y);
}

/// Per split: patch name → (labels, all pixel values).
fn patches(store: &Path) -> BTreeMap<(Split, String), (Vec<u8>, Vec<u16>)> {
    let s = Store::open(store).unwrap();
    let mut out = BTreeMap::new();
    for split in Split::ALL {
        let d = s.split(split).unwrap();
        for (i, name) in d.names.iter().enumerate() {
            let px: Vec<u16> = (0..3).flat_map(|g| d.read_group(g, i).unwrap()).collect();
            out.insert((split, name.clone()), (d.labels_of(i).to_vec(), px));
        }
    }
    out
}

#[test]
fn system_tar_archives_give_the_folder_conversions_store() {
    let tmp = tempfile::tempdir().unwrap();
    for (format, n) in [("v1", 90), ("v2", 70)] {
        let archive = common::synth(tmp.path(), n, 31, format);
        let folder_store = tmp.path().join(format!("{format}-folder.zarr"));
        common::convert(&archive, &folder_store, &["--shard-patches", "16"]);
        for compress in [Some("gz"), Some("zst"), None] {
            let packed = common::pack_with_system_tar(
                &archive,
                &tmp.path().join(format!("{format}-{compress:?}")),
                compress,
            );
            let out = tmp.path().join(format!("{format}-{compress:?}.zarr"));
            let printed =
                common::convert(&packed, &out, &["--shard-patches", "16", "--threads", "1"]);
            assert!(printed.contains("converted"), "{printed}");
            assert_same_store(&folder_store, &out);
            assert_eq!(
                Store::open(&out).unwrap().attrs.source.path,
                packed.display().to_string()
            );
        }
        // synth --pack writes what the download looks like: the same store again.
        let dir = tmp.path().join(format!("{format}-synth-pack"));
        let text = common::run_ok(&[
            "synth",
            "--patches",
            &n.to_string(),
            "--seed",
            "31",
            "--format",
            format,
            "--out",
            dir.to_str().unwrap(),
            "--pack",
            "tar.gz",
        ]);
        let file = if format == "v1" {
            "BigEarthNet-S2-v1.0.tar.gz"
        } else {
            "BigEarthNet-S2.tar.gz"
        };
        assert!(text.contains(file), "{text}");
        let out = tmp.path().join(format!("{format}-synth-pack.zarr"));
        common::convert(&dir.join(file), &out, &["--shard-patches", "16"]);
        assert_same_store(&folder_store, &out);
    }
}

/// Writes a .tar.gz with the tar and flate2 crates: deterministic bytes (no mtimes), the
/// members in name order or, with a shuffle seed, in a seeded random order that scatters every
/// patch's members across the stream.
fn pack_gz(
    archive: &Path,
    dest: &Path,
    shuffle: Option<u64>,
    level: flate2::Compression,
) -> PathBuf {
    fs::create_dir_all(dest).unwrap();
    let mut members: Vec<(PathBuf, Vec<u8>)> = common::tree(archive)
        .into_iter()
        .filter(|(p, _)| p.starts_with("BigEarthNet-v1.0"))
        .collect();
    if let Some(seed) = shuffle {
        members.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    }
    let out = dest.join("BigEarthNet-S2-v1.0.tar.gz");
    let gz = flate2::write::GzEncoder::new(fs::File::create(&out).unwrap(), level);
    let mut tar = tar::Builder::new(gz);
    for (path, bytes) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, path, bytes.as_slice()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
    for e in fs::read_dir(archive).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            fs::copy(&p, dest.join(p.file_name().unwrap())).unwrap();
        }
    }
    out
}

#[test]
fn scattered_members_give_the_same_patches_within_the_pending_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = common::synth(tmp.path(), 80, 32, "v1");
    let folder_store = tmp.path().join("folder.zarr");
    common::convert(&archive, &folder_store, &[]);
    let packed = pack_gz(
        &archive,
        &tmp.path().join("shuffled"),
        Some(5),
        flate2::Compression::fast(),
    );
    let out = tmp.path().join("shuffled.zarr");
    common::convert(&packed, &out, &[]);
    assert_eq!(
        patches(&out),
        patches(&folder_store),
        "same patches, labels and pixels in each split"
    );
    assert_eq!(
        Store::open(&out).unwrap().attrs.accounting,
        Store::open(&folder_store).unwrap().attrs.accounting
    );
    // Too small a bound for this archive: refused, naming a patch and the option.
    let small = tmp.path().join("small.zarr");
    let err = common::run_err(&[
        "convert",
        "--archive",
        packed.to_str().unwrap(),
        "--out",
        small.to_str().unwrap(),
        "--max-pending-patches",
        "4",
    ]);
    assert!(
        err.contains("4 patches are incomplete at once")
            && err.contains("--max-pending-patches")
            && err.contains("patch S2"),
        "{err}"
    );
    assert!(
        err.contains("byte") && err.contains("of the tar stream"),
        "{err}"
    );
    assert!(!small.exists() && !partial_path(&small).exists());
}

#[test]
fn damaged_streams_are_refused_naming_the_offset_or_rejected_with_skip_bad() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = common::synth(tmp.path(), 60, 33, "v1");
    let packed = common::pack_with_system_tar(&archive, &tmp.path().join("packed"), Some("gz"));
    let bytes = fs::read(&packed).unwrap();
    let damaged = |name: &str, content: &[u8]| -> PathBuf {
        let dir = tmp.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        for e in fs::read_dir(packed.parent().unwrap()).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "csv") {
                fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
            }
        }
        let file = dir.join("BigEarthNet-S2-v1.0.tar.gz");
        fs::write(&file, content).unwrap();
        file
    };
    // Cut short mid-stream (a broken download): the patches read before the cut are kept with
    // --skip-bad, the cut-off ones rejected.
    for f in [0.1, 0.5, 0.9] {
        let name = format!("cut at {f}");
        let file = damaged(
            &format!("cut{f}"),
            &bytes[..(bytes.len() as f64 * f) as usize],
        );
        let out = tmp.path().join(format!("{name}.zarr"));
        let (a, o) = (file.to_str().unwrap(), out.to_str().unwrap());
        let err = common::run_err(&["convert", "--archive", a, "--out", o]);
        assert!(
            err.contains("of the tar stream")
                && err.contains("bytes into the file")
                && err.contains(a),
            "{name}: {err}"
        );
        assert!(
            !out.exists() && !partial_path(&out).exists(),
            "{name}: something left behind"
        );
        common::run_ok(&["convert", "--archive", a, "--out", o, "--skip-bad"]);
        let store = Store::open(&out).unwrap();
        let acc = &store.attrs.accounting;
        assert_eq!(acc.accounted(), acc.input_patches, "{name}: {acc:?}");
        assert!(
            acc.rejected > 0,
            "{name}: the cut-off patches are rejected: {acc:?}"
        );
        let rejects = read_rejects(&out).unwrap();
        assert!(
            rejects
                .iter()
                .any(|r| r.reason.contains("not in the archive") || r.reason.contains("cut off")),
            "{name}: {rejects:?}"
        );
    }
    // A flipped byte garbles what follows it in the stream: a tar header's checksum, a member's
    // structure or gzip's checksum of the whole stream finds it. Without --skip-bad nothing is
    // written; with it, the patches decoded before the damage are kept and each is exactly the
    // undamaged archive's, or (when only gzip's checksum finds it) nothing is kept. Packed by our
    // own writer, so that where each flip lands does not depend on the files' mtimes.
    let ours = pack_gz(
        &archive,
        &tmp.path().join("ours"),
        None,
        flate2::Compression::default(),
    );
    let good = tmp.path().join("good.zarr");
    common::run_ok(&[
        "convert",
        "--archive",
        ours.to_str().unwrap(),
        "--out",
        good.to_str().unwrap(),
    ]);
    let good = Store::open(&good).unwrap();
    let ours = fs::read(&ours).unwrap();
    let mut kept_some = false;
    for f in [0.3, 0.5, 0.7] {
        let mut flipped = ours.clone();
        flipped[(ours.len() as f64 * f) as usize] ^= 0x5a;
        let name = format!("flipped at {f}");
        let file = damaged(&format!("flipped{f}"), &flipped);
        let out = tmp.path().join(format!("{name}.zarr"));
        let (a, o) = (file.to_str().unwrap(), out.to_str().unwrap());
        let err = common::run_err(&["convert", "--archive", a, "--out", o]);
        assert!(
            err.contains("bytes into the file") && err.contains(a),
            "{name}: {err}"
        );
        assert!(
            !out.exists() && !partial_path(&out).exists(),
            "{name}: something left behind"
        );
        let skipping = common::run(&["convert", "--archive", a, "--out", o, "--skip-bad"]);
        if !skipping.status.success() {
            let err = String::from_utf8_lossy(&skipping.stderr);
            assert!(
                err.contains("damaged") && err.contains("bytes into the file"),
                "{name}: {err}"
            );
            assert!(
                !out.exists() && !partial_path(&out).exists(),
                "{name}: something left behind"
            );
        } else {
            let store = Store::open(&out).unwrap();
            let acc = &store.attrs.accounting;
            assert!(
                acc.accounted() == acc.input_patches && acc.rejected > 0,
                "{name}: {acc:?}"
            );
            for split in [Split::Train, Split::Validation, Split::Test] {
                let (kept, all) = (store.split(split).unwrap(), good.split(split).unwrap());
                for (i, patch) in kept.names.iter().enumerate() {
                    let j = all
                        .names
                        .iter()
                        .position(|n| n == patch)
                        .expect("a kept patch is in the undamaged store");
                    assert_eq!(kept.labels_of(i), all.labels_of(j), "{name}: {patch}");
                    for g in 0..3 {
                        assert_eq!(
                            kept.read_group(g, i).unwrap(),
                            all.read_group(g, j).unwrap(),
                            "{name}: {patch} group {g}"
                        );
                    }
                    kept_some = true;
                }
            }
        }
    }
    assert!(
        kept_some,
        "no flip left patches to keep: the --skip-bad path went unchecked"
    );
    // A stream cut in its trailer: the tar is whole, gzip's length check finds it.
    let file = damaged("trailer", &bytes[..bytes.len() - 4]);
    let out = tmp.path().join("trailer.zarr");
    for extra in [None, Some("--skip-bad")] {
        let mut args = vec![
            "convert",
            "--archive",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let err = common::run_err(&args);
        assert!(
            err.contains("damaged") && err.contains("bytes into the file"),
            "trailer: {err}"
        );
        assert!(
            !out.exists() && !partial_path(&out).exists(),
            "trailer: something left behind"
        );
    }
    // Damage that only gzip's checksum of the whole stream finds (a stored, uncompressed block):
    // which patch it touched cannot be told, so nothing is kept, even with --skip-bad.
    let stored = tmp.path().join("stored");
    let file = pack_gz(&archive, &stored, Some(1), flate2::Compression::none());
    let mut raw = fs::read(&file).unwrap();
    let at = raw.len() / 2;
    raw[at] ^= 0x01;
    fs::write(&file, raw).unwrap();
    let out = tmp.path().join("stored.zarr");
    let err = common::run_err(&[
        "convert",
        "--archive",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--skip-bad",
    ]);
    assert!(
        err.contains("the compressed stream is damaged")
            && err.contains("--skip-bad cannot set this aside"),
        "{err}"
    );
    assert!(!out.exists() && !partial_path(&out).exists());
    // A tar header whose checksum is wrong (uncompressed, so the gzip check cannot catch it first).
    let plain = common::pack_with_system_tar(&archive, &tmp.path().join("plain"), None);
    let mut tar = fs::read(&plain).unwrap();
    let second_header = 512
        + (u64::from_str_radix(std::str::from_utf8(&tar[124..135]).unwrap(), 8).unwrap() as usize)
            .div_ceil(512)
            * 512;
    tar[second_header + 3] ^= 0x01;
    fs::write(&plain, tar).unwrap();
    let out = tmp.path().join("checksum.zarr");
    let err = common::run_err(&[
        "convert",
        "--archive",
        plain.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("checksum mismatch")
            && err.contains(&format!("at byte {second_header} of the tar stream")),
        "{err}"
    );
}

#[test]
fn members_out_of_place_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = common::synth(tmp.path(), 30, 34, "v1");
    let victim = fs::read_to_string(archive.join("train.csv"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let folder = archive.join("BigEarthNet-v1.0");
    // An extra file in a patch folder: that patch is rejected with --skip-bad.
    fs::write(folder.join(&victim).join("notes.txt"), "hello").unwrap();
    let packed = common::pack_with_system_tar(&archive, &tmp.path().join("extra"), Some("gz"));
    let out = tmp.path().join("extra.zarr");
    let (a, o) = (packed.to_str().unwrap(), out.to_str().unwrap());
    let err = common::run_err(&["convert", "--archive", a, "--out", o]);
    assert!(
        err.contains(&victim) && err.contains("unexpected member") && err.contains("notes.txt"),
        "{err}"
    );
    common::run_ok(&["convert", "--archive", a, "--out", o, "--skip-bad"]);
    let rejects = read_rejects(&out).unwrap();
    assert_eq!(rejects.len(), 1);
    assert!(
        rejects[0].patch == victim && rejects[0].reason.contains("notes.txt"),
        "{rejects:?}"
    );
    // A file outside any patch folder: not a BigEarthNet archive, even with --skip-bad.
    fs::remove_file(folder.join(&victim).join("notes.txt")).unwrap();
    fs::write(folder.join("README"), "hello").unwrap();
    let packed = common::pack_with_system_tar(&archive, &tmp.path().join("stray"), Some("gz"));
    let out = tmp.path().join("stray.zarr");
    let err = common::run_err(&[
        "convert",
        "--archive",
        packed.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--skip-bad",
    ]);
    assert!(
        err.contains("BigEarthNet-v1.0/README is outside any patch folder")
            && err.contains("--skip-bad cannot"),
        "{err}"
    );
}
