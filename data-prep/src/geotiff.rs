//! Band files: reading any uint16 single-band (Geo)TIFF BigEarthNet may ship (strips or tiles,
//! uncompressed, LZW or DEFLATE, with or without the horizontal predictor) through the `tiff`
//! crate, and writing files byte-compatible with the real archive for the synthetic generator.

use std::io::Cursor;

use tiff::ColorType;
use tiff::decoder::{Decoder, DecodingResult, Limits};

/// Why a band file could not be used. Rendered into messages that also name patch and file.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BandError {
    #[error("not a TIFF file ({0})")]
    NotTiff(String),
    #[error("unreadable TIFF: {0}")]
    Decode(String),
    #[error("wrong size: {width}x{height} pixels, expected {expected}x{expected} for this band")]
    WrongSize {
        width: u32,
        height: u32,
        expected: usize,
    },
    #[error("wrong pixel type: {0}, expected single-band unsigned 16-bit")]
    WrongType(String),
}

/// About the size of a band file as the archive lays it out (pixels plus a header of well
/// under 1 KB): the buffer a reader starts with.
pub const fn typical_file_size(side: usize) -> usize {
    side * side * 2 + 1024
}

/// Decodes one band file held in memory, refusing anything but `side` x `side` uint16.
pub fn decode_band(bytes: &[u8], side: usize) -> Result<Vec<u16>, BandError> {
    if bytes.len() < 8 || !(bytes.starts_with(b"II") || bytes.starts_with(b"MM")) {
        return Err(BandError::NotTiff(format!(
            "{} bytes, no TIFF header",
            bytes.len()
        )));
    }
    // The archive's own layout, read directly; anything else (or anything inconsistent) goes
    // through the full decoder, which also words the errors.
    if let Some(pixels) = decode_plain_strips(bytes, side) {
        return Ok(pixels);
    }
    check_tag_sizes(bytes)?;
    let mut decoder = Decoder::new(Cursor::new(bytes))
        .map_err(|e| BandError::Decode(e.to_string()))?
        .with_limits(band_limits(bytes, side));
    let (width, height) = decoder
        .dimensions()
        .map_err(|e| BandError::Decode(e.to_string()))?;
    if width as usize != side || height as usize != side {
        return Err(BandError::WrongSize {
            width,
            height,
            expected: side,
        });
    }
    match decoder
        .colortype()
        .map_err(|e| BandError::Decode(e.to_string()))?
    {
        ColorType::Gray(16) => {}
        other => {
            return Err(BandError::WrongType(format!(
                "{other:?} at {width}x{height}"
            )));
        }
    }
    match decoder
        .read_image()
        .map_err(|e| BandError::Decode(e.to_string()))?
    {
        DecodingResult::U16(v) if v.len() == side * side => Ok(v),
        DecodingResult::U16(v) => Err(BandError::Decode(format!(
            "decoded {} values, expected {}",
            v.len(),
            side * side
        ))),
        other => Err(BandError::WrongType(format!(
            "{} at {width}x{height}",
            sample_kind(&other)
        ))),
    }
}

/// Refuses a first IFD whose tags claim more bytes than the file has: the decoder would size
/// its buffers from those claims (up to 256 MiB) before finding the file too short.
fn check_tag_sizes(bytes: &[u8]) -> Result<(), BandError> {
    let tiff = TiffBytes::new(bytes);
    let short = || {
        BandError::Decode(format!(
            "{} bytes: the TIFF header or its first IFD is cut short",
            bytes.len()
        ))
    };
    match tiff.u16_at(2).ok_or_else(short)? {
        42 => {}
        43 => {
            return Err(BandError::Decode(
                "BigTIFF (BigEarthNet's band files are classic TIFF)".into(),
            ));
        }
        magic => {
            return Err(BandError::NotTiff(format!(
                "TIFF version {magic}, expected 42"
            )));
        }
    }
    for IfdEntry {
        tag, typ, count, ..
    } in tiff.first_ifd().ok_or_else(short)?
    {
        let size: u64 = match typ {
            3 | 8 => 2,
            4 | 9 | 11 | 13 => 4,
            5 | 10 | 12 | 16 | 17 | 18 => 8,
            _ => 1,
        };
        if u64::from(count) * size > bytes.len() as u64 {
            return Err(BandError::Decode(format!(
                "tag {tag} claims {count} values, more than the file's {} bytes hold",
                bytes.len()
            )));
        }
    }
    Ok(())
}

