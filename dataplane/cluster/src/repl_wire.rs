//! Replication messages on the data transport: each message is one
//! transport frame whose header extension carries the message's fields
//! (fixed-width, big-endian) and whose payload carries the record batches
//! of an append request exactly as stored (never re-encoded).
//!
//! Extension layouts (version 1 of the transport frame):
//!
//! - [`KIND_APPEND`]: topic id u128 | partition i32 | epoch i32 | leader i32
//!   | has_prev u8 | prev offset i64 | prev epoch i32 | start i64 | end i64
//!   | leader_hw i64 | runs u8 | runs x (start i64, epoch i32). At most
//!   [`RUNS_MAX`] epoch runs fit: the sender cuts a request at a run start
//!   to stay within it.
//! - [`KIND_RESPONSE`]: topic id u128 | partition i32 | epoch i32 | from i32
//!   | tag u8 (0 accepted, 1 mismatch, 2 fenced) | a i64 | b i64 | has_hint
//!   u8 | hint epoch i32 | hint end i64. Accepted: a = matched end, b =
//!   durable end. Mismatch: the hint fields.
//!
//! Decoding checks lengths and tags and returns an error for anything else;
//! the replica state machine checks the meaning (`well_formed`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferrolog_model::{Epoch, NodeId, Offset};
use ferrolog_replication::{
    AppendRequest, AppendResponse, AppendResult, EntryId, EpochEnd, EpochStart, Message,
};

pub const KIND_APPEND: u8 = 1;
pub const KIND_RESPONSE: u8 = 2;
/// Epoch runs one append request may carry in its 256-byte extension.
pub const RUNS_MAX: usize = 15;

const APPEND_FIXED: usize = 16 + 4 + 4 + 4 + 1 + 8 + 4 + 8 + 8 + 8 + 1;
const RUN_BYTES: usize = 12;
const RESPONSE_BYTES: usize = 16 + 4 + 4 + 4 + 1 + 8 + 8 + 1 + 4 + 8;

/// Which partition a message is about: the topic's id and the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PartitionKey {
    pub topic_id: u128,
    pub partition: i32,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unknown replication message kind {0}")]
    UnknownKind(u8),
    #[error("replication message extension of {got} bytes, expected {want}")]
    Length { got: usize, want: usize },
    #[error("an append request with {0} epoch runs (at most {RUNS_MAX})")]
    TooManyRuns(usize),
    #[error("bad flag or tag byte {0}")]
    BadTag(u8),
    #[error("a response with a payload of {0} bytes")]
    ResponsePayload(usize),
}

/// The frame kind and extension of `message` (its payload, for an append
/// request, is the batches of `[start, end)`).
pub fn encode(key: PartitionKey, message: &Message) -> Result<(u8, Bytes), WireError> {
    match message {
        Message::Append(r) => {
            if r.epochs.len() > RUNS_MAX {
                return Err(WireError::TooManyRuns(r.epochs.len()));
            }
            let mut b = BytesMut::with_capacity(APPEND_FIXED + RUN_BYTES * r.epochs.len());
            put_key(&mut b, key);
            b.put_i32(r.epoch.0);
            b.put_i32(r.leader.0);
            match r.prev {
                Some(p) => {
                    b.put_u8(1);
                    b.put_i64(p.offset.0);
                    b.put_i32(p.epoch.0);
                }
                None => {
                    b.put_u8(0);
                    b.put_i64(0);
                    b.put_i32(0);
                }
            }
            b.put_i64(r.start.0);
            b.put_i64(r.end.0);
            b.put_i64(r.leader_hw.0);
            b.put_u8(r.epochs.len() as u8);
            for run in &r.epochs {
                b.put_i64(run.start.0);
                b.put_i32(run.epoch.0);
            }
            Ok((KIND_APPEND, b.freeze()))
        }
        Message::Response(r) => {
            let mut b = BytesMut::with_capacity(RESPONSE_BYTES);
            put_key(&mut b, key);
            b.put_i32(r.epoch.0);
            b.put_i32(r.from.0);
            let (tag, a, c, hint) = match r.result {
                AppendResult::Accepted {
                    matched_end,
                    durable_end,
                } => (0, matched_end.0, durable_end.0, None),
                AppendResult::Mismatch { hint } => (1, 0, 0, hint),
                AppendResult::Fenced => (2, 0, 0, None),
            };
            b.put_u8(tag);
            b.put_i64(a);
            b.put_i64(c);
            match hint {
                Some(h) => {
                    b.put_u8(1);
                    b.put_i32(h.epoch.0);
                    b.put_i64(h.end.0);
                }
                None => {
                    b.put_u8(0);
                    b.put_i32(0);
                    b.put_i64(0);
                }
            }
            Ok((KIND_RESPONSE, b.freeze()))
        }
    }
}

