//! Helpers shared by ferrolog's benchmarks: executors, bench directories,
//! batches, O_DIRECT-aligned buffers, latency summaries and a tiny JSON
//! writer (the benches keep their dependency list short).

use bytes::Bytes;
use ferrolog_model::{BatchBuilder, TimestampMs};
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

/// Block size that O_DIRECT offsets, lengths and buffers are aligned to.
pub const BLOCK: usize = 4096;

/// A glommio executor sized for the 8 MiB RLIMIT_MEMLOCK of this machine
/// (glommio registers `io_memory` with each of its 3 rings).
///
/// Pinned to CPU 0 unless `FERROLOG_BENCH_CPU` says otherwise (`unbound` or
/// a CPU number).
pub fn executor() -> std::io::Result<LocalExecutor> {
    let placement =
        match std::env::var("FERROLOG_BENCH_CPU").ok().as_deref() {
            Some("unbound") => Placement::Unbound,
            Some(cpu) => Placement::Fixed(cpu.parse().map_err(|_| {
                std::io::Error::other(format!("FERROLOG_BENCH_CPU={cpu:?} is not a CPU number"))
            })?),
            None => Placement::Fixed(0),
        };
    let spin_us: u64 = match std::env::var("FERROLOG_BENCH_SPIN_US") {
        Ok(v) => v
            .parse()
            .map_err(|_| std::io::Error::other(format!("FERROLOG_BENCH_SPIN_US={v:?} is not a number")))?,
        Err(_) => 0,
    };
    LocalExecutorBuilder::new(placement)
        .io_memory(1 << 20)
        .spin_before_park(std::time::Duration::from_micros(spin_us))
        .make()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Describes where the executor runs, for reports.
pub fn placement_name() -> String {
    std::env::var("FERROLOG_BENCH_CPU").unwrap_or_else(|_| "0".into())
}

/// A fresh directory for bench files under `FERROLOG_BENCH_DIR`, or under the
/// system temp dir. Removed (with everything in it) when dropped.
pub fn bench_dir() -> std::io::Result<tempfile::TempDir> {
    let parent = std::env::var_os("FERROLOG_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)?;
    tempfile::Builder::new()
        .prefix("ferrolog-bench-")
        .tempdir_in(parent)
}

/// The file system type of `path` as a name (statfs magic), and its device.
pub fn fs_description(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let mut c = path.as_os_str().as_bytes().to_vec();
    c.push(0);
    // SAFETY: `c` is NUL-terminated and `st` is a valid out-pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr().cast(), &mut st) };
    let fs = if rc != 0 {
        "unknown".to_string()
    } else {
        match st.f_type as i64 {
            0xEF53 => "ext4".into(),
            0x5846_5342 => "xfs".into(),
            0x9123_683E => "btrfs".into(),
            0x0102_1994 => "tmpfs".into(),
            0x794C_7630 => "overlayfs".into(),
            other => format!("fs magic {other:#x}"),
        }
    };
    let dev = std::fs::metadata(path)
        .map(|m| format!("{}:{}", libc::major(m.dev()), libc::minor(m.dev())))
        .unwrap_or_else(|_| "?".into());
    format!("{fs} on dev {dev}")
}

/// An uncompressed RecordBatch v2 of `records` records with `value_bytes`
/// values each (and a short key), timestamped `ts`.
pub fn make_batch(records: usize, value_bytes: usize, ts: i64) -> Bytes {
    let mut b = BatchBuilder::new(TimestampMs(ts));
    for i in 0..records {
        let value: Vec<u8> = (0..value_bytes).map(|j| ((i * 31 + j) % 251) as u8).collect();
        b = b.record(TimestampMs(ts), Some(format!("k{i}").as_bytes()), &value);
    }
    Bytes::from(b.build())
}

/// One ProduceRequest of one batch to one partition, as the wire clients of
/// the benches send it.
pub struct ProduceFrame<'a> {
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: &'static str,
    pub acks: i16,
    pub timeout_ms: i32,
    pub topic: &'a str,
    pub partition: i32,
    pub records: Bytes,
}

impl ProduceFrame<'_> {
    /// Replaces `buf` with the size-prefixed request.
    pub fn encode(&self, buf: &mut bytes::BytesMut) -> std::io::Result<()> {
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, TopicName};
        use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};
        let v = self.version;
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(v)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(self.client_id)));
        let request = ProduceRequest::default()
            .with_acks(self.acks)
            .with_timeout_ms(self.timeout_ms)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(self.topic.to_string())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(self.partition)
                    .with_records(Some(self.records.clone()))])]);
        buf.clear();
        buf.extend_from_slice(&[0; 4]);
        header
            .encode(buf, ProduceRequest::header_version(v))
            .and_then(|()| request.encode(buf, v))
            .map_err(|e| std::io::Error::other(format!("encoding a ProduceRequest: {e}")))?;
        let len =
            u32::try_from(buf.len() - 4).map_err(|_| std::io::Error::other("ProduceRequest too large"))?;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }
}