/// A classic TIFF's bytes, read in the file's byte order ("II" little-, "MM" big-endian).
struct TiffBytes<'a> {
    bytes: &'a [u8],
    big_endian: bool,
}

/// One entry of an IFD: tag, field type, value count and where its value-or-offset field lies.
struct IfdEntry {
    tag: u16,
    typ: u16,
    count: u32,
    field: usize,
}

impl<'a> TiffBytes<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        TiffBytes {
            bytes,
            big_endian: bytes.starts_with(b"MM"),
        }
    }

    fn u16_at(&self, o: usize) -> Option<u16> {
        let b: [u8; 2] = self.bytes.get(o..o.checked_add(2)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    /// An array of SHORT or LONG values of an IFD entry (type, count, value field position),
    /// inline when it fits in 4 bytes.
    fn values(&self, (typ, n, field): (u16, usize, usize)) -> Option<Vec<usize>> {
        let size = match typ {
            SHORT => 2,
            LONG => 4,
            _ => return None,
        };
        let start = if n * size <= 4 {
            field
        } else {
            self.u32_at(field)? as usize
        };
        (0..n)
            .map(|k| match size {
                2 => self.u16_at(start + 2 * k).map(usize::from),
                _ => self.u32_at(start + 4 * k).map(|v| v as usize),
            })
            .collect()
    }

    fn u32_at(&self, o: usize) -> Option<u32> {
        let b: [u8; 4] = self.bytes.get(o..o.checked_add(4)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    /// The entries of the first IFD; `None` when the header or the IFD is cut short.
    fn first_ifd(&self) -> Option<Vec<IfdEntry>> {
        let ifd = self.u32_at(4)? as usize;
        let entries = self.u16_at(ifd)? as usize;
        (0..entries)
            .map(|i| {
                let e = ifd + 2 + 12 * i;
                Some(IfdEntry {
                    tag: self.u16_at(e)?,
                    typ: self.u16_at(e + 2)?,
                    count: self.u32_at(e + 4)?,
                    field: e + 8,
                })
            })
            .collect()
    }
}

/// What decoding one band may allocate, from the band's size and the file's, instead of the
/// decoder's defaults (hundreds of MB): a damaged header claiming huge strips or tag arrays is
/// refused rather than allocated for, on every decoding thread at once.
fn band_limits(bytes: &[u8], side: usize) -> Limits {
    let mut limits = Limits::default();
    // Room for any sample type up to 64 bits, so that a wrong type is named, not over a limit.
    limits.decoding_buffer_size = side * side * 8;
    // A compressed strip lies within the file.
    limits.intermediate_buffer_size = bytes.len();
    limits.ifd_value_size = bytes.len().min(1 << 20);
    limits
}

/// The layout BigEarthNet's files use: little-endian, uncompressed, one 16-bit unsigned sample
/// per pixel, in strips. `None` for anything else or anything out of place.
fn decode_plain_strips(bytes: &[u8], side: usize) -> Option<Vec<u16>> {
    let tiff = TiffBytes::new(bytes);
    let (u16_at, u32_at) = (|o| tiff.u16_at(o), |o| tiff.u32_at(o));
    if !bytes.starts_with(b"II") || u16_at(2)? != 42 {
        return None;
    }
    // (value of a one-value tag) and (type, count, value-or-offset field position) of the others.
    let (mut width, mut height, mut bits, mut compression, mut samples, mut planar, mut format) =
        (0, 0, 0, 1, 1, 1, 1);
    let mut offsets = None;
    let mut byte_counts = None;
    for IfdEntry {
        tag,
        typ,
        count,
        field,
    } in tiff.first_ifd()?
    {
        let n = count as usize;
        let single = || match (typ, n) {
            (SHORT, 1) => u16_at(field).map(u32::from),
            (LONG, 1) => u32_at(field),
            _ => None,
        };
        match tag {
            256 => width = single()?,
            257 => height = single()?,
            258 => bits = single()?,
            259 => compression = single()?,
            277 => samples = single()?,
            284 => planar = single()?,
            339 => format = single()?,
            273 => offsets = Some((typ, n, field)),
            279 => byte_counts = Some((typ, n, field)),
            // Tiles, a predictor or extra samples: not the plain layout.
            317 | 322 | 323 | 324 | 325 | 338 => return None,
            _ => {}
        }
    }
    if (width, height, bits, compression, samples, planar, format)
        != (side as u32, side as u32, 16, 1, 1, 1, 1)
    {
        return None;
    }
    let (offsets, byte_counts) = (tiff.values(offsets?)?, tiff.values(byte_counts?)?);
    if offsets.len() != byte_counts.len() || byte_counts.iter().sum::<usize>() != side * side * 2 {
        return None;
    }
    let mut pixels = Vec::with_capacity(side * side);
    for (&o, &n) in offsets.iter().zip(&byte_counts) {
        pixels.extend(
            bytes
                .get(o..o.checked_add(n)?)?
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]])),
        );
    }
    Some(pixels)
}

