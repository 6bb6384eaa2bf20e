//! Random-sample read throughput of a store (what the trainer's loader does) beside the raw
//! decode speed of the same compressed bytes. Run by `make bench` (scripts/bench-data-prep.sh):
//!
//!     cargo run --release --example read_bench -- STORE [SAMPLES]

use std::time::Instant;

use anyhow::{Context, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use data_prep::store::Codec;
use lossbench_core::layout::{BAND_GROUPS, Split};
use lossbench_core::store::Store;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::PathBuf::from(args.get(1).context("usage: read_bench STORE [SAMPLES]")?);
    let samples: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let store = Store::open(&path)?;
    let codec: Codec = serde_json::from_value(store.attrs.options["codec"].clone())?;
    let split = store.split(Split::Train)?;
    let mut order: Vec<usize> = (0..split.len).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(7));
    let picks: Vec<usize> = order.into_iter().cycle().take(samples).collect();

    let read_one = |i: usize| -> Result<usize> {
        let mut n = split.labels_of(i).len();
        for g in 0..BAND_GROUPS.len() {
            n += split.read_group(g, i)?.len();
        }
        Ok(n)
    };
    // Warm the page cache and the shard-index cache once.
    picks.iter().try_for_each(|&i| read_one(i).map(|_| ()))?;

    let t = Instant::now();
    for &i in &picks {
        read_one(i)?;
    }
    let one_thread = samples as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    picks
        .par_iter()
        .try_for_each(|&i| read_one(i).map(|_| ()))?;
    let all_threads = samples as f64 / t.elapsed().as_secs_f64();

    // The same inner chunks' bytes, decoded directly by the codec library.
    let encoded: Vec<(Vec<u8>, usize)> = picks
        .iter()
        .flat_map(|&i| (0..BAND_GROUPS.len()).map(move |g| (g, i)))
        .map(|(g, i)| {
            Ok((
                split.encoded_patch(g, i)?,
                BAND_GROUPS[g].values_per_patch() * 2,
            ))
        })
        .collect::<Result<_>>()?;
    // Reading the compressed bytes alone: file open + read per inner chunk.
    let t = Instant::now();
    for &i in &picks {
        for g in 0..BAND_GROUPS.len() {
            split.encoded_patch(g, i)?;
        }
    }
    let fetch_only = samples as f64 / t.elapsed().as_secs_f64();
    let compressed: usize = encoded.iter().map(|(b, _)| b.len()).sum();
    let decoded: usize = encoded.iter().map(|(_, n)| n).sum();
    let t = Instant::now();
    for (bytes, size) in &encoded {
        let out = match codec {
            Codec::Blosc => zarrs::array::codec::blosc_decompress_bytes(bytes, *size, 1)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
            Codec::Zstd => zstd::bulk::decompress(bytes, *size)?,
        };
        assert_eq!(out.len(), *size);
    }
    let raw_decode = samples as f64 / t.elapsed().as_secs_f64();
    println!(
        "{{\"codec\": \"{codec:?}\", \"samples\": {samples}, \"samples_per_s_1_thread\": {one_thread:.0}, \
\"samples_per_s_all_threads\": {all_threads:.0}, \"threads\": {}, \"raw_decode_samples_per_s_1_thread\": {raw_decode:.0}, \
\"ratio_to_raw_decode\": {:.3}, \"fetch_only_samples_per_s_1_thread\": {fetch_only:.0}, \"compression_ratio\": {:.3}}}",
        rayon::current_num_threads(),
        one_thread / raw_decode,
        decoded as f64 / compressed as f64
    );
    Ok(())
}