/// What a ProduceResponse says about its first partition.
pub struct ProduceAnswer {
    pub correlation_id: i32,
    pub error_code: i16,
    pub error_message: Option<String>,
}

/// Decodes a ProduceResponse of `version` (the bytes after its size
/// prefix), as answered to a [`ProduceFrame`].
pub fn produce_answer(body: &[u8], version: i16) -> std::io::Result<ProduceAnswer> {
    use kafka_protocol::messages::{ProduceResponse, ResponseHeader};
    use kafka_protocol::protocol::{Decodable, HeaderVersion};
    let other = |m: String| std::io::Error::other(m);
    let mut body = Bytes::copy_from_slice(body);
    let rh = ResponseHeader::decode(&mut body, ProduceResponse::header_version(version))
        .map_err(|e| other(format!("decoding a response header: {e}")))?;
    let response = ProduceResponse::decode(&mut body, version)
        .map_err(|e| other(format!("decoding a ProduceResponse: {e}")))?;
    let partition = response
        .responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
        .next()
        .ok_or_else(|| other("a ProduceResponse without a partition".into()))?;
    Ok(ProduceAnswer {
        correlation_id: rh.correlation_id,
        error_code: partition.error_code,
        error_message: partition.error_message.as_ref().map(|m| m.to_string()),
    })
}

