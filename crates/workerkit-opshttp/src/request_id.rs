//! `X-Request-ID`: an inbound id of 1–128 printable ASCII characters (`0x21`–`0x7E`) is kept;
//! anything else (absent, empty, too long, spaces, non-ASCII) is replaced by a fresh 32-hex id.
//! The id is echoed in the response header and in error bodies.
//!
//! Built on tower-http's request-id layers, with the validation rule in front of them.

use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue};
use tower::{Layer, Service};
use tower_http::request_id::{MakeRequestId, RequestId as TowerRequestId};

/// The header name, `x-request-id`.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether an inbound request id is kept: 1 to 128 printable ASCII characters, no spaces.
#[must_use]
pub fn is_valid_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len()) && value.iter().all(|b| (0x21..=0x7E).contains(b))
}

/// Removes an inbound `X-Request-ID` that breaks the rule, so the next layer generates one.
fn drop_invalid<B>(request: &mut http::Request<B>) {
    let headers = request.headers_mut();
    let invalid = {
        let mut values = headers.get_all(&REQUEST_ID).iter();
        match (values.next(), values.next()) {
            (None, _) => false,
            (Some(value), None) => !is_valid_request_id(value.as_bytes()),
            // Several ids: ambiguous, replace them.
            (Some(_), Some(_)) => true,
        }
    };
    if invalid {
        headers.remove(&REQUEST_ID);
    }
}

/// The layer applying [`drop_invalid`] (no boxing: it answers with the inner future).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ValidateRequestIdLayer;

impl<S> Layer<S> for ValidateRequestIdLayer {
    type Service = ValidateRequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ValidateRequestId { inner }
    }
}

/// The service of [`ValidateRequestIdLayer`].
#[derive(Clone, Debug)]
pub(crate) struct ValidateRequestId<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for ValidateRequestId<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        drop_invalid(&mut request);
        self.inner.call(request)
    }
}

/// 32 lowercase hex characters: a UUIDv7 value (time-ordered, unique within the process).
pub(crate) fn fresh_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut value = workerkit_core::command::DispatchId::new().as_u128();
    let mut out = [0u8; 32];
    for byte in out.iter_mut().rev() {
        *byte = HEX[(value & 0xF) as usize];
        value >>= 4;
    }
    // Hex digits are valid header bytes.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// tower-http's id maker, generating [`fresh_request_id`]s.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _request: &http::Request<B>) -> Option<TowerRequestId> {
        Some(TowerRequestId::new(fresh_request_id()))
    }
}
