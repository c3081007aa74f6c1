//! One error type for the management API: `{"error": "<what is wrong>"}` with a fitting status
//! (the seed's UI shows `error`). Internal details are logged with a trace id, never sent.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
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

/// `Json<T>` whose rejections (bad JSON, wrong types, wrong Content-Type) are [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<ApiJson<T>, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::MissingJsonContentType(_) => ApiError::BadRequest(
                    "send the body as JSON with `Content-Type: application/json`".into(),
                ),
                other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::TooLarge("the request body is too large".into())
                }
                other => ApiError::BadRequest(format!("invalid JSON body: {}", other.body_text())),
            }),
        }
    }
}
