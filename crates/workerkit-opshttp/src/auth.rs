//! A bearer-token auth layer with constant-time comparison and a JSON 401.
//!
//! tower-http's own bearer validation is deprecated; this one is small and answers in the ops
//! error format.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::error::{ApiError, code};
use crate::request_id::REQUEST_ID;

/// Requires `Authorization: Bearer <token>`; anything else gets 401 with a JSON body and
/// `WWW-Authenticate: Bearer`. The token is compared in constant time.
///
/// ```
/// use workerkit_opshttp::{BearerAuthLayer, OpsHttp};
/// # fn demo(runtime: workerkit_core::Runtime) {
/// let ops = OpsHttp::new(runtime)
///     .enable_dispatch()
///     .dispatch_layer(BearerAuthLayer::new("s3cret"));
/// let app: axum::Router = ops.router();
/// # let _ = app;
/// # }
/// # let _ = demo;
/// ```
#[derive(Clone)]
pub struct BearerAuthLayer {
    token: Arc<[u8]>,
}

impl BearerAuthLayer {
    /// A layer accepting exactly this token. An empty token accepts nothing.
    pub fn new(token: impl AsRef<[u8]>) -> Self {
        Self {
            token: token.as_ref().into(),
        }
    }
}

impl fmt::Debug for BearerAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuthLayer")
            .field("token", &"<redacted>")
            .finish()
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BearerAuth {
            inner,
            token: Arc::clone(&self.token),
        }
    }
}

/// The service of [`BearerAuthLayer`].
#[derive(Clone)]
pub struct BearerAuth<S> {
    inner: S,
    token: Arc<[u8]>,
}

impl<S> fmt::Debug for BearerAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuth").finish_non_exhaustive()
    }
}

impl<S> BearerAuth<S> {
    fn authorized(&self, request: &Request) -> bool {
        let Some(value) = request.headers().get(header::AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let Some((scheme, token)) = value
            .iter()
            .position(|b| *b == b' ')
            .map(|i| (&value[..i], &value[i + 1..]))
        else {
            return false;
        };
        // An empty configured token never matches: `Bearer ` must not open the door.
        !self.token.is_empty()
            && scheme.eq_ignore_ascii_case(b"bearer")
            && bool::from(token.ct_eq(&self.token))
    }
}

impl<S> Service<Request> for BearerAuth<S>
where
    S: Service<Request, Response = Response> + Send + 'static,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if self.authorized(&request) {
            Box::pin(self.inner.call(request))
        } else {
            let mut error =
                ApiError::new(StatusCode::UNAUTHORIZED, code::UNAUTHORIZED, "unauthorized");
            error.request_id = request.headers().get(&REQUEST_ID).cloned();
            Box::pin(std::future::ready(Ok(error.into_response())))
        }
    }
}
