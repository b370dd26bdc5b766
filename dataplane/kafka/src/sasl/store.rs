//! The proposer and reader side of the cluster's SCRAM credentials: runs on
//! the connection's data shard and calls the controller on the control
//! executor, like `crate::controller` does for topics.

use crate::controller::OpResult;
use crate::shard::Shard;
use ferrolog_controlplane::controller::{self as control, ControllerError};
use ferrolog_controlplane::credentials::{CredentialChange, ScramMechanism};
use ferrolog_controlplane::state::{Applied, Command, StateError};
use kafka_protocol::error::ResponseError;

fn no_controller<T>() -> OpResult<T> {
    Err((
        ResponseError::NotController,
        "this node runs no controller".into(),
    ))
}

fn refused(e: &StateError) -> (ResponseError, String) {
    let code = match e {
        StateError::Credential(c) => crate::errors::credential(c),
        _ => ResponseError::UnknownServerError,
    };
    (code, e.to_string())
}

fn failed(e: &ControllerError) -> (ResponseError, String) {
    (crate::errors::controller(e), e.to_string())
}

/// Proposes one command per user's changes; one answer per user, in order.
pub async fn alter(shard: &Shard, users: Vec<Vec<CredentialChange>>) -> Vec<OpResult<()>> {
    let n = users.len();
    if n == 0 {
        return Vec::new();
    }
    let Some(ctl) = shard.smp.control_shard() else {
        return (0..n).map(|_| no_controller()).collect();
    };
    let cmds: Vec<Command> = users.into_iter().map(Command::AlterCredentials).collect();
    let answers = shard
        .smp
        .submit_to(ctl, move || async move {
            match control::local().propose_commands(cmds).await {
                Ok(answers) => answers
                    .into_iter()
                    .map(|a| match a {
                        Ok(Applied::Credentials(_)) => Ok(()),
                        Ok(other) => Err((
                            ResponseError::UnknownServerError,
                            format!("a credential command answered {other:?}"),
                        )),
                        Err(e) => Err(refused(&e)),
                    })
                    .collect(),
                Err(e) => (0..n).map(|_| Err(failed(&e))).collect::<Vec<_>>(),
            }
        })
        .await;
    match answers {
        Ok(a) => a,
        Err(e) => (0..n)
            .map(|_| Err((crate::errors::shard(&e), e.to_string())))
            .collect(),
    }
}

/// Mechanisms and iterations per user (all users for `None`), as applied on
/// this node.
pub async fn describe(
    shard: &Shard,
    users: Option<Vec<String>>,
) -> OpResult<Vec<(String, Vec<(ScramMechanism, i32)>)>> {
    let Some(ctl) = shard.smp.control_shard() else {
        return no_controller();
    };
    shard
        .smp
        .submit_to(ctl, move || async move {
            control::local().credential_infos(users.as_deref())
        })
        .await
        .map_err(|e| (crate::errors::shard(&e), e.to_string()))
}
