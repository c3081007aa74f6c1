//! The management API (`/api/v1/*`), with the seed's route names, fields and response shapes.

mod audit;
pub mod auth;
mod builds;
mod bundles;
mod channels;
mod devices;
mod error;
mod overview;
mod public_keys;
mod releases;
mod rollouts;
mod tokens;
mod views;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{any, get, post, MethodRouter};
use axum::{middleware, Extension, Json, Router};
use serde_json::{json, Value};

pub use error::ApiError;

use super::AppState;
use crate::access::Principal;
use crate::domain::access::Permission;

/// Slack on top of MAX_BUNDLE_SIZE for the multipart framing and the text fields.
const UPLOAD_OVERHEAD: u64 = 1024 * 1024;

/// Every `/api/v1` route with the permission it needs. The router is built from this table,
/// and tests walk it to prove each route refuses callers without a valid credential or with a
/// scope that does not grant its permission, so a new route cannot be forgotten.
pub fn api_routes(state: &AppState) -> Vec<(&'static str, Permission, MethodRouter<AppState>)> {
    use Permission::{Admin, Authenticated, Read, Upload};
    let upload_limit =
        usize::try_from(state.catalog.max_bundle_size() + UPLOAD_OVERHEAD).unwrap_or(usize::MAX);
    vec![
        ("/api/v1/bundles.list", Read, get(bundles::list)),
        (
            "/api/v1/bundles.upload",
            Upload,
            post(bundles::upload).layer(DefaultBodyLimit::max(upload_limit)),
        ),
        ("/api/v1/bundles.update", Admin, post(bundles::update)),
        ("/api/v1/bundles.delete", Admin, post(bundles::delete)),
        ("/api/v1/bundles.activity", Read, get(bundles::activity)),
        ("/api/v1/releases.list", Read, get(releases::list)),
        ("/api/v1/releases.create", Admin, post(releases::create)),
        ("/api/v1/releases.update", Admin, post(releases::update)),
        (
            "/api/v1/releases.set-active",
            Admin,
            post(releases::set_active),
        ),
        ("/api/v1/releases.delete", Admin, post(releases::delete)),
        ("/api/v1/apps.overview", Read, get(overview::overview)),
        ("/api/v1/rollouts.list", Read, get(rollouts::list)),
        ("/api/v1/rollouts.start", Admin, post(rollouts::start)),
        ("/api/v1/rollouts.pause", Admin, post(rollouts::pause)),
        ("/api/v1/rollouts.resume", Admin, post(rollouts::resume)),
        ("/api/v1/rollouts.abort", Admin, post(rollouts::abort)),
        ("/api/v1/rollouts.promote", Admin, post(rollouts::promote)),
        ("/api/v1/channels.list", Read, get(channels::list)),
        ("/api/v1/channels.update", Admin, post(channels::update)),
        ("/api/v1/devices.list", Read, get(devices::list)),
        ("/api/v1/devices.find", Read, get(devices::find)),
        (
            "/api/v1/devices.set-channel",
            Admin,
            post(devices::set_channel),
        ),
        (
            "/api/v1/devices.unset-channel",
            Admin,
            post(devices::unset_channel),
        ),
        (
            "/api/v1/builds.unregistered",
            Read,
            get(builds::unregistered),
        ),
        ("/api/v1/public-keys.list", Read, get(public_keys::list)),
        ("/api/v1/public-keys.set", Admin, post(public_keys::set)),
        (
            "/api/v1/public-keys.delete",
            Admin,
            post(public_keys::delete),
        ),
        ("/api/v1/tokens.list", Admin, get(tokens::list)),
        ("/api/v1/tokens.create", Admin, post(tokens::create)),
        ("/api/v1/tokens.revoke", Admin, post(tokens::revoke)),
        ("/api/v1/audit.list", Admin, get(audit::list)),
        ("/api/v1/whoami", Authenticated, get(whoami)),
        // Unknown API paths are a route too, so they need a credential like the rest: they
        // reveal nothing.
        ("/api/v1/{*rest}", Read, any(error::unknown_route)),
    ]
}

pub fn router(state: AppState) -> Router {
    let api = api_routes(&state)
        .into_iter()
        .fold(Router::new(), |router, (path, permission, route)| {
            router.route(path, auth::require(permission, route))
        })
        // Outermost last: authenticate, then record the call, then check the scope.
        .route_layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
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

/// `GET /api/v1/whoami`: the caller's name and scope, so the UI can show what it may do.
async fn whoami(Extension(principal): Extension<Principal>) -> Json<Value> {
    Json(json!({ "name": principal.name, "scope": principal.scope.as_str() }))
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
/// `issuer` and `client_id` are always there (empty strings when unset), as the seed answered
/// and its scripts and web client read them. The issuer's endpoints come from its discovery
/// document, fetched here so the browser needs no cross-origin access to it; `error` says why
/// login cannot work when it cannot be fetched.
async fn oauth2_config(State(state): State<AppState>) -> Json<Value> {
    let verifier = state.access.oidc();
    let mut config = json!({
        "enabled": false,
        "issuer": verifier.map_or("", |v| v.issuer()),
        "client_id": state.oauth_client_id.as_deref().unwrap_or_default(),
    });
    let (Some(verifier), Some(_)) = (verifier, &state.oauth_client_id) else {
        return Json(config);
    };
    config["enabled"] = json!(true);
    config["scope"] = json!("openid profile email");
    match verifier.discovery().await {
        Ok(discovery) => {
            config["authorization_endpoint"] = json!(discovery.authorization_endpoint);
            config["token_endpoint"] = json!(discovery.token_endpoint);
            config["end_session_endpoint"] = json!(discovery.end_session_endpoint);
        }
        Err(e) => config["error"] = json!(e.to_string()),
    }
    Json(config)
}
