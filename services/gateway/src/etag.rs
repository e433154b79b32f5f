//! Conditional reads for polling clients: a JSON body goes out with a strong `ETag` (a hash of
//! its bytes), and a client that sends it back in `If-None-Match` gets `304 Not Modified`
//! and no body while nothing it would see has changed.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// `body` as JSON with its `ETag`, or 304 when `request` already holds it.
pub(crate) fn json_or_not_modified<T: Serialize>(request: &HeaderMap, body: &T) -> Response {
    let bytes = match serde_json::to_vec(body) {
        Ok(b) => b,
        Err(e) => return crate::ApiError::internal(e).into_response(),
    };
    let tag = tag_of(&bytes);
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| matches(v, &tag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&tag).expect("hex is a header value"),
    );
    // Private to the caller (a service token), and revalidated on every use.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    response
}

fn tag_of(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    format!("\"{}\"", hex::encode(&digest[..16]))
}

/// Whether an `If-None-Match` value (a list of tags, weak or strong, or `*`) names `tag`.
/// GET compares weakly (RFC 9110 13.1.2), so `W/"x"` matches `"x"`.
fn matches(if_none_match: &str, tag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == tag
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_weak_tags_and_the_wildcard() {
        let tag = tag_of(b"{}");
        assert!(matches(&tag, &tag));
        assert!(matches(&format!("W/{tag}"), &tag));
        assert!(matches(&format!("\"other\", {tag}"), &tag));
        assert!(matches("*", &tag));
        assert!(!matches("\"other\"", &tag));
        assert!(!matches("", &tag));
        assert_ne!(tag_of(b"{}"), tag_of(b"{ }"));
    }

    #[test]
    fn a_matching_tag_gets_304_without_a_body() {
        let first = json_or_not_modified(&HeaderMap::new(), &serde_json::json!({"a": 1}));
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[header::ETAG].clone();
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, tag.clone());
        let again = json_or_not_modified(&request, &serde_json::json!({"a": 1}));
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], tag);
        let changed = json_or_not_modified(&request, &serde_json::json!({"a": 2}));
        assert_eq!(changed.status(), StatusCode::OK);
    }
}
