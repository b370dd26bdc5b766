//! DescribeAcls (API 29): the bindings a filter selects, grouped by
//! resource pattern, from this node's metadata snapshot. Needs DESCRIBE on
//! the cluster.

use super::{str_bytes, Ctx};
use crate::authz::{self, op};
use crate::registry::Versions;
use ferrolog_controlplane::acls::AclFilter;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{DescribeAclsRequest, DescribeAclsResponse};

pub const VERSIONS: Versions = Versions::new(1, 3);

fn refused(code: ResponseError, msg: String) -> DescribeAclsResponse {
    DescribeAclsResponse::default()
        .with_error_code(code.code())
        .with_error_message(Some(str_bytes(msg)))
}

pub fn handle(ctx: &Ctx, req: DescribeAclsRequest) -> DescribeAclsResponse {
    if !ctx.cluster_allowed(op::DESCRIBE) {
        return refused(
            ResponseError::ClusterAuthorizationFailed,
            authz::denied("DESCRIBE", "the cluster (DescribeAcls)"),
        );
    }
    let filter = AclFilter {
        resource_type: req.resource_type_filter,
        resource_name: req.resource_name_filter.map(|s| s.to_string()),
        pattern_type: req.pattern_type_filter,
        principal: req.principal_filter.map(|s| s.to_string()),
        host: req.host_filter.map(|s| s.to_string()),
        operation: req.operation,
        permission: req.permission_type,
    };
    if let Err(e) = filter.validate() {
        return refused(ResponseError::InvalidRequest, e.to_string());
    }
    let meta = ctx.shard.metadata();
    // Bindings are ordered by resource type, name and pattern type first,
    // so one resource's bindings are adjacent.
    let mut resources: Vec<DescribeAclsResource> = Vec::new();
    for b in meta.acls.describe(&filter) {
        let same = resources.last().is_some_and(|r| {
            r.resource_type == b.resource_type
                && r.resource_name.as_str() == b.resource_name
                && r.pattern_type == b.pattern_type
        });
        if !same {
            resources.push(
                DescribeAclsResource::default()
                    .with_resource_type(b.resource_type)
                    .with_resource_name(str_bytes(b.resource_name.clone()))
                    .with_pattern_type(b.pattern_type),
            );
        }
        resources.last_mut().expect("pushed above").acls.push(
            AclDescription::default()
                .with_principal(str_bytes(b.principal.clone()))
                .with_host(str_bytes(b.host.clone()))
                .with_operation(b.operation)
                .with_permission_type(b.permission),
        );
    }
    DescribeAclsResponse::default()
        .with_error_message(None)
        .with_resources(resources)
}
