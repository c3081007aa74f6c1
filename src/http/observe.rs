//! Every request: a span carrying its trace id (continuing the caller's W3C `traceparent`
//! when traces are exported; on the device server only then or at debug level), and counts
//! and times by route pattern (not the raw path, so ids do not create new series).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use opentelemetry::trace::TraceContextExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `router` with each request counted, timed and (when traced) in a span, under `server`.
pub fn observed_router(server: &'static str, router: Router) -> Router {
    router.layer(axum::middleware::from_fn(move |request, next| {
        record(server, request, next)
    }))
}

async fn record(server: &'static str, request: Request, next: Next) -> Response {
    // An Arc inside: no copy of the route per request.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    observed(server, route, request, |request| next.run(request)).await
}

/// Answers `request` with `answer` inside the request's span (when there is one), counting and
/// timing it under `route` (the router's layer).
async fn observed<F, Answer>(
    server: &'static str,
    route: &str,
    request: Request,
    answer: F,
) -> Response
where
    F: FnOnce(Request) -> Answer,
    Answer: Future<Output = Response>,
{
    let observation = Observation::start(server, route, &request);
    let response = match observation.span() {
        Some(span) => answer(request).instrument(span.clone()).await,
        None => answer(request).await,
    };
    observation.finish(&response);
    response
}

/// One request observed: its span (when it has one) and when it arrived. [`observed`] in two
/// steps, for a caller that awaits its answer itself (the device port's update check, whose
/// steps run in one future instead of one nested future each).
pub struct Observation<'r> {
    server: &'static str,
    route: &'r str,
    span: Option<tracing::Span>,
    exported: bool,
    started: Instant,
}

impl<'r> Observation<'r> {
    pub fn start(server: &'static str, route: &'r str, request: &Request) -> Observation<'r> {
        let started = Instant::now();
        let exported = crate::telemetry::traces_exported();
        Observation {
            server,
            route,
            span: request_span(server, route, request, exported),
            exported,
            started,
        }
    }

    /// The span the answer runs in, if the request has one.
    pub fn span(&self) -> Option<&tracing::Span> {
        self.span.as_ref()
    }

    /// Counts and times the request under its route.
    pub fn finish(self, response: &Response) {
        let status = response.status().as_u16();
        if let (Some(span), true) = (&self.span, self.exported) {
            span.record("http.response.status_code", status);
        }
        crate::metrics::global().http_request(
            self.server,
            self.route,
            status,
            self.started.elapsed(),
        );
    }
}

/// The request's span, carrying its trace id. Device requests are the hot path: theirs is
/// made only when traces are exported or the log level is debug (a device refusal that is
/// logged carries a trace of its own).
fn request_span(
    server: &str,
    route: &str,
    request: &Request,
    exported: bool,
) -> Option<tracing::Span> {
    if server == "device" && !exported && !tracing::enabled!(tracing::Level::DEBUG) {
        return None;
    }
    // Only the trace id is formatted for every request (the log layer formats span fields when
    // the span opens); the OpenTelemetry fields are filled in only when traces are exported.
    let span = tracing::info_span!(
        "request",
        trace_id = tracing::field::Empty,
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        http.request.method = tracing::field::Empty,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    if exported {
        span.record("otel.name", format!("{} {route}", request.method()));
        span.record("otel.kind", "server");
        span.record("http.request.method", request.method().as_str());
        span.record("http.route", route);
    }
    span.record("trace_id", trace_id(&span, request, exported));
    Some(span)
}

/// The exported trace's id when traces are on (after adopting the caller's `traceparent`),
/// else a fresh random one that still ties a request's log lines together.
fn trace_id(span: &tracing::Span, request: &Request, exported: bool) -> String {
    if exported {
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
    local_trace_id()
}

/// 128 bits unique to this request without a system call: a random per-process half and a
/// counter half.
fn local_trace_id() -> String {
    static PROCESS: LazyLock<u64> = LazyLock::new(|| {
        let mut bytes = [0u8; 8];
        let _ = getrandom::fill(&mut bytes);
        u64::from_ne_bytes(bytes)
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:016x}{:016x}",
        *PROCESS,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
