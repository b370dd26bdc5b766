//! Topic metadata: names, per-topic configs, the topic table and its file.
//!
//! Pure data plus one synchronous persistence routine. The authoritative table
//! lives on the controller shard (shard 0); every shard holds an immutable
//! `Arc` snapshot that the controller replaces after each change.

use ferrolog_model::Ntp;
use ferrolog_storage::{Durability, LogConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Kafka's limit on topic name length.
pub const TOPIC_NAME_MAX_CHARS: usize = 249;
/// Partitions one topic may have on this node.
pub const PARTITIONS_MAX: i32 = 4096;
/// The file in the data directory that holds the topic table.
pub const TOPICS_FILE: &str = "topics.toml";

pub const RETENTION_MS: &str = "retention.ms";
pub const RETENTION_BYTES: &str = "retention.bytes";
pub const SEGMENT_BYTES: &str = "segment.bytes";
pub const SEGMENT_MS: &str = "segment.ms";
pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";
pub const CLEANUP_POLICY: &str = "cleanup.policy";
pub const DURABILITY: &str = "ferrolog.durability";

/// Every topic config this broker knows, in the order DescribeConfigs lists them.
pub const CONFIG_KEYS: [&str; 7] = [
    CLEANUP_POLICY,
    DURABILITY,
    MAX_MESSAGE_BYTES,
    RETENTION_BYTES,
    RETENTION_MS,
    SEGMENT_BYTES,
    SEGMENT_MS,
];

/// Kafka's default max.message.bytes (1 MiB plus record batch overhead).
pub const DEFAULT_MAX_MESSAGE_BYTES: i32 = 1_048_588;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("invalid topic name {0:?}: {1}")]
    InvalidName(String, &'static str),
    #[error("invalid value {value:?} for config {key}: {reason}")]
    InvalidConfig {
        key: String,
        value: String,
        reason: &'static str,
    },
    #[error("unknown topic config {0:?}")]
    UnknownConfig(String),
}

