//! One error type for the management API: `{"error": "<what is wrong>"}` with a fitting status
//! (the seed's UI shows `error`). Internal details are logged with a trace id, never sent.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::catalog::CatalogError;
use crate::domain::RecordId;
use crate::error::Chain;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// Storage or the identity provider cannot be reached; the text is logged, not sent.
    #[error("{0}")]
    Unavailable(String),
    /// A failure of ours; the text is logged with a trace id, not sent.
    #[error("{0}")]
    Internal(String),
}

/// The one mapping from catalog refusals to HTTP statuses. Storage failures keep their whole
/// chain for the log; callers only see that storage failed.
impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> ApiError {
        match e {
            CatalogError::Invalid(m) | CatalogError::ChecksumMismatch(m) => ApiError::BadRequest(m),
            CatalogError::NotFound(m) => ApiError::NotFound(m),
            CatalogError::Duplicate(m) | CatalogError::InUse(m) | CatalogError::Busy(m) => {
                ApiError::Conflict(m)
            }
            CatalogError::Owned { message, .. } => ApiError::Conflict(message),
            CatalogError::TooLarge(m) => ApiError::TooLarge(m),
            CatalogError::Unavailable { .. } => ApiError::Unavailable(Chain(&e).to_string()),
            CatalogError::Internal { .. } => ApiError::Internal(Chain(&e).to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            ApiError::Unavailable(m) => {
                tracing::warn!(error = %m, "management request failed: storage unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage is temporarily unavailable; retry shortly".into(),
                )
            }
            ApiError::Internal(m) => {
                let trace = RecordId::generate();
                tracing::error!(error = %m, %trace, "management request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("internal server error (trace {trace})"),
                )
            }
        };
        let mut response = (status, Json(json!({ "error": &message }))).into_response();
        // For the audit log, which records what the caller was told.
        response.extensions_mut().insert(AuditFailure(message));
        response
    }
}

/// The message of a failed call, carried to the audit layer in the response's extensions.
#[derive(Debug, Clone)]
pub struct AuditFailure(pub String);

pub async fn unknown_route() -> ApiError {
    ApiError::NotFound("no such route; see the API reference in README.md".into())
}

/// A JSON request body, read as JSON whatever its `Content-Type`: the seed read bodies that way
/// (gin's `ShouldBindJSON`), so its web client (which sends `text/plain;charset=UTF-8`) and
/// scripts using `curl -d` (form type) keep working. This opens no cross-site hole: every route
/// that takes a body needs an `x-api-key` or `Authorization` header, which a page on another
/// origin can only send after a CORS preflight this server never grants. Refusals (empty body,
/// not JSON, wrong fields or types, too large) are [`ApiError`]s naming the problem.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<ApiJson<T>, ApiError> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge("the request body is too large".into())
                } else {
                    ApiError::BadRequest(format!(
                        "cannot read the request body: {}",
                        rejection.body_text()
                    ))
                }
            })?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::BadRequest(
                "the request body is empty: send the fields as a JSON object".into(),
            ));
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            return Err(ApiError::BadRequest(format!(
                "the request body is not JSON ({e}); send the fields as a JSON object"
            )));
        }
        Json::<T>::from_bytes(&body)
            .map(|Json(value)| ApiJson(value))
            .map_err(|rejection| {
                ApiError::BadRequest(format!("invalid JSON body: {}", rejection.body_text()))
            })
    }
}

/// Query parameters, refused with the same JSON error shape as every other failure (naming
/// the missing or malformed parameter) rather than axum's plain-text default.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<ApiQuery<T>, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}

/// An `app_id` given to a route, checked as uploads check it (so a typo is a 400 naming the
/// field, not an unknown app).
pub fn checked_app_id(app_id: &str) -> Result<&str, ApiError> {
    crate::domain::names::check_app_id(app_id).map_err(|e| ApiError::BadRequest(e.0))?;
    Ok(app_id)
}

/// For `#[serde(default, deserialize_with = "present")]`: a field that is in the body, even as
/// `null` (`Some(None)`), as opposed to absent (`None`).
pub(super) fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}
