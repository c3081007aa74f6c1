//! `/api/v1/public-keys.*`: the public key each app's encrypted bundles are checked with.

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::audit::Audited;
use super::error::ApiJson;
use super::ApiError;
use crate::access::Principal;
use crate::domain::encryption::AppKey;
use crate::domain::rfc3339;
use crate::http::AppState;

fn key_view(key: &AppKey) -> Value {
    json!({
        "app_id": key.app_id,
        "key_id": key.public_key.key_id(),
        "bits": key.public_key.bits(),
        "public_key": key.public_key.to_pem(),
        "registered_at": rfc3339(key.registered_at),
        "registered_by": key.registered_by,
    })
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let keys = state.catalog.app_keys().await?;
    Ok(Json(
        json!({ "data": keys.iter().map(key_view).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
pub struct SetKeyRequest {
    app_id: String,
    /// PEM, as `npx @capgo/cli key create` writes `.capgo_key_v2.pub`.
    public_key: String,
}

pub async fn set(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(request): ApiJson<SetKeyRequest>,
) -> Audited<Json<Value>> {
    let result = async {
        let key = state
            .catalog
            .register_app_key(&request.app_id, &request.public_key, &principal.name)
            .await?;
        tracing::info!(app = key.app_id, key_id = key.public_key.key_id(), by = principal.name, "public key registered");
        Ok(Json(json!({
            "message": "Public key registered: encrypted uploads of this app are now decrypted and checked",
            "data": key_view(&key),
        })))
    }
    .await;
    Audited(format!("public key of {}", request.app_id), result)
}

#[derive(Deserialize)]
pub struct DeleteKeyRequest {
    app_id: String,
}

pub async fn delete(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<DeleteKeyRequest>,
) -> Audited<Json<Value>> {
    let result = async {
        let key = state.catalog.remove_app_key(&request.app_id).await?;
        tracing::info!(app = key.app_id, "public key removed");
        Ok(Json(json!({
            "message": "Public key removed: encrypted uploads of this app are stored unchecked",
            "data": key_view(&key),
        })))
    }
    .await;
    Audited(format!("public key of {}", request.app_id), result)
}
