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
    /// Checks that the file starts as its name says (gzip's `1f 8b`, zstd's `28 b5 2f fd`, a
    /// tar header's `ustar`), before anything else is read or reported about it.
    pub fn verify(self, path: &Path) -> Result<()> {
        let mut head = [0u8; 263];
        let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let n = file
            .read(&mut head)
            .with_context(|| format!("reading {}", path.display()))?;
        let head = &head[..n];
        let (ok, what) = match self {
            Packing::TarGz => (head.starts_with(&[0x1f, 0x8b]), "gzip file"),
            Packing::TarZst => (head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "zstd file"),
            Packing::Tar => (head.get(257..262) == Some(b"ustar".as_slice()), "tar file"),
        };
        if !ok {
            bail!(
                "{}: not a {what}, though its name says so (its first bytes are {:02x?})",
                path.display(),
                &head[..head.len().min(4)]
            );
        }
        Ok(())
    }

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

/// Why [`read_patches`] stopped: the stream failed (the caller decides, by `fatal` and its
/// options, whether the patches read so far are kept), or anything else, such as the consumer's
/// own error from `emit`.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Other(anyhow::Error),
}

impl From<anyhow::Error> for ReadError {
    /// The stream's own failures travel through the reading as `anyhow` errors; they are told
    /// apart here, where they are made.
    fn from(e: anyhow::Error) -> ReadError {
        match e.downcast::<StreamError>() {
            Ok(stream) => ReadError::Stream(stream),
            Err(other) => ReadError::Other(other),
        }
    }
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

impl Pending {
    /// What the stream passes on for a patch whose members all arrived.
    fn finish(self, patch: String) -> Event {
        match self.problem {
            Some(reason) => Event::Bad { patch, reason },
            None => Event::Complete(PackedPatch {
                name: patch,
                bands: self
                    .bands
                    .into_iter()
                    .map(Option::unwrap_or_default)
                    .collect(),
                metadata: self.metadata.unwrap_or_default(),
                offset: self.offset,
            }),
        }
    }
}

/// Members grouped per patch folder as they stream by.
struct Grouper<'a> {
    path: &'a Path,
    /// Compressed bytes read so far (for messages).
    read: &'a AtomicU64,
    format: ArchiveFormat,
    max_pending: usize,
    pending: HashMap<String, Pending>,
    done: HashSet<String>,
    /// The last completed patch, passed on when the next member is not one of its folder.
    ready: Option<(String, Pending)>,
    /// Where the member being read starts, and where the next header should.
    tar_offset: u64,
    next_header: u64,
}

