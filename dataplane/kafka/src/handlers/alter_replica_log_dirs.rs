//! AlterReplicaLogDirs (API 34): a node has one log directory
//! (`--data-dir`), so replicas never move between directories. Per
//! partition: a path other than the data directory (a relative path
//! included) is LOG_DIR_NOT_FOUND (57); the data directory itself, for a
//! replica this node holds, is NONE (it is already there); a partition this
//! node holds no replica of is REPLICA_NOT_AVAILABLE (9), an unknown one
//! UNKNOWN_TOPIC_OR_PARTITION.

use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::registry::Versions;
use crate::topics;
use ferrolog_model::PartitionId;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_replica_log_dirs_response::{
    AlterReplicaLogDirPartitionResult, AlterReplicaLogDirTopicResult,
};
use kafka_protocol::messages::{AlterReplicaLogDirsRequest, AlterReplicaLogDirsResponse, TopicName};
use std::path::Path;

pub const VERSIONS: Versions = Versions::new(1, 2);

/// Whether `path` names the data directory (as given or canonical). Kafka's
/// log directories are absolute paths; a relative one names none.
fn is_data_dir(path: &str, data_dir: &Path) -> bool {
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    if !Path::new(path).is_absolute() {
        return false;
    }
    Path::new(path) == data_dir || canonical(Path::new(path)).is_some_and(|p| Some(p) == canonical(data_dir))
}

pub fn handle(ctx: &Ctx, req: AlterReplicaLogDirsRequest) -> AlterReplicaLogDirsResponse {
    let table = ctx.shard.topics();
    let me = ctx.shard.config.node_id;
    let altered = ctx.cluster_allowed(op::ALTER);
    let mut results = Vec::new();
    for dir in &req.dirs {
        let same_dir = is_data_dir(dir.path.as_str(), &ctx.shard.config.data_dir);
        for t in &dir.topics {
            let name = t.name.0.to_string();
            let partitions = t
                .partitions
                .iter()
                .map(|&p| {
                    let assignment = if topics::is_internal(&name) {
                        None
                    } else {
                        table.get(&name).and_then(|m| m.assignment(PartitionId(p)))
                    };
                    let error = match assignment {
                        _ if !altered => Some(ResponseError::ClusterAuthorizationFailed),
                        None => Some(ResponseError::UnknownTopicOrPartition),
                        Some(a) if !a.replicas.contains(&me) => Some(ResponseError::ReplicaNotAvailable),
                        Some(_) if !same_dir => Some(ResponseError::LogDirNotFound),
                        Some(_) => None,
                    };
                    AlterReplicaLogDirPartitionResult::default()
                        .with_partition_index(p)
                        .with_error_code(error.map_or(0, |e| e.code()))
                })
                .collect();
            results.push(
                AlterReplicaLogDirTopicResult::default()
                    .with_topic_name(TopicName(str_bytes(name)))
                    .with_partitions(partitions),
            );
        }
    }
    AlterReplicaLogDirsResponse::default().with_results(results)
}
