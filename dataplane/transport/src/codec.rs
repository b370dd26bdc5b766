//! The frame codec. Pure: no I/O, no async, no executor.
//!
//! [`encode_header`] and [`decode_header`] turn the fixed header into bytes
//! and back, [`check_header_crc`] verifies the checksum over the header
//! fields and the extension, and [`split_frame`] cuts whole frames off the
//! front of a read buffer without copying them. The layout is in the crate
//! doc.

use bytes::{Buf, Bytes, BytesMut};

/// The first two bytes of every frame.
pub const MAGIC: u16 = 0xFE10;
/// The only version this code reads and writes.
pub const VERSION: u8 = 1;
/// Bytes of the fixed header, checksum included.
pub const HEADER_BYTES: usize = 18;
/// Bytes of the header covered by the checksum (everything before it).
const HEADER_FIELDS_BYTES: usize = 14;
/// The largest header extension: the caller's fixed-size message header.
pub const EXT_BYTES_MAX: usize = 256;
/// Flags defined in [`VERSION`]: none. A frame with any flag set is refused,
/// so a later version can give flags a meaning without being misread.
pub const FLAGS_KNOWN: u16 = 0;

/// One frame: a caller-defined kind, the destination shard on the receiving
/// node, the caller's small fixed-size header (`ext`, at most
/// [`EXT_BYTES_MAX`] bytes) and a payload of raw bytes (record batches as
/// stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub shard: u16,
    pub ext: Bytes,
    pub payload: Bytes,
}

impl Frame {
    /// Bytes on the wire: header, extension and payload.
    pub fn wire_bytes(&self) -> usize {
        HEADER_BYTES + self.ext.len() + self.payload.len()
    }
}

/// The decoded fixed header. `crc` is as read; [`check_header_crc`] checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub shard: u16,
    pub flags: u16,
    pub ext_len: u16,
    pub payload_len: u32,
    pub crc: u32,
}

impl Header {
    /// Bytes of the whole frame this header announces.
    pub fn frame_bytes(&self) -> usize {
        HEADER_BYTES + usize::from(self.ext_len) + self.payload_len as usize
    }
}

/// Why a frame was refused. Any of these ends the connection: after a bad
/// header the stream has no trustworthy frame boundary.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic {found:#06x} (expected {MAGIC:#06x})")]
    BadMagic { found: u16 },
    #[error("unsupported version {found} (this node speaks {VERSION})")]
    BadVersion { found: u8 },
    #[error("header extension of {len} bytes is over the {EXT_BYTES_MAX} byte limit")]
    ExtTooLong { len: usize },
    #[error("payload of {len} bytes is over the {max} byte limit")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderCrc { stored: u32, computed: u32 },
    #[error("unknown flags {flags:#06x}")]
    UnknownFlags { flags: u16 },
}

/// The CRC-32C of the header fields (bytes 0..14) followed by the extension.
fn header_crc(fields: &[u8], ext: &[u8]) -> u32 {
    debug_assert_eq!(fields.len(), HEADER_FIELDS_BYTES);
    crc32c::crc32c_append(crc32c::crc32c(fields), ext)
}

/// The fixed header of a frame with this kind, shard, extension and payload
/// length, checksum filled in.
///
/// Panics if `ext` is over [`EXT_BYTES_MAX`] or `payload_len` over `u32`:
/// callers check both first ([`crate::Link::send`] does).
pub fn encode_header(kind: u8, shard: u16, ext: &[u8], payload_len: usize) -> [u8; HEADER_BYTES] {
    assert!(
        ext.len() <= EXT_BYTES_MAX,
        "extension of {} bytes over the limit",
        ext.len()
    );
    let ext_len = u16::try_from(ext.len()).expect("ext length bounded by EXT_BYTES_MAX");
    let payload_len = u32::try_from(payload_len).expect("payload length fits the u32 length field");
    let mut h = [0u8; HEADER_BYTES];
    h[0..2].copy_from_slice(&MAGIC.to_be_bytes());
    h[2] = VERSION;
    h[3] = kind;
    h[4..6].copy_from_slice(&shard.to_be_bytes());
    h[6..8].copy_from_slice(&FLAGS_KNOWN.to_be_bytes());
    h[8..10].copy_from_slice(&ext_len.to_be_bytes());
    h[10..14].copy_from_slice(&payload_len.to_be_bytes());
    let crc = header_crc(&h[..HEADER_FIELDS_BYTES], ext);
    h[14..18].copy_from_slice(&crc.to_be_bytes());
    h
}

/// Decodes and bounds the fixed header: magic, version, extension length and
/// payload length (against `max_payload`) are checked here, before anything
/// is allocated for the frame. The checksum needs the extension and is
/// checked by [`check_header_crc`]; flags after that.
pub fn decode_header(h: &[u8; HEADER_BYTES], max_payload: usize) -> Result<Header, FrameError> {
    let magic = u16::from_be_bytes([h[0], h[1]]);
    if magic != MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    if h[2] != VERSION {
        return Err(FrameError::BadVersion { found: h[2] });
    }
    let header = Header {
        kind: h[3],
        shard: u16::from_be_bytes([h[4], h[5]]),
        flags: u16::from_be_bytes([h[6], h[7]]),
        ext_len: u16::from_be_bytes([h[8], h[9]]),
        payload_len: u32::from_be_bytes([h[10], h[11], h[12], h[13]]),
        crc: u32::from_be_bytes([h[14], h[15], h[16], h[17]]),
    };
    if usize::from(header.ext_len) > EXT_BYTES_MAX {
        return Err(FrameError::ExtTooLong {
            len: usize::from(header.ext_len),
        });
    }
    if header.payload_len as usize > max_payload {
        return Err(FrameError::PayloadTooLarge {
            len: header.payload_len as usize,
            max: max_payload,
        });
    }
    Ok(header)
}

