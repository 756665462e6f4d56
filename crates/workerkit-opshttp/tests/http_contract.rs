//! The cross-cutting wire contract: request ids, prefixes, merging into an app, body limits,
//! content types, auth layers and per-group layers.

mod support;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use http::{Request, StatusCode};
use support::{Gates, assert_error, get as get_uri, post, runtime, send};
use workerkit_opshttp::{BearerAuthLayer, OpsHttp, is_valid_request_id, normalize_prefix};

fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn a_valid_inbound_request_id_is_kept_and_echoed() {
    let app = workerkit_opshttp::router(runtime(&Gates::default()));
    let id = "a".repeat(128);
    for inbound in ["req-1", "~!#$%&'()*+,-./:;<=>?@[]^_`{|}", id.as_str()] {
        let reply = send(
            &app,
            Request::get("/admin/workers/nope")
                .header("x-request-id", inbound)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(reply.header("x-request-id"), Some(inbound));
        assert_eq!(reply.body["request_id"], inbound);
    }
}

#[tokio::test]
async fn an_invalid_or_missing_request_id_is_replaced() {
    let app = workerkit_opshttp::router(runtime(&Gates::default()));
    let too_long = "a".repeat(129);
    for inbound in [Some(""), Some("has space"), Some(too_long.as_str()), None] {
        let mut request = Request::get("/admin/workers/nope");
        if let Some(value) = inbound {
            request = request.header("x-request-id", value);
        }
        let reply = send(&app, request.body(Body::empty()).unwrap()).await;
        let echoed = reply.header("x-request-id").unwrap().to_owned();
        assert!(is_generated(&echoed), "{inbound:?} -> {echoed}");
        assert_eq!(reply.body["request_id"], echoed.as_str());
    }
    // Non-ASCII bytes are not printable ASCII either.
    assert!(!is_valid_request_id("é".as_bytes()));
    // Ids are fresh per request.
    let a = get_uri(&app, "/admin/workers/nope").await;
    let b = get_uri(&app, "/admin/workers/nope").await;
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
}

#[tokio::test]
async fn success_responses_echo_the_request_id_too() {
    let app = workerkit_opshttp::router(runtime(&Gates::default()));
    let reply = get_uri(&app, "/admin/runtime").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(is_generated(reply.header("x-request-id").unwrap()));
}

#[test]
fn prefixes_are_normalised_as_in_go() {
    assert_eq!(normalize_prefix("/admin"), "/admin");
    assert_eq!(normalize_prefix(" ops/ "), "/ops");
    assert_eq!(normalize_prefix("ops///"), "/ops");
    assert_eq!(normalize_prefix(""), "");
    assert_eq!(normalize_prefix("/"), "");
    assert_eq!(normalize_prefix("  "), "");
    assert_eq!(normalize_prefix("/a/b/"), "/a/b");
}

#[tokio::test]
async fn routes_follow_the_prefix() {
    let rt = runtime(&Gates::default());
    let ops = OpsHttp::new(rt.clone()).prefix(" ops/ ").router();
    assert_eq!(get_uri(&ops, "/ops/runtime").await.status, StatusCode::OK);
    assert_eq!(
        get_uri(&ops, "/admin/runtime").await.status,
        StatusCode::NOT_FOUND
    );
    let root = OpsHttp::new(rt).prefix("").enable_lifecycle().router();
    assert_eq!(get_uri(&root, "/runtime").await.status, StatusCode::OK);
    assert_eq!(get_uri(&root, "/workers/echo").await.status, StatusCode::OK);
    let reply = post(&root, "/workers/start", r#"{"name":"echo"}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
}

#[derive(Clone)]
struct AppState {
    greeting: &'static str,
}

#[tokio::test]
async fn merges_into_an_app_with_its_own_state_and_fallback() {
    let rt = runtime(&Gates::default());
    let ops = OpsHttp::new(rt).enable_dispatch().enable_lifecycle();
    let app: Router = Router::new()
        .route(
            "/hello",
            get(|State(state): State<AppState>| async move { state.greeting }),
        )
        .fallback(|| async { (StatusCode::IM_A_TEAPOT, "app fallback") })
        .merge(ops.router())
        .merge(ops.probes())
        .with_state(AppState { greeting: "hi" });
    let hello = get_uri(&app, "/hello").await;
    assert_eq!(hello.raw, "hi");
    assert_eq!(get_uri(&app, "/admin/runtime").await.status, StatusCode::OK);
    assert_eq!(get_uri(&app, "/livez").await.status, StatusCode::OK);
    // Unknown paths, under the prefix too, belong to the app's fallback.
    for uri in ["/nope", "/admin/nope", "/admin/workers/echo/extra"] {
        let reply = get_uri(&app, uri).await;
        assert_eq!(reply.status, StatusCode::IM_A_TEAPOT, "{uri}");
        assert_eq!(reply.raw, "app fallback");
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let rt = runtime(&Gates::default());
    rt.start_all().await.unwrap();
    let app = OpsHttp::new(rt).enable_dispatch().body_limit(64).router();
    let big = format!(
        r#"{{"worker":"echo","name":"echo","payload":"{}"}}"#,
        "x".repeat(100)
    );
    let reply = post(&app, "/admin/commands/dispatch", &big).await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // A streamed body (no length known up front) is cut off too.
    let chunks: Vec<Result<String, std::io::Error>> = (0..10).map(|_| Ok("x".repeat(20))).collect();
    let request = Request::post("/admin/commands/dispatch")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let reply = send(&app, request).await;
    assert_error(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let small = post(
        &app,
        "/admin/commands/dispatch",
        r#"{"worker":"echo","name":"echo"}"#,
    )
    .await;
    assert_eq!(small.status, StatusCode::OK);
}

#[tokio::test]
async fn content_type_must_be_json_when_given() {
    let rt = runtime(&Gates::default());
    rt.start_all().await.unwrap();
    let app = OpsHttp::new(rt).enable_dispatch().router();
    let body = r#"{"worker":"echo","name":"echo"}"#;
    for (content_type, status) in [
        (None, StatusCode::OK),
        (Some("application/json"), StatusCode::OK),
        (Some("application/json; charset=utf-8"), StatusCode::OK),
        (Some("Application/JSON"), StatusCode::OK),
        (Some("application/merge-patch+json"), StatusCode::OK),
        (Some("text/plain"), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            Some("application/x-www-form-urlencoded"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ] {
        let mut request = Request::post("/admin/commands/dispatch");
        if let Some(value) = content_type {
            request = request.header("content-type", value);
        }
        let reply = send(&app, request.body(Body::from(body)).unwrap()).await;
        assert_eq!(reply.status, status, "{content_type:?}: {}", reply.raw);
        if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            assert_error(&reply, status, "unsupported_media_type");
        }
    }
}

#[tokio::test]
async fn bearer_auth_guards_only_the_groups_it_is_given() {
    let rt = runtime(&Gates::default());
    rt.start_all().await.unwrap();
    let app = OpsHttp::new(rt)
        .enable_dispatch()
        .enable_lifecycle()
        .dispatch_layer(BearerAuthLayer::new("s3cret"))
        .lifecycle_layer(BearerAuthLayer::new("s3cret"))
        .router();
    let body = r#"{"worker":"echo","name":"echo"}"#;
    for authorization in [
        None,
        Some("Bearer wrong"),
        Some("Basic s3cret"),
        Some("Bearer"),
        Some("Bearer s3cret "),
    ] {
        let mut request = Request::post("/admin/commands/dispatch");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let reply = send(&app, request.body(Body::from(body)).unwrap()).await;
        assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    for authorization in ["Bearer s3cret", "bearer s3cret"] {
        let reply = send(
            &app,
            Request::post("/admin/commands/dispatch")
                .header("authorization", authorization)
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.raw);
    }
    let reply = post(&app, "/admin/runtime/drain", "").await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    // Read routes were given no layer.
    assert_eq!(get_uri(&app, "/admin/runtime").await.status, StatusCode::OK);
    assert_eq!(
        get_uri(&app, "/admin/workers/start").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn read_layers_apply_to_read_routes() {
    let app = OpsHttp::new(runtime(&Gates::default()))
        .read_layer(BearerAuthLayer::new("t"))
        .router();
    let reply = get_uri(&app, "/admin/workers").await;
    assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn each_group_gets_only_its_own_layers() {
    use axum::middleware::map_response;
    fn tag(
        name: &'static str,
    ) -> impl Fn(axum::response::Response) -> std::future::Ready<axum::response::Response> + Clone
    {
        move |mut response: axum::response::Response| {
            response
                .headers_mut()
                .insert("x-group", http::HeaderValue::from_static(name));
            std::future::ready(response)
        }
    }
    let rt = runtime(&Gates::default());
    rt.start_all().await.unwrap();
    let app = OpsHttp::new(rt)
        .enable_dispatch()
        .enable_lifecycle()
        .read_layer(map_response(tag("read")))
        .dispatch_layer(map_response(tag("dispatch")))
        .lifecycle_layer(map_response(tag("lifecycle")))
        .router();
    let read = get_uri(&app, "/admin/workers/start").await;
    assert_eq!(read.header("x-group"), Some("read"));
    let dispatch = post(
        &app,
        "/admin/commands/dispatch",
        r#"{"worker":"echo","name":"echo"}"#,
    )
    .await;
    assert_eq!(dispatch.header("x-group"), Some("dispatch"));
    let lifecycle = post(&app, "/admin/workers/drain", r#"{"name":"start"}"#).await;
    assert_eq!(lifecycle.status, StatusCode::OK, "{}", lifecycle.raw);
    assert_eq!(lifecycle.header("x-group"), Some("lifecycle"));
    // Every route still echoes the request id.
    for reply in [&read, &dispatch, &lifecycle] {
        assert!(reply.header("x-request-id").is_some());
    }
}

#[tokio::test]
async fn an_empty_token_opens_nothing() {
    let rt = runtime(&Gates::default());
    rt.start_all().await.unwrap();
    let app = OpsHttp::new(rt)
        .enable_dispatch()
        .dispatch_layer(BearerAuthLayer::new(""))
        .router();
    for authorization in ["Bearer ", "Bearer"] {
        let reply = send(
            &app,
            Request::post("/admin/commands/dispatch")
                .header("authorization", authorization)
                .body(Body::from(r#"{"worker":"echo","name":"echo"}"#))
                .unwrap(),
        )
        .await;
        assert_error(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    }
}
