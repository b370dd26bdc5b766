//! What a topic's produce-time configs do to a producer's batch before the
//! leader appends it: `message.timestamp.*.max.ms` bounds, recompression to
//! the topic's `compression.type`, and `message.timestamp.type=LogAppendTime`.
//!
//! Sans-IO and synchronous: the caller passes the broker's clock reading.
//! A topic with Kafka's defaults (`producer`, `CreateTime`, no bounds) takes
//! the batch as it is, without reading or copying it; only a batch that must
//! change is copied, and then its CRC-32C is checked first (a corrupt batch
//! must not get a fresh, valid CRC) and computed again last. The header's
//! producer id, epoch, sequence, offsets delta and record count never
//! change, so idempotence and the offsets the log assigns are unaffected.
//!
//! Recompression decodes the records section with the batch's codec and
//! encodes it with the topic's (the kafka-protocol crate's codecs). The
//! input is bounded by `max.message.bytes`, the decompressed output is not:
//! a hostile gzip/zstd batch can expand up to the codec's ratio
//! (docs/operations.md says so).

use crate::error::PartitionError;
use bytes::{Bytes, BytesMut};
use ferrolog_controlplane::topic_configs::{ProducePolicy, TopicCompression};
use ferrolog_model::batch::{BatchHeader, CRC_START, HEADER_BYTES};
use ferrolog_storage::codec::{decode, encode};

/// Byte positions in the RecordBatch v2 header.
const LENGTH_AT: usize = 8;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const MAX_TIMESTAMP_AT: usize = 35;
/// Attribute bits: the codec and the timestamp type (1 = LogAppendTime).
const COMPRESSION_MASK: i16 = 0x07;
const LOG_APPEND_TIME_BIT: i16 = 0x08;

/// What `apply` did, for the produce answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    pub batch: Bytes,
    /// The append time stamped into the batch (LogAppendTime topics).
    pub log_append_time_ms: Option<i64>,
}

