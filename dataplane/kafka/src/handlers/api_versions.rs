use super::Ctx;
use crate::registry::{Versions, SUPPORTED};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};

pub const VERSIONS: Versions = Versions::new(0, 3);

pub fn supported() -> ApiVersionsResponse {
    let api_keys = SUPPORTED
        .iter()
        .map(|(k, v)| {
            ApiVersion::default()
                .with_api_key(*k as i16)
                .with_min_version(v.min)
                .with_max_version(v.max)
        })
        .collect();
    ApiVersionsResponse::default().with_api_keys(api_keys)
}

pub fn handle(_ctx: &Ctx, _req: ApiVersionsRequest) -> ApiVersionsResponse {
    supported()
}

/// The answer to an ApiVersions request of an unsupported version: error 35
/// with the list, encoded as v0 so any client can read it.
pub fn unsupported_version() -> ApiVersionsResponse {
    supported().with_error_code(ResponseError::UnsupportedVersion.code())
}
