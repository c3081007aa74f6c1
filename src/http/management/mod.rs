//! The management API (`/api/v1/*`), with the seed's route names, fields and response shapes.

pub mod auth;
mod bundles;
mod error;
mod releases;
mod views;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde_json::{json, Value};

pub use error::ApiError;

use super::AppState;

/// Slack on top of MAX_BUNDLE_SIZE for the multipart framing and the text fields.
const UPLOAD_OVERHEAD: u64 = 1024 * 1024;

pub fn router(state: AppState) -> Router {
    let upload_limit =
        usize::try_from(state.max_bundle_size + UPLOAD_OVERHEAD).unwrap_or(usize::MAX);
    let api = Router::new()
        .route("/bundles.list", get(bundles::list))
        .route(
            "/bundles.upload",
            post(bundles::upload).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/bundles.delete", post(bundles::delete))
        .route("/bundles.activity", get(bundles::activity))
        .route("/releases.list", get(releases::list))
        .route("/releases.create", post(releases::create))
        .route("/releases.update", post(releases::update))
        .route("/releases.set-active", post(releases::set_active))
        .route("/releases.delete", post(releases::delete))
        .fallback(error::unknown_route)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ))
        .with_state(state.clone());
    Router::new()
        // Mounted as a service so the key check wraps unknown paths too: they reveal nothing.
        .nest_service("/api/v1", api)
        .route("/apipublic/v1/oauth2.config", get(oauth2_config))
        .merge(super::ui::routes())
        .merge(super::health_routes())
        .fallback(error::unknown_route)
        .with_state(state)
}

/// What the UI needs to offer OIDC login; `enabled` is false when it is not configured.
async fn oauth2_config(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "enabled": state.oauth_issuer.is_some() && state.oauth_client_id.is_some(),
        "issuer": state.oauth_issuer.as_deref().unwrap_or(""),
        "client_id": state.oauth_client_id.as_deref().unwrap_or(""),
    }))
}