/// A heap buffer aligned for O_DIRECT, for raw `pwrite` loops.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    /// `len` bytes (a multiple of [`BLOCK`]) filled with a repeating pattern.
    pub fn new(len: usize) -> AlignedBuf {
        assert!(
            len > 0 && len % BLOCK == 0,
            "length {len} is not a whole number of blocks"
        );
        let layout = std::alloc::Layout::from_size_align(len, BLOCK).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc(layout) };
        let ptr = std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        let mut buf = AlignedBuf { ptr, layout };
        for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
            *b = (i % 253) as u8;
        }
        buf
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` owns `layout.size()` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` owns `layout.size()` bytes and we hold `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Runs `count` futures made by `make(i)` with at most `depth` in flight,
/// in a single task (the first error ends the run once the in-flight ones
/// finish, as they may own DMA buffers).
pub async fn run_window<F, T, E>(
    count: usize,
    depth: usize,
    mut make: impl FnMut(usize) -> F,
) -> Result<Vec<T>, E>
where
    F: Future<Output = Result<T, E>>,
{
    let mut in_flight: Vec<Pin<Box<F>>> = Vec::with_capacity(depth);
    let mut next = 0;
    let mut out = Vec::with_capacity(count);
    let mut first_err = None;
    loop {
        while in_flight.len() < depth && next < count && first_err.is_none() {
            in_flight.push(Box::pin(make(next)));
            next += 1;
        }
        if in_flight.is_empty() {
            break;
        }
        let (result, idx) = futures_lite::future::poll_fn(|cx| {
            for (i, f) in in_flight.iter_mut().enumerate() {
                if let Poll::Ready(r) = f.as_mut().poll(cx) {
                    return Poll::Ready((r, i));
                }
            }
            Poll::Pending
        })
        .await;
        // `remove`, not `swap_remove`: keep the older futures polled first.
        drop(in_flight.remove(idx));
        match result {
            Ok(v) => out.push(v),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(out), Err)
}

/// A latency histogram in nanoseconds (1 ns .. 60 s, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(d.as_nanos().min(u128::from(u64::MAX)) as u64);
}

/// Percentiles of one latency run, in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

/// Formats microseconds compactly: `87.3`, `1234`, `12.3 ms`.
pub fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{us:.0}")
    } else {
        format!("{us:.1}")
    }
}

/// Megabytes (10^6 bytes) per second.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

/// A snapshot for telling how busy the rest of the machine was during a
/// measurement: all CPUs' busy time (`/proc/stat`) and this process's.
#[derive(Clone, Copy, Debug)]
pub struct CpuSnapshot {
    at: std::time::Instant,
    machine_busy_s: f64,
    own_s: f64,
}

impl CpuSnapshot {
    pub fn now() -> CpuSnapshot {
        CpuSnapshot {
            at: std::time::Instant::now(),
            machine_busy_s: machine_busy_seconds().unwrap_or(0.0),
            own_s: own_cpu_seconds(),
        }
    }

    /// CPU used outside this process since the snapshot, in cores (0..nproc).
    /// It includes kernel threads, so some of the kernel's I/O work for this
    /// process (completion workqueues, interrupts) shows up here too.
    pub fn others_cores(&self) -> f64 {
        let now = CpuSnapshot::now();
        let wall = now.at.duration_since(self.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        ((now.machine_busy_s - self.machine_busy_s) - (now.own_s - self.own_s)).max(0.0) / wall
    }
}

/// Busy (non-idle, non-iowait) CPU seconds of all CPUs since boot.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| !matches!(i, 3 | 4) && *i < 8)
        .map(|(_, v)| v)
        .sum();
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(busy as f64 / hz)
}

/// User + system CPU seconds of this process (all its threads).
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: `ru` is a valid out-pointer for getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// User + system CPU seconds of another process (all its threads), from
/// `/proc/PID/stat`; `None` once it is gone or unreadable.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields are
    // counted from the last ')'. After it: state (3) ... utime (14), stime (15).
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) as f64 / hz)
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// A minimal JSON value, enough for bench reports.
#[derive(Clone, Debug)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn obj<K: Into<String>>(fields: impl IntoIterator<Item = (K, Json)>) -> Json {
        Json::Obj(fields.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    fn write(&self, out: &mut String, indent: usize) {
        use std::fmt::Write;
        let pad = |out: &mut String, n: usize| out.extend(std::iter::repeat_n(' ', n));
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) if n.is_finite() => {
                let _ = write!(out, "{}", (n * 1000.0).round() / 1000.0);
            }
            Json::Num(_) => out.push_str("null"),
            Json::Str(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        c if (c as u32) < 0x20 => {
                            let _ = write!(out, "\\u{:04x}", c as u32);
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    pad(out, indent + 2);
                    item.write(out, indent + 2);
                }
                if !items.is_empty() {
                    out.push('\n');
                    pad(out, indent);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    pad(out, indent + 2);
                    Json::Str(k.clone()).write(out, indent + 2);
                    out.push_str(": ");
                    v.write(out, indent + 2);
                }
                if !fields.is_empty() {
                    out.push('\n');
                    pad(out, indent);
                }
                out.push('}');
            }
        }
    }
}

impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        self.write(&mut s, 0);
        f.write_str(&s)
    }
}

impl From<Latency> for Json {
    fn from(l: Latency) -> Json {
        Json::obj([
            ("samples", Json::Num(l.samples as f64)),
            ("p50_us", Json::Num(l.p50_us)),
            ("p99_us", Json::Num(l.p99_us)),
            ("p999_us", Json::Num(l.p999_us)),
            ("max_us", Json::Num(l.max_us)),
            ("mean_us", Json::Num(l.mean_us)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_and_nests() {
        let j = Json::obj([
            ("a", Json::Num(1.5)),
            ("b", Json::str("x\"y")),
            ("c", Json::Arr(vec![Json::Bool(true), Json::Null])),
        ]);
        let s = j.to_string();
        assert!(s.contains("\"a\": 1.5"));
        assert!(s.contains("\"x\\\"y\""));
        assert!(s.contains("true"));
    }

    #[test]
    fn latency_percentiles_in_microseconds() {
        let mut h = new_histogram();
        for i in 1..=1000u64 {
            record(&mut h, Duration::from_micros(i));
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(l.samples, 1000);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 2.0, "{l:?}");
    }

    #[test]
    fn process_cpu_seconds_reads_this_process() {
        // Burn a little CPU so the count is not zero at tick resolution.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let own = process_cpu_seconds(std::process::id()).expect("own /proc stat");
        assert!(own > 0.0 && own < 1e6, "{own}");
        assert!(process_cpu_seconds(u32::MAX).is_none());
    }

    #[test]
    fn aligned_buf_is_aligned() {
        let b = AlignedBuf::new(2 * BLOCK);
        assert_eq!(b.as_slice().as_ptr() as usize % BLOCK, 0);
        assert_eq!(b.as_slice().len(), 2 * BLOCK);
    }
}
