//! ferrolog-loadgen: an OpenMessaging-Benchmark-style load generator for any Kafka-compatible
//! broker, driven through librdkafka (a real client, so numbers compare across brokers).
//!
//! This library holds the pure parts, unit-tested without a broker: option parsing and
//! validation ([`options`]), the message header ([`payload`]), the open-loop send schedule and
//! the run's phases ([`schedule`]), latency histograms ([`stats`]), per-message delivery and
//! receipt bookkeeping ([`tracker`]), the report and its JSON ([`report`]) and the latency
//! percentile plot ([`svg`]). The `ferrolog-loadgen` binary wires them to librdkafka clients on
//! std threads: nothing here spawns a thread, touches the network or reads a clock; times are
//! nanoseconds since a base instant the caller owns.

pub mod options;
pub mod payload;
pub mod report;
pub mod schedule;
pub mod stats;
pub mod svg;
pub mod tracker;
