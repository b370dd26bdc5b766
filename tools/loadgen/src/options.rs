//! Command line options (modeled on the OpenMessaging Benchmark's workload file), their
//! validation into a [`Workload`], and the librdkafka settings a workload implies.
//!
//! Everything a run needs is checked here, before any client exists, so a bad option fails at
//! start with a message naming it rather than in the middle of a run.

use crate::payload::{SplitMix64, HEADER_BYTES};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Largest message accepted (librdkafka's `message.max.bytes` tops out near 1 GB; this keeps a
/// typo from allocating that much per producer).
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Most producers (each is one librdkafka client with two threads).
pub const PRODUCERS_MAX: u32 = 1024;
/// Most consumers (each is one librdkafka client with its threads).
pub const CONSUMERS_MAX: u32 = 1024;
/// Most partitions: partition numbers are kept as `u16` per message, with two values reserved.
pub const PARTITIONS_MAX: u32 = 65_000;
/// Longest warm-up or measurement (a week); bounds the per-message bookkeeping too.
pub const PHASE_S_MAX: u64 = 7 * 24 * 3600;
/// Longest drain timeout.
pub const DRAIN_TIMEOUT_S_MAX: u64 = 3600;
/// Highest target rate (one message per nanosecond).
pub const RATE_MAX: u64 = 1_000_000_000;
/// librdkafka's upper bound of `linger.ms`.
pub const LINGER_MS_MAX: u64 = 900_000;
/// librdkafka's upper bound of `batch.size`.
pub const BATCH_BYTES_MAX: u64 = 2_147_483_647;
/// Kafka's longest topic name.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// `acks` of the producers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Acks {
    /// The leader waits for every in-sync replica.
    #[value(name = "all")]
    #[serde(rename = "all")]
    All,
    /// The leader answers once it appended.
    #[value(name = "1")]
    #[serde(rename = "1")]
    Leader,
    /// No answer: delivery reports come as soon as the request is sent.
    #[value(name = "0")]
    #[serde(rename = "0")]
    None,
}

impl Acks {
    pub fn as_str(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "1",
            Acks::None => "0",
        }
    }
}

/// `compression.type` of the producers. Which codecs work depends on how librdkafka was built;
/// the binary checks at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// How messages are keyed (OMB's keyDistributor: NO_KEY, KEY_ROUND_ROBIN, RANDOM_NANO).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyDistribution {
    /// No key: librdkafka's sticky partitioner spreads batches over partitions.
    None,
    /// Keys from a pool of 10 000, in turn.
    RoundRobin,
    /// Keys from a pool of 10 000, at random.
    Random,
}

