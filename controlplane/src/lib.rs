//! ferrolog-controlplane: the cluster metadata and the code that changes it.
//!
//! `topics` is the topic table (names, ids, partition counts, configs) and
//! its validation. Pure data: no I/O beyond the table's own file, no async.

pub mod topics;
