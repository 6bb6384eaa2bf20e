//! Reading a store written by data-prep (docs/store.md): its attributes, and each split's
//! names, labels and band arrays, patch by patch. The layout it follows is [`crate::layout`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use zarrs::array::{Array, ArrayShardedReadableExt, ArrayShardedReadableExtCache, CodecOptions};
use zarrs::filesystem::{FilesystemStore, FilesystemStoreOptions};
use zarrs::group::Group;

use crate::labels::NUM_CLASSES;
use crate::layout::{
    ATTRIBUTES_KEY, BAND_GROUPS, LABELS_ARRAY, NAMES_ARRAY, Split, StoreAttributes,
};

type Fs = FilesystemStore;

/// Shard files a reader keeps open (well below the usual 1024-file limit with room to spare:
/// three band arrays per split and about 2,300 shards per split at full scale).
const READ_HANDLE_CACHE: usize = 512;

/// A finished store, opened for reading. While it is open, this process holds a shared lock on
/// the store ([`lock_path`], [`crate::lock`]): `data-prep convert --overwrite` refuses to
/// replace a store that is being read, unless forced.
pub struct Store {
    pub path: PathBuf,
    pub attrs: StoreAttributes,
    storage: Arc<Fs>,
    _reading: Option<crate::lock::Lock>,
}

/// The store a run reads was replaced while it read it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path}: the store was replaced while this process read it (store id {was} → {now}): its \
     labels and pixels no longer belong together; nothing computed since then was recorded. \
     Convert into a new folder instead of --overwrite --force while runs read a store."
)]
pub struct StoreChanged {
    pub path: PathBuf,
    pub was: String,
    pub now: String,
}

/// The identity recorded in a store's `zarr.json` ([`StoreAttributes::identity`]).
pub fn identity(path: &Path) -> Result<String> {
    let text = std::fs::read(path.join("zarr.json"))
        .with_context(|| format!("reading {}", path.join("zarr.json").display()))?;
    let root: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not JSON", path.join("zarr.json").display()))?;
    let attrs = root
        .pointer(&format!("/attributes/{ATTRIBUTES_KEY}"))
        .with_context(|| {
            format!(
                "{}: no `{ATTRIBUTES_KEY}` attributes; not written by data-prep",
                path.display()
            )
        })?;
    let attrs: StoreAttributes = serde_json::from_value(attrs.clone()).with_context(|| {
        format!(
            "{}: unreadable `{ATTRIBUTES_KEY}` attributes",
            path.display()
        )
    })?;
    Ok(attrs.identity())
}

impl Store {
    /// Fails with [`StoreChanged`] when the folder now holds another store than the one
    /// opened (a `convert --overwrite --force` in place).
    pub fn check_unchanged(&self) -> Result<()> {
        let was = self.attrs.identity();
        let now = identity(&self.path).unwrap_or_else(|e| format!("unreadable ({e:#})"));
        if now != was {
            return Err(StoreChanged {
                path: self.path.clone(),
                was,
                now,
            }
            .into());
        }
        Ok(())
    }

    pub fn open(path: &Path) -> Result<Self> {
        if !path.join("zarr.json").is_file() {
            let partial = crate::layout::partial_path(path);
            if partial.exists() {
                bail!(
                    "{} is not a finished store: {} holds an interrupted or running data-prep; rerun data-prep",
                    path.display(),
                    partial.display()
                );
            }
            if !path.exists() {
                bail!("{} does not exist", path.display());
            }
            bail!(
                "{} is not a store made by data-prep (no zarr.json)",
                path.display()
            );
        }
        // Locked before anything is read: a conversion that replaces the store holds the lock
        // exclusively from its start to the replacement.
        let reading = read_lock(path)?;
        // Random reads hit the same shard files over and over: keep them open.
        let mut fs_options = FilesystemStoreOptions::default();
        fs_options.file_handle_cache_size(READ_HANDLE_CACHE);
        let storage = Arc::new(
            FilesystemStore::new_with_options(path, fs_options)
                .with_context(|| format!("opening store folder {}", path.display()))?,
        );
        let group = Group::open(storage.clone(), "/")
            .with_context(|| format!("opening {}", path.display()))?;
        let value = group.attributes().get(ATTRIBUTES_KEY).with_context(|| {
            format!(
                "{}: no `{ATTRIBUTES_KEY}` attributes; not written by data-prep",
                path.display()
            )
        })?;
        let attrs: StoreAttributes = serde_json::from_value(value.clone()).with_context(|| {
            format!(
                "{}: unreadable `{ATTRIBUTES_KEY}` attributes",
                path.display()
            )
        })?;
        attrs.validate().map_err(|e| {
            anyhow::anyhow!("{}: inconsistent store attributes: {e}", path.display())
        })?;
        Ok(Store {
            path: path.to_path_buf(),
            attrs,
            storage,
            _reading: reading,
        })
    }

