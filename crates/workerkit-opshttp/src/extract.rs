//! The request id, as handlers see it.

use axum::extract::FromRequestParts;
use http::HeaderValue;
use http::request::Parts;

use crate::request_id::{REQUEST_ID, fresh_request_id};

/// The request's id: the validated inbound `X-Request-ID`, or the one generated for it (by
/// [`crate::request_id`]'s layers, which run before every ops route).
#[derive(Clone, Debug)]
pub(crate) struct RequestId(pub(crate) HeaderValue);

impl RequestId {
    /// The id the request-id layers set (or a fresh one, if they did not run).
    pub(crate) fn from_headers(headers: &http::HeaderMap) -> Self {
        Self(
            headers
                .get(&REQUEST_ID)
                .cloned()
                .unwrap_or_else(fresh_request_id),
        )
    }

    pub(crate) fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_headers(&parts.headers))
    }
}
