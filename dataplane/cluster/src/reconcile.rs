//! What a shard must do to make its open partitions match the metadata.
//!
//! [`plan`] is pure: given the partitions this shard should have (from the
//! published snapshot), those it has open, and, at start, the partition
//! directories found on disk, it says what to open, reconfigure, remove and
//! set aside. The partition manager carries the plan out
//! (`PartitionManager::apply_snapshot`).
//!
//! The rules that keep data safe:
//! - Only a partition that was open here and that the metadata no longer
//!   names is deleted: the metadata decided it (a topic deletion).
//! - A directory on disk that the metadata does not name and that was never
//!   opened is never turned into a topic and never deleted: it is moved
//!   aside and logged (an interrupted delete, a directory copied in by hand).
//! - Everything the metadata names is opened, creating it if missing.

use ferrolog_controlplane::topic_configs::ProducePolicy;
use ferrolog_model::{Epoch, NodeId, Ntp};
use ferrolog_storage::LogConfig;
use std::collections::{BTreeMap, BTreeSet};

/// What this shard should hold for one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub log: LogConfig,
    pub leader_epoch: Epoch,
    /// Whether this node leads the partition.
    pub leads: bool,
    /// The leader and the replica set (more than one replica: replicated).
    pub leader: NodeId,
    pub replicas: Vec<NodeId>,
    /// The topic's id (0 for internal topics).
    pub topic_id: u128,
    /// The topic's `min.insync.replicas` (used when replicated).
    pub min_insync: usize,
    /// The topic's produce-time configs (codec, timestamp type and bounds).
    pub produce: ProducePolicy,
}

/// The steps of one reconciliation, each list sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Named but not open: open (creating the directory if needed).
    pub open: Vec<Ntp>,
    /// Open and named with other settings: apply the new settings.
    pub reconfigure: Vec<Ntp>,
    /// Open but no longer named: close and delete.
    pub remove: Vec<Ntp>,
    /// On disk, never opened, not named: move aside.
    pub set_aside: Vec<Ntp>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
            && self.reconfigure.is_empty()
            && self.remove.is_empty()
            && self.set_aside.is_empty()
    }
}

/// See the module doc. `on_disk` is what a directory scan found (at start;
/// empty afterwards).
pub fn plan(
    desired: &BTreeMap<Ntp, Desired>,
    open: &BTreeMap<Ntp, Desired>,
    on_disk: &BTreeSet<Ntp>,
) -> Plan {
    let mut p = Plan::default();
    for (ntp, want) in desired {
        match open.get(ntp) {
            None => p.open.push(ntp.clone()),
            Some(have) if have != want => p.reconfigure.push(ntp.clone()),
            Some(_) => {}
        }
    }
    for ntp in open.keys() {
        if !desired.contains_key(ntp) {
            p.remove.push(ntp.clone());
        }
    }
    for ntp in on_disk {
        if !desired.contains_key(ntp) && !open.contains_key(ntp) {
            p.set_aside.push(ntp.clone());
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn want(segment_bytes: u64, epoch: i32) -> Desired {
        Desired {
            log: LogConfig {
                segment_bytes,
                ..LogConfig::default()
            },
            leader_epoch: Epoch(epoch),
            leads: epoch % 2 == 0,
            leader: NodeId(1),
            replicas: vec![NodeId(1)],
            topic_id: 0,
            min_insync: 1,
            produce: ProducePolicy::default(),
        }
    }

    fn ntp(i: u8) -> Ntp {
        Ntp::new(format!("t{}", i % 3), i32::from(i / 3))
    }

    fn map() -> impl Strategy<Value = BTreeMap<Ntp, Desired>> {
        prop::collection::btree_map(
            (0u8..12).prop_map(ntp),
            (1u64..3, 0i32..2).prop_map(|(s, e)| want(s << 20, e)),
            0..12,
        )
    }

    proptest! {
        /// Carrying out the plan on `open` gives exactly `desired`, and no
        /// directory the metadata names is removed or set aside.
        #[test]
        fn the_plan_converges_and_never_drops_a_named_partition(
            desired in map(),
            open in map(),
            disk in prop::collection::btree_set((0u8..12).prop_map(ntp), 0..12),
        ) {
            let p = plan(&desired, &open, &disk);
            let mut after = open.clone();
            for n in &p.remove {
                prop_assert!(!desired.contains_key(n));
                after.remove(n);
            }
            for n in p.open.iter().chain(&p.reconfigure) {
                after.insert(n.clone(), desired[n].clone());
            }
            prop_assert_eq!(&after, &desired);
            for n in &p.set_aside {
                prop_assert!(!desired.contains_key(n) && !open.contains_key(n));
            }
            // A second pass over the result has nothing to do.
            let on_disk_now: BTreeSet<Ntp> = after.keys().cloned().collect();
            prop_assert!(plan(&desired, &after, &on_disk_now).is_empty());
        }
    }

    #[test]
    fn only_open_partitions_are_deleted_and_unknown_directories_set_aside() {
        let mut desired = BTreeMap::new();
        desired.insert(ntp(0), want(1 << 20, 0));
        let mut open = BTreeMap::new();
        open.insert(ntp(1), want(1 << 20, 0));
        let disk: BTreeSet<Ntp> = [ntp(0), ntp(1), ntp(2)].into_iter().collect();
        let p = plan(&desired, &open, &disk);
        assert_eq!(p.open, vec![ntp(0)]);
        assert_eq!(p.remove, vec![ntp(1)]);
        assert_eq!(p.set_aside, vec![ntp(2)]);
        assert!(p.reconfigure.is_empty());
    }
}
