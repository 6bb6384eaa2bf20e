//! Writing the Zarr v3 store: creating and filling the per-split arrays, the root attributes
//! and the rejects report. Array names, shapes and attributes come from
//! [`lossbench_core::layout`]; the reader is [`lossbench_core::store`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use zarrs::array::codec::{
    BloscCodec, BloscCompressionLevel, BloscCompressor, BloscShuffleMode, ZstdCodec,
};
use zarrs::array::codec::{ShardingCodecOptions, SubchunkWriteOrder};
use zarrs::array::{Array, ArrayBuilder, BytesToBytesCodecTraits, CodecSpecificOptions, data_type};
use zarrs::filesystem::FilesystemStore;
use zarrs::group::GroupBuilder;

use lossbench_core::labels::NUM_CLASSES;
use lossbench_core::layout::{
    ATTRIBUTES_KEY, BAND_GROUPS, LABELS_ARRAY, NAMES_ARRAY, REJECTS_GROUP, Split, StoreAttributes,
    TABLE_CHUNK_ROWS,
};

/// Compression of every chunk (inner chunk of a shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// blosc with zstd inside and byte shuffle (2-byte items).
    Blosc,
    /// plain zstd.
    Zstd,
}

/// The default compression level. At level 1 blosc-zstd converts about 1.7x faster than at
/// level 3 for a store about 3% larger that reads as fast (docs/benchmarks.md, codec table):
/// conversion time is what users wait for, and decoding speed does not depend on the level.
pub const DEFAULT_LEVEL: u8 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct StoreOptions {
    pub codec: Codec,
    pub level: u8,
    /// Patches per shard (one file per shard and band group).
    pub shard_patches: u64,
}

/// The codec of chunks of `chunk_bytes` bytes made of `item_bytes`-byte values. blosc compresses
/// each chunk as one block: left to itself it picks blocks by level (32 KiB at level 1, 128 KiB
/// at level 3 for zstd), and the 115,200-byte inner chunks of the 10 m bands would decode as four
/// small zstd frames at level 1, slower to read than one.
fn compression(
    opts: &StoreOptions,
    item_bytes: usize,
    chunk_bytes: usize,
) -> Result<Arc<dyn BytesToBytesCodecTraits>> {
    Ok(match opts.codec {
        Codec::Zstd => Arc::new(ZstdCodec::new(opts.level.into(), false)),
        Codec::Blosc => Arc::new(BloscCodec::new(
            BloscCompressor::Zstd,
            BloscCompressionLevel::try_from(opts.level)
                .map_err(|e| anyhow::anyhow!("blosc level: {e}"))?,
            Some(chunk_bytes),
            if item_bytes > 1 {
                BloscShuffleMode::Shuffle
            } else {
                BloscShuffleMode::NoShuffle
            },
            Some(item_bytes),
        )?),
    })
}

type Fs = FilesystemStore;

fn open_storage(path: &Path) -> Result<Arc<Fs>> {
    Ok(Arc::new(FilesystemStore::new(path).with_context(|| {
        format!("opening store folder {}", path.display())
    })?))
}

/// Writes one split's arrays. The band arrays are created with room for every candidate patch
/// and cut to the number actually written by [`SplitWriter::finish`].
pub struct SplitWriter {
    split: Split,
    /// The store being written (for error messages).
    path: PathBuf,
    storage: Arc<Fs>,
    bands: Vec<Array<Fs>>,
    opts: StoreOptions,
}

impl SplitWriter {
    pub fn create(
        store_path: &Path,
        split: Split,
        capacity: u64,
        opts: &StoreOptions,
    ) -> Result<Self> {
        zarrs::config::global_config_mut().set_include_zarrs_metadata(false);
        let storage = open_storage(store_path)?;
        let creating = || format!("{}: creating split {split}", store_path.display());
        GroupBuilder::new()
            .build(storage.clone(), &format!("/{split}"))
            .and_then(|g| Ok(g.store_metadata()?))
            .with_context(creating)?;
        let mut bands = Vec::new();
        for g in BAND_GROUPS {
            let side = g.side as u64;
            let nb = g.bands.len() as u64;
            let array = ArrayBuilder::new(
                vec![capacity, nb, side, side],
                vec![opts.shard_patches, nb, side, side],
                data_type::uint16(),
                0u16,
            )
            .subchunk_shape(vec![1, nb, side, side])
            // Inner chunks in index order, not in the order threads finish: byte-identical shards.
            .codec_specific_options(CodecSpecificOptions::default().with_option(
                ShardingCodecOptions::default().with_subchunk_write_order(SubchunkWriteOrder::C),
            ))
            .bytes_to_bytes_codecs(vec![compression(opts, 2, 2 * g.values_per_patch())?])
            .dimension_names(["patch", "band", "y", "x"].into())
            .build(storage.clone(), &format!("/{split}/{}", g.array))
            .with_context(creating)?;
            array.store_metadata().with_context(creating)?;
            bands.push(array);
        }
        Ok(SplitWriter {
            split,
            path: store_path.to_path_buf(),
            storage,
            bands,
            opts: opts.clone(),
        })
    }

