//! `GET /files/{key}`: bundle downloads from the embedded blob store, with Range support (the
//! plugin resumes interrupted downloads).

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
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
    if !tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file()) {
        return device_error(StatusCode::NOT_FOUND, "not_found", "no such bundle file");
    }
    match ServeFile::new(path).oneshot(request).await {
        Ok(response) => response.into_response(),
        Err(infallible) => match infallible {},
    }
}
