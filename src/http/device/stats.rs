//! `POST /stats`: one event object, or (plugins 8.42+) a JSON array of up to 200 queued ones.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{device_error, server_refusal, DeviceBody};
use crate::catalog::CatalogError;
use crate::domain::now_millis;
use crate::domain::stats::StatsEvent;
use crate::http::AppState;

/// More events than a plugin ever queues; a larger batch is refused whole.
const MAX_BATCH: usize = 1000;

/// Valid events are stored in one transaction; invalid ones are reported per index and not
/// retried (a 4xx makes plugins drop them, a 5xx makes them send again later).
pub async fn record(State(state): State<AppState>, DeviceBody(body): DeviceBody) -> Response {
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
