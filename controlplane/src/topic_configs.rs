//! Kafka's standard topic configs beyond the ones `topics` has always had:
//! their types, ranges and defaults (as Kafka's documentation lists them),
//! whether this broker enforces them, and the produce-time policy the
//! enforced ones make up.
//!
//! Pure data and validation; no I/O. The compaction configs
//! (`cleanup.policy` compact, `delete.retention.ms`,
//! `min.cleanable.dirty.ratio`, `min.compaction.lag.ms`,
//! `max.compaction.lag.ms`) are not here: `topics` owns them (its
//! `CONFIG_KEYS` and `validate_config`), beside the storage settings they
//! map to, so every config name is defined exactly once.

use crate::topics::{ConfigOverrides, TopicError};

pub const COMPRESSION_TYPE: &str = "compression.type";
pub const MESSAGE_TIMESTAMP_TYPE: &str = "message.timestamp.type";
pub const MESSAGE_TIMESTAMP_DIFFERENCE_MAX_MS: &str = "message.timestamp.difference.max.ms";
pub const MESSAGE_TIMESTAMP_BEFORE_MAX_MS: &str = "message.timestamp.before.max.ms";
pub const MESSAGE_TIMESTAMP_AFTER_MAX_MS: &str = "message.timestamp.after.max.ms";
pub const INDEX_INTERVAL_BYTES: &str = "index.interval.bytes";
pub const REMOTE_STORAGE_ENABLE: &str = "remote.storage.enable";

/// A config's value type, as Kafka checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A 32-bit integer in the range.
    Int(i64, i64),
    /// A 64-bit integer in the range.
    Long(i64, i64),
    /// `-1` or an integer in the range (gzip's level).
    IntOrMinusOne(i64, i64),
    Boolean,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// A comma-separated list of `partition:broker` pairs, or `*`, or empty
    /// (the replication throttle lists).
    ThrottledReplicas,
    /// Any string (a deprecated format version).
    Text,
}

/// One config: name, type, Kafka's default, and whether the broker acts on
/// it (else it is validated, stored and described only).
#[derive(Clone, Copy, Debug)]
pub struct ConfigDef {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub enforced: bool,
    pub doc: &'static str,
}

const LONG_MAX: i64 = i64::MAX;
const INT_MAX: i64 = i32::MAX as i64;

/// Kafka's codec names for `compression.type`.
pub const COMPRESSION_TYPES: [&str; 6] = ["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"];

