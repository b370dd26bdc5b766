//! The cluster metadata a node publishes to its shards.
//!
//! A `MetadataSnapshot` is immutable: the controller builds a new one after
//! every applied change and hands each shard an `Arc` of it, so a shard reads
//! it without locks and never sees a half-applied change. Its revision is the
//! topic table's, so a shard can ignore a snapshot older than the one it has.

use crate::acls::AclTable;
use crate::topics::{PartitionAssignment, TopicTable};
use ferrolog_model::{Epoch, NodeId, Ntp};
use std::sync::Arc;

/// A broker of the cluster and the address clients reach it at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broker {
    pub id: NodeId,
    pub host: String,
    /// i32, as Kafka's Metadata response carries it.
    pub port: i32,
    pub rack: Option<String>,
    /// HOST:PORT of the broker's shard 0 replication listener (shard `s`
    /// listens on that port + `s`); `None` if it registered without one.
    pub data_addr: Option<String>,
    /// IPV4:PORT of the broker's AF_XDP replication endpoint; `None`: it is
    /// reached over TCP only.
    pub xdp_addr: Option<String>,
    /// Its data shards: shard `s` sends AF_XDP datagrams with stream id `s`.
    pub shards: u32,
}

/// `Default` is the empty metadata a shard holds before the first publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataSnapshot {
    pub cluster_id: String,
    pub controller: NodeId,
    /// The live brokers of the cluster: those that are up and not removed,
    /// each once. A broker that is down or removed is absent, even while
    /// partitions still name it as a replica or leader; readers answer such
    /// a partition as offline, and placement never picks it.
    pub brokers: Vec<Broker>,
    pub topics: Arc<TopicTable>,
    /// The cluster's ACL bindings, for the authorizer on every shard.
    pub acls: Arc<AclTable>,
}

impl MetadataSnapshot {
    /// The assignment of one partition, if the topic and partition exist.
    pub fn partition(&self, ntp: &Ntp) -> Option<&PartitionAssignment> {
        self.topics.get(&ntp.topic)?.assignment(ntp.partition)
    }

    /// The partition's leader and leader epoch.
    pub fn leader(&self, ntp: &Ntp) -> Option<(NodeId, Epoch)> {
        self.partition(ntp).map(|a| (a.leader, a.leader_epoch))
    }

    /// Linear: a cluster has a handful of brokers.
    pub fn broker(&self, id: NodeId) -> Option<&Broker> {
        self.brokers.iter().find(|b| b.id == id)
    }

    /// Whether `id` is a live broker.
    pub fn is_live(&self, id: NodeId) -> bool {
        self.broker(id).is_some()
    }

    /// Id and rack of every live broker, what `placement::place` chooses
    /// among.
    pub fn placement_brokers(&self) -> Vec<(NodeId, Option<String>)> {
        self.brokers.iter().map(|b| (b.id, b.rack.clone())).collect()
    }

    /// The revision of the topic table this snapshot holds.
    pub fn revision(&self) -> u64 {
        self.topics.revision
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{apply, TopicCommand};
    use crate::topics::ConfigOverrides;

    #[test]
    fn snapshot_answers_partition_leader_and_broker_lookups() {
        let mut table = TopicTable::default();
        let cmd = TopicCommand::CreateTopic {
            name: "orders".into(),
            id: 1,
            config: ConfigOverrides::new(),
            assignments: vec![vec![NodeId(2), NodeId(1)], vec![NodeId(1), NodeId(2)]],
        };
        apply(&mut table, &cmd).expect("create");
        let broker = |id, port| Broker {
            id: NodeId(id),
            host: "127.0.0.1".into(),
            port,
            rack: None,
            data_addr: None,
            xdp_addr: None,
            shards: 1,
        };
        let snap = MetadataSnapshot {
            cluster_id: "c".into(),
            controller: NodeId(1),
            brokers: vec![broker(1, 9092), broker(2, 9093)],
            topics: Arc::new(table),
            acls: Arc::default(),
        };
        assert_eq!(snap.revision(), 1);
        assert_eq!(snap.leader(&Ntp::new("orders", 0)), Some((NodeId(2), Epoch(0))));
        assert_eq!(snap.leader(&Ntp::new("orders", 1)), Some((NodeId(1), Epoch(0))));
        assert_eq!(snap.partition(&Ntp::new("orders", 2)), None);
        assert_eq!(snap.partition(&Ntp::new("orders", -1)), None);
        assert_eq!(snap.partition(&Ntp::new("other", 0)), None);
        assert_eq!(snap.broker(NodeId(2)).map(|b| b.port), Some(9093));
        assert_eq!(snap.broker(NodeId(3)), None);
    }
}
