//! Which shard owns a partition: one answer for every shard of a node.
//!
//! Immutable once built and shared by every shard (`Arc`). By default a
//! topic's partitions go round-robin over the shards, starting at a shard
//! picked by a hash of the topic name; single partitions can be pinned to a
//! shard (balancing, tests).

use ferrolog_model::{Ntp, ShardId};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    nr_shards: usize,
    overrides: BTreeMap<Ntp, ShardId>,
}

impl Placement {
    /// Hash placement over `nr_shards` data shards.
    pub fn hashed(nr_shards: usize) -> Placement {
        assert!(nr_shards > 0, "a placement needs at least one shard");
        Placement {
            nr_shards,
            overrides: BTreeMap::new(),
        }
    }

    /// Pins `ntp` to `shard`. Panics if the shard does not exist: a
    /// programmer error.
    pub fn with_override(mut self, ntp: Ntp, shard: ShardId) -> Placement {
        assert!(
            (shard.0 as usize) < self.nr_shards,
            "override of {ntp} to shard {shard} of {}",
            self.nr_shards
        );
        self.overrides.insert(ntp, shard);
        self
    }

    pub fn nr_shards(&self) -> usize {
        self.nr_shards
    }

    /// The shard that owns `ntp`.
    pub fn owner(&self, ntp: &Ntp) -> ShardId {
        if let Some(s) = self.overrides.get(ntp) {
            return *s;
        }
        hash_owner(ntp, self.nr_shards)
    }
}

/// The default owner: partitions of one topic go round-robin over the
/// shards, starting at a shard picked by the topic name.
pub fn hash_owner(ntp: &Ntp, nr_shards: usize) -> ShardId {
    let h = u64::from(crc32c::crc32c(ntp.topic.as_bytes()));
    ShardId(((h + ntp.partition.0 as u64) % nr_shards as u64) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topics_partitions_go_round_robin() {
        let p = Placement::hashed(4);
        let owners: Vec<u32> = (0..8).map(|i| p.owner(&Ntp::new("t", i)).0).collect();
        for w in owners.windows(2) {
            assert_eq!((w[0] + 1) % 4, w[1]);
        }
        assert_eq!(Placement::hashed(1).owner(&Ntp::new("t", 3)), ShardId(0));
    }

    #[test]
    fn an_override_wins_for_its_partition_only() {
        let base = Placement::hashed(4);
        let a = Ntp::new("t", 0);
        let b = Ntp::new("t", 1);
        let moved = ShardId((base.owner(&a).0 + 2) % 4);
        let p = base.clone().with_override(a.clone(), moved);
        assert_eq!(p.owner(&a), moved);
        assert_eq!(p.owner(&b), base.owner(&b));
    }

    #[test]
    #[should_panic(expected = "override")]
    fn an_override_to_a_missing_shard_panics() {
        let _ = Placement::hashed(2).with_override(Ntp::new("t", 0), ShardId(2));
    }
}
