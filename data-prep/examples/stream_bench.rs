//! How fast one thread reads a packed archive (decompression, tar parsing, grouping members
//! into patches), without converting: the part of the packed route that cannot be spread over
//! cores, for the prediction in docs/benchmarks.md.
//!
//!     cargo run --release -p data-prep --example stream_bench -- ARCHIVE.tar.gz|.tar.zst
//!
//! Prints JSON: patches, seconds, patches_per_s, compressed MB/s.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use data_prep::archive::ArchiveFormat;
use data_prep::packed::{Event, PackedStream, Packing, read_patches};

fn main() -> Result<()> {
    let path = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: stream_bench ARCHIVE")?,
    );
    let packing = Packing::of(&path).context("not a .tar.gz, .tar.zst or .tar")?;
    let stream = PackedStream::open(&path, packing)?;
    let size = stream.size;
    let started = Instant::now();
    let mut patches = 0u64;
    read_patches(stream, ArchiveFormat::V1, 512, |e| {
        if let Event::Complete(_) = e {
            patches += 1;
        }
        Ok(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"patches\": {patches}, \"seconds\": {secs:.3}, \"patches_per_s\": {:.0}, \"compressed_mb_per_s\": {:.0}}}",
        patches as f64 / secs,
        size as f64 / secs / 1e6
    );
    Ok(())
}