    pub fn split(&self, split: Split) -> Result<SplitData> {
        let open = |name: &str| {
            Array::open(self.storage.clone(), &format!("/{split}/{name}"))
                .with_context(|| format!("{}: opening array {split}/{name}", self.path.display()))
        };
        let bands: Vec<Array<Fs>> = BAND_GROUPS
            .iter()
            .map(|g| open(g.array))
            .collect::<Result<_>>()?;
        let caches = bands
            .iter()
            .map(ArrayShardedReadableExtCache::new)
            .collect();
        let labels_array = open(LABELS_ARRAY)?;
        let labels: Vec<u8> = labels_array
            .retrieve_array_subset(&labels_array.subset_all())
            .with_context(|| format!("{}: reading {split}/{LABELS_ARRAY}", self.path.display()))?;
        let names_array = open(NAMES_ARRAY)?;
        let names: Vec<String> = names_array
            .retrieve_array_subset(&names_array.subset_all())
            .with_context(|| format!("{}: reading {split}/{NAMES_ARRAY}", self.path.display()))?;
        let len = names.len();
        for (a, g) in bands.iter().zip(BAND_GROUPS) {
            if a.shape()[0] as usize != len || labels.len() != len * NUM_CLASSES {
                bail!(
                    "{}: split {split}: {} has {} patches but names has {len}",
                    self.path.display(),
                    g.array,
                    a.shape()[0]
                );
            }
        }
        let recorded = self.attrs.splits[&split].patches;
        if recorded != len as u64 {
            bail!(
                "{}: split {split} holds {len} patches but its attributes say {recorded}",
                self.path.display()
            );
        }
        Ok(SplitData {
            split,
            len,
            names,
            labels,
            bands,
            caches,
        })
    }
}

/// The lock of the store at `path`: `<store>.lock` beside it (never a file of the store), held
/// shared by readers and exclusively by `data-prep convert` while it builds the store.
pub fn lock_path(path: &Path) -> PathBuf {
    crate::layout::sibling(path, ".lock")
}

/// The shared lock of a reader; none where the lock cannot be created (a read-only folder
/// beside the store), with a note in the log.
fn read_lock(path: &Path) -> Result<Option<crate::lock::Lock>> {
    use crate::lock::{LockError, Mode, try_lock};
    match try_lock(&lock_path(path), Mode::Shared, "reading the store") {
        Ok(lock) => Ok(Some(lock)),
        Err(LockError::Held {
            holder: Some(holder),
            why,
            ..
        }) => bail!(
            "{} is being replaced by {holder} ({why}); the old store is intact: open it again \
             once that has finished",
            path.display()
        ),
        Err(e) => {
            tracing::info!(
                "{e}: reading the store without a lock (`data-prep convert --overwrite` cannot \
                 see this reader)"
            );
            Ok(None)
        }
    }
}

/// One split of a store: names and labels in memory, pixels read on demand.
pub struct SplitData {
    pub split: Split,
    pub len: usize,
    pub names: Vec<String>,
    /// `len` x 19, row-major.
    pub labels: Vec<u8>,
    bands: Vec<Array<Fs>>,
    caches: Vec<ArrayShardedReadableExtCache>,
}

impl SplitData {
    pub fn labels_of(&self, i: usize) -> &[u8] {
        &self.labels[i * NUM_CLASSES..(i + 1) * NUM_CLASSES]
    }

    /// The stored (compressed) bytes of one inner chunk, for measuring raw decode speed.
    pub fn encoded_patch(&self, group: usize, i: usize) -> Result<Vec<u8>> {
        self.bands[group]
            .retrieve_encoded_subchunk(&self.caches[group], &[i as u64, 0, 0, 0])?
            .with_context(|| {
                format!(
                    "{}/{} patch {i} is not stored",
                    self.split, BAND_GROUPS[group].array
                )
            })
    }

    /// Values of band group `group` (index into [`BAND_GROUPS`]) of patch `i`: one inner chunk,
    /// one small read.
    pub fn read_group(&self, group: usize, i: usize) -> Result<Vec<u16>> {
        let options = CodecOptions::default().with_concurrent_target(1);
        self.bands[group]
            .retrieve_subchunk_opt(&self.caches[group], &[i as u64, 0, 0, 0], &options)
            .with_context(|| {
                format!(
                    "reading {}/{} patch {i}",
                    self.split, BAND_GROUPS[group].array
                )
            })
    }
}
