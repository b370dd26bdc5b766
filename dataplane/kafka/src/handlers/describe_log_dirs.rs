//! DescribeLogDirs (API 35): the node's one log directory (`--data-dir`)
//! with the size of each partition replica it holds; offset lag 0 and
//! is_future false (replicas never move between directories here); total
//! and usable bytes of its file system from statvfs(3).

use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::registry::Versions;
use crate::topics;
use ferrolog_cluster::admin_ops::log_size_local;
use ferrolog_cluster::ops::scatter;
use ferrolog_model::Ntp;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};
use std::collections::BTreeMap;
use std::path::Path;

pub const VERSIONS: Versions = Versions::new(1, 4);

/// Total and available bytes of the file system holding `dir` (-1, -1 if
/// statvfs fails).
pub fn fs_space(dir: &Path) -> (i64, i64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return (-1, -1);
    };
    // SAFETY: `path` is a valid C string and `st` a valid out-pointer;
    // statvfs only writes into it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return (-1, -1);
    }
    let unit = st.f_frsize as i64;
    (
        (st.f_blocks as i64).saturating_mul(unit),
        (st.f_bavail as i64).saturating_mul(unit),
    )
}

pub async fn handle(ctx: &Ctx, req: DescribeLogDirsRequest) -> DescribeLogDirsResponse {
    if !ctx.cluster_allowed(op::DESCRIBE) {
        // Kafka answers no log directories; v3 and later also carry the
        // error at the top level.
        return DescribeLogDirsResponse::default()
            .with_error_code(ResponseError::ClusterAuthorizationFailed.code());
    }
    let table = ctx.shard.topics();
    let me = ctx.shard.config.node_id;
    // The replicas asked about that this node holds, per the metadata.
    let mut wanted: Vec<Ntp> = Vec::new();
    let here = |name: &str, p: i32| {
        table
            .get(name)
            .and_then(|t| t.assignment(ferrolog_model::PartitionId(p)))
            .is_some_and(|a| a.replicas.contains(&me))
    };
    match &req.topics {
        None => {
            for (name, meta) in &table.topics {
                if topics::is_internal(name) {
                    continue;
                }
                for p in 0..meta.partitions() {
                    if here(name, p) {
                        wanted.push(Ntp::new(name.clone(), p));
                    }
                }
            }
        }
        Some(ts) => {
            for t in ts {
                let name = t.topic.0.to_string();
                if topics::is_internal(&name) {
                    continue;
                }
                for &p in &t.partitions {
                    let ntp = Ntp::new(name.clone(), p);
                    if here(&name, p) && !wanted.contains(&ntp) {
                        wanted.push(ntp);
                    }
                }
            }
        }
    }
    let sizes = scatter(wanted.clone(), |n: &Ntp| n, log_size_local).await;
    let mut by_topic: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for (ntp, size) in wanted.into_iter().zip(sizes) {
        // A replica the metadata names but that is not open (yet) on its
        // shard is left out, as Kafka leaves out logs it does not have.
        let Ok(Some(size)) = size else { continue };
        by_topic.entry(ntp.topic.clone()).or_default().push(
            DescribeLogDirsPartition::default()
                .with_partition_index(ntp.partition.0)
                .with_partition_size(i64::try_from(size).unwrap_or(i64::MAX))
                .with_offset_lag(0)
                .with_is_future_key(false),
        );
    }
    let dir = &ctx.shard.config.data_dir;
    let dir_name = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
    let (total, usable) = fs_space(dir);
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(dir_name.display().to_string()))
        .with_topics(
            by_topic
                .into_iter()
                .map(|(name, partitions)| {
                    DescribeLogDirsTopic::default()
                        .with_name(TopicName(str_bytes(name)))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    if ctx.version >= 4 {
        result = result.with_total_bytes(total).with_usable_bytes(usable);
    }
    DescribeLogDirsResponse::default().with_results(vec![result])
}
