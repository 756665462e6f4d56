//! JSON responses and strict JSON request bodies.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, code};

/// `{"data": …}`, the success envelope.
#[derive(Serialize)]
pub(crate) struct Data<T> {
    pub(crate) data: T,
}

/// A JSON response. Serialising our own types cannot fail; if it ever did, the client gets a
/// plain 500 rather than a panic.
pub(crate) fn response<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            (status, bytes)
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"error":"internal server error","code":"internal"}
"#
            .to_vec(),
        ),
    };
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `200 {"data": value}`.
pub(crate) fn ok<T: Serialize>(data: T) -> Response {
    response(StatusCode::OK, &Data { data })
}

/// A missing `Content-Type` is accepted (curl without `-H`); an explicit one must be JSON
/// (`application/json`, or any `+json` type), with any parameters.
pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .as_bytes()
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let has_prefix = |prefix: &[u8]| {
        essence.len() >= prefix.len() && essence[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    let has_suffix = |suffix: &[u8]| {
        essence.len() >= suffix.len()
            && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    if essence.eq_ignore_ascii_case(b"application/json")
        || (has_prefix(b"application/") && has_suffix(b"+json"))
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code::UNSUPPORTED_MEDIA_TYPE,
            "content type must be application/json",
        ))
    }
}

/// Reads the whole body, up to `limit` bytes (413 beyond).
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(err) => {
            if is_length_limit(&err) {
                Err(too_large())
            } else {
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    code::INVALID_JSON,
                    "could not read the request body",
                ))
            }
        }
    }
}

pub(crate) fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        code::PAYLOAD_TOO_LARGE,
        "request body too large",
    )
}

fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Decodes exactly one JSON value of type `T` (unknown fields are the type's business: our
/// request types deny them); empty, malformed or trailing input is a 400.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], label: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|err| ApiError::bad_json(label, &err))
}
