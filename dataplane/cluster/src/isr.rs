//! One shard's copy of the in-sync replicas of the replicated partitions
//! this node leads, whichever shard owns them, for Metadata answered on any
//! shard. Each owner shard's ticker sends every shard a partition's ISR
//! when it changes (`replicated::publish_isr`), numbered by the owner (a
//! partition's owner never changes while the node runs): messages of one
//! partition may arrive out of order when a shard's channel is full, and an
//! older one must not overwrite a newer one.
//!
//! Memory: one entry per partition of the metadata this node has led since
//! the entry's topic was last named; `retain` drops the others.

use ferrolog_model::{NodeId, Ntp};
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct IsrCache {
    /// The owner's sequence number of the last message, and the ISR it
    /// carried (empty: the replica does not lead).
    entries: HashMap<Ntp, (u64, Vec<NodeId>)>,
}

impl IsrCache {
    /// The last ISR published for `ntp`, if its replica leads.
    pub fn get(&self, ntp: &Ntp) -> Option<&[NodeId]> {
        self.entries
            .get(ntp)
            .map(|(_, isr)| isr.as_slice())
            .filter(|isr| !isr.is_empty())
    }

    /// A message from `ntp`'s owner shard. An empty ISR (not leading) is
    /// kept as an entry so that an older message cannot bring back an ISR.
    pub fn set(&mut self, ntp: Ntp, seq: u64, isr: Vec<NodeId>) {
        if self.entries.get(&ntp).is_some_and(|(at, _)| *at > seq) {
            return;
        }
        self.entries.insert(ntp, (seq, isr));
    }

    /// Keeps the entries of partitions `named` says exist.
    pub fn retain(&mut self, named: impl Fn(&Ntp) -> bool) {
        self.entries.retain(|ntp, _| named(ntp));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_message_does_not_overwrite_a_newer_one() {
        let mut c = IsrCache::default();
        let t = Ntp::new("t", 0);
        c.set(t.clone(), 2, vec![NodeId(0), NodeId(1)]);
        c.set(t.clone(), 1, vec![NodeId(0)]);
        assert_eq!(c.get(&t), Some(&[NodeId(0), NodeId(1)][..]));
        c.set(t.clone(), 3, Vec::new());
        assert_eq!(c.get(&t), None, "not leading");
        c.set(t.clone(), 2, vec![NodeId(0)]);
        assert_eq!(c.get(&t), None, "an older ISR does not come back");
        c.set(t.clone(), 4, vec![NodeId(0)]);
        assert_eq!(c.get(&t), Some(&[NodeId(0)][..]));
        c.retain(|n| n.topic != "t");
        assert_eq!(c.get(&t), None);
        c.set(t.clone(), 1, vec![NodeId(0)]);
        assert_eq!(c.get(&t), Some(&[NodeId(0)][..]), "a dropped topic starts afresh");
    }
}
