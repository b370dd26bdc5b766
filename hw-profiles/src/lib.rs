//! Hardware profiles: the TOML files under `hw-profiles/` that say how a node's cores, io_uring
//! memory, network polling and log storage are used, and the code that loads and validates them.
//!
//! Ownership and concurrency: a [`Profile`] is plain data, read once at startup on the main thread
//! and then copied to whoever needs it; nothing here does I/O except [`Profile::load`] (reads one
//! file) and [`online_cpus`] (reads `/sys`).
//!
//! The built-in default is `hw-profiles/dev.toml`, embedded at compile time, so the file documents
//! exactly what runs when no `--profile` is given. Any section or field may be left out of a
//! profile file and then takes the dev value; an unknown field is an error, so typos fail loudly.
//! Parsing only checks types; [`Profile::validate`] checks values against the limits of the
//! machine and of the storage engine. Hardware detection (hwloc) is planned, not here yet.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

/// The text of `hw-profiles/dev.toml`; [`Profile::default`] parses it.
pub const DEV_PROFILE_TOML: &str = include_str!("../dev.toml");

/// The largest CPU number a cpuset may name; bounds the list a range can expand to.
pub const CPU_NUMBER_MAX: usize = 4095;

/// Where Linux lists the online CPUs, in cpuset syntax.
const ONLINE_CPUS_PATH: &str = "/sys/devices/system/cpu/online";

/// Alignment of DMA (O_DIRECT) buffers and writes: the largest common logical block size.
const DMA_ALIGN_BYTES: usize = 4096;
const IO_MEMORY_BYTES_MIN: usize = 64 * 1024;
const RING_DEPTH_MIN: usize = 8;
const RING_DEPTH_MAX: usize = 4096;
const SEGMENT_BYTES_MIN: u64 = 1024 * 1024;
const INDEX_INTERVAL_BYTES_MIN: u32 = 512;

const MIB: usize = 1024 * 1024;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Errors from loading or validating a profile. Validation errors name the field and the value.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot parse profile {origin}: {source}")]
    Parse { origin: String, source: toml::de::Error },
    #[error("invalid cpuset {spec:?}: {reason}")]
    Cpuset { spec: String, reason: String },
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
}

/// A whole profile. Every section is optional in the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default)]
    pub shards: Shards,
    #[serde(default)]
    pub io: Io,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub storage: Storage,
}

/// `[shards]`: which cores run a shard.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shards {
    /// One pinned shard per listed CPU ("0-3,6"); `None` means one per online CPU.
    pub cpuset: Option<String>,
}

/// `[io]`: io_uring and DMA buffer sizing, per shard.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Io {
    /// DMA memory glommio registers with each of its three rings (counted three times against
    /// RLIMIT_MEMLOCK, which may be 8 MiB).
    pub io_memory_bytes: usize,
    /// io_uring submission queue depth.
    pub ring_depth: usize,
    /// Size of one O_DIRECT write of the appender; a flush issues several.
    pub write_chunk_bytes: usize,
    /// O_DIRECT writes of one flush in flight at once.
    pub write_depth: usize,
    /// Size of one DMA read serving a fetch from disk.
    pub read_chunk_bytes: usize,
}

impl Default for Io {
    fn default() -> Self {
        Self {
            io_memory_bytes: MIB,
            ring_depth: 128,
            write_chunk_bytes: MIB,
            write_depth: 2,
            read_chunk_bytes: 64 * 1024,
        }
    }
}

/// `[network]`: polling behaviour of idle shards.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    /// How long an idle shard spins before parking; 0 parks at once.
    pub spin_before_park_us: u64,
    /// SO_BUSY_POLL on client sockets, in µs: the kernel polls the NIC queue
    /// for this long on a blocking read before sleeping. 0 = off.
    pub busy_poll_us: u32,
}

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Once on stable storage (fdatasync, shared by concurrent appends).
    #[default]
    Fsync,
    /// Once the O_DIRECT write completed: survives a process crash; the newest appends can be
    /// lost on a kernel crash or power loss (see docs/storage.md).
    Direct,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::Fsync => "fsync",
            Durability::Direct => "direct",
        })
    }
}

