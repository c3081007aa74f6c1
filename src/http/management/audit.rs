//! The audit log: every non-GET call of the management API by an authenticated caller is
//! recorded (who, what, on what, when, from where, with which result), and
//! `GET /api/v1/audit.list` pages through it.
//!
//! Handlers name what they acted on by returning [`Audited`]; failures carry their message in
//! [`AuditFailure`]. Calls refused with 401 are not stored (anyone could fill the log with
//! them); they are counted in `capgo_auth_failures_total` instead.

use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::AuditFailure;
use super::ApiError;
use crate::access::Principal;
use crate::domain::access::{AuditCursor, AuditEntry};
use crate::domain::{now_millis, rfc3339, RecordId};
use crate::http::AppState;

/// What a call acted on, carried to [`record`] in the response's extensions.
#[derive(Debug, Clone)]
pub struct AuditTarget(pub String);

/// A handler's result together with what it acted on, so the target is recorded whether the
/// call succeeded or failed.
pub struct Audited<T>(pub String, pub Result<T, ApiError>);

impl<T: IntoResponse> IntoResponse for Audited<T> {
    fn into_response(self) -> Response {
        let Audited(target, result) = self;
        let mut response = match result {
            Ok(answer) => answer.into_response(),
            Err(error) => error.into_response(),
        };
        response.extensions_mut().insert(AuditTarget(target));
        response
    }
}

/// Middleware: records the call once the handler has answered.
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return next.run(request).await;
    }
    let Some(principal) = request.extensions().get::<Principal>().cloned() else {
        return next.run(request).await;
    };
    let action = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(request.uri().path(), |p| p.as_str())
        .trim_start_matches("/api/v1/")
        .to_string();
    let client_ip = state.client_ip.of_request(&request).to_string();
    let response = next.run(request).await;
    let extensions = response.extensions();
    let entry = AuditEntry {
        id: RecordId::generate(),
        at: now_millis(),
        actor: principal.name,
        action,
        target: extensions
            .get::<AuditTarget>()
            .map(|t| t.0.clone())
            .unwrap_or_default(),
        client_ip,
        status: response.status().as_u16(),
        message: extensions
            .get::<AuditFailure>()
            .map(|f| f.0.clone())
            .unwrap_or_default(),
    };
    state.access.record(entry).await;
    response
}

#[derive(Deserialize)]
pub struct AuditQuery {
    /// Entries per page, 1 to 500 (default 50).
    limit: Option<usize>,
    /// `next` of the previous page.
    cursor: Option<String>,
}

/// `GET /api/v1/audit.list?limit=50&cursor=…`: newest first; `next` is null on the last page.
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let cursor = query
        .cursor
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(AuditCursor::decode)
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.0))?;
    let (entries, next) = state
        .access
        .audit_page(cursor.as_ref(), query.limit.unwrap_or(50))
        .await?;
    let data: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "id": e.id.as_str(),
                "at": rfc3339(e.at),
                "actor": e.actor,
                "action": e.action,
                "target": e.target,
                "client_ip": e.client_ip,
                "status": e.status,
                "result": if e.succeeded() { "success" } else { "failure" },
                "message": e.message,
            })
        })
        .collect();
    Ok(Json(
        json!({ "data": data, "next": next.map(|c| c.encode()) }),
    ))
}