impl Grouper<'_> {
    fn error(&self, what: String, tar_offset: u64) -> StreamError {
        StreamError {
            path: self.path.to_path_buf(),
            what,
            tar_offset,
            compressed_offset: self.read.load(Ordering::Relaxed),
            fatal: false,
        }
    }

    /// The patch folder and file name of a member. A patch folder holds files named after it;
    /// a file in a folder known as a patch's (from an earlier member) that is not one of its
    /// files is out of place in that patch; a member in no patch folder ends the read.
    fn place(&self, member: &Path) -> Result<(String, String)> {
        let parts: Vec<String> = member
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        match parts.as_slice() {
            [.., dir, file]
                if file.starts_with(&format!("{dir}_"))
                    || self.pending.contains_key(dir)
                    || self.ready.as_ref().is_some_and(|(r, _)| r == dir) =>
            {
                Ok((dir.clone(), file.clone()))
            }
            _ => {
                let what = format!(
                    "member {} is outside any patch folder: not a {} archive",
                    member.display(),
                    self.format
                );
                Err(StreamError {
                    fatal: true,
                    ..self.error(what, self.tar_offset)
                }
                .into())
            }
        }
    }

    /// Refuses a member of a patch already complete, or one that would hold more patches
    /// incomplete at once than allowed.
    fn admit(&self, patch: &str, member: &Path) -> Result<()> {
        if self.done.contains(patch) {
            let what = format!(
                "member {} belongs to patch {patch}, which was already complete",
                member.display()
            );
            bail!(self.error(what, self.tar_offset));
        }
        if !self.pending.contains_key(patch) && self.pending.len() >= self.max_pending {
            let (oldest, p) = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.offset)
                .expect("pending is full");
            let what = format!(
                "{} patches are incomplete at once (--max-pending-patches): patch {oldest} still \
                 lacks {} of its members; this archive scatters the members of its patches, \
                 raise the limit (each incomplete patch holds up to about 173 KB)",
                self.max_pending,
                p.missing(self.format, oldest).len()
            );
            bail!(self.error(what, self.tar_offset));
        }
        Ok(())
    }

    /// A member's bytes, all of them; the header's size is the archive's word, never allocated
    /// from unchecked.
    fn contents(&self, entry: &mut impl Read, size: u64, member: &Path) -> Result<Vec<u8>> {
        if size > MAX_MEMBER_BYTES {
            let what = format!(
                "member {} claims {size} bytes, more than any file of a BigEarthNet patch \
                 ({MAX_MEMBER_BYTES} at most): a damaged header",
                member.display()
            );
            bail!(self.error(what, self.tar_offset));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut bytes).map_err(|e| {
            self.error(
                format!("member {} is cut short ({e})", member.display()),
                self.tar_offset,
            )
        })?;
        if bytes.len() as u64 != size {
            let what = format!(
                "member {} ends after {} of its {size} bytes",
                member.display(),
                bytes.len()
            );
            bail!(self.error(what, self.tar_offset));
        }
        Ok(bytes)
    }

    /// Files a member's bytes into its patch; a patch whose members all arrived becomes ready.
    fn file(&mut self, patch: String, file: &str, member: &Path, is_file: bool, bytes: Vec<u8>) {
        let (format, at) = (self.format, self.tar_offset);
        let p = self
            .pending
            .entry(patch.clone())
            .or_insert_with(|| Pending::new(at));
        let slot = match (is_file, classify(format, &patch, file)) {
            (true, Member::Band(i)) => &mut p.bands[i],
            (true, Member::Metadata) => &mut p.metadata,
            (_, Member::Unexpected) | (false, _) => {
                p.problem.get_or_insert_with(|| {
                    format!("unexpected member {} at byte {at}", member.display())
                });
                return;
            }
        };
        if slot.replace(bytes).is_some() {
            p.problem
                .get_or_insert_with(|| format!("member {} appears twice", member.display()));
        }
        if p.missing(format, &patch).is_empty() {
            let p = self.pending.remove(&patch).expect("just seen");
            self.done.insert(patch.clone());
            self.ready = Some((patch, p));
        }
    }

    /// One member of the stream.
    fn member<R: Read>(
        &mut self,
        mut entry: tar::Entry<R>,
        emit: &mut impl FnMut(Event) -> Result<()>,
    ) -> Result<()> {
        self.tar_offset = entry.raw_header_position();
        self.next_header = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
        let member = entry
            .path()
            .map_err(|e| self.error(format!("unreadable member name ({e})"), self.tar_offset))?
            .into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            return Ok(());
        }
        let (patch, file) = self.place(&member)?;
        if let Some((name, p)) = &mut self.ready {
            if *name == patch {
                let at = self.tar_offset;
                p.problem.get_or_insert_with(|| {
                    format!("unexpected member {} at byte {at}", member.display())
                });
                return Ok(());
            }
            let (name, p) = self.ready.take().expect("checked");
            emit(p.finish(name))?;
        }
        self.admit(&patch, &member)?;
        let size = entry.size();
        let bytes = self.contents(&mut entry, size, &member)?;
        self.file(patch, &file, &member, kind.is_file(), bytes);
        Ok(())
    }

    /// After the stream: the patches a broken stream cut off (then its error), else the last
    /// ready patch and those incomplete at its end.
    fn end(self, outcome: Result<()>, emit: &mut impl FnMut(Event) -> Result<()>) -> Result<()> {
        if let Err(e) = outcome {
            if e.downcast_ref::<StreamError>().is_some() {
                let reason = format!("cut off by the damaged stream: {e}");
                let cut = self
                    .ready
                    .map(|(n, _)| n)
                    .into_iter()
                    .chain(self.pending.into_keys());
                for patch in cut {
                    if emit(Event::Bad {
                        patch,
                        reason: reason.clone(),
                    })
                    .is_err()
                    {
                        break;
                    }
                }
            }
            return Err(e);
        }
        if let Some((name, p)) = self.ready {
            emit(p.finish(name))?;
        }
        let mut left: Vec<(String, Pending)> = self.pending.into_iter().collect();
        left.sort_by(|a, b| a.0.cmp(&b.0));
        for (patch, p) in left {
            let missing = p.missing(self.format, &patch).join(", ");
            let reason = format!("members missing at the end of the stream: {missing}");
            let reason = p
                .problem
                .map_or(reason.clone(), |pr| format!("{pr}; {reason}"));
            emit(Event::Bad { reason, patch })?;
        }
        Ok(())
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
) -> Result<(), ReadError> {
    let PackedStream {
        path, reader, read, ..
    } = stream;
    let mut archive = tar::Archive::new(reader);
    let mut g = Grouper {
        path: &path,
        read: &read,
        format,
        max_pending,
        pending: HashMap::new(),
        done: HashSet::new(),
        ready: None,
        tar_offset: 0,
        next_header: 0,
    };
    let outcome = (|| -> Result<()> {
        let entries = archive
            .entries()
            .map_err(|e| g.error(format!("not a tar stream: {e}"), 0))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| g.error(format!("unreadable tar header ({e})"), g.next_header))?;
            g.member(entry, &mut emit)?;
        }
        Ok(())
    })();
    // The tar ends before its compressed stream does: read the rest, so that gzip's and zstd's
    // checksums of the whole stream are checked.
    let outcome = outcome.and_then(|()| {
        io::copy(&mut archive.into_inner(), &mut io::sink())
            .map(drop)
            .map_err(|e| {
                let what = format!("the compressed stream is damaged ({e})");
                StreamError {
                    fatal: true,
                    ..g.error(what, g.next_header)
                }
                .into()
            })
    });
    g.end(outcome, &mut emit).map_err(ReadError::from)
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
