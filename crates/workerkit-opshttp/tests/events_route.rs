//! `GET {p}/events`: the event stream as Server-Sent Events.

mod support;

use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use support::{Gates, runtime};
use tower::ServiceExt;
use workerkit_opshttp::OpsHttp;

/// Reads frames until `needle` has appeared in the text read so far; returns that text.
async fn read_until(body: &mut Body, text: &mut String, needle: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !text.contains(needle) {
            let frame = body
                .frame()
                .await
                .expect("the stream stays open")
                .expect("a frame");
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in {text:?}"));
}

#[tokio::test]
async fn transitions_arrive_as_server_sent_events_and_the_stream_ends_at_shutdown() {
    let rt = runtime(&Gates::default());
    let ops = OpsHttp::new(rt.clone());
    let app: axum::Router = ops.router();
    let response = app
        .oneshot(Request::get("/admin/events").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "{:?}",
        response.headers()
    );
    let mut body = response.into_body();
    let mut text = String::new();

    rt.start("echo").await.unwrap();
    read_until(&mut body, &mut text, r#""to":"running""#).await;
    assert!(text.contains("event: transition"), "{text}");
    assert!(
        text.contains(r#"data: {"seq":"#)
            && text.contains(
                r#""worker":"ops/echo","incarnation":1,"from":"registered","to":"starting""#
            ),
        "{text}"
    );
    assert!(text.contains("\nid: "), "{text}");

    // Shutdown begins: the stream ends, so it cannot hold up an HTTP drain.
    ops.serving_state().begin_shutdown();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match body.frame().await {
                None => return,
                Some(Ok(_)) => {}
                Some(Err(err)) => panic!("{err}"),
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ended");
}
