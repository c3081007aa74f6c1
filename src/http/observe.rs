//! Counts and times every request by its route pattern (not the raw path, so ids do not
//! create new series).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

pub async fn record(server: &'static str, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    crate::metrics::global().http_request(
        server,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