/// The standard topic configs this module owns, sorted by name.
pub const DEFS: [ConfigDef; 25] = [
    def(
        "compression.gzip.level",
        Kind::IntOrMinusOne(1, 9),
        "-1",
        false,
        "gzip level when the broker recompresses; accepted only (the codec's default level is used).",
    ),
    def(
        "compression.lz4.level",
        Kind::Int(1, 17),
        "9",
        false,
        "lz4 level when the broker recompresses; accepted only (the codec's default level is used).",
    ),
    def(
        COMPRESSION_TYPE,
        Kind::Choice(&COMPRESSION_TYPES),
        "producer",
        true,
        "The topic's codec: producer keeps batches as sent; any other codec recompresses batches that differ.",
    ),
    def(
        "compression.zstd.level",
        Kind::Int(-131072, 22),
        "3",
        false,
        "zstd level when the broker recompresses; accepted only (the codec's default level is used).",
    ),
    def(
        "file.delete.delay.ms",
        Kind::Long(0, LONG_MAX),
        "60000",
        false,
        "Accepted only: segments are deleted at once.",
    ),
    def(
        "flush.messages",
        Kind::Long(1, LONG_MAX),
        "9223372036854775807",
        false,
        "Accepted only: every acknowledged batch is durable per ferrolog.durability.",
    ),
    def(
        "flush.ms",
        Kind::Long(0, LONG_MAX),
        "9223372036854775807",
        false,
        "Accepted only: every acknowledged batch is durable per ferrolog.durability.",
    ),
    def(
        "follower.replication.throttled.replicas",
        Kind::ThrottledReplicas,
        "",
        false,
        "Accepted only: replication is not throttled.",
    ),
    def(
        INDEX_INTERVAL_BYTES,
        Kind::Int(0, INT_MAX),
        "4096",
        true,
        "Bytes of batches between offset/time index entries.",
    ),
    def(
        "leader.replication.throttled.replicas",
        Kind::ThrottledReplicas,
        "",
        false,
        "Accepted only: replication is not throttled.",
    ),
    def(
        "local.retention.bytes",
        Kind::Long(-2, LONG_MAX),
        "-2",
        false,
        "Accepted only: there is no tiered storage.",
    ),
    def(
        "local.retention.ms",
        Kind::Long(-2, LONG_MAX),
        "-2",
        false,
        "Accepted only: there is no tiered storage.",
    ),
    def(
        "message.downconversion.enable",
        Kind::Boolean,
        "true",
        false,
        "Accepted only: only magic 2 batches are produced and fetched.",
    ),
    def(
        "message.format.version",
        Kind::Text,
        "3.0-IV1",
        false,
        "Accepted only (deprecated by Kafka): batches are always magic 2.",
    ),
    def(
        MESSAGE_TIMESTAMP_AFTER_MAX_MS,
        Kind::Long(0, LONG_MAX),
        "9223372036854775807",
        true,
        "CreateTime batches may be at most this far ahead of the broker's clock (INVALID_TIMESTAMP).",
    ),
    def(
        MESSAGE_TIMESTAMP_BEFORE_MAX_MS,
        Kind::Long(0, LONG_MAX),
        "9223372036854775807",
        true,
        "CreateTime batches may be at most this far behind the broker's clock (INVALID_TIMESTAMP).",
    ),
    def(
        MESSAGE_TIMESTAMP_DIFFERENCE_MAX_MS,
        Kind::Long(0, LONG_MAX),
        "9223372036854775807",
        true,
        "CreateTime batches may differ at most this much from the broker's clock (INVALID_TIMESTAMP).",
    ),
    def(
        MESSAGE_TIMESTAMP_TYPE,
        Kind::Choice(&["CreateTime", "LogAppendTime"]),
        "CreateTime",
        true,
        "LogAppendTime stamps each batch with the broker's append time.",
    ),
    def(
        "preallocate",
        Kind::Boolean,
        "false",
        false,
        "Accepted only: segments grow as written.",
    ),
    def(
        "remote.log.copy.disable",
        Kind::Boolean,
        "false",
        false,
        "Accepted only: there is no tiered storage.",
    ),
    def(
        "remote.log.delete.on.disable",
        Kind::Boolean,
        "false",
        false,
        "Accepted only: there is no tiered storage.",
    ),
    def(
        REMOTE_STORAGE_ENABLE,
        Kind::Boolean,
        "false",
        true,
        "Tiered storage; only false: this broker has none.",
    ),
    def(
        "segment.index.bytes",
        Kind::Int(4, INT_MAX),
        "10485760",
        false,
        "Accepted only: the index grows with its segment.",
    ),
    def(
        "segment.jitter.ms",
        Kind::Long(0, LONG_MAX),
        "0",
        false,
        "Accepted only: segments roll at segment.ms exactly.",
    ),
    def(
        "unclean.leader.election.enable",
        Kind::Boolean,
        "false",
        false,
        "Accepted only: leaders are elected from a majority of the replica set, never uncleanly.",
    ),
];

const fn def(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    enforced: bool,
    doc: &'static str,
) -> ConfigDef {
    ConfigDef {
        name,
        kind,
        default,
        enforced,
        doc,
    }
}

/// Every topic config name DescribeConfigs lists: `topics::CONFIG_KEYS`
/// first, then this module's.
pub fn all_names() -> impl Iterator<Item = &'static str> {
    crate::topics::CONFIG_KEYS
        .iter()
        .copied()
        .chain(DEFS.iter().map(|d| d.name))
}

/// The definition of `key`, if this module owns it.
pub fn find(key: &str) -> Option<&'static ConfigDef> {
    DEFS.iter().find(|d| d.name == key)
}

/// Checks `value` for `key`. `Ok(false)` when this module does not own the
/// key (the caller reports it unknown).
pub fn validate(key: &str, value: &str) -> Result<bool, TopicError> {
    let Some(d) = find(key) else {
        return Ok(false);
    };
    let invalid = |reason| {
        Err(TopicError::InvalidConfig {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        })
    };
    let int = value.trim().parse::<i64>();
    let ok = match d.kind {
        Kind::Int(lo, hi) | Kind::Long(lo, hi) => match int {
            Ok(v) if (lo..=hi).contains(&v) => true,
            _ => return invalid(range_text(d)),
        },
        Kind::IntOrMinusOne(lo, hi) => match int {
            Ok(v) if v == -1 || (lo..=hi).contains(&v) => true,
            _ => return invalid("expected -1 or an integer in [1, 9]"),
        },
        Kind::Boolean => match value.trim().to_ascii_lowercase().as_str() {
            "true" | "false" => true,
            _ => return invalid("expected true or false"),
        },
        Kind::Choice(words) => {
            if !words.contains(&value.trim()) {
                return invalid(choice_text(d));
            }
            true
        }
        Kind::ThrottledReplicas => {
            if !throttled_replicas_ok(value) {
                return invalid("expected '*' or a comma-separated list of partition:broker pairs");
            }
            true
        }
        Kind::Text => true,
    };
    if key == REMOTE_STORAGE_ENABLE && value.trim().eq_ignore_ascii_case("true") {
        return invalid("tiered storage is not available on this broker");
    }
    Ok(ok)
}