/// `[storage]`: segment rolling, indexing, durability, caching and retention defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// Roll the active segment at this size.
    pub segment_bytes: u64,
    /// Roll the active segment once its first batch is this old.
    pub segment_ms: u64,
    /// Log bytes between two sparse offset-index entries.
    pub index_interval_bytes: u32,
    pub durability: Durability,
    /// Per-shard cache of recent batches serving tail fetches.
    pub batch_cache_bytes: usize,
    /// Size limit per partition; `None` (written -1) means no limit.
    #[serde(deserialize_with = "limit_or_unlimited")]
    pub retention_bytes: Option<u64>,
    /// Age limit of segments; `None` (written -1) means keep forever.
    #[serde(deserialize_with = "limit_or_unlimited")]
    pub retention_ms: Option<u64>,
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            segment_bytes: 128 * MIB as u64,
            segment_ms: 7 * DAY_MS,
            index_interval_bytes: 4096,
            durability: Durability::Fsync,
            batch_cache_bytes: 64 * MIB,
            retention_bytes: None,
            retention_ms: Some(7 * DAY_MS),
        }
    }
}

/// TOML has no null, so "no limit" is written -1, as in Kafka's topic configs.
fn limit_or_unlimited<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let value = i64::deserialize(deserializer)?;
    match value {
        -1 => Ok(None),
        v if v >= 0 => Ok(Some(v.unsigned_abs())),
        v => Err(serde::de::Error::custom(format!(
            "{v} is not a limit (use a value >= 0, or -1 for no limit)"
        ))),
    }
}

impl Default for Profile {
    /// The dev profile, parsed from the embedded `hw-profiles/dev.toml`.
    fn default() -> Self {
        Self::from_toml_str(DEV_PROFILE_TOML).expect("the embedded hw-profiles/dev.toml must parse")
    }
}

impl Profile {
    /// Parses a profile from TOML text. Checks types and field names only; see [`Self::validate`].
    pub fn from_toml_str(text: &str) -> Result<Profile, ProfileError> {
        parse(text, "<string>")
    }

