use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::controller;
use crate::registry::Versions;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use uuid::Uuid;

pub const VERSIONS: Versions = Versions::new(1, 6);

/// A topic answered without asking the controller: its name when the
/// request gave one, its id, and the error.
type Refused = (Option<String>, Uuid, ResponseError);

pub async fn handle(ctx: &Ctx, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let table = ctx.shard.topics();
    // v6 names topics by name or by id; older versions by name only.
    let mut wanted: Vec<Result<String, Refused>> = Vec::new();
    if ctx.version >= 6 {
        for t in &req.topics {
            wanted.push(match (&t.name, t.topic_id.is_nil()) {
                (Some(n), _) => Ok(n.0.to_string()),
                (None, false) => table.by_id(t.topic_id.as_u128()).map(|(n, _)| n.clone()).ok_or((
                    None,
                    t.topic_id,
                    ResponseError::UnknownTopicId,
                )),
                (None, true) => Err((None, t.topic_id, ResponseError::InvalidRequest)),
            });
        }
    } else {
        wanted.extend(req.topic_names.iter().map(|n| Ok(n.0.to_string())));
    }
    for w in wanted.iter_mut() {
        if let Ok(name) = w {
            if !ctx.topic_allowed(op::DELETE, name) {
                *w = Err((
                    Some(name.clone()),
                    Uuid::nil(),
                    ResponseError::TopicAuthorizationFailed,
                ));
            }
        }
    }
    let names: Vec<String> = wanted.iter().filter_map(|w| w.as_ref().ok().cloned()).collect();
    let mut answers = controller::delete_topics(&ctx.shard, names).await.into_iter();
    let responses = wanted
        .into_iter()
        .map(|w| match w {
            Ok(name) => {
                let r = DeletableTopicResult::default().with_name(Some(TopicName(str_bytes(name))));
                match answers.next().expect("one answer per named topic") {
                    Ok(id) => r.with_topic_id(Uuid::from_u128(id)),
                    Err((code, msg)) => r
                        .with_error_code(code.code())
                        .with_error_message(Some(str_bytes(msg))),
                }
            }
            Err((name, id, code)) => DeletableTopicResult::default()
                .with_name(name.map(|n| TopicName(str_bytes(n))))
                .with_topic_id(id)
                .with_error_code(code.code()),
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}