impl KeyDistribution {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyDistribution::None => "none",
            KeyDistribution::RoundRobin => "round-robin",
            KeyDistribution::Random => "random",
        }
    }
}

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "ferrolog-loadgen",
    version,
    about = "Load generator for Kafka-compatible brokers (OpenMessaging-Benchmark style, librdkafka)",
    long_about = "Load generator for Kafka-compatible brokers (OpenMessaging-Benchmark style, \
                  librdkafka). Producers send at a fixed total rate (open loop: latency is measured \
                  from each message's intended send time, so a stalled broker shows up as latency) \
                  or as fast as the client accepts (--rate 0); consumers in one group read the \
                  topic back. Prints a progress line every second on stderr and a summary on \
                  stdout; exits non-zero if a send failed or an acknowledged message was not \
                  consumed."
)]
pub struct Cli {
    /// Bootstrap servers, HOST:PORT[,HOST:PORT...].
    #[arg(long, value_name = "HOST:PORT")]
    pub bootstrap: String,
    /// Topic to use; created if missing. Default: a fresh `loadgen-<random>`.
    #[arg(long, value_name = "NAME")]
    pub topic: Option<String>,
    /// Partitions of the topic when it is created (an existing topic keeps its own).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub partitions: u32,
    /// Replication factor of the topic when it is created.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub replication_factor: u16,
    /// Producers (one librdkafka client each).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub producers: u32,
    /// Consumers, members of one consumer group subscribed to the topic; 0 = produce only.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub consumers: u32,
    /// Bytes of each message value (at least 16: send time and sequence number, then filler).
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub message_size: usize,
    /// Producer acks.
    #[arg(long, value_enum, default_value_t = Acks::All)]
    pub acks: Acks,
    /// Producer compression codec.
    #[arg(long, value_enum, default_value_t = Compression::None, value_name = "CODEC")]
    pub compression: Compression,
    /// Producer linger.ms (OMB's Kafka driver uses 1).
    #[arg(long, default_value_t = 1, value_name = "MS")]
    pub linger_ms: u64,
    /// Producer batch.size in bytes (OMB's Kafka driver uses 1 MiB).
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub batch_bytes: u64,
    /// Total target rate in messages/s across producers (open loop); 0 = as fast as the client
    /// accepts (closed loop).
    #[arg(long, default_value_t = 1000, value_name = "MSGS_PER_S")]
    pub rate: u64,
    /// Seconds of warm-up before the measurement (its messages are consumed but not counted).
    #[arg(long, default_value_t = 5, value_name = "S")]
    pub warmup_s: u64,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub duration_s: u64,
    /// Seconds after the measurement to wait for delivery reports and for consumers to catch up.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub drain_timeout_s: u64,
    /// How messages are keyed.
    #[arg(long, value_enum, default_value_t = KeyDistribution::None)]
    pub key_distribution: KeyDistribution,
    /// A librdkafka producer setting, KEY=VALUE (repeatable; applied last).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub producer_config: Vec<(String, String)>,
    /// A librdkafka consumer setting, KEY=VALUE (repeatable; applied last).
    #[arg(short = 'C', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub consumer_config: Vec<(String, String)>,
    /// Keep the topic at the end when this run created it under a generated name (by default
    /// such a topic is deleted after a successful run; a topic named with --topic is always
    /// kept).
    #[arg(long)]
    pub keep_topic: bool,
    /// Write the report as JSON here.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write a latency percentile plot (SVG) here.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// A validated workload: what the run does, as recorded in the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Workload {
    pub bootstrap: String,
    pub topic: String,
    /// The topic name was given (not generated).
    pub topic_given: bool,
    pub partitions: u32,
    pub replication_factor: u16,
    pub producers: u32,
    pub consumers: u32,
    pub message_bytes: usize,
    pub acks: Acks,
    pub compression: Compression,
    pub linger_ms: u64,
    pub batch_bytes: u64,
    /// Total target rate; 0 = closed loop.
    pub rate_msgs_per_s: u64,
    pub warmup_s: u64,
    pub duration_s: u64,
    pub drain_timeout_s: u64,
    pub key_distribution: KeyDistribution,
    /// `-X` settings (the last one of a key wins).
    pub producer_config: BTreeMap<String, String>,
    /// `-C` settings (the last one of a key wins).
    pub consumer_config: BTreeMap<String, String>,
    pub keep_topic: bool,
    #[serde(skip)]
    pub json: Option<PathBuf>,
    #[serde(skip)]
    pub svg: Option<PathBuf>,
}

/// A topic name Kafka accepts: 1..=249 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "--topic: a topic name has 1 to {TOPIC_NAME_BYTES_MAX} characters, got {}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("--topic: {name:?} is not a valid topic name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "--topic: {name:?} has {c:?}; topic names use only ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

fn check_range(name: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!("{name} must be between {min} and {max}, got {value}"));
    }
    Ok(())
}

