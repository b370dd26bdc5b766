//! Kafka's record batch codecs (attribute bits 0-2: 0 none, 1 gzip,
//! 2 snappy, 3 lz4, 4 zstd) over a batch's records section, from the
//! kafka-protocol crate. Used by compaction here (a compressed batch is
//! decoded, filtered and encoded again with its own codec) and by the
//! cluster's produce policy (recompression to a topic's codec).
//!
//! Pure and synchronous. The input is bounded by the batch size; the
//! decoded output is not: a hostile gzip/zstd section can expand up to the
//! codec's ratio.

use bytes::{Bytes, BytesMut};
use kafka_protocol::compression::{self as kp, Compressor, Decompressor};

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// The plain records of a records section compressed with `codec_id`.
pub fn decode(codec_id: i16, mut section: Bytes) -> Result<Bytes, String> {
    let take = |b: &mut Bytes| Ok(std::mem::take(b));
    match codec_id {
        0 => Ok(section),
        1 => kp::Gzip::decompress(&mut section, take).map_err(text),
        2 => kp::Snappy::decompress(&mut section, take).map_err(text),
        3 => kp::Lz4::decompress(&mut section, take).map_err(text),
        4 => kp::Zstd::decompress(&mut section, take).map_err(text),
        other => Err(format!("unknown codec {other}")),
    }
}

/// Appends `plain` records compressed with `codec_id` to `out`.
pub fn encode(codec_id: i16, plain: &[u8], out: &mut BytesMut) -> Result<(), String> {
    let put = |b: &mut BytesMut| {
        b.extend_from_slice(plain);
        Ok(())
    };
    match codec_id {
        0 => {
            out.extend_from_slice(plain);
            Ok(())
        }
        1 => kp::Gzip::compress(out, put).map_err(text),
        2 => kp::Snappy::compress(out, put).map_err(text),
        3 => kp::Lz4::compress(out, put).map_err(text),
        4 => kp::Zstd::compress(out, put).map_err(text),
        other => Err(format!("unknown codec {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_and_garbage_is_an_error() {
        let plain: Vec<u8> = (0..4096u32).flat_map(|i| (i % 251).to_be_bytes()).collect();
        for codec in 0..=4 {
            let mut out = BytesMut::new();
            encode(codec, &plain, &mut out).expect("encode");
            let back = decode(codec, out.freeze()).expect("decode");
            assert_eq!(&back[..], &plain[..], "codec {codec}");
        }
        for codec in 1..=4 {
            assert!(
                decode(codec, Bytes::from_static(b"not compressed at all")).is_err(),
                "{codec}"
            );
        }
        assert!(decode(5, Bytes::new()).is_err());
        assert!(encode(7, b"x", &mut BytesMut::new()).is_err());
    }
}