/// Checks the stored checksum against the header fields and the extension
/// (`ext` must be the `ext_len` bytes that follow the header), then the flags.
pub fn check_header_crc(h: &[u8; HEADER_BYTES], header: &Header, ext: &[u8]) -> Result<(), FrameError> {
    assert_eq!(
        ext.len(),
        usize::from(header.ext_len),
        "extension slice of the wrong length"
    );
    let computed = header_crc(&h[..HEADER_FIELDS_BYTES], ext);
    if computed != header.crc {
        return Err(FrameError::HeaderCrc {
            stored: header.crc,
            computed,
        });
    }
    if header.flags & !FLAGS_KNOWN != 0 {
        return Err(FrameError::UnknownFlags { flags: header.flags });
    }
    Ok(())
}

/// What [`split_frame`] found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Split {
    /// A whole frame, split off the buffer.
    Frame(Frame),
    /// Not a whole frame yet: at least this many more bytes are needed. The
    /// buffer has room reserved for them once the header has been checked.
    NeedMore(usize),
}

/// If `buf` starts with a whole, valid frame, splits it off and returns it;
/// the extension and payload are views into the buffer's memory (no copy).
/// A header is rejected as soon as its 18 bytes are in (magic, version,
/// lengths) or, for the checksum, as soon as its extension is in; the
/// payload is never buffered for a bad header.
pub fn split_frame(buf: &mut BytesMut, max_payload: usize) -> Result<Split, FrameError> {
    let Some(h) = buf.get(..HEADER_BYTES) else {
        return Ok(Split::NeedMore(HEADER_BYTES - buf.len()));
    };
    let h: &[u8; HEADER_BYTES] = h.try_into().expect("slice of HEADER_BYTES");
    let header = decode_header(h, max_payload)?;
    let ext_end = HEADER_BYTES + usize::from(header.ext_len);
    let Some(ext) = buf.get(HEADER_BYTES..ext_end) else {
        return Ok(Split::NeedMore(ext_end - buf.len()));
    };
    check_header_crc(h, &header, ext)?;
    let total = header.frame_bytes();
    if buf.len() < total {
        // Room for the rest of this frame in one allocation (bounded by
        // max_payload, checked above).
        buf.reserve(total - buf.len());
        return Ok(Split::NeedMore(total - buf.len()));
    }
    buf.advance(HEADER_BYTES);
    let ext = buf.split_to(usize::from(header.ext_len)).freeze();
    let payload = buf.split_to(header.payload_len as usize).freeze();
    Ok(Split::Frame(Frame {
        kind: header.kind,
        shard: header.shard,
        ext,
        payload,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(frame: &Frame) -> BytesMut {
        let mut out = BytesMut::new();
        out.extend_from_slice(&encode_header(
            frame.kind,
            frame.shard,
            &frame.ext,
            frame.payload.len(),
        ));
        out.extend_from_slice(&frame.ext);
        out.extend_from_slice(&frame.payload);
        out
    }

    #[test]
    fn splits_whole_frames_and_waits_for_the_rest() {
        let f = Frame {
            kind: 7,
            shard: 3,
            ext: Bytes::from_static(b"partition+epoch"),
            payload: Bytes::from_static(b"record batch bytes"),
        };
        let wire = encoded(&f);
        assert_eq!(wire.len(), f.wire_bytes());
        // Fed one byte at a time, it is found exactly when the last byte is in.
        let mut buf = BytesMut::new();
        for (i, b) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = split_frame(&mut buf, 1024).expect("valid frame");
            if i + 1 < wire.len() {
                assert!(matches!(got, Split::NeedMore(n) if n >= 1), "byte {i}: {got:?}");
            } else {
                assert_eq!(got, Split::Frame(f.clone()));
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_bad_headers() {
        let f = Frame {
            kind: 1,
            shard: 0,
            ext: Bytes::new(),
            payload: Bytes::from(vec![0u8; 100]),
        };
        let good = encoded(&f);
        assert_eq!(
            split_frame(&mut good.clone(), 99),
            Err(FrameError::PayloadTooLarge { len: 100, max: 99 })
        );
        let mut bad = good.clone();
        bad[0] = 0;
        assert_eq!(
            split_frame(&mut bad, 1024),
            Err(FrameError::BadMagic { found: 0x0010 })
        );
        let mut bad = good.clone();
        bad[2] = 9;
        assert_eq!(
            split_frame(&mut bad, 1024),
            Err(FrameError::BadVersion { found: 9 })
        );
        let mut bad = good.clone();
        bad[3] ^= 1;
        assert!(matches!(
            split_frame(&mut bad, 1024),
            Err(FrameError::HeaderCrc { .. })
        ));
        // A flag with a valid checksum: refused as unknown.
        let mut h: [u8; HEADER_BYTES] = good[..HEADER_BYTES].try_into().expect("header");
        h[7] = 1;
        let crc = header_crc(&h[..HEADER_FIELDS_BYTES], &[]);
        h[14..18].copy_from_slice(&crc.to_be_bytes());
        let mut bad = BytesMut::from(&h[..]);
        assert_eq!(
            split_frame(&mut bad, 1024),
            Err(FrameError::UnknownFlags { flags: 1 })
        );
    }
}