    /// Reads and parses the profile file at `path`. Checks types and field names only.
    pub fn load(path: impl AsRef<Path>) -> Result<Profile, ProfileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        parse(&text, &path.display().to_string())
    }

    /// Checks every value against this machine's online CPUs and the engine's limits.
    pub fn validate(&self) -> Result<(), ProfileError> {
        self.validate_against(&online_cpus())
    }

    /// [`Self::validate`] against a given set of online CPUs (sorted), so tests need not depend on
    /// the machine they run on.
    pub fn validate_against(&self, online: &[usize]) -> Result<(), ProfileError> {
        self.shard_cpus(online)?;

        let io = &self.io;
        if io.io_memory_bytes < IO_MEMORY_BYTES_MIN || io.io_memory_bytes % DMA_ALIGN_BYTES != 0 {
            return Err(invalid(
                "io.io_memory_bytes",
                format!(
                    "{} must be at least {IO_MEMORY_BYTES_MIN} and a multiple of {DMA_ALIGN_BYTES}",
                    io.io_memory_bytes
                ),
            ));
        }
        if !io.ring_depth.is_power_of_two() || !(RING_DEPTH_MIN..=RING_DEPTH_MAX).contains(&io.ring_depth) {
            return Err(invalid(
                "io.ring_depth",
                format!(
                    "{} must be a power of two between {RING_DEPTH_MIN} and {RING_DEPTH_MAX}",
                    io.ring_depth
                ),
            ));
        }
        check_dma_multiple("io.write_chunk_bytes", io.write_chunk_bytes)?;
        if !(1..=64).contains(&io.write_depth) {
            return Err(ProfileError::Invalid {
                field: "io.write_depth",
                message: format!("{} must be between 1 and 64", io.write_depth),
            });
        }
        check_dma_multiple("io.read_chunk_bytes", io.read_chunk_bytes)?;

        let storage = &self.storage;
        if storage.segment_bytes < SEGMENT_BYTES_MIN {
            return Err(invalid(
                "storage.segment_bytes",
                format!(
                    "{} is below the minimum of {SEGMENT_BYTES_MIN}",
                    storage.segment_bytes
                ),
            ));
        }
        if storage.index_interval_bytes < INDEX_INTERVAL_BYTES_MIN {
            return Err(invalid(
                "storage.index_interval_bytes",
                format!(
                    "{} is below the minimum of {INDEX_INTERVAL_BYTES_MIN}",
                    storage.index_interval_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The CPUs that get a shard: the profile's cpuset, or every online CPU when it has none.
    /// Fails if the cpuset does not parse or names a CPU that is not in `online`.
    pub fn shard_cpus(&self, online: &[usize]) -> Result<Vec<usize>, ProfileError> {
        let Some(spec) = &self.shards.cpuset else {
            return Ok(online.to_vec());
        };
        let cpus = parse_cpuset(spec).map_err(|err| match err {
            ProfileError::Cpuset { spec, reason } => {
                invalid("shards.cpuset", format!("{reason} in {spec:?}"))
            }
            other => other,
        })?;
        if let Some(missing) = cpus.iter().find(|cpu| online.binary_search(cpu).is_err()) {
            return Err(invalid(
                "shards.cpuset",
                format!("CPU {missing} does not exist (online: {})", format_cpuset(online)),
            ));
        }
        Ok(cpus)
    }
}

fn parse(text: &str, origin: &str) -> Result<Profile, ProfileError> {
    toml::from_str(text).map_err(|source| ProfileError::Parse {
        origin: origin.to_owned(),
        source,
    })
}

fn invalid(field: &'static str, message: String) -> ProfileError {
    ProfileError::Invalid { field, message }
}

fn check_dma_multiple(field: &'static str, value: usize) -> Result<(), ProfileError> {
    if value < DMA_ALIGN_BYTES || value % DMA_ALIGN_BYTES != 0 {
        return Err(invalid(
            field,
            format!("{value} must be a non-zero multiple of {DMA_ALIGN_BYTES}"),
        ));
    }
    Ok(())
}

/// Parses a Linux cpuset list ("0-3,6") into sorted, distinct CPU numbers. Whitespace around
/// elements is ignored; empty lists and elements, reversed ranges and CPUs above
/// [`CPU_NUMBER_MAX`] are errors.
pub fn parse_cpuset(spec: &str) -> Result<Vec<usize>, ProfileError> {
    let fail = |reason: String| ProfileError::Cpuset {
        spec: spec.to_owned(),
        reason,
    };
    if spec.trim().is_empty() {
        return Err(fail("the cpuset is empty".to_owned()));
    }
    let mut cpus = Vec::new();
    for element in spec.split(',').map(str::trim) {
        if element.is_empty() {
            return Err(fail("empty element".to_owned()));
        }
        let (start, end) = match element.split_once('-') {
            Some((start, end)) => (parse_cpu(start, &fail)?, parse_cpu(end, &fail)?),
            None => {
                let cpu = parse_cpu(element, &fail)?;
                (cpu, cpu)
            }
        };
        if start > end {
            return Err(fail(format!("range {start}-{end} starts after it ends")));
        }
        cpus.extend(start..=end);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

fn parse_cpu(text: &str, fail: &impl Fn(String) -> ProfileError) -> Result<usize, ProfileError> {
    let text = text.trim();
    let cpu: usize = text
        .parse()
        .map_err(|_| fail(format!("{text:?} is not a CPU number")))?;
    if cpu > CPU_NUMBER_MAX {
        return Err(fail(format!("CPU {cpu} is above the limit of {CPU_NUMBER_MAX}")));
    }
    Ok(cpu)
}

/// Formats sorted, distinct CPU numbers as a compact cpuset list: `[0, 1, 2, 5]` -> "0-2,5".
pub fn format_cpuset(cpus: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut rest = cpus;
    while let Some((&start, _)) = rest.split_first() {
        let run = rest
            .iter()
            .enumerate()
            .take_while(|&(i, &cpu)| cpu == start + i)
            .count();
        let end = rest[run - 1];
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        rest = &rest[run..];
    }
    parts.join(",")
}

/// This machine's online CPUs, from `/sys/devices/system/cpu/online`; if that cannot be read or
/// parsed, CPUs `0..available_parallelism()`.
pub fn online_cpus() -> Vec<usize> {
    std::fs::read_to_string(ONLINE_CPUS_PATH)
        .ok()
        .and_then(|text| parse_cpuset(text.trim()).ok())
        .unwrap_or_else(|| {
            let count = std::thread::available_parallelism().map_or(1, |n| n.get());
            (0..count).collect()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_CPUS: &[usize] = &[0, 1];

    fn invalid_message(profile: &Profile) -> String {
        let err = profile
            .validate_against(TWO_CPUS)
            .expect_err("the profile should not validate");
        assert!(matches!(err, ProfileError::Invalid { .. }), "{err:?}");
        err.to_string()
    }

    #[test]
    fn default_is_dev_toml_and_matches_the_section_defaults() {
        let dev = Profile::default();
        assert_eq!(
            dev,
            Profile {
                shards: Shards::default(),
                io: Io::default(),
                network: Network::default(),
                storage: Storage::default(),
            },
            "dev.toml and the code's section defaults must agree"
        );
        assert_eq!(dev.shards.cpuset, None);
        assert_eq!(dev.io.io_memory_bytes, 1_048_576);
        assert_eq!(dev.io.ring_depth, 128);
        assert_eq!(dev.io.write_chunk_bytes, 1_048_576);
        assert_eq!(dev.io.read_chunk_bytes, 65_536);
        assert_eq!(dev.network.spin_before_park_us, 0);
        assert_eq!(dev.storage.segment_bytes, 134_217_728);
        assert_eq!(dev.storage.segment_ms, 604_800_000);
        assert_eq!(dev.storage.index_interval_bytes, 4096);
        assert_eq!(dev.storage.durability, Durability::Fsync);
        assert_eq!(dev.storage.batch_cache_bytes, 67_108_864);
        assert_eq!(dev.storage.retention_bytes, None);
        assert_eq!(dev.storage.retention_ms, Some(604_800_000));
    }

    #[test]
    fn empty_profile_and_missing_fields_take_the_defaults() {
        assert_eq!(Profile::from_toml_str("").expect("parse"), Profile::default());
        let profile = Profile::from_toml_str("[io]\nring_depth = 64\n").expect("parse");
        assert_eq!(profile.io.ring_depth, 64);
        assert_eq!(profile.io.io_memory_bytes, Io::default().io_memory_bytes);
        assert_eq!(profile.storage, Storage::default());
    }

    #[test]
    fn dev_profile_validates() {
        Profile::default()
            .validate_against(TWO_CPUS)
            .expect("dev profile");
        Profile::default()
            .validate()
            .expect("dev profile on this machine");
    }

    #[test]
    fn profile_files_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(
            Profile::load(dir.join("dev.toml")).expect("dev.toml"),
            Profile::default()
        );
        let metal = Profile::load(dir.join("bare-metal-nvme.toml")).expect("bare-metal-nvme.toml");
        assert_eq!(metal.shards.cpuset.as_deref(), Some("1-7"));
        assert_eq!(metal.network.spin_before_park_us, 200);
        assert_eq!(metal.storage.durability, Durability::Fsync);
        metal
            .validate_against(&(0..8).collect::<Vec<_>>())
            .expect("bare-metal-nvme on an 8-core machine");
    }

    #[test]
    fn load_reports_missing_file_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.toml");
        let err = Profile::load(&path).expect_err("missing file");
        assert!(matches!(err, ProfileError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("absent.toml"), "{err}");
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[storage]\ndurability = \"direct\"\nretention_ms = -1\n").expect("write");
        let profile = Profile::load(&path).expect("load");
        assert_eq!(profile.storage.durability, Durability::Direct);
        assert_eq!(profile.storage.retention_ms, None);
    }

    #[test]
    fn unknown_fields_and_sections_are_rejected() {
        for text in ["[io]\nring_depht = 128\n", "[disk]\nx = 1\n", "top_level = 1\n"] {
            let err = Profile::from_toml_str(text).expect_err(text);
            assert!(matches!(err, ProfileError::Parse { .. }), "{err:?}");
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
    }

    #[test]
    fn bad_types_and_values_fail_to_parse() {
        for text in [
            "[storage]\ndurability = \"sometimes\"\n",
            "[storage]\nretention_bytes = -2\n",
            "[io]\nring_depth = \"deep\"\n",
        ] {
            let err = Profile::from_toml_str(text).expect_err(text);
            assert!(matches!(err, ProfileError::Parse { .. }), "{err:?}");
        }
    }

    #[test]
    fn cpuset_parses_ranges_and_lists() {
        assert_eq!(parse_cpuset("0").expect("single"), vec![0]);
        assert_eq!(parse_cpuset("0-3,6").expect("list"), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpuset(" 6, 2-3 ,3").expect("messy"), vec![2, 3, 6]);
        assert_eq!(parse_cpuset("5-5").expect("one-wide"), vec![5]);
    }

    #[test]
    fn bad_cpusets_say_what_is_wrong() {
        for (spec, expected) in [
            ("", "empty"),
            ("0,,1", "empty element"),
            ("0,", "empty element"),
            ("3-1", "range 3-1 starts after it ends"),
            ("a", "\"a\" is not a CPU number"),
            ("0-", "\"\" is not a CPU number"),
            ("-1", "\"\" is not a CPU number"),
            ("1-2-3", "\"2-3\" is not a CPU number"),
            ("0-99999", "above the limit"),
        ] {
            let err = parse_cpuset(spec).expect_err(spec);
            assert!(matches!(err, ProfileError::Cpuset { .. }), "{err:?}");
            let message = err.to_string();
            assert!(message.contains(expected), "{spec:?}: {message}");
        }
    }

    #[test]
    fn format_cpuset_compacts_runs() {
        assert_eq!(format_cpuset(&[]), "");
        assert_eq!(format_cpuset(&[0, 1]), "0-1");
        assert_eq!(format_cpuset(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        for spec in ["0", "0-3,6", "1-7", "0,2,4"] {
            let cpus = parse_cpuset(spec).expect(spec);
            assert_eq!(format_cpuset(&cpus), spec);
        }
    }

    #[test]
    fn online_cpus_is_sorted_and_not_empty() {
        let online = online_cpus();
        assert!(!online.is_empty());
        assert!(online.windows(2).all(|pair| pair[0] < pair[1]), "{online:?}");
    }

    #[test]
    fn shard_cpus_defaults_to_all_online() {
        let mut profile = Profile::default();
        assert_eq!(profile.shard_cpus(TWO_CPUS).expect("all"), vec![0, 1]);
        profile.shards.cpuset = Some("1".to_owned());
        assert_eq!(profile.shard_cpus(TWO_CPUS).expect("one"), vec![1]);
    }

    #[test]
    fn cpuset_naming_a_missing_cpu_is_invalid() {
        let mut profile = Profile::default();
        profile.shards.cpuset = Some("0,9".to_owned());
        assert_eq!(
            invalid_message(&profile),
            "shards.cpuset: CPU 9 does not exist (online: 0-1)"
        );
    }

    #[test]
    fn malformed_cpuset_is_invalid_with_field_name() {
        let mut profile = Profile::default();
        profile.shards.cpuset = Some("1-0".to_owned());
        assert_eq!(
            invalid_message(&profile),
            "shards.cpuset: range 1-0 starts after it ends in \"1-0\""
        );
    }

    #[test]
    fn each_numeric_rule_names_its_field_and_value() {
        type Edit = fn(&mut Profile);
        let cases: [(Edit, &str, &str); 10] = [
            (|p| p.io.io_memory_bytes = 32768, "io.io_memory_bytes", "32768"),
            (|p| p.io.io_memory_bytes = 65537, "io.io_memory_bytes", "65537"),
            (|p| p.io.ring_depth = 100, "io.ring_depth", "100"),
            (|p| p.io.ring_depth = 4, "io.ring_depth", "4"),
            (|p| p.io.ring_depth = 8192, "io.ring_depth", "8192"),
            (|p| p.io.write_chunk_bytes = 0, "io.write_chunk_bytes", "0"),
            (|p| p.io.write_chunk_bytes = 5000, "io.write_chunk_bytes", "5000"),
            (|p| p.io.read_chunk_bytes = 100, "io.read_chunk_bytes", "100"),
            (
                |p| p.storage.segment_bytes = 1000,
                "storage.segment_bytes",
                "1000",
            ),
            (
                |p| p.storage.index_interval_bytes = 511,
                "storage.index_interval_bytes",
                "511",
            ),
        ];
        for (edit, field, value) in cases {
            let mut profile = Profile::default();
            edit(&mut profile);
            let message = invalid_message(&profile);
            assert!(message.starts_with(&format!("{field}: {value} ")), "{message}");
        }
    }

    #[test]
    fn boundary_values_are_accepted() {
        let mut profile = Profile::default();
        profile.io.io_memory_bytes = 65536;
        profile.io.ring_depth = 8;
        profile.io.write_chunk_bytes = 4096;
        profile.io.read_chunk_bytes = 4096;
        profile.storage.segment_bytes = 1024 * 1024;
        profile.storage.index_interval_bytes = 512;
        profile.validate_against(TWO_CPUS).expect("minimums");
        profile.io.ring_depth = 4096;
        profile.validate_against(TWO_CPUS).expect("max ring depth");
    }
}
