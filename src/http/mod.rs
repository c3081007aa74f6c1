//! The two HTTP servers: the device API (public port) and the management API.

pub mod auth_throttle;
pub mod client_ip;
pub mod connections;
pub mod device;
pub mod management;
pub mod observe;
pub mod rate_limit;
pub mod serve;
pub mod ui;

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::access::Access;
use crate::catalog::Catalog;
use crate::config::Config;
use client_ip::ClientIpResolver;

use rate_limit::DeviceRateLimiter;

/// Everything a handler needs. Cloned several times per request (by each extractor and
/// middleware), so it is one shared pointer: a clone is one atomic increment.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub catalog: Arc<Catalog>,
    pub access: Access,
    pub client_ip: ClientIpResolver,
    pub rate_limiter: Option<DeviceRateLimiter>,
    /// `/stats` events per client IP (STATS_EVENTS_PER_MINUTE).
    pub stats_limiter: Option<DeviceRateLimiter>,
    /// Wrong management credentials per client address.
    pub failed_logins: auth_throttle::FailedLogins,
    pub device_request_timeout: std::time::Duration,
    /// Offered to the UI for OIDC login (with the issuer of `access`).
    pub oauth_client_id: Option<String>,
}

impl AppState {
    pub fn new(config: &Config, catalog: Arc<Catalog>, access: Access) -> AppState {
        AppState(Arc::new(Shared {
            catalog,
            access,
            client_ip: ClientIpResolver::new(config.trusted_proxies.clone()),
            rate_limiter: DeviceRateLimiter::per_minute(config.limit_request_per_minute),
            stats_limiter: DeviceRateLimiter::per_minute(config.stats_events_per_minute),
            failed_logins: auth_throttle::FailedLogins::default(),
            device_request_timeout: config.device_request_timeout,
            oauth_client_id: config.oauth_client_id.clone(),
        }))
    }
}

/// `GET /_healthz` on both ports.
pub fn health_routes() -> Router<AppState> {
    Router::new().route("/_healthz", get(|| async { Json(json!({"status": "ok"})) }))
}
