//! Bad inputs at scale (fuzzing crate): mutated GeoTIFF band files, v1.0 label JSON, v2.0
//! `metadata.parquet`, name lists and tar streams, each campaign `LOSSBENCH_FUZZ_CASES` inputs (10,000 by
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

/// The offsets of the headers of a well-formed tar (each header's size field, octal at 124,
/// says how far the next one is), for the mutations below that aim at them.
fn tar_headers(tar: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut headers = Vec::new();
    while at + 512 <= tar.len() && tar[at] != 0 {
        headers.push(at);
        let field = String::from_utf8_lossy(&tar[at + 124..at + 136]);
        let size =
            u64::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap();
        at += 512 + (size as usize).div_ceil(512) * 512;
    }
    headers
}

#[test]
fn tar_streams() {
    use data_prep::archive::ArchiveFormat;
    use data_prep::packed::{PackedStream, Packing, read_patches};
    // Uncompressed tars as the downloads hold them: v1.0, and v2.0 whose deep member paths
    // (over 100 characters) take GNU long-name entries.
    let tmp = tempfile::tempdir().unwrap();
    let mut seeds: Vec<(Vec<u8>, Vec<usize>, ArchiveFormat)> = Vec::new();
    for (format, name, file) in [
        (ArchiveFormat::V1, "v1", "BigEarthNet-S2-v1.0.tar"),
        (ArchiveFormat::V2, "v2", "BigEarthNet-S2.tar"),
    ] {
        let out = tmp.path().join(name);
        let args = [
            "synth",
            "--patches",
            "3",
            "--seed",
            "8",
            "--format",
            name,
            "--pack",
            "tar",
        ];
        common::run_ok(&[&args[..], &["--out", out.to_str().unwrap()]].concat());
        let bytes = std::fs::read(out.join(file)).unwrap();
        let headers = tar_headers(&bytes);
        assert!(headers.len() > 30, "{}", headers.len());
        seeds.push((bytes, headers, format));
    }
    let file = tmp.path().join("archive.tar");
    let format = std::cell::Cell::new(ArchiveFormat::V1);
    let report = campaign(
        "tar streams (headers, sizes, truncation, long names)",
        cases(),
        6,
        |i, m| {
            let (bytes, headers, f) = &seeds[i % seeds.len()];
            format.set(*f);
            let mut out = bytes.clone();
            // Half the cases aim at a header: a size of up to 2^63 (octal or base-256), a
            // name field cut or overrun, a long-name entry's length.
            if i % 2 == 0 {
                let h = *m.pick(headers);
                let (field, width) = *m.pick(&[(124, 12), (0, 100), (345, 155), (148, 8)]);
                let huge: [&[u8]; 2] = [
                    b"77777777777\0",
                    b"\x80\0\0\0\x7f\xff\xff\xff\xff\xff\xff\xff",
                ];
                let which = *m.pick(&[0usize, 1]);
                let value: &[u8] = if field == 124 {
                    huge[which]
                } else {
                    &[b'A'; 160]
                };
                let end = (h + field + width).min(out.len());
                let n = (end - h - field).min(value.len());
                out[h + field..h + field + n].copy_from_slice(&value[..n]);
            }
            m.mutate(&out, 0)
        },
        |_, bytes| {
            std::fs::write(&file, bytes).unwrap();
            let stream = match PackedStream::open(&file, Packing::Tar) {
                Ok(s) => s,
                Err(e) => return Outcome::Refused(format!("{e:#}")),
            };
            let mut bad = Vec::new();
            let read = read_patches(stream, format.get(), 8, |event| {
                if let data_prep::packed::Event::Bad { reason, .. } = event {
                    bad.push(reason);
                }
                Ok(())
            });
            match read {
                Ok(()) if bad.is_empty() => Outcome::Accepted,
                // Bad patches are reported by the converter naming the archive, with the reason.
                Ok(()) => Outcome::Refused(format!("{}: {}", file.display(), bad.join("; "))),
                Err(e) => Outcome::Refused(format!("{e:#}")),
            }
        },
        |message| message.contains(file.to_str().unwrap()),
    );
    report.assert_clean();
}