/// The partition and message of a frame's kind and extension.
pub fn decode(kind: u8, ext: &[u8]) -> Result<(PartitionKey, Message), WireError> {
    let mut b = ext;
    match kind {
        KIND_APPEND => {
            if b.len() < APPEND_FIXED {
                return Err(WireError::Length {
                    got: b.len(),
                    want: APPEND_FIXED,
                });
            }
            let key = get_key(&mut b);
            let epoch = Epoch(b.get_i32());
            let leader = NodeId(b.get_i32());
            let has_prev = flag(b.get_u8())?;
            let prev = EntryId {
                offset: Offset(b.get_i64()),
                epoch: Epoch(b.get_i32()),
            };
            let start = Offset(b.get_i64());
            let end = Offset(b.get_i64());
            let leader_hw = Offset(b.get_i64());
            let runs = usize::from(b.get_u8());
            if runs > RUNS_MAX {
                return Err(WireError::TooManyRuns(runs));
            }
            let want = APPEND_FIXED + RUN_BYTES * runs;
            if ext.len() != want {
                return Err(WireError::Length { got: ext.len(), want });
            }
            let epochs = (0..runs)
                .map(|_| EpochStart {
                    start: Offset(b.get_i64()),
                    epoch: Epoch(b.get_i32()),
                })
                .collect();
            let req = AppendRequest {
                epoch,
                leader,
                prev: has_prev.then_some(prev),
                start,
                end,
                epochs,
                leader_hw,
            };
            Ok((key, Message::Append(req)))
        }
        KIND_RESPONSE => {
            if b.len() != RESPONSE_BYTES {
                return Err(WireError::Length {
                    got: b.len(),
                    want: RESPONSE_BYTES,
                });
            }
            let key = get_key(&mut b);
            let epoch = Epoch(b.get_i32());
            let from = NodeId(b.get_i32());
            let tag = b.get_u8();
            let a = Offset(b.get_i64());
            let c = Offset(b.get_i64());
            let has_hint = flag(b.get_u8())?;
            let hint = EpochEnd {
                epoch: Epoch(b.get_i32()),
                end: Offset(b.get_i64()),
            };
            let result = match tag {
                0 => AppendResult::Accepted {
                    matched_end: a,
                    durable_end: c,
                },
                1 => AppendResult::Mismatch {
                    hint: has_hint.then_some(hint),
                },
                2 => AppendResult::Fenced,
                other => return Err(WireError::BadTag(other)),
            };
            Ok((key, Message::Response(AppendResponse { epoch, from, result })))
        }
        other => Err(WireError::UnknownKind(other)),
    }
}

fn put_key(b: &mut BytesMut, key: PartitionKey) {
    b.put_u128(key.topic_id);
    b.put_i32(key.partition);
}

fn get_key(b: &mut &[u8]) -> PartitionKey {
    PartitionKey {
        topic_id: b.get_u128(),
        partition: b.get_i32(),
    }
}

fn flag(v: u8) -> Result<bool, WireError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(WireError::BadTag(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: PartitionKey = PartitionKey {
        topic_id: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        partition: 7,
    };

    fn append(runs: usize) -> Message {
        Message::Append(AppendRequest {
            epoch: Epoch(9),
            leader: NodeId(2),
            prev: Some(EntryId {
                offset: Offset(99),
                epoch: Epoch(3),
            }),
            start: Offset(100),
            end: Offset(100 + runs as i64),
            epochs: (0..runs)
                .map(|i| EpochStart {
                    start: Offset(100 + i as i64),
                    epoch: Epoch(4 + i as i32),
                })
                .collect(),
            leader_hw: Offset(42),
        })
    }

    #[test]
    fn messages_round_trip() {
        let responses = [
            AppendResult::Accepted {
                matched_end: Offset(10),
                durable_end: Offset(8),
            },
            AppendResult::Mismatch { hint: None },
            AppendResult::Mismatch {
                hint: Some(EpochEnd {
                    epoch: Epoch(3),
                    end: Offset(77),
                }),
            },
            AppendResult::Fenced,
        ];
        let mut all: Vec<Message> = (0..=RUNS_MAX).map(append).collect();
        all.push(Message::Append(AppendRequest {
            epoch: Epoch(0),
            leader: NodeId(1),
            prev: None,
            start: Offset(0),
            end: Offset(0),
            epochs: vec![],
            leader_hw: Offset(0),
        }));
        all.extend(responses.iter().map(|&result| {
            Message::Response(AppendResponse {
                epoch: Epoch(5),
                from: NodeId(3),
                result,
            })
        }));
        for m in all {
            let (kind, ext) = encode(KEY, &m).expect("encodes");
            assert!(
                ext.len() <= ferrolog_transport::EXT_BYTES_MAX,
                "{} bytes",
                ext.len()
            );
            assert_eq!(decode(kind, &ext), Ok((KEY, m)));
        }
    }

    #[test]
    fn bad_extensions_are_errors_not_panics() {
        assert_eq!(
            encode(KEY, &append(RUNS_MAX + 1)),
            Err(WireError::TooManyRuns(RUNS_MAX + 1))
        );
        let (kind, ext) = encode(KEY, &append(3)).expect("encodes");
        for cut in 0..ext.len() {
            assert!(decode(kind, &ext[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = ext.to_vec();
        longer.push(0);
        assert!(decode(kind, &longer).is_err());
        assert_eq!(decode(9, &ext), Err(WireError::UnknownKind(9)));
        let mut bad_flag = ext.to_vec();
        bad_flag[28] = 7;
        assert_eq!(decode(kind, &bad_flag), Err(WireError::BadTag(7)));
        let (rk, rext) = encode(
            KEY,
            &Message::Response(AppendResponse {
                epoch: Epoch(1),
                from: NodeId(1),
                result: AppendResult::Fenced,
            }),
        )
        .expect("encodes");
        let mut bad_tag = rext.to_vec();
        bad_tag[28] = 3;
        assert_eq!(decode(rk, &bad_tag), Err(WireError::BadTag(3)));
        // Every byte flipped: decodes to something or errors, never panics.
        for i in 0..ext.len() {
            let mut m = ext.to_vec();
            m[i] ^= 0xff;
            let _ = decode(kind, &m);
        }
    }
}