    /// Stores patches `start..start + n`; `groups[g]` holds their values of band group `g`,
    /// patch-major in the layout's channel order.
    pub fn write(&self, start: u64, groups: &[Vec<u16>]) -> Result<()> {
        for (array, (g, values)) in self.bands.iter().zip(BAND_GROUPS.iter().zip(groups)) {
            let n = (values.len() / g.values_per_patch()) as u64;
            let side = g.side as u64;
            let subset = [start..start + n, 0..g.bands.len() as u64, 0..side, 0..side];
            array
                .store_array_subset(&subset, values.as_slice())
                .with_context(|| {
                    format!(
                        "{}: writing {}/{} patches {start}..{}",
                        self.path.display(),
                        self.split,
                        g.array,
                        start + n
                    )
                })?;
        }
        Ok(())
    }

    /// Sets the final length and writes the per-patch labels and names.
    pub fn finish(mut self, labels: &[u8], names: &[String]) -> Result<()> {
        let what = format!("{}: finishing split {}", self.path.display(), self.split);
        self.write_tables(labels, names).with_context(|| what)
    }

    fn write_tables(&mut self, labels: &[u8], names: &[String]) -> Result<()> {
        let n = names.len() as u64;
        assert_eq!(labels.len(), names.len() * NUM_CLASSES);
        for array in &mut self.bands {
            let mut shape = array.shape().to_vec();
            shape[0] = n;
            array.set_shape(shape)?;
            array.store_metadata()?;
        }
        let rows = TABLE_CHUNK_ROWS;
        let label_array = ArrayBuilder::new(
            vec![n, NUM_CLASSES as u64],
            vec![rows, NUM_CLASSES as u64],
            data_type::uint8(),
            0u8,
        )
        .bytes_to_bytes_codecs(vec![compression(
            &self.opts,
            1,
            (rows as usize) * NUM_CLASSES,
        )?])
        .dimension_names(["patch", "class"].into())
        .build(
            self.storage.clone(),
            &format!("/{}/{LABELS_ARRAY}", self.split),
        )?;
        label_array.store_metadata()?;
        label_array.store_array_subset(&[0..n, 0..NUM_CLASSES as u64], labels)?;
        let name_array = ArrayBuilder::new(vec![n], vec![rows], data_type::string(), "")
            .bytes_to_bytes_codecs(vec![Arc::new(ZstdCodec::new(
                self.opts.level.into(),
                false,
            ))])
            .dimension_names(["patch"].into())
            .build(
                self.storage.clone(),
                &format!("/{}/{NAMES_ARRAY}", self.split),
            )?;
        name_array.store_metadata()?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        name_array.store_array_subset(&std::slice::from_ref(&(0..n)), refs)?;
        Ok(())
    }
}

/// Writes the rejects report as a group of three aligned string arrays (patch, file, reason),
/// so that Python readers see a plain Zarr hierarchy.
pub fn write_rejects(store_path: &Path, rejects: &[crate::archive::Reject]) -> Result<()> {
    write_reject_arrays(store_path, rejects)
        .with_context(|| format!("{}: writing the rejects report", store_path.display()))
}

fn write_reject_arrays(store_path: &Path, rejects: &[crate::archive::Reject]) -> Result<()> {
    let storage = open_storage(store_path)?;
    GroupBuilder::new()
        .build(storage.clone(), &format!("/{REJECTS_GROUP}"))?
        .store_metadata()?;
    let n = rejects.len() as u64;
    let columns: [(&str, Vec<String>); 3] = [
        ("patch", rejects.iter().map(|r| r.patch.clone()).collect()),
        (
            "file",
            rejects
                .iter()
                .map(|r| r.file.display().to_string())
                .collect(),
        ),
        ("reason", rejects.iter().map(|r| r.reason.clone()).collect()),
    ];
    for (name, values) in columns {
        let array = ArrayBuilder::new(vec![n], vec![TABLE_CHUNK_ROWS], data_type::string(), "")
            .bytes_to_bytes_codecs(vec![Arc::new(ZstdCodec::new(3, false))])
            .dimension_names(["reject"].into())
            .build(storage.clone(), &format!("/{REJECTS_GROUP}/{name}"))?;
        array.store_metadata()?;
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        array.store_array_subset(&std::slice::from_ref(&(0..n)), refs)?;
    }
    Ok(())
}

/// Reads the rejects report of a finished store.
pub fn read_rejects(store_path: &Path) -> Result<Vec<crate::archive::Reject>> {
    let storage = open_storage(store_path)?;
    let column = |name: &str| -> Result<Vec<String>> {
        let a = Array::open(storage.clone(), &format!("/{REJECTS_GROUP}/{name}"))
            .with_context(|| format!("{}: opening {REJECTS_GROUP}/{name}", store_path.display()))?;
        a.retrieve_array_subset(&a.subset_all())
            .with_context(|| format!("{}: reading {REJECTS_GROUP}/{name}", store_path.display()))
    };
    let (patch, file, reason) = (column("patch")?, column("file")?, column("reason")?);
    Ok(patch
        .into_iter()
        .zip(file)
        .zip(reason)
        .map(|((patch, file), reason)| crate::archive::Reject {
            patch,
            file: file.into(),
            reason,
        })
        .collect())
}

/// Writes the root group with the project's attributes.
pub fn write_root(store_path: &Path, attrs: &StoreAttributes) -> Result<()> {
    zarrs::config::global_config_mut().set_include_zarrs_metadata(false);
    let storage = open_storage(store_path)?;
    let mut group = GroupBuilder::new().build(storage, "/")?;
    group
        .attributes_mut()
        .insert(ATTRIBUTES_KEY.into(), serde_json::to_value(attrs)?);
    group
        .store_metadata()
        .with_context(|| format!("{}: writing the root attributes", store_path.display()))
}