impl Cli {
    /// Checks every option; `seed` names the topic when none is given.
    pub fn validate(self, seed: u64) -> Result<Workload, String> {
        if self.bootstrap.trim().is_empty() {
            return Err("--bootstrap: give at least one HOST:PORT".into());
        }
        let (topic, topic_given) = match self.topic {
            Some(t) => {
                check_topic_name(&t)?;
                (t, true)
            }
            None => (
                format!("loadgen-{:016x}", SplitMix64::new(seed).next_u64()),
                false,
            ),
        };
        check_range("--partitions", self.partitions.into(), 1, PARTITIONS_MAX.into())?;
        check_range(
            "--replication-factor",
            self.replication_factor.into(),
            1,
            u16::MAX.into(),
        )?;
        check_range("--producers", self.producers.into(), 1, PRODUCERS_MAX.into())?;
        check_range("--consumers", self.consumers.into(), 0, CONSUMERS_MAX.into())?;
        if self.message_size < HEADER_BYTES {
            return Err(format!(
                "--message-size must be at least {HEADER_BYTES} bytes (the send timestamp and \
                 sequence number header), got {}",
                self.message_size
            ));
        }
        check_range(
            "--message-size",
            self.message_size as u64,
            HEADER_BYTES as u64,
            MESSAGE_BYTES_MAX as u64,
        )?;
        check_range("--rate", self.rate, 0, RATE_MAX)?;
        check_range("--warmup-s", self.warmup_s, 0, PHASE_S_MAX)?;
        check_range("--duration-s", self.duration_s, 1, PHASE_S_MAX)?;
        check_range("--drain-timeout-s", self.drain_timeout_s, 1, DRAIN_TIMEOUT_S_MAX)?;
        check_range("--linger-ms", self.linger_ms, 0, LINGER_MS_MAX)?;
        check_range("--batch-bytes", self.batch_bytes, 1, BATCH_BYTES_MAX)?;
        Ok(Workload {
            bootstrap: self.bootstrap.trim().to_string(),
            topic,
            topic_given,
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            producers: self.producers,
            consumers: self.consumers,
            message_bytes: self.message_size,
            acks: self.acks,
            compression: self.compression,
            linger_ms: self.linger_ms,
            batch_bytes: self.batch_bytes,
            rate_msgs_per_s: self.rate,
            warmup_s: self.warmup_s,
            duration_s: self.duration_s,
            drain_timeout_s: self.drain_timeout_s,
            key_distribution: self.key_distribution,
            producer_config: self.producer_config.into_iter().collect(),
            consumer_config: self.consumer_config.into_iter().collect(),
            keep_topic: self.keep_topic,
            json: self.json,
            svg: self.svg,
        })
    }
}

impl Workload {
    /// Closed loop: send as fast as the client accepts.
    pub fn closed_loop(&self) -> bool {
        self.rate_msgs_per_s == 0
    }

