//! `GET /files/{key}`: bundle downloads from the embedded blob store, with Range support (the
//! plugin resumes interrupted downloads).

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::device_error;
use crate::catalog::BundleDownload;
use crate::http::AppState;

pub async fn download(
    State(state): State<AppState>,
    Path(key): Path<String>,
    request: Request,
) -> Response {
    let BundleDownload::File(path) = state.catalog.download(&key) else {
        return device_error(StatusCode::NOT_FOUND, "not_found", "no such bundle file");
    };
    // A symbolic link is not a bundle the server wrote: never followed out of the folder.
    if !tokio::fs::symlink_metadata(&path)
        .await
        .is_ok_and(|m| m.is_file())
    {
        return device_error(StatusCode::NOT_FOUND, "not_found", "no such bundle file");
    }
    let mut request = request;
    drop_range_with_unusable_if_range(request.headers_mut());
    let mut response = match ServeFile::new(path).oneshot(request).await {
        Ok(response) => response.into_response(),
        Err(infallible) => match infallible {},
    };
    // Encrypted bundles are not zips to a browser's sniffer either.
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `If-Range` that is not an HTTP date cannot match (no ETags are sent): the whole file is
/// answered (200), as RFC 9110 asks, not the range.
fn drop_range_with_unusable_if_range(headers: &mut HeaderMap) {
    let usable = headers.get(header::IF_RANGE).is_none_or(|value| {
        value
            .to_str()
            .ok()
            .is_some_and(|text| httpdate::parse_http_date(text).is_ok())
    });
    if !usable {
        headers.remove(header::RANGE);
    }
}
