use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::registry::Versions;
use crate::sasl::store;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_user_scram_credentials_response::{
    CredentialInfo, DescribeUserScramCredentialsResult,
};
use kafka_protocol::messages::{DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse};

pub const VERSIONS: Versions = Versions::new(0, 0);

/// Mechanisms and iterations (never salts or salted passwords) of the named
/// users, or of every user for a null or empty list, from the cluster
/// metadata as applied on this node. Users of the node's users file are not
/// listed. A user named twice is DUPLICATE_RESOURCE, a user without
/// credentials RESOURCE_NOT_FOUND. Without DESCRIBE on the cluster the
/// answer is CLUSTER_AUTHORIZATION_FAILED and no users.
pub async fn handle(
    ctx: &Ctx,
    req: DescribeUserScramCredentialsRequest,
) -> DescribeUserScramCredentialsResponse {
    if !ctx.cluster_allowed(op::DESCRIBE) {
        // As Kafka: the error at the top and for each user named (clients
        // look a named user's result up).
        let code = ResponseError::ClusterAuthorizationFailed.code();
        let message = str_bytes(crate::authz::denied("DESCRIBE", "the cluster"));
        let results = req
            .users
            .iter()
            .flatten()
            .map(|u| {
                DescribeUserScramCredentialsResult::default()
                    .with_user(u.name.clone())
                    .with_error_code(code)
                    .with_error_message(Some(message.clone()))
            })
            .collect();
        return DescribeUserScramCredentialsResponse::default()
            .with_error_code(code)
            .with_error_message(Some(message))
            .with_results(results);
    }
    let names: Option<Vec<String>> = req
        .users
        .filter(|u| !u.is_empty())
        .map(|u| u.iter().map(|n| n.name.to_string()).collect());
    let infos = match store::describe(&ctx.shard, names.clone()).await {
        Ok(i) => i,
        Err((e, m)) => {
            return DescribeUserScramCredentialsResponse::default()
                .with_error_code(e.code())
                .with_error_message(Some(str_bytes(m)))
        }
    };
    let results = infos
        .into_iter()
        .map(|(user, creds)| {
            let r = DescribeUserScramCredentialsResult::default().with_user(str_bytes(user.clone()));
            let twice = names
                .as_ref()
                .is_some_and(|n| n.iter().filter(|u| **u == user).count() > 1);
            if twice {
                r.with_error_code(ResponseError::DuplicateResource.code())
                    .with_error_message(Some(str_bytes(format!("user {user} is named twice"))))
            } else if creds.is_empty() {
                r.with_error_code(ResponseError::ResourceNotFound.code())
                    .with_error_message(Some(str_bytes(format!(
                        "Attempt to describe a user credential that does not exist: {user}"
                    ))))
            } else {
                r.with_credential_infos(
                    creds
                        .into_iter()
                        .map(|(m, it)| {
                            CredentialInfo::default()
                                .with_mechanism(m.code())
                                .with_iterations(it)
                        })
                        .collect(),
                )
            }
        })
        .collect::<Vec<_>>();
    // A user named twice gets one result.
    let mut seen = std::collections::BTreeSet::new();
    let results = results
        .into_iter()
        .filter(|r| seen.insert(r.user.to_string()))
        .collect();
    DescribeUserScramCredentialsResponse::default().with_results(results)
}
