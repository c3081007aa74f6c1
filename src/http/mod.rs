//! The two HTTP servers: the device API (public port) and the management API.

pub mod client_ip;
pub mod device;
pub mod management;
pub mod observe;
pub mod rate_limit;
pub mod ui;

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::catalog::staging::Staging;
use crate::catalog::Catalog;
use crate::config::Config;
use client_ip::ClientIpResolver;
use management::auth::ApiKeys;
use rate_limit::DeviceRateLimiter;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub catalog: Arc<Catalog>,
    pub staging: Staging,
    pub api_keys: Arc<ApiKeys>,
    pub client_ip: Arc<ClientIpResolver>,
    pub rate_limiter: Option<Arc<DeviceRateLimiter>>,
    pub max_bundle_size: u64,
    pub device_request_timeout: std::time::Duration,
    pub oauth_issuer: Option<String>,
    pub oauth_client_id: Option<String>,
}

impl AppState {
    pub fn new(
        config: &Config,
        catalog: Arc<Catalog>,
        staging: Staging,
        api_keys: ApiKeys,
    ) -> AppState {
        AppState {
            catalog,
            staging,
            api_keys: Arc::new(api_keys),
            client_ip: Arc::new(ClientIpResolver::new(config.trusted_proxies.clone())),
            rate_limiter: DeviceRateLimiter::per_minute(config.limit_request_per_minute)
                .map(Arc::new),
            max_bundle_size: config.max_bundle_size,
            device_request_timeout: config.device_request_timeout,
            oauth_issuer: config.oauth_issuer.clone(),
            oauth_client_id: config.oauth_client_id.clone(),
        }
    }
}

/// `GET /_healthz` on both ports.
pub fn health_routes() -> Router<AppState> {
    Router::new().route("/_healthz", get(|| async { Json(json!({"status": "ok"})) }))
}
