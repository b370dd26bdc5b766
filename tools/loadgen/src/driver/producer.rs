//! One producer: a thread that paces and sends messages through its own librdkafka
//! `ThreadedProducer`, whose polling thread runs the delivery callback that measures publish
//! latency and records acknowledgements. The thread and the callback share the producer's
//! [`ProducerStats`] under a mutex (also read once a second by the reporter).

use super::shared::{lock, Notes, Shared};
use ferrolog_loadgen::payload::{message_buffer, Header, KeyChooser, SEQ_MAX};
use ferrolog_loadgen::schedule::{OpenSchedule, Window};
use ferrolog_loadgen::stats::{new_histogram, record_ns};
use ferrolog_loadgen::tracker::{AckLog, PARTITION_MAX};
use hdrhistogram::Histogram;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a producer waits before retrying a send refused with a full queue.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_micros(200);
/// Timer slack of the producer threads, ns: sleeps end within this of the intended time
/// (Linux's default of 50 µs would show up in sub-millisecond latencies).
const TIMER_SLACK_NS: libc::c_ulong = 1_000;
/// Failed deliveries described on stderr per producer; later ones are only counted.
const FAILURES_PRINTED_MAX: u64 = 5;

/// What one producer measured.
pub struct ProducerStats {
    /// Publish latency (corrected) of the delivery reports since the reporter last looked.
    pub interval_publish: Histogram<u64>,
    pub interval_acked: u64,
    /// Publish latency of the measured messages, from the intended send time.
    pub publish: Histogram<u64>,
    /// Publish latency of the measured messages, from the `send` call.
    pub publish_uncorrected: Histogram<u64>,
    pub acked: u64,
    pub failed: u64,
    pub measured_acked: u64,
    pub acks: AckLog,
}

impl ProducerStats {
    pub fn new() -> ProducerStats {
        ProducerStats {
            interval_publish: new_histogram(),
            interval_acked: 0,
            publish: new_histogram(),
            publish_uncorrected: new_histogram(),
            acked: 0,
            failed: 0,
            measured_acked: 0,
            acks: AckLog::default(),
        }
    }
}

/// librdkafka callbacks of one producer.
pub struct ProducerCtx {
    pub index: u32,
    pub notes: Arc<Notes>,
    pub shared: Arc<Shared>,
    pub stats: Arc<Mutex<ProducerStats>>,
}

impl ClientContext for ProducerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.notes
            .client_log(&format!("producer {}", self.index), level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.notes
            .client_error(&format!("producer {}", self.index), &error, reason);
    }
}

impl ProducerContext for ProducerCtx {
    /// When `send` was called, ns since the base instant.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        let now = self.shared.now_ns();
        let (message, error) = match result {
            Ok(m) => (m, None),
            Err((e, m)) => (m, Some(e)),
        };
        let Some(h) = message.payload().and_then(Header::read) else {
            self.notes.say(format_args!(
                "producer {}: a delivery report without this tool's header",
                self.index
            ));
            return;
        };
        let measured = self.shared.window().is_some_and(|w| w.measured(h.send_ns));
        let mut st = lock(&self.stats);
        match (error, u16::try_from(message.partition())) {
            (None, Ok(partition)) if partition <= PARTITION_MAX => {
                self.shared.acked_offset(message.partition(), message.offset());
                st.acks.acked(h.seq, partition);
                self.shared.acked.fetch_add(1, Ordering::Relaxed);
                st.acked += 1;
                st.interval_acked += 1;
                let corrected = now.saturating_sub(h.send_ns);
                record_ns(&mut st.interval_publish, corrected);
                if measured {
                    st.measured_acked += 1;
                    record_ns(&mut st.publish, corrected);
                    record_ns(&mut st.publish_uncorrected, now.saturating_sub(sent_ns as u64));
                }
            }
            (error, _) => {
                st.acks.failed(h.seq);
                st.failed += 1;
                self.shared.delivery_failures.fetch_add(1, Ordering::Relaxed);
                if st.failed <= FAILURES_PRINTED_MAX {
                    let why = error.map_or_else(
                        || format!("acknowledged on partition {} out of range", message.partition()),
                        |e| e.to_string(),
                    );
                    self.notes.say(format_args!(
                        "producer {}: delivery of message {} failed: {why}",
                        self.index, h.seq
                    ));
                }
            }
        }
    }
}

