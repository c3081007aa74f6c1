//! `/api/v1/tokens.*`: scoped API tokens. The secret is in the `tokens.create` answer only.

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::audit::Audited;
use super::error::ApiJson;
use super::ApiError;
use crate::access::Principal;
use crate::domain::access::{ApiToken, Scope};
use crate::domain::rfc3339;
use crate::http::AppState;

fn token_view(token: &ApiToken) -> Value {
    json!({
        "id": token.id.as_str(),
        "name": token.name,
        "scope": token.scope.as_str(),
        "created_at": rfc3339(token.created_at),
        "created_by": token.created_by,
    })
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let tokens = state.access.list_tokens().await?;
    Ok(Json(
        json!({ "data": tokens.iter().map(token_view).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
pub struct CreateTokenRequest {
    name: String,
    /// `full`, `read-only` or `upload`.
    scope: String,
}

pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(request): ApiJson<CreateTokenRequest>,
) -> Audited<Json<Value>> {
    let target = format!("token {}", request.name);
    let result = async {
        let scope: Scope = request.scope.parse().map_err(|e: crate::domain::InvalidInput| ApiError::BadRequest(e.0))?;
        let (token, secret) = state
            .access
            .create_token(&request.name, scope, &principal)
            .await?;
        tracing::info!(token = token.name, scope = %token.scope, by = principal.name, "API token created");
        Ok(Json(json!({
            "message": "Token created: copy it now, it is not shown again",
            "token": secret,
            "data": token_view(&token),
        })))
    }
    .await;
    Audited(target, result)
}

#[derive(Deserialize)]
pub struct RevokeTokenRequest {
    token_id: String,
}

pub async fn revoke(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RevokeTokenRequest>,
) -> Audited<Json<Value>> {
    match state.access.revoke_token(&request.token_id).await {
        Ok(name) => {
            tracing::info!(token = name, "API token revoked");
            Audited(
                format!("token {name}"),
                Ok(Json(json!({ "message": "Token revoked" }))),
            )
        }
        Err(e) => Audited(format!("token {}", request.token_id), Err(e.into())),
    }
}
