//! Authentication and authorization of the management API.
//!
//! [`authenticate`] runs before every `/api/v1` route: it turns the `x-api-key` header (or an
//! `Authorization: Bearer` API key or OIDC token) into a [`Principal`] in the request's
//! extensions, or answers 401 (503 when the credential cannot be checked now). [`require`]
//! wraps each route with the [`Permission`] it needs and answers 403 when the principal's scope
//! does not grant it.

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Json;
use serde_json::json;

use super::ApiError;
use crate::access::{AuthError, Credential, Principal};
use crate::domain::access::Permission;
use crate::http::auth_throttle::FAILED_LOGINS_PER_MINUTE;
use crate::http::AppState;

pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let credential = match (api_key, bearer) {
        (Some(key), _) => Credential::ApiKey(key),
        (None, Some(token)) => Credential::Bearer(token),
        (None, None) => {
            return ApiError::Unauthorized(
                "authentication required: send an API key in the x-api-key header or a token \
                 in Authorization: Bearer"
                    .into(),
            )
            .into_response()
        }
    };
    let client = state.client_ip.of_request(&request);
    if let Err(wait) = state.failed_logins.check(client) {
        crate::metrics::global().auth_failure();
        return too_many_failures(wait);
    }
    match state.access.authenticate(credential).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(AuthError::Rejected(reason)) => {
            crate::metrics::global().auth_failure();
            state.failed_logins.failed(client);
            ApiError::Unauthorized(reason).into_response()
        }
        Err(AuthError::Unavailable(reason)) => {
            tracing::warn!(%reason, "cannot check a management credential now");
            ApiError::Unavailable(reason).into_response()
        }
    }
}

/// 429 for an address that sent too many wrong credentials, with `Retry-After`.
fn too_many_failures(wait: std::time::Duration) -> Response {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(RETRY_AFTER, seconds.to_string())],
        Json(json!({
            "error": format!(
                "too many failed logins from this address ({FAILED_LOGINS_PER_MINUTE} a minute); \
                 retry in {seconds} s"
            )
        })),
    )
        .into_response()
}

/// `route` answering 403 unless the caller's scope grants `permission`.
pub fn require(permission: Permission, route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.layer(middleware::from_fn(
        move |request: Request, next: Next| async move {
            let scope = request.extensions().get::<Principal>().map(|p| p.scope);
            match scope {
                Some(scope) if scope.permits(permission) => next.run(request).await,
                Some(scope) => ApiError::Forbidden(format!(
                    "this token's scope ({scope}) does not allow this call; it needs {}",
                    match permission {
                        Permission::Read => "read access (read-only or full)",
                        Permission::Upload => "upload access (upload or full)",
                        Permission::Admin => "full access",
                        Permission::Authenticated => "a valid credential",
                    }
                ))
                .into_response(),
                None => ApiError::Unauthorized("authentication required".into()).into_response(),
            }
        },
    ))
}
