//! The management API (`/api/v1/*`), with the seed's route names, fields and response shapes.

pub mod auth;
mod bundles;
mod error;
mod releases;
mod views;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{any, get, post, MethodRouter};
use axum::{middleware, Json, Router};
use serde_json::{json, Value};

pub use error::ApiError;

use super::AppState;

/// Slack on top of MAX_BUNDLE_SIZE for the multipart framing and the text fields.
const UPLOAD_OVERHEAD: u64 = 1024 * 1024;

/// Every `/api/v1` route: the router is built from this table, and a test walks it to prove
/// each one refuses requests without a valid key, so a new route cannot be forgotten.
pub fn api_routes(state: &AppState) -> Vec<(&'static str, MethodRouter<AppState>)> {
    let upload_limit =
        usize::try_from(state.max_bundle_size + UPLOAD_OVERHEAD).unwrap_or(usize::MAX);
    vec![
        ("/api/v1/bundles.list", get(bundles::list)),
        (
            "/api/v1/bundles.upload",
            post(bundles::upload).layer(DefaultBodyLimit::max(upload_limit)),
        ),
        ("/api/v1/bundles.delete", post(bundles::delete)),
        ("/api/v1/bundles.activity", get(bundles::activity)),
        ("/api/v1/releases.list", get(releases::list)),
        ("/api/v1/releases.create", post(releases::create)),
        ("/api/v1/releases.update", post(releases::update)),
        ("/api/v1/releases.set-active", post(releases::set_active)),
        ("/api/v1/releases.delete", post(releases::delete)),
        // Unknown API paths are a route too, so they need a key like the rest: they reveal nothing.
        ("/api/v1/{*rest}", any(error::unknown_route)),
    ]
}

pub fn router(state: AppState) -> Router {
    let api = api_routes(&state)
        .into_iter()
        .fold(Router::new(), |router, (path, route)| {
            router.route(path, route)
        })
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    Router::new()
        .merge(api)
        .route("/apipublic/v1/oauth2.config", get(oauth2_config))
        // Unauthenticated, like /_healthz, for Prometheus: keep the management port internal.
        .route("/metrics", get(metrics))
        .merge(super::ui::routes())
        .merge(super::health_routes())
        .fallback(error::unknown_route)
        .with_state(state)
}

async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::global().render(),
    )
}

/// What the UI needs to offer OIDC login; `enabled` is false when it is not configured.
async fn oauth2_config(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "enabled": state.oauth_issuer.is_some() && state.oauth_client_id.is_some(),
        "issuer": state.oauth_issuer.as_deref().unwrap_or(""),
        "client_id": state.oauth_client_id.as_deref().unwrap_or(""),
    }))
}
