//! The binary's side of a run: librdkafka clients on std threads, wired to the library.

pub mod consumer;
pub mod producer;
pub mod setup;
pub mod shared;