fn range_text(d: &ConfigDef) -> &'static str {
    match d.kind {
        Kind::Long(0, LONG_MAX) => "expected an integer >= 0",
        Kind::Long(1, LONG_MAX) => "expected an integer >= 1",
        Kind::Long(-2, LONG_MAX) => "expected an integer >= -2 (-2 = use the retention config)",
        Kind::Int(0, INT_MAX) => "expected an integer in [0, 2147483647]",
        Kind::Int(4, INT_MAX) => "expected an integer in [4, 2147483647]",
        Kind::Int(1, 17) => "expected an integer in [1, 17]",
        Kind::Int(-131072, 22) => "expected an integer in [-131072, 22]",
        _ => "integer out of range",
    }
}

fn choice_text(d: &ConfigDef) -> &'static str {
    match d.name {
        COMPRESSION_TYPE => "expected one of producer, uncompressed, gzip, snappy, lz4, zstd",
        MESSAGE_TIMESTAMP_TYPE => "expected CreateTime or LogAppendTime",
        _ => "not one of the allowed values",
    }
}

fn throttled_replicas_ok(value: &str) -> bool {
    let v = value.trim();
    if v.is_empty() || v == "*" {
        return true;
    }
    v.split(',').all(|pair| {
        let mut it = pair.trim().split(':');
        let (Some(p), Some(b), None) = (it.next(), it.next(), it.next()) else {
            return false;
        };
        p.trim().parse::<u32>().is_ok() && b.trim().parse::<u32>().is_ok()
    })
}

/// The value of `key` for a topic without an override: Kafka's default.
pub fn default_of(key: &str) -> Option<String> {
    find(key).map(|d| d.default.to_string())
}

/// A topic's codec for stored batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicCompression {
    /// Batches are stored as the producer sent them (the zero-copy path).
    Producer,
    /// Batches are stored with this codec: Kafka's attribute code
    /// (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    Codec(i16),
}

/// What the enforced produce-time configs ask of a partition's leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducePolicy {
    pub compression: TopicCompression,
    /// LogAppendTime: the broker stamps each batch with its append time.
    pub log_append_time: bool,
    /// How far a CreateTime batch's timestamps may be behind (before) or
    /// ahead of (after) the broker's clock, in ms; None = no bound.
    pub before_max_ms: Option<u64>,
    pub after_max_ms: Option<u64>,
}

impl Default for ProducePolicy {
    fn default() -> Self {
        ProducePolicy {
            compression: TopicCompression::Producer,
            log_append_time: false,
            before_max_ms: None,
            after_max_ms: None,
        }
    }
}

impl ProducePolicy {
    /// Whether batches go to the log exactly as the producer sent them.
    pub fn is_passthrough(&self) -> bool {
        *self == ProducePolicy::default()
    }
}

/// The produce policy of a topic's overrides. Values were validated when set;
/// one that does not parse falls back to Kafka's default.
pub fn produce_policy(overrides: &ConfigOverrides) -> ProducePolicy {
    let bound = |k: &str| {
        overrides
            .get(k)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|v| (0..LONG_MAX).contains(v))
            .map(|v| v as u64)
    };
    let compression = match overrides.get(COMPRESSION_TYPE).map(|v| v.trim()) {
        Some("uncompressed") => TopicCompression::Codec(0),
        Some("gzip") => TopicCompression::Codec(1),
        Some("snappy") => TopicCompression::Codec(2),
        Some("lz4") => TopicCompression::Codec(3),
        Some("zstd") => TopicCompression::Codec(4),
        _ => TopicCompression::Producer,
    };
    // The deprecated difference bound applies both ways; the newer bounds
    // take precedence where set, as in Kafka.
    let difference = bound(MESSAGE_TIMESTAMP_DIFFERENCE_MAX_MS);
    let explicit_or = |k: &str, other: Option<u64>| {
        if overrides.contains_key(k) {
            bound(k)
        } else {
            other
        }
    };
    ProducePolicy {
        compression,
        log_append_time: overrides
            .get(MESSAGE_TIMESTAMP_TYPE)
            .is_some_and(|v| v.trim() == "LogAppendTime"),
        before_max_ms: explicit_or(MESSAGE_TIMESTAMP_BEFORE_MAX_MS, difference),
        after_max_ms: explicit_or(MESSAGE_TIMESTAMP_AFTER_MAX_MS, difference),
    }
}

