use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::controller::OpResult;
use crate::registry::Versions;
use crate::sasl::store;
use ferrolog_controlplane::credentials::{
    validate, validate_user, CredentialChange, ScramCredential, ScramMechanism,
};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::{AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse};

pub const VERSIONS: Versions = Versions::new(0, 0);

/// One result per user named in the request, in order of first mention. A
/// user's upsertions and deletions are one controller command: all apply or
/// none. Refused before the controller: an unknown mechanism
/// (UNSUPPORTED_SASL_MECHANISM), the same user and mechanism twice
/// (DUPLICATE_RESOURCE), a bad name, iteration count, salt or salted
/// password (UNACCEPTABLE_CREDENTIAL). Without ALTER on the cluster every
/// user named gets CLUSTER_AUTHORIZATION_FAILED and nothing changes.
pub async fn handle(ctx: &Ctx, req: AlterUserScramCredentialsRequest) -> AlterUserScramCredentialsResponse {
    // (user, its changes or its error) in order of first mention.
    let mut users: Vec<(String, OpResult<Vec<CredentialChange>>)> = Vec::new();
    let items = req
        .deletions
        .iter()
        .map(|d| (d.name.to_string(), d.mechanism, None))
        .chain(req.upsertions.iter().map(|u| {
            let cred = ScramCredential {
                salt: u.salt.to_vec(),
                iterations: u.iterations,
                salted_password: u.salted_password.to_vec(),
            };
            (u.name.to_string(), u.mechanism, Some(cred))
        }));
    let altered = ctx.cluster_allowed(op::ALTER);
    for (user, code, credential) in items {
        if !altered {
            if !users.iter().any(|(u, _)| *u == user) {
                let refused = crate::authz::denied("ALTER", "the cluster (SCRAM credentials)");
                users.push((user, Err((ResponseError::ClusterAuthorizationFailed, refused))));
            }
            continue;
        }
        let slot = match users.iter().position(|(u, _)| *u == user) {
            Some(i) => i,
            None => {
                users.push((user.clone(), Ok(Vec::new())));
                users.len() - 1
            }
        };
        let Ok(changes) = &mut users[slot].1 else {
            continue;
        };
        let checked = check(&user, code, credential, changes);
        match checked {
            Ok(change) => changes.push(change),
            Err(e) => users[slot].1 = Err(e),
        }
    }
    let (ready, idx): (Vec<Vec<CredentialChange>>, Vec<usize>) = users
        .iter()
        .enumerate()
        .filter_map(|(i, (_, r))| r.as_ref().ok().map(|c| (c.clone(), i)))
        .unzip();
    let answers = store::alter(&ctx.shard, ready).await;
    for (i, a) in idx.into_iter().zip(answers) {
        users[i].1 = a.map(|()| Vec::new());
    }
    let results = users
        .into_iter()
        .map(|(user, r)| {
            let (code, message) = match r {
                Ok(_) => (0, None),
                Err((e, m)) => (e.code(), Some(str_bytes(m))),
            };
            AlterUserScramCredentialsResult::default()
                .with_user(str_bytes(user))
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    AlterUserScramCredentialsResponse::default().with_results(results)
}

fn check(
    user: &str,
    code: i8,
    credential: Option<ScramCredential>,
    earlier: &[CredentialChange],
) -> Result<CredentialChange, (ResponseError, String)> {
    let unacceptable = |e: ferrolog_controlplane::credentials::CredentialError| {
        (ResponseError::UnacceptableCredential, e.to_string())
    };
    let mechanism = ScramMechanism::from_code(code).ok_or_else(|| {
        (
            ResponseError::UnsupportedSaslMechanism,
            format!("unknown SCRAM mechanism {code}"),
        )
    })?;
    if earlier.iter().any(|c| c.mechanism == mechanism) {
        return Err((
            ResponseError::DuplicateResource,
            format!("user {user} and {} are named twice", mechanism.name()),
        ));
    }
    match &credential {
        Some(c) => validate(user, mechanism, c).map_err(unacceptable)?,
        None => validate_user(user).map_err(unacceptable)?,
    }
    Ok(CredentialChange {
        user: user.to_string(),
        mechanism,
        credential,
    })
}
