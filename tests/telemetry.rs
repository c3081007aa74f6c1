//! Traces over OTLP/HTTP to a collector on a real socket, and JSON logs carrying the trace id,
//! from the real binary.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use common::*;
use serde_json::Value;

type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

/// Accepts OTLP/HTTP trace exports and keeps them (content type, body).
async fn start_collector() -> (String, Received) {
    let received: Received = Arc::default();
    let router = Router::new()
        .route(
            "/v1/traces",
            post(
                |State(received): State<Received>, headers: HeaderMap, body: Bytes| async move {
                    let content_type = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    received.lock().unwrap().push((content_type, body));
                    ""
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, received)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn requests_are_traced_over_otlp_with_the_callers_trace_id_in_json_logs() {
    let (collector, received) = start_collector().await;
    let data = tempfile::tempdir().unwrap();
    let server = start_with_public_url(
        data.path(),
        &[
            ("MANAGEMENT_API_TOKENS", API_KEY),
            ("LOG_FORMAT", "json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let client = Client::new(&server, API_KEY);
    let form = reqwest::multipart::Form::new()
        .text("app_id", APP_ID)
        .text("version_name", "1.0.0")
        .part(
            "bundle",
            reqwest::multipart::Part::bytes(web_bundle("traced")).file_name("b.zip"),
        );
    let response = client
        .http
        .post(format!("{}/api/v1/bundles.upload", server.management_url))
        .header("x-api-key", API_KEY)
        .header("traceparent", &traceparent)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // The span reaches the collector, in the caller's trace, named by method and route.
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let started = Instant::now();
    loop {
        let exports = received.lock().unwrap().clone();
        let found = exports
            .iter()
            .find(|(_, body)| contains(body, &trace_bytes));
        if let Some((content_type, body)) = found {
            assert_eq!(content_type, "application/x-protobuf");
            assert!(contains(body, b"POST /api/v1/bundles.upload"), "span name");
            assert!(contains(body, b"capgo-server"), "service name");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no span of trace {trace_id} exported ({} exports)",
            exports.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The request's log line is JSON and carries the same trace id.
    let uploaded = wait_for_json_line(&server, "bundle uploaded").await;
    assert_eq!(uploaded["span"]["trace_id"], trace_id, "{uploaded}");
    assert!(server.stop().success());
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_logs_still_carry_a_trace_id() {
    let data = tempfile::tempdir().unwrap();
    let server = start_with_public_url(
        data.path(),
        &[("MANAGEMENT_API_TOKENS", API_KEY), ("LOG_FORMAT", "json")],
    );
    let client = Client::new(&server, API_KEY);
    let (status, _) = client.upload(APP_ID, "1.0.0", web_bundle("x")).await;
    assert_eq!(status, 200);
    let uploaded = wait_for_json_line(&server, "bundle uploaded").await;
    let log = server.log_text();
    assert!(!log.contains("exporting traces"), "{log}");
    let id = uploaded["span"]["trace_id"].as_str().unwrap();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
}

/// The server's JSON log line with this message. The log is read from the process's stdout by
/// another thread, so a line written just before an answer may arrive a moment after it.
async fn wait_for_json_line(server: &ServerProcess, message: &str) -> Value {
    let started = std::time::Instant::now();
    loop {
        let log = server.log_text();
        let found = log
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["fields"]["message"] == message);
        if let Some(line) = found {
            return line;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no JSON {message:?} line in:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
