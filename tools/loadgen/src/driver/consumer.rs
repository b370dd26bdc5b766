//! One consumer: a thread polling its own librdkafka `BaseConsumer`, a member of the run's
//! consumer group. It measures end-to-end latency and records receipts in its
//! [`ConsumerStats`] (under a mutex, read once a second by the reporter).
//!
//! Offsets are never committed. Instead the rebalance callback (run by librdkafka inside
//! `poll`, on this thread) places every newly assigned partition at the group's position, which
//! all consumers of this process advance together: a partition that moves between members
//! resumes exactly where the previous owner stopped, so a rebalance causes neither duplicates
//! nor skipped messages, and nothing depends on the broker's offset storage.

use super::shared::{lock, Notes, Shared};
use ferrolog_loadgen::payload::Header;
use ferrolog_loadgen::stats::{new_histogram, record_ns};
use ferrolog_loadgen::tracker::ReceiveLog;
use hdrhistogram::Histogram;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest a consumer blocks in `poll` before it checks whether to stop.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// What one consumer measured.
pub struct ConsumerStats {
    /// End-to-end latency of the receipts since the reporter last looked.
    pub interval_e2e: Histogram<u64>,
    pub interval_consumed: u64,
    /// End-to-end latency of the messages sent within the measurement.
    pub e2e: Histogram<u64>,
    /// Receipts (of this run's messages) during the measurement.
    pub measured_consumed: u64,
    pub receipts: ReceiveLog,
}

impl ConsumerStats {
    pub fn new() -> ConsumerStats {
        ConsumerStats {
            interval_e2e: new_histogram(),
            interval_consumed: 0,
            e2e: new_histogram(),
            measured_consumed: 0,
            receipts: ReceiveLog::default(),
        }
    }
}

/// librdkafka callbacks of one consumer.
pub struct ConsumerCtx {
    pub index: u32,
    pub notes: Arc<Notes>,
    pub shared: Arc<Shared>,
    /// Partitions assigned now.
    pub assigned: AtomicI64,
    /// Assignments received (an empty one included).
    pub assignments: AtomicU64,
}

impl ConsumerCtx {
    pub fn new(index: u32, notes: Arc<Notes>, shared: Arc<Shared>) -> ConsumerCtx {
        ConsumerCtx {
            index,
            notes,
            shared,
            assigned: AtomicI64::new(0),
            assignments: AtomicU64::new(0),
        }
    }

    fn role(&self) -> String {
        format!("consumer {}", self.index)
    }
}

impl ClientContext for ConsumerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.notes.client_log(&self.role(), level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.notes.client_error(&self.role(), &error, reason);
    }
}

impl ConsumerContext for ConsumerCtx {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let n = tpl.count() as i64;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                for (topic, partition) in &partitions {
                    let position = (*topic == self.shared.topic)
                        .then(|| self.shared.position(*partition))
                        .flatten();
                    if let Some(offset) = position {
                        if let Err(e) = tpl.set_partition_offset(topic, *partition, Offset::Offset(offset)) {
                            self.notes.say(format_args!(
                                "{}: cannot place {topic}/{partition} at {offset}: {e}",
                                self.role()
                            ));
                        }
                    }
                }
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match result {
                    Ok(()) if cooperative => {
                        self.assigned.fetch_add(n, Ordering::AcqRel);
                    }
                    Ok(()) => self.assigned.store(n, Ordering::Release),
                    Err(e) => self
                        .notes
                        .say(format_args!("{}: assign failed: {e}", self.role())),
                }
                self.assignments.fetch_add(1, Ordering::AcqRel);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    self.notes
                        .say(format_args!("{}: unassign failed: {e}", self.role()));
                }
                if cooperative {
                    self.assigned.fetch_sub(n, Ordering::AcqRel);
                } else {
                    self.assigned.store(0, Ordering::Release);
                }
            }
            other => {
                self.notes.say(format_args!(
                    "{}: rebalance error: {}",
                    self.role(),
                    RDKafkaErrorCode::from(other)
                ));
                if let Err(e) = consumer.unassign() {
                    self.notes
                        .say(format_args!("{}: unassign failed: {e}", self.role()));
                }
                self.assigned.store(0, Ordering::Release);
            }
        }
    }
}

pub fn spawn(
    consumer: BaseConsumer<ConsumerCtx>,
    stats: Arc<Mutex<ConsumerStats>>,
    shared: Arc<Shared>,
) -> std::io::Result<JoinHandle<()>> {
    let name = format!("consumer-{}", consumer.context().index);
    std::thread::Builder::new()
        .name(name)
        .spawn(move || run(&consumer, &stats, &shared))
}

fn run(consumer: &BaseConsumer<ConsumerCtx>, stats: &Mutex<ConsumerStats>, shared: &Shared) {
    while !shared.stop_consumers.load(Ordering::Acquire) {
        let message = match consumer.poll(POLL_TIMEOUT) {
            None => continue,
            Some(Err(e)) => {
                shared
                    .notes
                    .say(format_args!("consumer {}: {e}", consumer.context().index));
                continue;
            }
            Some(Ok(m)) => m,
        };
        let now = shared.now_ns();
        shared.consumed_offset(message.partition(), message.offset());
        let header = message
            .payload()
            .filter(|p| p.len() == shared.message_bytes)
            .and_then(Header::read)
            .filter(|h| shared.is_ours(h));
        let Some(h) = header else {
            shared.foreign.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        shared.consumed.fetch_add(1, Ordering::Relaxed);
        let window = shared.window();
        let e2e = now.saturating_sub(h.send_ns);
        let mut st = lock(stats);
        st.receipts.record(h.producer, h.seq);
        st.interval_consumed += 1;
        record_ns(&mut st.interval_e2e, e2e);
        if window.is_some_and(|w| w.phase(now) == ferrolog_loadgen::schedule::Phase::Measure) {
            st.measured_consumed += 1;
        }
        if window.is_some_and(|w| w.measured(h.send_ns)) {
            record_ns(&mut st.e2e, e2e);
        }
    }
}
