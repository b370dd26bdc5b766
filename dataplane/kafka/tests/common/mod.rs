//! Request helpers shared by the tests that talk to a harness node.
#![allow(dead_code)]

use bytes::BytesMut;
use ferrolog_kafka::harness::Harness;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, RequestHeader, RequestKind, ResponseHeader, ResponseKind, TopicName,
};
use kafka_protocol::protocol::{encode_request_header_into_buffer, Decodable, StrBytes};

pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub fn topic_name(name: &str) -> TopicName {
    TopicName(str_bytes(name))
}

/// One request frame, size prefix included.
pub fn request(api: ApiKey, version: i16, body: &RequestKind) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("harness-test")));
    let mut out = BytesMut::new();
    out.extend_from_slice(&[0; 4]);
    encode_request_header_into_buffer(&mut out, &header).expect("encode header");
    body.encode(&mut out, version).expect("encode body");
    let size = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    out.to_vec()
}

/// Feeds one request on a fresh connection and decodes its one response.
pub fn call(h: &Harness, api: ApiKey, version: i16, body: RequestKind) -> ResponseKind {
    let bytes = request(api, version, &body);
    let out = h.feed(&bytes);
    assert_eq!(out.closed, None, "{api:?} v{version} closed the connection");
    // `check` knows only frames within the harness's default size limit.
    if bytes.len() <= ferrolog_kafka::harness::MAX_REQUEST_BYTES {
        out.check(&bytes).expect("the response answers the request");
    }
    assert_eq!(out.responses.len(), 1);
    let mut body = out.responses[0].clone().freeze().slice(4..);
    ResponseHeader::decode(&mut body, api.response_header_version(version)).expect("header");
    ResponseKind::decode(api, &mut body, version).expect("body")
}

pub fn create_topic(h: &Harness, name: &str, partitions: i32) {
    let body = RequestKind::CreateTopics(CreateTopicsRequest::default().with_timeout_ms(5000).with_topics(
        vec![CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(1)],
    ));
    let ResponseKind::CreateTopics(r) = call(h, ApiKey::CreateTopics, 5, body) else {
        panic!("not a CreateTopics response")
    };
    assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0].error_message);
}
