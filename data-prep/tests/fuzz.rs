//! Bad inputs at scale (fuzzing crate): mutated GeoTIFF band files, v1.0 label JSON, v2.0
//! `metadata.parquet` and name lists, each campaign `LOSSBENCH_FUZZ_CASES` inputs (10,000 by
//! default). Every parser must refuse what it cannot use with an error, never panic, never
//! take seconds on one input, never allocate without bound; errors of file readers name the
//! file. (The in-memory decoders' errors are named by their callers: tests/bad_input.rs.)

mod common;

use std::path::{Path, PathBuf};

use data_prep::archive::{read_name_list, read_v2_metadata, v1_labels};
use data_prep::geotiff::{self, Flavor, GeoRef};
use fuzzing::{Outcome, campaign, cases, outcome};

#[global_allocator]
static HEAP: fuzzing::PeakAlloc = fuzzing::PeakAlloc;

/// Every file under `dir` whose name ends with `suffix`.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    common::tree(dir)
        .into_keys()
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .map(|p| dir.join(p))
        .collect()
}

#[test]
fn geotiff_bands() {
    // Our own encodings of each band size and flavour, and the foreign (GDAL-written) fixtures.
    let mut seeds: Vec<(Vec<u8>, usize)> = Vec::new();
    for side in [120usize, 60, 20] {
        let pixels: Vec<u16> = (0..side * side).map(|i| (i * 37 % 4096) as u16).collect();
        let geo = GeoRef {
            ulx: 500_000.0,
            uly: 6_000_000.0,
            gsd_m: (1200 / side) as f64,
            utm_zone: 33,
        };
        for flavor in [Flavor::V1, Flavor::V2] {
            seeds.push((geotiff::encode_band(&pixels, side, &geo, flavor), side));
        }
    }
    for f in files(&common::fixtures(), ".tif").into_iter().take(6) {
        seeds.push((std::fs::read(&f).unwrap(), 120));
    }
    let side = std::cell::Cell::new(0);
    let report = campaign(
        "GeoTIFF band files",
        cases(),
        1,
        |i, m| {
            let (bytes, s) = &seeds[i % seeds.len()];
            side.set(*s);
            m.mutate(bytes, 0)
        },
        |_, bytes| outcome(geotiff::decode_band(bytes, side.get())),
        |_| true,
    );
    report.assert_clean();
}

#[test]
fn v1_label_json() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = common::synth(tmp.path(), 20, 3, "v1");
    let mut seeds: Vec<Vec<u8>> = files(&archive, "_labels_metadata.json")
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    seeds.extend(
        files(&common::fixtures(), "_labels_metadata.json")
            .iter()
            .map(|f| std::fs::read(f).unwrap()),
    );
    let report = campaign(
        "v1.0 labels metadata JSON",
        cases(),
        2,
        |i, m| m.mutate(&seeds[i % seeds.len()], 0),
        |_, bytes| outcome(v1_labels(bytes)),
        |_| true,
    );
    report.assert_clean();
}

#[test]
fn v2_metadata_parquet() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = common::synth(tmp.path(), 40, 4, "v2");
    let seeds: Vec<Vec<u8>> = [
        archive.join("metadata.parquet"),
        common::fixtures().join("v2/metadata.parquet"),
    ]
    .iter()
    .map(|f| std::fs::read(f).unwrap())
    .collect();
    let file = tmp.path().join("metadata.parquet");
    let s2 = archive.join("BigEarthNet-S2");
    let report = campaign(
        "v2.0 metadata.parquet",
        cases(),
        3,
        // Parquet keeps its schema and row-group metadata in the footer: half the mutations go there.
        |i, m| m.mutate(&seeds[i % seeds.len()], 2048),
        |_, bytes| {
            std::fs::write(&file, bytes).unwrap();
            outcome(read_v2_metadata(&file, &s2))
        },
        |message| message.contains(file.to_str().unwrap()),
    );
    report.assert_clean();
}

#[test]
fn name_lists() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = common::synth(tmp.path(), 40, 5, "v1");
    let mut seeds: Vec<Vec<u8>> = files(&archive, ".csv")
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    seeds.extend(
        files(&common::fixtures(), ".csv")
            .iter()
            .map(|f| std::fs::read(f).unwrap()),
    );
    let file = tmp.path().join("list.csv");
    let report = campaign(
        "split, snow and cloud lists",
        cases(),
        5,
        |i, m| m.mutate(&seeds[i % seeds.len()], 0),
        |_, bytes| {
            std::fs::write(&file, bytes).unwrap();
            match read_name_list(&file) {
                // Accepted names are names: no blanks, no empty ones.
                Ok(names) => {
                    assert!(
                        names
                            .iter()
                            .all(|n| !n.is_empty() && !n.contains(char::is_whitespace)),
                        "{names:?}"
                    );
                    Outcome::Accepted
                }
                Err(e) => Outcome::Refused(format!("{e:#}")),
            }
        },
        |message| message.contains(file.to_str().unwrap()),
    );
    report.assert_clean();
}
