//! Every request: a span carrying its trace id (continuing the caller's W3C `traceparent`
//! when traces are exported), and counts and times by route pattern (not the raw path, so ids
//! do not create new series).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::TraceContextExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub async fn record(server: &'static str, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    span.record("trace_id", trace_id(&span, &request));
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    crate::metrics::global().http_request(server, &route, status, started.elapsed());
    response
}

/// The exported trace's id when traces are on (after adopting the caller's `traceparent`),
/// else a fresh random one that still ties a request's log lines together.
fn trace_id(span: &tracing::Span, request: &Request) -> String {
    if crate::telemetry::traces_exported() {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&opentelemetry_http::HeaderExtractor(request.headers()))
        });
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        let id = span.context().span().span_context().trace_id();
        if id != opentelemetry::TraceId::INVALID {
            return id.to_string();
        }
    }
    let mut bytes = [0u8; 16];
    let _ = getrandom::fill(&mut bytes);
    hex::encode(bytes)
}
