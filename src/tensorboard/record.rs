//! TensorBoard's record framing (TFRecord): each record is its length (u64, little-endian), the
//! masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data. A reader
//! stops at a record that is not whole yet, so a file read while it is written reads its whole
//! records only.

/// CRC-32C masked as TFRecord masks it (rotated by 15 bits, plus a constant), so that a CRC
/// of data that holds CRCs does not look like one.
pub fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// `data` framed as one record.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The whole records of `bytes`, in order: a torn or damaged tail ends the list.
pub fn records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        if crc != masked_crc(len_bytes) {
            break;
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        let Some(end) = (at + 12).checked_add(len).filter(|&e| e + 4 <= bytes.len()) else {
            break;
        };
        let data = &bytes[at + 12..end];
        if u32::from_le_bytes(bytes[end..end + 4].try_into().expect("4 bytes")) != masked_crc(data)
        {
            break;
        }
        out.push(data);
        at = end + 4;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The masked CRC of TFRecord's own reference value: CRC-32C("123456789") is 0xE3069283.
    #[test]
    fn records_round_trip_and_a_torn_tail_is_left_out() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let mut bytes = frame(b"first");
        bytes.extend(frame(b""));
        bytes.extend(frame(b"third"));
        assert_eq!(records(&bytes), [&b"first"[..], b"", b"third"]);
        let whole = bytes.len();
        bytes.truncate(whole - 3);
        assert_eq!(records(&bytes), [&b"first"[..], b""]);
        bytes[13] ^= 1;
        assert_eq!(records(&bytes), Vec::<&[u8]>::new());
    }
}