fn sample_kind(r: &DecodingResult) -> &'static str {
    match r {
        DecodingResult::U8(_) => "uint8",
        DecodingResult::U16(_) => "uint16",
        DecodingResult::U32(_) => "uint32",
        DecodingResult::U64(_) => "uint64",
        DecodingResult::I8(_) => "int8",
        DecodingResult::I16(_) => "int16",
        DecodingResult::I32(_) => "int32",
        DecodingResult::I64(_) => "int64",
        DecodingResult::F16(_) => "float16",
        DecodingResult::F32(_) => "float32",
        DecodingResult::F64(_) => "float64",
    }
}

/// Georeferencing of one band file: upper-left corner in UTM metres, pixel size and CRS.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoRef {
    pub ulx: f64,
    pub uly: f64,
    pub gsd_m: f64,
    /// UTM zone number, northern hemisphere (EPSG 326NN).
    pub utm_zone: u16,
}

impl GeoRef {
    pub fn epsg(&self) -> u16 {
        32600 + self.utm_zone
    }
    pub fn crs_name(&self) -> String {
        format!("WGS 84 / UTM zone {}N", self.utm_zone)
    }
}

/// Which archive's band-file conventions to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// BigEarthNet-S2 v1.0: 15 tags, LONG strip byte counts.
    V1,
    /// BigEarthNet v2.0: adds GDAL_NODATA "0" and stores strip byte counts as SHORT.
    V2,
}

const SHORT: u16 = 3;
const LONG: u16 = 4;
const ASCII: u16 = 2;
const DOUBLE: u16 = 12;

/// Rows per strip in the real archive: 34 for 120x120 bands (4 strips), one strip otherwise.
pub fn rows_per_strip(side: usize) -> usize {
    if side == 120 { 34 } else { side }
}

/// The GeoKey directory of a band (GeoTIFF 1.0): its header and seven keys, in key order.
fn geokeys(geo: &GeoRef) -> [[u16; 4]; 8] {
    let proj_len = geo.crs_name().len() as u16 + 1;
    [
        [1, 1, 0, 7],    // directory version, revision, minor revision, number of keys
        [1024, 0, 1, 1], // GTModelType: projected
        [1025, 0, 1, 1], // GTRasterType: PixelIsArea
        [1026, 34737, proj_len, 0], // GTCitation
        [2049, 34737, 7, proj_len], // GeogCitation "WGS 84|"
        [2054, 0, 1, 9102], // GeogAngularUnits: degree
        [3072, 0, 1, geo.epsg()], // ProjectedCSType
        [3076, 0, 1, 9001], // ProjLinearUnits: metre
    ]
}

