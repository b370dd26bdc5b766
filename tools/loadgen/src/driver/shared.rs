//! State shared by every thread of a run: the clock, the run's window, counters, and the
//! group's consumed position per partition. Everything here is atomic or set once.

use ferrolog_loadgen::payload::Header;
use ferrolog_loadgen::schedule::Window;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

/// Client warnings and errors printed on stderr; later ones are only counted.
const NOTES_PRINTED_MAX: usize = 50;

/// Locks `m`, also after a thread panicked holding it (the counters inside stay usable).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Warnings and errors of the clients and threads, printed on stderr up to a bound.
#[derive(Default)]
pub struct Notes {
    printed: AtomicUsize,
    client_errors: AtomicU64,
}

impl Notes {
    pub fn say(&self, line: impl std::fmt::Display) {
        let n = self.printed.fetch_add(1, Ordering::Relaxed);
        if n < NOTES_PRINTED_MAX {
            eprintln!("{line}");
        } else if n == NOTES_PRINTED_MAX {
            eprintln!("(further client warnings and errors are not printed)");
        }
    }

    /// librdkafka's error callback.
    pub fn client_error(&self, role: &str, error: &KafkaError, reason: &str) {
        self.client_errors.fetch_add(1, Ordering::Relaxed);
        self.say(format_args!("[{role} error] {error}: {reason}"));
    }

    /// librdkafka's log callback: warnings and worse are printed.
    pub fn client_log(&self, role: &str, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let serious = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
                | RDKafkaLogLevel::Warning
        );
        if serious {
            self.say(format_args!("[{role} {level:?}] {fac}: {message}"));
        }
    }

    pub fn client_errors(&self) -> u64 {
        self.client_errors.load(Ordering::Relaxed)
    }
}

/// The shared state of a run.
pub struct Shared {
    base: Instant,
    window: OnceLock<Window>,
    pub notes: std::sync::Arc<Notes>,
    pub topic: String,
    pub message_bytes: usize,
    /// Per producer: sequence numbers handed to `send` so far. Stored before the send, so a
    /// receipt with a higher one cannot be this run's.
    pub issued: Vec<AtomicU64>,
    /// Sends the client accepted.
    pub sent: AtomicU64,
    /// Of those, intended within the measurement.
    pub sent_measured: AtomicU64,
    /// Sends the client refused (other than a full queue).
    pub send_errors: AtomicU64,
    /// Due messages never sent.
    pub schedule_missed: AtomicU64,
    /// Delivery reports without error.
    pub acked: AtomicU64,
    /// Failed delivery reports.
    pub delivery_failures: AtomicU64,
    /// Receipts of this run's messages.
    pub consumed: AtomicU64,
    /// Receipts of other messages.
    pub foreign: AtomicU64,
    /// Per partition: the next offset the group will consume (the highest offset received + 1,
    /// from the topic's end offset at start). A consumer newly assigned a partition starts here.
    positions: Vec<AtomicI64>,
    /// Per partition: the highest acknowledged offset + 1 (the start offset until then).
    acked_end: Vec<AtomicI64>,
    pub stop_consumers: AtomicBool,
}

impl Shared {
    pub fn new(
        notes: std::sync::Arc<Notes>,
        topic: String,
        message_bytes: usize,
        producers: u32,
        start_offsets: &[i64],
    ) -> Shared {
        Shared {
            base: Instant::now(),
            window: OnceLock::new(),
            notes,
            topic,
            message_bytes,
            issued: (0..producers).map(|_| AtomicU64::new(0)).collect(),
            sent: AtomicU64::new(0),
            sent_measured: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            schedule_missed: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            delivery_failures: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            positions: start_offsets.iter().map(|&o| AtomicI64::new(o)).collect(),
            acked_end: start_offsets.iter().map(|&o| AtomicI64::new(o)).collect(),
            stop_consumers: AtomicBool::new(false),
        }
    }

    /// Nanoseconds since the run's base instant (monotonic, shared by every thread).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The run's window, once the producers are about to start.
    pub fn window(&self) -> Option<&Window> {
        self.window.get()
    }

    pub fn set_window(&self, window: Window) {
        assert!(self.window.set(window).is_ok(), "the run's window was set twice");
    }

    fn partition_index(&self, partition: i32) -> Option<usize> {
        usize::try_from(partition)
            .ok()
            .filter(|&p| p < self.positions.len())
    }

    pub fn position(&self, partition: i32) -> Option<i64> {
        Some(self.positions[self.partition_index(partition)?].load(Ordering::Acquire))
    }

    /// The group received `offset` of `partition`.
    pub fn consumed_offset(&self, partition: i32, offset: i64) {
        if let Some(p) = self.partition_index(partition) {
            self.positions[p].fetch_max(offset.saturating_add(1), Ordering::AcqRel);
        }
    }

    /// `offset` of `partition` was acknowledged.
    pub fn acked_offset(&self, partition: i32, offset: i64) {
        if let (Some(p), true) = (self.partition_index(partition), offset >= 0) {
            self.acked_end[p].fetch_max(offset.saturating_add(1), Ordering::AcqRel);
        }
    }

    /// Per partition, the offset the group must reach to have every acknowledged message.
    pub fn acked_ends(&self) -> Vec<i64> {
        self.acked_end.iter().map(|a| a.load(Ordering::Acquire)).collect()
    }

    /// The group's position has reached `targets` on every partition.
    pub fn reached(&self, targets: &[i64]) -> bool {
        self.positions
            .iter()
            .zip(targets)
            .all(|(pos, &target)| pos.load(Ordering::Acquire) >= target)
    }

    /// A received message with this header was sent by this run.
    pub fn is_ours(&self, h: &Header) -> bool {
        self.issued
            .get(usize::from(h.producer))
            .is_some_and(|issued| h.seq < issued.load(Ordering::Acquire))
    }
}
