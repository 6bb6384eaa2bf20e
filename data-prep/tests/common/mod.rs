//! Helpers shared by data-prep's integration tests: running the real binary and making
//! synthetic archives.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn data_prep() -> Command {
    Command::new(env!("CARGO_BIN_EXE_data-prep"))
}

pub fn run(args: &[&str]) -> Output {
    data_prep().args(args).output().expect("data-prep runs")
}

/// Runs data-prep and returns its stdout, failing the test with its stderr if it failed.
pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "data-prep {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs data-prep expecting failure; returns stderr.
pub fn run_err(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        !out.status.success(),
        "data-prep {args:?} should have failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

pub fn synth(dir: &Path, patches: usize, seed: u64, format: &str) -> PathBuf {
    let out = dir.join(format!("archive-{format}-{seed}"));
    run_ok(&[
        "synth",
        "--patches",
        &patches.to_string(),
        "--seed",
        &seed.to_string(),
        "--format",
        format,
        "--out",
        out.to_str().unwrap(),
    ]);
    out
}

pub fn convert(archive: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "convert",
        "--archive",
        archive.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_ok(&args)
}

/// The torchgeo fixtures kept in the repository (tests/data/torchgeo-bigearthnet, with their
/// licence and provenance).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/torchgeo-bigearthnet")
}

/// Pixel values of an uncompressed band file as the synthetic generator writes it: the
/// trailing side² little-endian u16, read without any TIFF parser.
pub fn raw_pixels(path: &Path, side: usize) -> Vec<u16> {
    let bytes = std::fs::read(path).unwrap();
    bytes[bytes.len() - side * side * 2..]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Every file below `dir`, relative path → contents.
pub fn tree(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

/// A store's root `zarr.json` without its random `store_id`, and every other file as it is.
fn without_store_id(
    mut files: std::collections::BTreeMap<PathBuf, Vec<u8>>,
) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    if let Some(bytes) = files.get_mut(Path::new("zarr.json")) {
        let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        if let Some(attrs) = v
            .pointer_mut("/attributes/lossbench")
            .and_then(|a| a.as_object_mut())
        {
            assert!(attrs.remove("store_id").is_some(), "every store has an id");
        }
        *bytes = serde_json::to_vec(&v).unwrap();
    }
    files
}

/// Asserts two folders hold the same files with the same bytes, naming what differs; a store's
/// random id (the one thing two conversions of one archive differ in) is left out.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (without_store_id(tree(a)), without_store_id(tree(b)));
    let only_a: Vec<_> = ta.keys().filter(|k| !tb.contains_key(*k)).collect();
    let only_b: Vec<_> = tb.keys().filter(|k| !ta.contains_key(*k)).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "only in {}: {only_a:?}; only in {}: {only_b:?}",
        a.display(),
        b.display()
    );
    let differ: Vec<_> = ta
        .iter()
        .filter(|(k, v)| tb[*k] != **v)
        .map(|(k, _)| k)
        .collect();
    assert!(
        differ.is_empty(),
        "files differ between {} and {}: {differ:?}",
        a.display(),
        b.display()
    );
    assert!(ta.len() > 10, "suspiciously few files in {}", a.display());
}

/// Packs an unpacked synthetic archive (the folder holding BigEarthNet-v1.0/ or
/// BigEarthNet-S2/ and the lists or metadata.parquet) with the system `tar`, in name order, into
/// `dest/<name>`, compressed as `compress` says (`gz`, `zst` or none); the lists and
/// metadata are copied beside it, as the downloads come.
pub fn pack_with_system_tar(archive: &Path, dest: &Path, compress: Option<&str>) -> PathBuf {
    std::fs::create_dir_all(dest).unwrap();
    let folder = if archive.join("BigEarthNet-v1.0").is_dir() {
        "BigEarthNet-v1.0"
    } else {
        "BigEarthNet-S2"
    };
    let ext = match compress {
        Some("gz") => "tar.gz",
        Some("zst") => "tar.zst",
        _ => "tar",
    };
    let out = dest.join(format!("{folder}.{ext}"));
    let mut tar = Command::new("tar");
    tar.arg("--sort=name").arg("-c");
    match compress {
        Some("gz") => tar.arg("--gzip"),
        Some("zst") => tar.arg("--zstd"),
        _ => &mut tar,
    };
    let status = tar
        .arg("-f")
        .arg(&out)
        .arg("-C")
        .arg(archive)
        .arg(folder)
        .status()
        .unwrap();
    assert!(status.success(), "tar failed");
    for e in std::fs::read_dir(archive).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dest.join(p.file_name().unwrap())).unwrap();
        }
    }
    out
}
