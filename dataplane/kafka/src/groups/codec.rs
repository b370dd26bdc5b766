//! Keys and values of the group coordinator's log. Each record is one fact
//! about a group: a committed offset, or the group's membership after a
//! rebalance. A null value is a tombstone. The newest record of a key wins
//! when the log is replayed.
//!
//! Encoding: a kind byte (key) or version byte (value), then fixed-width
//! big-endian integers and length-prefixed strings and byte strings. The log
//! already checks a CRC over every batch; decoding still checks every length
//! so that a record from a newer version reads as an error, not a panic.

use bytes::Bytes;

const KEY_OFFSET: u8 = 1;
const KEY_GROUP: u8 = 2;
const VALUE_V1: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
}

impl Key {
    pub fn group(&self) -> &str {
        match self {
            Key::Offset { group, .. } | Key::Group { group } => group,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_ms: i64,
}

/// A group as persisted after each rebalance (and when it becomes Empty).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GroupValue {
    pub protocol_type: Option<String>,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// When the group entered its current state (wall clock, ms).
    pub state_since_ms: i64,
    pub members: Vec<MemberValue>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberValue {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the group's selected protocol.
    pub metadata: Bytes,
    pub assignment: Bytes,
}

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.i32(i32::try_from(v.len()).expect("record field over 2 GiB"));
        self.0.extend_from_slice(v);
    }
    fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    fn opt_str(&mut self, v: Option<&str>) {
        match v {
            Some(s) => self.str(s),
            None => self.i32(-1),
        }
    }
}

struct Dec<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| format!("record ends at byte {} of a {n}-byte field", self.b.len()))?;
        let out = &self.b[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn opt_bytes(&mut self) -> Result<Option<&'a [u8]>, String> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(None);
        }
        self.take(len as usize).map(Some)
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        self.opt_bytes()?
            .ok_or_else(|| "null where bytes are required".to_string())
    }
    fn opt_str(&mut self) -> Result<Option<String>, String> {
        match self.opt_bytes()? {
            None => Ok(None),
            Some(b) => String::from_utf8(b.to_vec())
                .map(Some)
                .map_err(|_| "string is not UTF-8".to_string()),
        }
    }
    fn str(&mut self) -> Result<String, String> {
        self.opt_str()?
            .ok_or_else(|| "null where a string is required".to_string())
    }
    fn done(&self) -> Result<(), String> {
        if self.at == self.b.len() {
            Ok(())
        } else {
            Err(format!("{} bytes after the record", self.b.len() - self.at))
        }
    }
}

pub fn encode_key(k: &Key) -> Vec<u8> {
    let mut e = Enc(Vec::with_capacity(64));
    match k {
        Key::Offset {
            group,
            topic,
            partition,
        } => {
            e.u8(KEY_OFFSET);
            e.str(group);
            e.str(topic);
            e.i32(*partition);
        }
        Key::Group { group } => {
            e.u8(KEY_GROUP);
            e.str(group);
        }
    }
    e.0
}

pub fn decode_key(b: &[u8]) -> Result<Key, String> {
    let mut d = Dec { b, at: 0 };
    let k = match d.u8()? {
        KEY_OFFSET => Key::Offset {
            group: d.str()?,
            topic: d.str()?,
            partition: d.i32()?,
        },
        KEY_GROUP => Key::Group { group: d.str()? },
        other => return Err(format!("unknown key kind {other}")),
    };
    d.done()?;
    Ok(k)
}

pub fn encode_offset(v: &OffsetValue) -> Vec<u8> {
    let mut e = Enc(Vec::with_capacity(32 + v.metadata.len()));
    e.u8(VALUE_V1);
    e.i64(v.offset);
    e.i32(v.leader_epoch);
    e.str(&v.metadata);
    e.i64(v.commit_ms);
    e.0
}

pub fn decode_offset(b: &[u8]) -> Result<OffsetValue, String> {
    let mut d = Dec { b, at: 0 };
    version(&mut d)?;
    let v = OffsetValue {
        offset: d.i64()?,
        leader_epoch: d.i32()?,
        metadata: d.str()?,
        commit_ms: d.i64()?,
    };
    d.done()?;
    Ok(v)
}

pub fn encode_group(v: &GroupValue) -> Vec<u8> {
    let mut e = Enc(Vec::with_capacity(128));
    e.u8(VALUE_V1);
    e.opt_str(v.protocol_type.as_deref());
    e.i32(v.generation);
    e.opt_str(v.protocol.as_deref());
    e.opt_str(v.leader.as_deref());
    e.i64(v.state_since_ms);
    e.i32(v.members.len() as i32);
    for m in &v.members {
        e.str(&m.id);
        e.opt_str(m.instance_id.as_deref());
        e.str(&m.client_id);
        e.str(&m.client_host);
        e.i32(m.rebalance_timeout_ms);
        e.i32(m.session_timeout_ms);
        e.bytes(&m.metadata);
        e.bytes(&m.assignment);
    }
    e.0
}

pub fn decode_group(b: &[u8]) -> Result<GroupValue, String> {
    let mut d = Dec { b, at: 0 };
    version(&mut d)?;
    let mut v = GroupValue {
        protocol_type: d.opt_str()?,
        generation: d.i32()?,
        protocol: d.opt_str()?,
        leader: d.opt_str()?,
        state_since_ms: d.i64()?,
        members: Vec::new(),
    };
    let n = d.i32()?;
    // Each member takes at least 32 bytes: a count past that is garbage.
    if n < 0 || n as usize > b.len() / 32 {
        return Err(format!("member count {n}"));
    }
    for _ in 0..n {
        v.members.push(MemberValue {
            id: d.str()?,
            instance_id: d.opt_str()?,
            client_id: d.str()?,
            client_host: d.str()?,
            rebalance_timeout_ms: d.i32()?,
            session_timeout_ms: d.i32()?,
            metadata: Bytes::copy_from_slice(d.bytes()?),
            assignment: Bytes::copy_from_slice(d.bytes()?),
        });
    }
    d.done()?;
    Ok(v)
}

fn version(d: &mut Dec<'_>) -> Result<(), String> {
    match d.u8()? {
        VALUE_V1 => Ok(()),
        other => Err(format!("unknown value version {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_and_values_round_trip() {
        for k in [
            Key::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 7,
            },
            Key::Group { group: "".into() },
        ] {
            assert_eq!(decode_key(&encode_key(&k)), Ok(k));
        }
        let o = OffsetValue {
            offset: 42,
            leader_epoch: -1,
            metadata: "m".into(),
            commit_ms: 1_700_000_000_000,
        };
        assert_eq!(decode_offset(&encode_offset(&o)), Ok(o));
        let g = GroupValue {
            protocol_type: Some("consumer".into()),
            generation: 3,
            protocol: Some("range".into()),
            leader: Some("a".into()),
            state_since_ms: 5,
            members: vec![MemberValue {
                id: "a".into(),
                instance_id: Some("i".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300_000,
                session_timeout_ms: 45_000,
                metadata: Bytes::from_static(b"\x00\x01"),
                assignment: Bytes::new(),
            }],
        };
        assert_eq!(decode_group(&encode_group(&g)), Ok(g));
    }

    #[test]
    fn truncated_or_padded_records_are_errors() {
        let k = encode_key(&Key::Group { group: "grp".into() });
        for cut in 0..k.len() {
            assert!(decode_key(&k[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = k.clone();
        long.push(0);
        assert!(decode_key(&long).is_err());
        assert!(decode_offset(&[9]).is_err(), "unknown version");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_key(&b);
            let _ = decode_offset(&b);
            let _ = decode_group(&b);
        }
    }
}