/// The topic's `index.interval.bytes`, if set.
pub fn index_interval_bytes(overrides: &ConfigOverrides) -> Option<u32> {
    overrides
        .get(INDEX_INTERVAL_BYTES)
        .and_then(|v| v.trim().parse::<u32>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_are_sorted_and_unique() {
        for w in DEFS.windows(2) {
            assert!(w[0].name < w[1].name, "{} before {}", w[0].name, w[1].name);
        }
        for d in &DEFS {
            assert_eq!(validate(d.name, d.default), Ok(true), "default of {}", d.name);
        }
    }

    #[test]
    fn every_config_is_defined_once() {
        let names: Vec<&str> = all_names().collect();
        let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len(), "a config defined twice: {names:?}");
        for key in crate::topics::CONFIG_KEYS {
            assert!(find(key).is_none(), "{key} is in topics::CONFIG_KEYS and in DEFS");
        }
    }

    #[test]
    fn values_are_checked_by_kind() {
        for (key, good, bad) in [
            (
                COMPRESSION_TYPE,
                &["producer", "gzip", "zstd", "uncompressed"][..],
                &["GZIP", "brotli", ""][..],
            ),
            (
                MESSAGE_TIMESTAMP_TYPE,
                &["CreateTime", "LogAppendTime"],
                &["createtime", "now"],
            ),
            (
                MESSAGE_TIMESTAMP_BEFORE_MAX_MS,
                &["0", "9223372036854775807"],
                &["-1", "x", "1.5"],
            ),
            ("compression.gzip.level", &["-1", "1", "9"], &["0", "10", "-2"]),
            ("compression.zstd.level", &["-131072", "22"], &["23", "-131073"]),
            (
                "unclean.leader.election.enable",
                &["false", "true", "TRUE"],
                &["yes", "1"],
            ),
            ("preallocate", &["true"], &["maybe"]),
            ("segment.index.bytes", &["4", "2147483647"], &["3", "2147483648"]),
            (
                "follower.replication.throttled.replicas",
                &["", "*", "0:1,1:2"],
                &["0", "a:b", "0:1:2"],
            ),
            ("local.retention.ms", &["-2", "0"], &["-3"]),
            (REMOTE_STORAGE_ENABLE, &["false"], &["true", "no"]),
        ] {
            for v in good {
                assert_eq!(validate(key, v), Ok(true), "{key}={v:?}");
            }
            for v in bad {
                assert!(
                    matches!(validate(key, v), Err(TopicError::InvalidConfig { .. })),
                    "{key}={v:?} accepted"
                );
            }
        }
        assert_eq!(validate("no.such.config", "1"), Ok(false));
        assert_eq!(validate("cleanup.policy", "delete"), Ok(false), "not owned here");
    }

    #[test]
    fn the_policy_follows_the_overrides() {
        let mut o = ConfigOverrides::new();
        assert!(produce_policy(&o).is_passthrough());
        o.insert(COMPRESSION_TYPE.into(), "producer".into());
        o.insert(MESSAGE_TIMESTAMP_TYPE.into(), "CreateTime".into());
        assert!(produce_policy(&o).is_passthrough(), "explicit defaults");
        o.insert(COMPRESSION_TYPE.into(), "zstd".into());
        o.insert(MESSAGE_TIMESTAMP_TYPE.into(), "LogAppendTime".into());
        o.insert(MESSAGE_TIMESTAMP_DIFFERENCE_MAX_MS.into(), "1000".into());
        o.insert(MESSAGE_TIMESTAMP_AFTER_MAX_MS.into(), "50".into());
        let p = produce_policy(&o);
        assert_eq!(p.compression, TopicCompression::Codec(4));
        assert!(p.log_append_time);
        assert_eq!(p.before_max_ms, Some(1000), "the difference bound");
        assert_eq!(p.after_max_ms, Some(50), "the newer bound wins");
        o.insert(MESSAGE_TIMESTAMP_BEFORE_MAX_MS.into(), i64::MAX.to_string());
        assert_eq!(produce_policy(&o).before_max_ms, None, "Long.MAX is no bound");
        o.insert(INDEX_INTERVAL_BYTES.into(), "100".into());
        assert_eq!(index_interval_bytes(&o), Some(100));
    }
}