    /// librdkafka settings of producer `index`, in the order to apply them (`-X` last).
    pub fn producer_settings(&self, index: u32) -> Vec<(String, String)> {
        let mut s: Vec<(String, String)> = [
            ("bootstrap.servers", self.bootstrap.clone()),
            ("client.id", format!("ferrolog-loadgen-producer-{index}")),
            ("acks", self.acks.as_str().to_string()),
            ("compression.type", self.compression.as_str().to_string()),
            ("linger.ms", self.linger_ms.to_string()),
            ("batch.size", self.batch_bytes.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        s.extend(self.producer_config.iter().map(|(k, v)| (k.clone(), v.clone())));
        s
    }

    /// librdkafka settings of consumer `index` of group `group`, in the order to apply them
    /// (`-C` last). Offsets are never committed: the binary places every assigned partition
    /// at the position the group has consumed up to, which it tracks itself.
    pub fn consumer_settings(&self, group: &str, index: u32) -> Vec<(String, String)> {
        let mut s: Vec<(String, String)> = [
            ("bootstrap.servers", self.bootstrap.clone()),
            ("client.id", format!("ferrolog-loadgen-consumer-{index}")),
            ("group.id", group.to_string()),
            ("enable.auto.commit", "false".to_string()),
            ("enable.auto.offset.store", "false".to_string()),
            ("enable.partition.eof", "false".to_string()),
            ("auto.offset.reset", "earliest".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        s.extend(self.consumer_config.iter().map(|(k, v)| (k.clone(), v.clone())));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Workload, String> {
        let mut argv = vec!["ferrolog-loadgen", "--bootstrap", "127.0.0.1:9092"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map_err(|e| e.to_string())?.validate(1)
    }

    #[test]
    fn defaults_are_valid() {
        let w = parse(&[]).expect("defaults");
        assert!(w.topic.starts_with("loadgen-"));
        assert!(!w.topic_given);
        assert_eq!(check_topic_name(&w.topic), Ok(()));
        assert_eq!((w.partitions, w.producers, w.consumers), (1, 1, 1));
        assert_eq!(w.message_bytes, 1024);
        assert_eq!(w.acks, Acks::All);
        assert_eq!(w.compression, Compression::None);
        assert!(!w.closed_loop());
    }

    #[test]
    fn every_option_parses() {
        let w = parse(&[
            "--topic",
            "t.1_x-y",
            "--partitions",
            "16",
            "--replication-factor",
            "3",
            "--producers",
            "4",
            "--consumers",
            "0",
            "--message-size",
            "16",
            "--acks",
            "1",
            "--compression",
            "lz4",
            "--linger-ms",
            "5",
            "--batch-bytes",
            "65536",
            "--rate",
            "0",
            "--warmup-s",
            "0",
            "--duration-s",
            "10",
            "--drain-timeout-s",
            "5",
            "--key-distribution",
            "round-robin",
            "-X",
            "enable.idempotence=true",
            "-X",
            "linger.ms=7",
            "-C",
            "fetch.wait.max.ms=10",
            "--json",
            "out.json",
            "--svg",
            "out.svg",
        ])
        .expect("valid options");
        assert_eq!(w.topic, "t.1_x-y");
        assert!(w.topic_given);
        assert_eq!((w.partitions, w.replication_factor), (16, 3));
        assert_eq!((w.producers, w.consumers, w.message_bytes), (4, 0, 16));
        assert_eq!(w.acks, Acks::Leader);
        assert_eq!(w.compression, Compression::Lz4);
        assert_eq!((w.linger_ms, w.batch_bytes), (5, 65536));
        assert!(w.closed_loop());
        assert_eq!((w.warmup_s, w.duration_s, w.drain_timeout_s), (0, 10, 5));
        assert_eq!(w.key_distribution, KeyDistribution::RoundRobin);
        assert_eq!(w.json, Some(PathBuf::from("out.json")));
        assert_eq!(w.svg, Some(PathBuf::from("out.svg")));

        // -X comes after the loadgen's own settings, so it overrides them.
        let s = w.producer_settings(2);
        let linger: Vec<&str> = s
            .iter()
            .filter(|(k, _)| k == "linger.ms")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(linger, ["5", "7"]);
        assert!(s.contains(&("acks".into(), "1".into())));
        assert!(s.contains(&("compression.type".into(), "lz4".into())));
        assert!(s.contains(&("client.id".into(), "ferrolog-loadgen-producer-2".into())));
        assert!(s.contains(&("enable.idempotence".into(), "true".into())));
        let c = w.consumer_settings("g", 0);
        assert!(c.contains(&("group.id".into(), "g".into())));
        assert_eq!(c.last(), Some(&("fetch.wait.max.ms".into(), "10".into())));
    }

    #[test]
    fn bad_options_are_refused_with_the_option_named() {
        for (args, expected) in [
            (&["--message-size", "4"][..], "--message-size must be at least 16"),
            (&["--message-size", "100000000"][..], "--message-size"),
            (&["--compression", "bogus"][..], "bogus"),
            (&["--acks", "2"][..], "--acks"),
            (&["--partitions", "0"][..], "--partitions"),
            (&["--producers", "0"][..], "--producers"),
            (&["--duration-s", "0"][..], "--duration-s"),
            (&["--topic", "a/b"][..], "--topic"),
            (&["--topic", ".."][..], "--topic"),
            (&["--key-distribution", "zipf"][..], "zipf"),
            (&["-X", "novalue"][..], "KEY=VALUE"),
            (&["-C", "=x"][..], "KEY=VALUE"),
            (&["--linger-ms", "900001"][..], "--linger-ms"),
            (&["--rate=-5"][..], "--rate"),
        ] {
            match parse(args) {
                Ok(w) => panic!("{args:?} accepted: {w:?}"),
                Err(e) => assert!(e.contains(expected), "{args:?}: {e:?} does not name {expected:?}"),
            }
        }
        let long = "x".repeat(TOPIC_NAME_BYTES_MAX + 1);
        assert!(parse(&["--topic", &long]).is_err());
        assert!(
            Cli::try_parse_from(["ferrolog-loadgen"]).is_err(),
            "--bootstrap is required"
        );
    }

    #[test]
    fn generated_topic_names_differ_by_seed() {
        let cli = |seed| {
            Cli::try_parse_from(["x", "--bootstrap", "h:1"])
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate(seed))
                .map(|w| w.topic)
        };
        assert_ne!(cli(1), cli(2));
    }

    #[test]
    fn workload_serializes_with_kafka_spellings() {
        let w = parse(&["--acks", "0", "--key-distribution", "round-robin"]).expect("valid");
        let json = serde_json::to_value(&w).expect("json");
        assert_eq!(json["acks"], "0");
        assert_eq!(json["compression"], "none");
        assert_eq!(json["key_distribution"], "round-robin");
        assert_eq!(json["rate_msgs_per_s"], 1000);
        assert!(json.get("json").is_none());
    }
}