/// What one producer thread does.
pub struct ProducerPlan {
    pub index: u32,
    /// The open-loop schedule; `None` = closed loop.
    pub schedule: Option<OpenSchedule>,
    pub keys: KeyChooser,
    pub filler_seed: u64,
}

/// Lowers this thread's timer slack so that sleeps end close to the intended time.
fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only affects this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0);
    }
}

pub fn spawn(
    plan: ProducerPlan,
    producer: ThreadedProducer<ProducerCtx>,
    shared: Arc<Shared>,
    window: Window,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("producer-{}", plan.index))
        .spawn(move || run(plan, producer, &shared, window))
}

fn run(mut plan: ProducerPlan, producer: ThreadedProducer<ProducerCtx>, shared: &Shared, window: Window) {
    tighten_timer_slack();
    let index =
        u16::try_from(plan.index).unwrap_or_else(|_| panic!("producer index {} too large", plan.index));
    let issued = &shared.issued[usize::from(index)];
    let mut buf = message_buffer(shared.message_bytes, plan.filler_seed);
    let mut seq = 0u64;
    'messages: loop {
        let now = shared.now_ns();
        let intended = match &plan.schedule {
            Some(s) => s.intended_ns(seq),
            None => now,
        };
        if intended >= window.end_ns || seq > SEQ_MAX {
            break;
        }
        if now >= window.drain_deadline_ns {
            break;
        }
        if intended > now {
            std::thread::sleep(Duration::from_nanos(intended - now));
        }
        Header {
            send_ns: intended,
            producer: index,
            seq,
        }
        .write(&mut buf);
        issued.store(seq + 1, Ordering::Release);
        let key = plan.keys.next_key();
        loop {
            let sent_ns = shared.now_ns();
            let mut record = BaseRecord::with_opaque_to(&shared.topic, sent_ns as usize).payload(&buf[..]);
            if let Some(k) = key {
                record = record.key(k);
            }
            match producer.send(record) {
                Ok(()) => {
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                    if window.measured(intended) {
                        shared.sent_measured.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if sent_ns < window.drain_deadline_ns =>
                {
                    std::thread::sleep(QUEUE_FULL_BACKOFF);
                }
                Err((e, _)) => {
                    let n = shared.send_errors.fetch_add(1, Ordering::Relaxed);
                    if n < FAILURES_PRINTED_MAX {
                        shared.notes.say(format_args!(
                            "producer {}: send of message {seq} refused: {e}",
                            plan.index
                        ));
                    }
                    if sent_ns >= window.drain_deadline_ns {
                        seq += 1;
                        break 'messages;
                    }
                    break;
                }
            }
        }
        seq += 1;
    }
    // Messages 0..seq were sent or refused; the rest of the schedule, if any, never went out.
    if let Some(s) = &plan.schedule {
        let missed = s.count_before(window.end_ns).saturating_sub(seq);
        shared.schedule_missed.fetch_add(missed, Ordering::Relaxed);
    }
    // Wait for the outstanding delivery reports until the drain deadline; dropping the producer
    // then purges what is left, whose reports come back as failures.
    let left = window.drain_deadline_ns.saturating_sub(shared.now_ns());
    if let Err(e) = producer.flush(Duration::from_nanos(left)) {
        shared.notes.say(format_args!(
            "producer {}: not every message was delivered by the drain deadline: {e}",
            plan.index
        ));
    }
    drop(producer);
}
