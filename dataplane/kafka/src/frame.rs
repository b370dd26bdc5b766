//! Kafka framing and request decoding. Pure: no I/O, no async.
//!
//! A frame is a big-endian i32 size followed by that many bytes. A request
//! frame starts with api_key (i16), api_version (i16) and correlation_id
//! (i32); the rest of the header and the body depend on the API and version.

use crate::registry;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

/// api_key + api_version + correlation_id.
pub const MIN_REQUEST_BYTES: usize = 8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame size {size} exceeds the maximum of {max} bytes")]
    TooLarge { size: i64, max: usize },
    #[error("negative frame size {0}")]
    Negative(i32),
}

/// If `buf` starts with a whole frame, splits it off and returns its payload.
/// Rejects a size field above `max_bytes` as soon as the 4 size bytes are in.
pub fn split_frame(buf: &mut BytesMut, max_bytes: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if size < 0 {
        return Err(FrameError::Negative(size));
    }
    let size = size as usize;
    if size > max_bytes {
        return Err(FrameError::TooLarge {
            size: size as i64,
            max: max_bytes,
        });
    }
    if buf.len() < 4 + size {
        // Make room for the rest in one allocation.
        buf.reserve(4 + size - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(size).freeze()))
}

#[derive(Debug)]
pub struct Request {
    pub api: ApiKey,
    pub header: RequestHeader,
    pub body: RequestKind,
}

#[derive(Debug)]
pub enum Decoded {
    Request(Box<Request>),
    /// An ApiVersions request of a version we do not support: Kafka answers
    /// with error 35 and the supported list in a v0 response.
    UnsupportedApiVersions {
        correlation_id: i32,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("request of {0} bytes is shorter than a request header")]
    TooShort(usize),
    #[error("unknown api key {0}")]
    UnknownApiKey(i16),
    #[error("api {api:?} is not supported")]
    UnsupportedApi { api: ApiKey },
    #[error("api {api:?} version {version} is not supported (supported: {min}..={max})")]
    UnsupportedVersion {
        api: ApiKey,
        version: i16,
        min: i16,
        max: i16,
    },
    #[error("malformed {api:?} v{version} request (correlation id {correlation_id}): {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        correlation_id: i32,
        reason: String,
    },
}

