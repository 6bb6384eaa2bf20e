//! Reading a packed archive as one sequential stream (docs/data-prep.md, "Packed archives"):
//! `.tar.gz` / `.tgz`, `.tar.zst` / `.tzst` or `.tar`, decompressed while read, members grouped
//! per patch folder in memory; nothing is written to disk. Members of one patch may be
//! scattered across the stream: incomplete patches are held until their last member arrives,
//! at most `max_pending` of them at once.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};

use crate::archive::{ArchiveFormat, v1_metadata_file};
use lossbench_core::layout::{ALL_BANDS, BAND_COUNT};

/// The largest member a patch has: a band GeoTIFF is about 29 KB (120 x 120 x 2 bytes and
/// headers) and the v1.0 label JSON a few KB; a header claiming more than this is damaged.
const MAX_MEMBER_BYTES: u64 = 4 << 20;

/// How an archive file is packed, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    Tar,
    TarGz,
    TarZst,
}

impl Packing {
    pub fn of(path: &Path) -> Option<Packing> {
        let name = path.file_name()?.to_string_lossy().to_lowercase();
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(Packing::TarGz)
        } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
            Some(Packing::TarZst)
        } else if name.ends_with(".tar") {
            Some(Packing::Tar)
        } else {
            None
        }
    }
}

/// Bytes a reader has passed on: how far into the compressed file the stream is.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A packed archive opened for one pass.
pub struct PackedStream {
    pub path: PathBuf,
    /// The tar stream (decompressed).
    pub reader: Box<dyn Read + Send>,
    /// Compressed bytes read so far, and the file's size.
    pub read: Arc<AtomicU64>,
    pub size: u64,
}

impl PackedStream {
    pub fn open(path: &Path, packing: Packing) -> Result<PackedStream> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let size = file
            .metadata()
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
        let read = Arc::new(AtomicU64::new(0));
        // Large reads: the decompressors pull big blocks.
        let counted = io::BufReader::with_capacity(
            1 << 20,
            Counting {
                inner: file,
                count: read.clone(),
            },
        );
        let reader: Box<dyn Read + Send> = match packing {
            Packing::Tar => Box::new(counted),
            // Multi-member gzip (pigz, concatenated parts) is one stream.
            Packing::TarGz => Box::new(flate2::bufread::MultiGzDecoder::new(counted)),
            Packing::TarZst => Box::new(
                zstd::stream::read::Decoder::with_buffer(counted)
                    .context("starting the zstd decoder")?,
            ),
        };
        Ok(PackedStream {
            path: path.to_path_buf(),
            reader,
            read,
            size,
        })
    }
}

/// A patch whose members all arrived.
pub struct PackedPatch {
    pub name: String,
    /// The band files' bytes, in [`ALL_BANDS`] order.
    pub bands: Vec<Vec<u8>>,
    /// v1.0's `_labels_metadata.json` (empty for v2.0).
    pub metadata: Vec<u8>,
    /// Where in the tar stream its first member started.
    pub offset: u64,
}

/// What the stream holds, in order.
pub enum Event {
    Complete(PackedPatch),
    /// A patch that cannot be used: members it should not have, or (at the end of the stream)
    /// members missing.
    Bad {
        patch: String,
        reason: String,
    },
}

/// A failure of the stream itself: where it happened and why.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path}: {what} at byte {tar_offset} of the tar stream ({compressed_offset} bytes into the file)"
)]
pub struct StreamError {
    pub path: PathBuf,
    pub what: String,
    pub tar_offset: u64,
    pub compressed_offset: u64,
    /// Beyond what `--skip-bad` sets aside: damage found by the checksum of the whole
    /// compressed stream after its last member (any patch read may be damaged, and which cannot
    /// be told), or a member that belongs to no patch (not an archive of the expected kind).
    pub fatal: bool,
}

/// Members still missing from a patch, and why it is already known to be bad.
struct Pending {
    bands: Vec<Option<Vec<u8>>>,
    metadata: Option<Vec<u8>>,
    problem: Option<String>,
    offset: u64,
}

impl Pending {
    fn new(offset: u64) -> Pending {
        Pending {
            bands: vec![None; BAND_COUNT],
            metadata: None,
            problem: None,
            offset,
        }
    }

    fn missing(&self, format: ArchiveFormat, patch: &str) -> Vec<String> {
        let mut m: Vec<String> = ALL_BANDS
            .iter()
            .zip(&self.bands)
            .filter(|(_, b)| b.is_none())
            .map(|(band, _)| format!("{patch}_{band}.tif"))
            .collect();
        if format == ArchiveFormat::V1 && self.metadata.is_none() {
            m.push(v1_metadata_file(patch));
        }
        m
    }
}

