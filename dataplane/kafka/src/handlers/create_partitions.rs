use super::{str_bytes, Ctx};
use crate::authz::op;
use crate::controller;
use crate::registry::Versions;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse, TopicName};

pub const VERSIONS: Versions = Versions::new(0, 3);

pub async fn handle(ctx: &Ctx, req: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let mut results: Vec<Option<CreatePartitionsTopicResult>> = Vec::new();
    let mut items = Vec::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        if !ctx.topic_allowed(op::ALTER, &name) {
            let msg = crate::authz::denied("ALTER", &format!("topic {name}"));
            results.push(Some(
                CreatePartitionsTopicResult::default()
                    .with_name(TopicName(str_bytes(name)))
                    .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                    .with_error_message(Some(str_bytes(msg))),
            ));
        } else if t.assignments.is_some() {
            results.push(Some(
                CreatePartitionsTopicResult::default()
                    .with_name(TopicName(str_bytes(name)))
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes("manual replica assignment is not supported"))),
            ));
        } else {
            items.push((name, t.count));
            results.push(None);
        }
    }
    let names: Vec<String> = items.iter().map(|(n, _)| n.clone()).collect();
    let validate_only = req.validate_only;
    let answers = controller::create_partitions(&ctx.shard, items, validate_only).await;
    let mut answers = names.into_iter().zip(answers);
    let results = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                let (name, a) = answers.next().expect("one answer per topic");
                let r = CreatePartitionsTopicResult::default().with_name(TopicName(str_bytes(name)));
                match a {
                    Ok(()) => r,
                    Err((code, msg)) => r
                        .with_error_code(code.code())
                        .with_error_message(Some(str_bytes(msg))),
                }
            })
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}
