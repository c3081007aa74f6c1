//! The web UI at `/ui` on the management port: static files from `ui/`, compiled into the
//! binary, so `cargo run --release` serves it with no front-end build step.
//!
//! Every other path under `/ui/` that does not name a file gets the page too, as the seed
//! served its single-page client (`/ui/app`, `/ui/login`, `/ui/login/oauth-callback`,
//! `/ui/app/release/<id>/update`, …): bookmarks and identity-provider redirect URIs made for it
//! keep working, and the page shows what fits the path. The page refers to its assets by
//! absolute paths, so it loads the same from any depth.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");
/// Browsers ask every origin for `/favicon.ico`; without one each page load logs a 404.
const FAVICON: &[u8] = include_bytes!("../../ui/favicon.ico");

/// Scripts and styles from this origin only; the UI never needs inline code. The one other
/// host it talks to is the OIDC token endpoint, added to `connect-src` when SSO is configured.
fn content_security_policy(token_origin: Option<&str>) -> String {
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'{}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        token_origin.map(|o| format!(" {o}")).unwrap_or_default()
    )
}

/// `scheme://host[:port]` of an absolute URL.
fn origin_of(url: &str) -> Option<&str> {
    let after_scheme = url.find("://")? + 3;
    let end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    Some(&url[..end])
}

fn asset(content_type: &'static str, body: impl IntoResponse + 'static, csp: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        [(header::CONTENT_SECURITY_POLICY, csp)],
        body,
    )
        .into_response()
}

async fn index(State(state): State<AppState>) -> Response {
    let token_endpoint = match state.access.oidc() {
        Some(oidc) if state.oauth_client_id.is_some() => {
            // Cached after the first success; the login page reports a failure itself.
            let discovered = oidc.discovery().await.ok();
            discovered.and_then(|d| d.token_endpoint.clone())
        }
        _ => None,
    };
    let csp = content_security_policy(token_endpoint.as_deref().and_then(origin_of));
    asset("text/html; charset=utf-8", INDEX, csp)
}

/// `/ui/<path>`: the page for a path of the app, 404 for a file that does not exist here (a
/// missing script must not be answered with HTML).
async fn page_for_path(state: State<AppState>, Path(path): Path<String>) -> Response {
    let last_segment = path.rsplit('/').next().unwrap_or_default();
    if last_segment.contains('.') {
        return StatusCode::NOT_FOUND.into_response();
    }
    index(state).await
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(page_for_path))
        .route(
            "/favicon.ico",
            get(|| async { asset("image/x-icon", FAVICON, content_security_policy(None)) }),
        )
        .route(
            "/ui/app.js",
            get(|| async {
                asset(
                    "text/javascript; charset=utf-8",
                    SCRIPT,
                    content_security_policy(None),
                )
            }),
        )
        .route(
            "/ui/app.css",
            get(|| async {
                asset(
                    "text/css; charset=utf-8",
                    STYLE,
                    content_security_policy(None),
                )
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_endpoint_origin_joins_connect_src() {
        assert_eq!(
            origin_of("https://oauth2.example.com:8443/token?x=1"),
            Some("https://oauth2.example.com:8443")
        );
        assert_eq!(origin_of("http://idp"), Some("http://idp"));
        assert_eq!(origin_of("not a url"), None);
        assert!(content_security_policy(Some("https://idp.example"))
            .contains("connect-src 'self' https://idp.example;"));
        assert!(content_security_policy(None).contains("connect-src 'self';"));
    }
}
