//! `POST /stats`: one event object, or (plugins 8.42+) a JSON array of up to 200 queued ones.

use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{device_error, server_refusal, DeviceBody, MAX_STATS_BODY};
use crate::catalog::CatalogError;
use crate::domain::now_millis;
use crate::domain::stats::{StatsEvent, MAX_BATCH};
use crate::http::rate_limit::too_many_requests;
use crate::http::AppState;

/// Valid events are stored in one transaction; invalid ones are reported per index and not
/// retried (a 4xx makes plugins drop them, a 5xx makes them send again later).
pub async fn record(State(state): State<AppState>, request: Request) -> Response {
    let client = state.client_ip.of_request(&request);
    let Ok(DeviceBody(body)) = DeviceBody::<MAX_STATS_BODY>::from_request(request, &state).await;
    let body = match body {
        Ok(body) => body,
        Err(refusal) => {
            return device_error(StatusCode::BAD_REQUEST, refusal.error, &refusal.message)
        }
    };
    let received_at = now_millis();
    let (items, is_batch) = match &body {
        Value::Array(items) if items.len() > MAX_BATCH => {
            return device_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_events",
                &format!("a batch holds at most {MAX_BATCH} events"),
            )
        }
        Value::Array(items) => (items.iter().collect::<Vec<_>>(), true),
        single => (vec![single], false),
    };
    // Counted per event, before any is parsed: a NAT's batched telemetry passes at a sane
    // rate, a flood does not reach storage.
    if let Some(limiter) = &state.stats_limiter {
        if let Err(wait) = limiter.check_n(client, items.len() as u32) {
            crate::metrics::global().rate_limited();
            return too_many_requests(wait);
        }
    }
    let mut events = Vec::with_capacity(items.len());
    let mut results = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        match StatsEvent::parse(item, received_at) {
            Ok(event) => {
                events.push(event);
                results.push(json!({"status": "ok", "index": index}));
            }
            Err(refusal) if !is_batch => {
                return device_error(StatusCode::BAD_REQUEST, refusal.error, &refusal.message)
            }
            Err(refusal) => results.push(json!({
                "status": "error", "error": refusal.error, "message": refusal.message, "index": index,
            })),
        }
    }
    if let Err(error) = state.catalog.record_stats(&events).await {
        let refusal = server_refusal(&error);
        let status = match error {
            CatalogError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        return device_error(status, refusal.error, &refusal.message);
    }
    crate::metrics::global().stats_events(events.len());
    if is_batch {
        Json(json!({"status": "ok", "results": results})).into_response()
    } else {
        Json(json!({"status": "ok"})).into_response()
    }
}