/// Where a member belongs: the patch (its folder) and what it is.
enum Member {
    Band(usize),
    Metadata,
    /// A file in a patch folder that is none of the patch's files.
    Unexpected,
}

fn classify(format: ArchiveFormat, patch: &str, file: &str) -> Member {
    if format == ArchiveFormat::V1 && file == v1_metadata_file(patch) {
        return Member::Metadata;
    }
    let band = file
        .strip_prefix(patch)
        .and_then(|r| r.strip_prefix('_'))
        .and_then(|r| r.strip_suffix(".tif"));
    match band.and_then(|b| ALL_BANDS.iter().position(|x| *x == b)) {
        Some(i) => Member::Band(i),
        None => Member::Unexpected,
    }
}

/// Reads every member, grouping them per patch folder, and passes each patch to `emit` in
/// the order its last member arrives (once the next member shows that no extra file of its
/// folder follows). Patches incomplete at the end are passed as bad. At most `max_pending`
/// patches may be incomplete at once. `emit` returning an error stops the read.
pub fn read_patches(
    stream: PackedStream,
    format: ArchiveFormat,
    max_pending: usize,
    mut emit: impl FnMut(Event) -> Result<()>,
) -> Result<()> {
    let PackedStream {
        path, reader, read, ..
    } = stream;
    let mut archive = tar::Archive::new(reader);
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    // The last completed patch, passed on when the next member is not one of its folder.
    let mut ready: Option<(String, Pending)> = None;
    let finish = |patch: String, p: Pending| match p.problem {
        Some(reason) => Event::Bad { patch, reason },
        None => Event::Complete(PackedPatch {
            name: patch,
            bands: p.bands.into_iter().map(Option::unwrap_or_default).collect(),
            metadata: p.metadata.unwrap_or_default(),
            offset: p.offset,
        }),
    };
    // Where the member being read starts, and where the next header should.
    let (mut tar_offset, mut next_header) = (0u64, 0u64);
    let stream_error = |what: String, tar_offset: u64| StreamError {
        path: path.clone(),
        what,
        tar_offset,
        compressed_offset: read.load(Ordering::Relaxed),
        fatal: false,
    };
    let entries = archive
        .entries()
        .map_err(|e| stream_error(format!("not a tar stream: {e}"), 0))?;
    let outcome = (|| -> Result<()> {
        for entry in entries {
            let mut entry = entry
                .map_err(|e| stream_error(format!("unreadable tar header ({e})"), next_header))?;
            tar_offset = entry.raw_header_position();
            next_header = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
            let member = entry
                .path()
                .map_err(|e| stream_error(format!("unreadable member name ({e})"), tar_offset))?
                .into_owned();
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                continue;
            }
            let parts: Vec<String> = member
                .components()
                .filter_map(|c| {
                    if let Component::Normal(s) = c {
                        Some(s.to_string_lossy().into_owned())
                    } else {
                        None
                    }
                })
                .collect();
            // A patch folder holds files named after it; a file in a folder known as a patch's
            // (from an earlier member) that is not one of its files is out of place in that patch.
            let in_patch = match parts.as_slice() {
                [.., dir, file]
                    if file.starts_with(&format!("{dir}_"))
                        || pending.contains_key(dir)
                        || ready.as_ref().is_some_and(|(r, _)| r == dir) =>
                {
                    Some((dir.clone(), file.clone()))
                }
                _ => None,
            };
            let Some((patch, file)) = in_patch else {
                let what = format!(
                    "member {} is outside any patch folder: not a {format} archive",
                    member.display()
                );
                bail!(StreamError {
                    fatal: true,
                    ..stream_error(what, tar_offset)
                });
            };
            if let Some((name, p)) = &mut ready {
                if *name == patch {
                    p.problem.get_or_insert_with(|| {
                        format!(
                            "unexpected member {} at byte {tar_offset}",
                            member.display()
                        )
                    });
                    continue;
                }
                let (name, p) = ready.take().expect("checked");
                emit(finish(name, p))?;
            }
            if done.contains(&patch) {
                bail!(stream_error(
                    format!(
                        "member {} belongs to patch {patch}, which was already complete",
                        member.display()
                    ),
                    tar_offset
                ));
            }
            if !pending.contains_key(&patch) && pending.len() >= max_pending {
                let (oldest, p) = pending
                    .iter()
                    .min_by_key(|(_, p)| p.offset)
                    .expect("pending is full");
                bail!(stream_error(
                    format!(
                        "{max_pending} patches are incomplete at once (--max-pending-patches): patch {oldest} still lacks {} of its \
                     members; this archive scatters the members of its patches, raise the limit (each incomplete patch holds \
                     up to about 173 KB)",
                        p.missing(format, oldest).len()
                    ),
                    tar_offset
                ));
            }
            // The header's size is the archive's word: never allocate from it unchecked.
            if entry.size() > MAX_MEMBER_BYTES {
                bail!(stream_error(
                    format!(
                        "member {} claims {} bytes, more than any file of a BigEarthNet patch \
                         ({MAX_MEMBER_BYTES} at most): a damaged header",
                        member.display(),
                        entry.size()
                    ),
                    tar_offset
                ));
            }
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).map_err(|e| {
                stream_error(
                    format!("member {} is cut short ({e})", member.display()),
                    tar_offset,
                )
            })?;
            if bytes.len() as u64 != entry.size() {
                bail!(stream_error(
                    format!(
                        "member {} ends after {} of its {} bytes",
                        member.display(),
                        bytes.len(),
                        entry.size()
                    ),
                    tar_offset
                ));
            }
            let p = pending
                .entry(patch.clone())
                .or_insert_with(|| Pending::new(tar_offset));
            let slot = match (kind.is_file(), classify(format, &patch, &file)) {
                (true, Member::Band(i)) => &mut p.bands[i],
                (true, Member::Metadata) => &mut p.metadata,
                (_, Member::Unexpected) | (false, _) => {
                    p.problem.get_or_insert_with(|| {
                        format!(
                            "unexpected member {} at byte {tar_offset}",
                            member.display()
                        )
                    });
                    continue;
                }
            };
            if slot.replace(bytes).is_some() {
                p.problem
                    .get_or_insert_with(|| format!("member {} appears twice", member.display()));
            }
            if p.missing(format, &patch).is_empty() {
                let p = pending.remove(&patch).expect("just seen");
                done.insert(patch.clone());
                ready = Some((patch, p));
            }
        }
        Ok(())
    })();
    // The tar ends before its compressed stream does: read the rest, so that gzip's and zstd's
    // checksums of the whole stream are checked.
    let outcome = outcome.and_then(|()| {
        io::copy(&mut archive.into_inner(), &mut io::sink())
            .map(drop)
            .map_err(|e| {
                StreamError {
                    fatal: true,
                    ..stream_error(
                        format!("the compressed stream is damaged ({e})"),
                        next_header,
                    )
                }
                .into()
            })
    });
    if let Err(e) = outcome {
        // A broken stream: the patches it cut off are reported, then the error.
        if e.downcast_ref::<StreamError>().is_some() {
            let cut = |patch: String| Event::Bad {
                patch,
                reason: format!("cut off by the damaged stream: {e}"),
            };
            for name in ready.map(|(n, _)| n).into_iter().chain(pending.into_keys()) {
                if emit(cut(name)).is_err() {
                    break;
                }
            }
        }
        return Err(e);
    }
    if let Some((name, p)) = ready {
        emit(finish(name, p))?;
    }
    let mut left: Vec<(String, Pending)> = pending.into_iter().collect();
    left.sort_by(|a, b| a.0.cmp(&b.0));
    for (patch, p) in left {
        let missing = p.missing(format, &patch);
        let reason = format!(
            "members missing at the end of the stream: {}",
            missing.join(", ")
        );
        emit(Event::Bad {
            reason: p
                .problem
                .map_or(reason.clone(), |pr| format!("{pr}; {reason}")),
            patch,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_follows_the_file_name() {
        assert_eq!(
            Packing::of(Path::new("/d/BigEarthNet-S2-v1.0.tar.gz")),
            Some(Packing::TarGz)
        );
        assert_eq!(Packing::of(Path::new("x.TGZ")), Some(Packing::TarGz));
        assert_eq!(
            Packing::of(Path::new("BigEarthNet-S2.tar.zst")),
            Some(Packing::TarZst)
        );
        assert_eq!(Packing::of(Path::new("a.tar")), Some(Packing::Tar));
        assert_eq!(Packing::of(Path::new("folder")), None);
    }

    #[test]
    fn members_are_classified_by_their_patch() {
        let p = "S2A_MSIL2A_20170613T101031_61_39";
        assert!(matches!(
            classify(ArchiveFormat::V1, p, &format!("{p}_B8A.tif")),
            Member::Band(8)
        ));
        assert!(matches!(
            classify(ArchiveFormat::V1, p, &v1_metadata_file(p)),
            Member::Metadata
        ));
        assert!(matches!(
            classify(ArchiveFormat::V2, p, &v1_metadata_file(p)),
            Member::Unexpected
        ));
        assert!(matches!(
            classify(ArchiveFormat::V1, p, "README.txt"),
            Member::Unexpected
        ));
        assert!(matches!(
            classify(ArchiveFormat::V1, p, &format!("{p}_B10.tif")),
            Member::Unexpected
        ));
    }
}