/// Decodes one request frame (without its size prefix).
pub fn decode_request(mut frame: Bytes) -> Result<Decoded, DecodeError> {
    if frame.len() < MIN_REQUEST_BYTES {
        return Err(DecodeError::TooShort(frame.len()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(key).map_err(|()| DecodeError::UnknownApiKey(key))?;
    let Some(range) = registry::versions(api) else {
        return Err(DecodeError::UnsupportedApi { api });
    };
    if !range.contains(version) {
        if api == ApiKey::ApiVersions {
            return Ok(Decoded::UnsupportedApiVersions { correlation_id });
        }
        return Err(DecodeError::UnsupportedVersion {
            api,
            version,
            min: range.min,
            max: range.max,
        });
    }
    let malformed = |e: anyhow_like::Error| DecodeError::Malformed {
        api,
        version,
        correlation_id,
        reason: e.0,
    };
    let header_version = api.request_header_version(version);
    let header = RequestHeader::decode(&mut frame, header_version).map_err(|e| malformed(e.into()))?;
    let body = RequestKind::decode(api, &mut frame, version).map_err(|e| malformed(e.into()))?;
    Ok(Decoded::Request(Box::new(Request { api, header, body })))
}

/// The codec crate reports errors as `anyhow::Error`; keep only the text so
/// this crate does not depend on anyhow.
mod anyhow_like {
    pub struct Error(pub String);

    impl<E: std::fmt::Display> From<E> for Error {
        fn from(e: E) -> Self {
            Error(format!("{e:#}"))
        }
    }
}

/// Encodes a whole response frame: size, header, body.
pub fn encode_response(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<BytesMut, String> {
    let header_version = api.response_header_version(version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let mut out = BytesMut::with_capacity(256);
    out.put_i32(0);
    header
        .encode(&mut out, header_version)
        .map_err(|e| format!("encode {api:?} v{version} response header: {e:#}"))?;
    body.encode(&mut out, version)
        .map_err(|e| format!("encode {api:?} v{version} response: {e:#}"))?;
    let size = out.len() - 4;
    out[..4].copy_from_slice(&(size as i32).to_be_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::{encode_request_header_into_buffer, StrBytes};

    fn request_frame(api: ApiKey, version: i16, correlation_id: i32, body: &RequestKind) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        let mut out = BytesMut::new();
        encode_request_header_into_buffer(&mut out, &header).expect("header");
        body.encode(&mut out, version).expect("body");
        out.freeze()
    }

    #[test]
    fn split_frame_waits_for_whole_frames_and_bounds_size() {
        let mut buf = BytesMut::new();
        assert_eq!(split_frame(&mut buf, 100), Ok(None));
        buf.put_i32(3);
        buf.put_slice(b"ab");
        assert_eq!(split_frame(&mut buf, 100), Ok(None));
        buf.put_slice(b"cX");
        assert_eq!(split_frame(&mut buf, 100), Ok(Some(Bytes::from_static(b"abc"))));
        assert_eq!(&buf[..], b"X");

        let mut big = BytesMut::new();
        big.put_i32(101);
        assert_eq!(
            split_frame(&mut big, 100),
            Err(FrameError::TooLarge { size: 101, max: 100 })
        );
        let mut neg = BytesMut::new();
        neg.put_i32(-5);
        assert_eq!(split_frame(&mut neg, 100), Err(FrameError::Negative(-5)));
    }

    #[test]
    fn decodes_a_metadata_request() {
        let body = RequestKind::Metadata(MetadataRequest::default());
        let frame = request_frame(ApiKey::Metadata, 9, 77, &body);
        match decode_request(frame) {
            Ok(Decoded::Request(r)) => {
                assert_eq!(r.api, ApiKey::Metadata);
                assert_eq!(r.header.correlation_id, 77);
                assert_eq!(r.header.client_id.as_deref(), Some("test"));
                assert!(matches!(r.body, RequestKind::Metadata(_)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_unknown_keys_versions_and_garbage() {
        assert_eq!(
            decode_request(Bytes::from_static(b"abc")).err(),
            Some(DecodeError::TooShort(3))
        );
        let unknown = Bytes::from_static(&[0x7f, 0x00, 0, 1, 0, 0, 0, 1]);
        assert_eq!(
            decode_request(unknown).err(),
            Some(DecodeError::UnknownApiKey(0x7f00))
        );
        // AddPartitionsToTxn exists in Kafka but is not served (yet).
        let unsupported = Bytes::from_static(&[0, 24, 0, 1, 0, 0, 0, 1]);
        assert!(matches!(
            decode_request(unsupported),
            Err(DecodeError::UnsupportedApi {
                api: ApiKey::AddPartitionsToTxn
            })
        ));
        let old_produce = Bytes::from_static(&[0, 0, 0, 2, 0, 0, 0, 1]);
        assert!(matches!(
            decode_request(old_produce),
            Err(DecodeError::UnsupportedVersion { version: 2, .. })
        ));
        // ApiVersions v99: answered, not rejected.
        let av = Bytes::from_static(&[0, 18, 0, 99, 0, 0, 0, 42, 0xff, 0xff]);
        assert!(matches!(
            decode_request(av),
            Ok(Decoded::UnsupportedApiVersions { correlation_id: 42 })
        ));
        // A Metadata v1 header followed by a truncated topic array.
        let truncated = Bytes::from_static(&[0, 3, 0, 1, 0, 0, 0, 9, 0xff, 0xff, 0, 0, 0, 5, 0]);
        assert!(matches!(
            decode_request(truncated),
            Err(DecodeError::Malformed {
                correlation_id: 9,
                ..
            })
        ));
    }

    #[test]
    fn api_versions_v3_round_trips() {
        let body = RequestKind::ApiVersions(
            ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str("x"))
                .with_client_software_version(StrBytes::from_static_str("1")),
        );
        let frame = request_frame(ApiKey::ApiVersions, 3, 5, &body);
        assert!(matches!(decode_request(frame), Ok(Decoded::Request(_))));
    }
}
