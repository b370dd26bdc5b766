//! One module per Kafka API. Each declares `VERSIONS` (listed in
//! `registry::SUPPORTED`) and a `handle` that turns a decoded request into a
//! response. Handlers run on the shard that owns the connection and reach
//! partitions through `shard::scatter` and topics through the controller.

use crate::frame::Request;
use crate::shard::Shard;
use kafka_protocol::messages::{RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use std::rc::Rc;

pub mod alter_configs;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_topics;
pub mod describe_configs;
pub mod fetch;
pub mod incremental_alter_configs;
pub mod list_offsets;
pub mod metadata;
pub mod produce;

/// What a handler needs besides its request body.
pub struct Ctx {
    pub shard: Rc<Shard>,
    pub version: i16,
}

/// Kafka config resource types.
pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;

pub fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// Runs the handler for `req`. `None` means no response is sent (Produce with
/// acks=0).
pub async fn dispatch(shard: Rc<Shard>, req: Request) -> Option<ResponseKind> {
    let ctx = Ctx {
        shard,
        version: req.header.request_api_version,
    };
    Some(match req.body {
        RequestKind::ApiVersions(r) => ResponseKind::ApiVersions(api_versions::handle(&ctx, r)),
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata::handle(&ctx, r).await),
        RequestKind::Produce(r) => ResponseKind::Produce(produce::handle(&ctx, r).await?),
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch::handle(&ctx, r).await),
        RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(list_offsets::handle(&ctx, r).await),
        RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(create_topics::handle(&ctx, r).await),
        RequestKind::DeleteTopics(r) => ResponseKind::DeleteTopics(delete_topics::handle(&ctx, r).await),
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(create_partitions::handle(&ctx, r).await)
        }
        RequestKind::DescribeConfigs(r) => ResponseKind::DescribeConfigs(describe_configs::handle(&ctx, r)),
        RequestKind::AlterConfigs(r) => ResponseKind::AlterConfigs(alter_configs::handle(&ctx, r).await),
        RequestKind::IncrementalAlterConfigs(r) => {
            ResponseKind::IncrementalAlterConfigs(incremental_alter_configs::handle(&ctx, r).await)
        }
        other => unreachable!("decoder admitted an unregistered api: {other:?}"),
    })
}