/// One IFD entry: tag, type, count and value bytes (values of more than 4 bytes go out of
/// line).
type Tag = (u16, u16, u32, Vec<u8>);

fn le16(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le64(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The IFD entries of a band, in tag order; the strip offsets (tag 273, the sixth) are zeros,
/// set once the layout is known.
fn band_tags(side: usize, geo: &GeoRef, flavor: Flavor, strip_bytes: &[u32]) -> Vec<Tag> {
    let mut ascii_params = format!("{}|WGS 84|", geo.crs_name()).into_bytes();
    ascii_params.push(0);
    let geokeys: Vec<u16> = geokeys(geo).concat();
    let (side16, strips) = (side as u16, strip_bytes.len() as u32);
    let byte_counts = match flavor {
        Flavor::V1 => (279, LONG, strips, le32(strip_bytes)),
        Flavor::V2 => {
            let short: Vec<u16> = strip_bytes.iter().map(|&b| b as u16).collect();
            (279, SHORT, strips, le16(&short))
        }
    };
    let mut tags: Vec<Tag> = vec![
        (256, SHORT, 1, le16(&[side16])),
        (257, SHORT, 1, le16(&[side16])),
        (258, SHORT, 1, le16(&[16])),
        (259, SHORT, 1, le16(&[1])),
        (262, SHORT, 1, le16(&[1])),
        (273, LONG, strips, vec![0; 4 * strip_bytes.len()]),
        (277, SHORT, 1, le16(&[1])),
        (278, SHORT, 1, le16(&[rows_per_strip(side) as u16])),
        byte_counts,
        (284, SHORT, 1, le16(&[1])),
        (339, SHORT, 1, le16(&[1])),
        (33550, DOUBLE, 3, le64(&[geo.gsd_m, geo.gsd_m, 0.0])),
        (
            33922,
            DOUBLE,
            6,
            le64(&[0.0, 0.0, 0.0, geo.ulx, geo.uly, 0.0]),
        ),
        (34735, SHORT, geokeys.len() as u32, le16(&geokeys)),
        (34737, ASCII, ascii_params.len() as u32, ascii_params),
    ];
    if flavor == Flavor::V2 {
        tags.push((42113, ASCII, 2, b"0\0".to_vec()));
    }
    tags
}

/// Encodes a band as the real archive lays it out: little-endian, one IFD at offset 8, the
/// tags' out-of-line values in tag order right after the IFD, then the uncompressed strips.
pub fn encode_band(pixels: &[u16], side: usize, geo: &GeoRef, flavor: Flavor) -> Vec<u8> {
    assert_eq!(
        pixels.len(),
        side * side,
        "pixel count does not match the side"
    );
    let rps = rows_per_strip(side);
    let strip_bytes: Vec<u32> = (0..side)
        .step_by(rps)
        .map(|row| (rps.min(side - row) * side * 2) as u32)
        .collect();
    let mut tags = band_tags(side, geo, flavor, &strip_bytes);
    let ifd_len = 2 + 12 * tags.len() + 4;
    let out_of_line: usize = tags
        .iter()
        .filter(|t| t.3.len() > 4)
        .map(|t| t.3.len().next_multiple_of(2))
        .sum();
    let data_start = 8 + ifd_len + out_of_line;
    let offsets: Vec<u32> = strip_bytes
        .iter()
        .scan(data_start as u32, |at, &len| {
            let here = *at;
            *at += len;
            Some(here)
        })
        .collect();
    tags[5].3 = le32(&offsets);
    let mut out = Vec::with_capacity(data_start + side * side * 2);
    out.extend_from_slice(b"II");
    out.extend_from_slice(&42u16.to_le_bytes());
    out.extend_from_slice(&8u32.to_le_bytes());
    out.extend_from_slice(&(tags.len() as u16).to_le_bytes());
    let mut next_value = 8 + ifd_len;
    let mut values = Vec::with_capacity(out_of_line);
    for (tag, typ, count, bytes) in &tags {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&typ.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        if bytes.len() <= 4 {
            let mut inline = [0u8; 4];
            inline[..bytes.len()].copy_from_slice(bytes);
            out.extend_from_slice(&inline);
        } else {
            out.extend_from_slice(&(next_value as u32).to_le_bytes());
            values.extend_from_slice(bytes);
            if bytes.len() % 2 == 1 {
                values.push(0);
            }
            next_value += bytes.len().next_multiple_of(2);
        }
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&values);
    debug_assert_eq!(out.len(), data_start);
    out.extend(pixels.iter().flat_map(|p| p.to_le_bytes()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(gsd: f64) -> GeoRef {
        GeoRef {
            ulx: 600_000.0,
            uly: 5_300_040.0,
            gsd_m: gsd,
            utm_zone: 33,
        }
    }

    fn ramp(side: usize) -> Vec<u16> {
        (0..side * side)
            .map(|i| (40 + i * 7 % 5_860) as u16)
            .collect()
    }

    #[test]
    fn v1_files_have_the_real_sizes_and_round_trip() {
        for (side, gsd, size) in [(120, 10.0, 29_192), (60, 20.0, 7_560), (20, 60.0, 1_160)] {
            let px = ramp(side);
            let bytes = encode_band(&px, side, &geo(gsd), Flavor::V1);
            assert_eq!(bytes.len(), size, "side {side}");
            assert_eq!(&bytes[..8], &[0x49, 0x49, 42, 0, 8, 0, 0, 0]);
            assert_eq!(decode_band(&bytes, side).unwrap(), px);
        }
    }

    /// The direct reader of the archive's layout gives what the full decoder gives, and leaves
    /// any other layout to it.
    #[test]
    fn plain_strips_are_read_directly_and_equal_the_full_decoder() {
        for (side, gsd) in [(120, 10.0), (60, 20.0), (20, 60.0)] {
            for flavor in [Flavor::V1, Flavor::V2] {
                let px = ramp(side);
                let bytes = encode_band(&px, side, &geo(gsd), flavor);
                assert_eq!(
                    decode_plain_strips(&bytes, side).as_deref(),
                    Some(&px[..]),
                    "{side} {flavor:?}"
                );
                let mut decoder = Decoder::new(Cursor::new(&bytes[..])).unwrap();
                assert!(matches!(decoder.read_image().unwrap(), DecodingResult::U16(v) if v == px));
                // Cut anywhere: never read directly, and the full decoder reports it.
                for cut in [bytes.len() - 1, bytes.len() / 2, 200, 9] {
                    assert_eq!(decode_plain_strips(&bytes[..cut], side), None);
                    assert!(decode_band(&bytes[..cut], side).is_err());
                }
            }
        }
        let bytes = encode_band(&ramp(60), 60, &geo(20.0), Flavor::V1);
        assert_eq!(decode_plain_strips(&bytes, 120), None);
    }

    #[test]
    fn v2_files_round_trip() {
        let px = ramp(120);
        let bytes = encode_band(&px, 120, &geo(10.0), Flavor::V2);
        assert_eq!(decode_band(&bytes, 120).unwrap(), px);
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let bytes = encode_band(&ramp(60), 60, &geo(20.0), Flavor::V1);
        assert_eq!(
            decode_band(&bytes, 120).unwrap_err(),
            BandError::WrongSize {
                width: 60,
                height: 60,
                expected: 120
            }
        );
        assert!(matches!(
            decode_band(b"{\"labels\": []}", 60),
            Err(BandError::NotTiff(_))
        ));
        let truncated = &bytes[..bytes.len() - 100];
        assert!(
            matches!(decode_band(truncated, 60), Err(BandError::Decode(_))),
            "{:?}",
            decode_band(truncated, 60)
        );
    }
}