/// Kafka's rules: 1..=249 characters of `[a-zA-Z0-9._-]`, not "." or "..".
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    let bad = |why| Err(TopicError::InvalidName(name.to_string(), why));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > TOPIC_NAME_MAX_CHARS {
        return bad("longer than 249 characters");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Node-wide defaults a topic's config falls back to (from the profile).
#[derive(Clone, Debug)]
pub struct TopicDefaults {
    pub log: LogConfig,
    pub max_message_bytes: i32,
}

/// A topic's explicitly set configs; everything else is the node default.
/// Values are validated before they get here.
pub type ConfigOverrides = BTreeMap<String, String>;

/// Checks one config key and value.
pub fn validate_config(key: &str, value: &str) -> Result<(), TopicError> {
    let invalid = |reason| {
        Err(TopicError::InvalidConfig {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        })
    };
    let int = value.trim().parse::<i64>();
    match key {
        RETENTION_MS | RETENTION_BYTES => match int {
            Ok(v) if v >= -1 => Ok(()),
            _ => invalid("expected an integer >= -1 (-1 = unlimited)"),
        },
        SEGMENT_BYTES => match int {
            Ok(v) if (4096..=i64::from(i32::MAX)).contains(&v) => Ok(()),
            _ => invalid("expected an integer in [4096, 2147483647]"),
        },
        SEGMENT_MS => match int {
            Ok(v) if v >= 1 => Ok(()),
            _ => invalid("expected an integer >= 1"),
        },
        MAX_MESSAGE_BYTES => match int {
            Ok(v) if (1..=i64::from(i32::MAX)).contains(&v) => Ok(()),
            _ => invalid("expected an integer in [1, 2147483647]"),
        },
        CLEANUP_POLICY => match value {
            "delete" => Ok(()),
            _ => invalid("only \"delete\" is supported (no compaction)"),
        },
        DURABILITY => match value.parse::<Durability>() {
            Ok(_) => Ok(()),
            Err(_) => invalid("expected \"fsync\" or \"direct\""),
        },
        _ => Err(TopicError::UnknownConfig(key.to_string())),
    }
}

/// The value a topic has for `key`: its override, else the node default.
/// Returns `(value, is_override)`.
pub fn effective(overrides: &ConfigOverrides, defaults: &TopicDefaults, key: &str) -> Option<(String, bool)> {
    if let Some(v) = overrides.get(key) {
        return Some((v.clone(), true));
    }
    let opt = |v: Option<u64>| v.map_or(-1, |v| v as i64).to_string();
    let d = &defaults.log;
    let v = match key {
        RETENTION_MS => opt(d.retention_ms),
        RETENTION_BYTES => opt(d.retention_bytes),
        SEGMENT_BYTES => d.segment_bytes.to_string(),
        SEGMENT_MS => d.segment_ms.to_string(),
        MAX_MESSAGE_BYTES => defaults.max_message_bytes.to_string(),
        CLEANUP_POLICY => "delete".to_string(),
        DURABILITY => d.durability.to_string(),
        _ => return None,
    };
    Some((v, false))
}

/// The storage settings of a topic's partitions.
pub fn log_config(overrides: &ConfigOverrides, defaults: &TopicDefaults) -> LogConfig {
    let mut c = defaults.log.clone();
    let num = |k: &str| overrides.get(k).and_then(|v| v.trim().parse::<i64>().ok());
    let limit = |v: i64| (v >= 0).then_some(v as u64);
    if let Some(v) = num(RETENTION_MS) {
        c.retention_ms = limit(v);
    }
    if let Some(v) = num(RETENTION_BYTES) {
        c.retention_bytes = limit(v);
    }
    if let Some(v) = num(SEGMENT_BYTES) {
        c.segment_bytes = v as u64;
    }
    if let Some(v) = num(SEGMENT_MS) {
        c.segment_ms = v as u64;
    }
    let max_message = num(MAX_MESSAGE_BYTES).unwrap_or(i64::from(defaults.max_message_bytes));
    c.max_batch_bytes = max_message as usize;
    if let Some(d) = overrides.get(DURABILITY).and_then(|v| v.parse().ok()) {
        c.durability = d;
    }
    c
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// Kafka topic id (a UUID), fixed at creation. Hex in the file: TOML
    /// integers are 64-bit.
    #[serde(with = "hex_id")]
    pub id: u128,
    pub partitions: i32,
    #[serde(default)]
    pub config: ConfigOverrides,
}

mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{id:032x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text = String::deserialize(d)?;
        u128::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

/// Every topic of the node, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicTable {
    #[serde(default)]
    pub topics: BTreeMap<String, TopicMeta>,
}

impl TopicTable {
    pub fn get(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    pub fn by_id(&self, id: u128) -> Option<(&String, &TopicMeta)> {
        self.topics.iter().find(|(_, t)| t.id == id)
    }

    pub fn contains(&self, ntp: &Ntp) -> bool {
        self.get(&ntp.topic)
            .is_some_and(|t| (0..t.partitions).contains(&ntp.partition.0))
    }

    /// Reads the table; a missing file is `Ok(None)`.
    pub fn load(data_dir: &Path) -> Result<Option<TopicTable>, String> {
        let path = data_dir.join(TOPICS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let table: TopicTable = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for (name, t) in &table.topics {
            validate_name(name).map_err(|e| format!("{}: {e}", path.display()))?;
            if !(1..=PARTITIONS_MAX).contains(&t.partitions) {
                return Err(format!(
                    "{}: topic {name}: bad partition count {}",
                    path.display(),
                    t.partitions
                ));
            }
            for (k, v) in &t.config {
                validate_config(k, v).map_err(|e| format!("{}: topic {name}: {e}", path.display()))?;
            }
        }
        Ok(Some(table))
    }

    /// Replaces the file atomically and durably: write a temporary file, sync
    /// it, rename it over the old one, sync the directory.
    pub fn store(&self, data_dir: &Path) -> std::io::Result<()> {
        let text = toml::to_string(self).map_err(std::io::Error::other)?;
        let tmp = data_dir.join(format!("{TOPICS_FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, data_dir.join(TOPICS_FILE))?;
        std::fs::File::open(data_dir)?.sync_all()
    }
}

/// A fresh random topic id (version 4 UUID bits) from the kernel's generator.
pub fn new_topic_id() -> u128 {
    let mut b = [0u8; 16];
    // SAFETY: the buffer is valid for 16 bytes; getrandom only writes into it.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    assert_eq!(n, 16, "getrandom failed: {}", std::io::Error::last_os_error());
    let mut id = u128::from_be_bytes(b);
    id = (id & !(0xf << 76)) | (0x4 << 76); // version 4
    id = (id & !(0x3 << 62)) | (0x2 << 62); // RFC 4122 variant
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> TopicDefaults {
        TopicDefaults {
            log: LogConfig::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    #[test]
    fn names() {
        for ok in ["a", "orders", "my_topic.v2-x", &"x".repeat(249)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "bad/name", "spa ce", "ü", &"x".repeat(250)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn config_values() {
        assert!(validate_config(RETENTION_MS, "-1").is_ok());
        assert!(validate_config(RETENTION_MS, "-2").is_err());
        assert!(validate_config(RETENTION_MS, "abc").is_err());
        assert!(validate_config(SEGMENT_BYTES, "4095").is_err());
        assert!(validate_config(SEGMENT_BYTES, "1048576").is_ok());
        assert!(validate_config(CLEANUP_POLICY, "compact").is_err());
        assert!(validate_config(DURABILITY, "direct").is_ok());
        assert!(validate_config(DURABILITY, "sometimes").is_err());
        assert_eq!(
            validate_config("min.insync.replicas", "1"),
            Err(TopicError::UnknownConfig("min.insync.replicas".into()))
        );
    }

    #[test]
    fn overrides_shape_the_log_config() {
        let d = defaults();
        let mut o = ConfigOverrides::new();
        assert_eq!(log_config(&o, &d).retention_ms, d.log.retention_ms);
        o.insert(RETENTION_MS.into(), "-1".into());
        o.insert(RETENTION_BYTES.into(), "1000".into());
        o.insert(SEGMENT_BYTES.into(), "8192".into());
        o.insert(MAX_MESSAGE_BYTES.into(), "500".into());
        o.insert(DURABILITY.into(), "direct".into());
        let c = log_config(&o, &d);
        assert_eq!(c.retention_ms, None);
        assert_eq!(c.retention_bytes, Some(1000));
        assert_eq!(c.segment_bytes, 8192);
        assert_eq!(c.max_batch_bytes, 500);
        assert_eq!(c.durability, Durability::Direct);
        assert_eq!(effective(&o, &d, RETENTION_MS), Some(("-1".into(), true)));
        assert_eq!(
            effective(&o, &d, SEGMENT_MS),
            Some((d.log.segment_ms.to_string(), false))
        );
        assert_eq!(effective(&o, &d, "nope"), None);
    }

    #[test]
    fn table_round_trips_through_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(TopicTable::load(dir.path()), Ok(None));
        let mut t = TopicTable::default();
        let mut config = ConfigOverrides::new();
        config.insert(RETENTION_MS.into(), "1000".into());
        t.topics.insert(
            "orders".into(),
            TopicMeta {
                id: new_topic_id(),
                partitions: 3,
                config,
            },
        );
        t.store(dir.path()).expect("store");
        assert_eq!(TopicTable::load(dir.path()), Ok(Some(t.clone())));
        assert!(t.contains(&Ntp::new("orders", 2)));
        assert!(!t.contains(&Ntp::new("orders", 3)));
        std::fs::write(dir.path().join(TOPICS_FILE), "topics = 7").expect("write");
        assert!(TopicTable::load(dir.path()).is_err());
    }

    #[test]
    fn topic_ids_are_v4_uuids_and_differ() {
        let a = new_topic_id();
        assert_ne!(a, new_topic_id());
        assert_eq!((a >> 76) & 0xf, 4);
        assert_eq!((a >> 62) & 0x3, 2);
    }
}