/// Applies `policy` to one producer batch (one that passed
/// `check_producer_batch`), at broker time `now_ms`.
pub fn apply(policy: &ProducePolicy, batch: Bytes, now_ms: i64) -> Result<Applied, PartitionError> {
    if policy.is_passthrough() {
        return Ok(Applied {
            batch,
            log_append_time_ms: None,
        });
    }
    let h = BatchHeader::parse_verified(&batch).map_err(|e| PartitionError::CorruptBatch(e.to_string()))?;
    if !policy.log_append_time {
        check_timestamps(policy, &h, now_ms)?;
    }
    let recompress_to = match policy.compression {
        TopicCompression::Codec(c) if c != h.compression() => Some(c),
        _ => None,
    };
    if recompress_to.is_none() && !policy.log_append_time {
        return Ok(Applied {
            batch,
            log_append_time_ms: None,
        });
    }
    let mut out = match recompress_to {
        Some(to) => recompress(&batch, &h, to)?,
        None => BytesMut::from(&batch[..]),
    };
    let mut attributes = i16::from_be_bytes([out[ATTRIBUTES_AT], out[ATTRIBUTES_AT + 1]]);
    let mut log_append_time_ms = None;
    if policy.log_append_time {
        attributes |= LOG_APPEND_TIME_BIT;
        out[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&now_ms.to_be_bytes());
        log_append_time_ms = Some(now_ms);
    }
    out[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    let batch = out.freeze();
    debug_assert!(
        BatchHeader::parse_verified(&batch).is_ok(),
        "a rewritten batch verifies"
    );
    Ok(Applied {
        batch,
        log_append_time_ms,
    })
}

/// Kafka's CreateTime bounds, on the batch's first and largest timestamps.
fn check_timestamps(policy: &ProducePolicy, h: &BatchHeader, now_ms: i64) -> Result<(), PartitionError> {
    let (first, max) = (h.base_timestamp.0, h.max_timestamp.0);
    if let Some(before) = policy.before_max_ms {
        let oldest = first.min(max);
        if now_ms.saturating_sub(oldest) > before as i64 {
            return Err(PartitionError::InvalidTimestamp(format!(
                "timestamp {oldest} is more than message.timestamp.before.max.ms={before} before the broker's time {now_ms}"
            )));
        }
    }
    if let Some(after) = policy.after_max_ms {
        let newest = first.max(max);
        if newest.saturating_sub(now_ms) > after as i64 {
            return Err(PartitionError::InvalidTimestamp(format!(
                "timestamp {newest} is more than message.timestamp.after.max.ms={after} after the broker's time {now_ms}"
            )));
        }
    }
    Ok(())
}

/// The batch with its records section decoded from its codec and encoded
/// with `to`, the header copied (length and codec bits updated; the CRC is
/// the caller's).
fn recompress(batch: &[u8], h: &BatchHeader, to: i16) -> Result<BytesMut, PartitionError> {
    let corrupt = |e: String| PartitionError::CorruptBatch(format!("cannot recompress the batch: {e}"));
    let section = Bytes::copy_from_slice(&batch[HEADER_BYTES..h.total_bytes()]);
    let plain = decode(h.compression(), section).map_err(corrupt)?;
    let mut out = BytesMut::with_capacity(HEADER_BYTES + plain.len());
    out.extend_from_slice(&batch[..HEADER_BYTES]);
    encode(to, &plain, &mut out).map_err(corrupt)?;
    let length = i32::try_from(out.len() - 12)
        .map_err(|_| PartitionError::CorruptBatch("recompressed batch over 2 GiB".into()))?;
    out[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
    let attributes = i16::from_be_bytes([out[ATTRIBUTES_AT], out[ATTRIBUTES_AT + 1]]);
    let attributes = (attributes & !COMPRESSION_MASK) | to;
    out[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolog_model::batch::{records, BatchBuilder};
    use ferrolog_model::TimestampMs;

    const NOW: i64 = 1_700_000_000_000;

    fn batch(ts: i64) -> Bytes {
        let b = BatchBuilder::new(TimestampMs(ts))
            .producer(7, 2, 40)
            .record(TimestampMs(ts), Some(b"k1"), b"hello hello hello hello")
            .record(TimestampMs(ts + 5), None, &[b'x'; 3000])
            .build();
        Bytes::from(b)
    }

    fn policy(codec: Option<i16>) -> ProducePolicy {
        ProducePolicy {
            compression: codec.map_or(TopicCompression::Producer, TopicCompression::Codec),
            ..ProducePolicy::default()
        }
    }

    /// A record's offset, key and value.
    type Rec = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

    /// Offsets, keys and values, read through a recompression to none.
    fn values(b: &Bytes) -> Vec<Rec> {
        BatchHeader::parse_verified(b).expect("verifies");
        let plain = apply(&policy(Some(0)), b.clone(), NOW)
            .expect("decompresses")
            .batch;
        records(&plain)
            .expect("records parse")
            .iter()
            .map(|r| (r.offset.0, r.key.map(<[u8]>::to_vec), r.value.map(<[u8]>::to_vec)))
            .collect()
    }

    #[test]
    fn the_default_policy_keeps_the_very_bytes() {
        let b = batch(NOW);
        let out = apply(&ProducePolicy::default(), b.clone(), NOW).expect("passes");
        assert_eq!(out.batch.as_ptr(), b.as_ptr(), "zero-copy");
        let out = apply(&policy(Some(0)), b.clone(), NOW).expect("same codec");
        assert_eq!(out.batch, b, "already uncompressed: kept as is");
    }

    #[test]
    fn recompression_round_trips_through_every_codec() {
        let original = batch(NOW);
        let want = values(&original);
        let h0 = BatchHeader::parse(&original).expect("header");
        for from in 0..=4 {
            let src = apply(&policy(Some(from)), original.clone(), NOW)
                .expect("to source codec")
                .batch;
            for to in 0..=4 {
                let out = apply(&policy(Some(to)), src.clone(), NOW)
                    .expect("recompress")
                    .batch;
                let h = BatchHeader::parse_verified(&out).expect("CRC valid");
                assert_eq!(h.compression(), to, "{from} -> {to}");
                assert_eq!(values(&out), want, "{from} -> {to}");
                assert_eq!(
                    (
                        h.producer_id,
                        h.producer_epoch,
                        h.base_sequence,
                        h.record_count,
                        h.last_offset_delta
                    ),
                    (
                        h0.producer_id,
                        h0.producer_epoch,
                        h0.base_sequence,
                        h0.record_count,
                        h0.last_offset_delta
                    )
                );
                assert_eq!(h.max_timestamp, h0.max_timestamp);
            }
        }
    }

    #[test]
    fn log_append_time_stamps_the_batch() {
        let p = ProducePolicy {
            log_append_time: true,
            ..policy(Some(1))
        };
        let out = apply(&p, batch(5), NOW).expect("stamped");
        assert_eq!(out.log_append_time_ms, Some(NOW));
        let h = BatchHeader::parse_verified(&out.batch).expect("CRC valid");
        assert_eq!(h.max_timestamp.0, NOW);
        assert_eq!(h.attributes & LOG_APPEND_TIME_BIT, LOG_APPEND_TIME_BIT);
        assert_eq!(h.compression(), 1);
        // Out-of-bound CreateTime bounds do not apply to LogAppendTime.
        let bounded = ProducePolicy {
            before_max_ms: Some(1),
            ..p
        };
        assert!(apply(&bounded, batch(5), NOW).is_ok());
    }

    #[test]
    fn create_time_bounds_refuse_batches_outside_them() {
        let p = ProducePolicy {
            before_max_ms: Some(1000),
            after_max_ms: Some(100),
            ..ProducePolicy::default()
        };
        assert!(apply(&p, batch(NOW - 1000), NOW).is_ok());
        assert!(apply(&p, batch(NOW + 95), NOW).is_ok(), "max is NOW + 100");
        for ts in [NOW - 1001, NOW + 96, 0] {
            assert!(
                matches!(
                    apply(&p, batch(ts), NOW),
                    Err(PartitionError::InvalidTimestamp(_))
                ),
                "{ts}"
            );
        }
    }

    #[test]
    fn a_corrupt_batch_is_not_given_a_fresh_crc() {
        let mut b = batch(NOW).to_vec();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        let r = apply(&policy(Some(4)), Bytes::from(b), NOW);
        assert!(matches!(r, Err(PartitionError::CorruptBatch(_))), "{r:?}");
        // A valid CRC over garbage compressed data: refused, not stored.
        let mut b = batch(NOW).to_vec();
        b[ATTRIBUTES_AT + 1] |= 1; // claims gzip
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        let r = apply(&policy(Some(4)), Bytes::from(b), NOW);
        assert!(matches!(r, Err(PartitionError::CorruptBatch(_))), "{r:?}");
    }
}
