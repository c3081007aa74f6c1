//! `/api/v1/releases.*`

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::audit::Audited;
use super::error::ApiJson;
use super::views::ReleaseView;
use super::ApiError;
use crate::catalog::NewRelease;
use crate::domain::{Actor, Release};
use crate::http::AppState;

fn release_answer(message: &str, release: &Release) -> Json<Value> {
    Json(json!({ "message": message, "release": ReleaseView::from(release) }))
}

/// [`release_answer`] with the release's rollouts, for a release that still exists.
async fn release_answer_with_rollouts(
    state: &AppState,
    message: &str,
    release: &Release,
) -> Result<Json<Value>, ApiError> {
    let rollouts = state.catalog.list_rollouts().await?;
    let view = ReleaseView::with_rollouts(release, &rollouts);
    Ok(Json(json!({ "message": message, "release": view })))
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let releases = state.catalog.list_releases().await?;
    let rollouts = state.catalog.list_rollouts().await?;
    let data: Vec<ReleaseView> = releases
        .iter()
        .map(|release| ReleaseView::with_rollouts(release, &rollouts))
        .collect();
    Ok(Json(json!({ "data": data })))
}

#[derive(Deserialize)]
pub struct CreateReleaseRequest {
    platform: String,
    app_id: String,
    version_name: String,
    version_code: String,
    builtin_bundle_id: String,
}

pub async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateReleaseRequest>,
) -> Audited<Json<Value>> {
    let target = format!(
        "release {}/{} {} ({})",
        request.app_id, request.platform, request.version_name, request.version_code
    );
    Audited(target, create_release(state, request).await)
}

async fn create_release(
    state: AppState,
    request: CreateReleaseRequest,
) -> Result<Json<Value>, ApiError> {
    let release = state
        .catalog
        .create_release(NewRelease {
            platform: request.platform,
            app_id: request.app_id,
            version_name: request.version_name,
            version_code: request.version_code,
            builtin_bundle_id: request.builtin_bundle_id,
        })
        .await?;
    tracing::info!(release = %release.id, key = %release.key, "release created");
    Ok(release_answer("Release created successfully", &release))
}

#[derive(Deserialize)]
pub struct UpdateReleaseRequest {
    release_id: String,
    /// Absent: the date is kept, as the seed did (its web client always sends it, scripts may
    /// not). `null`: the date is cleared (the seed could not clear it). Else RFC 3339.
    #[serde(default, deserialize_with = "super::error::present")]
    release_date: Option<Option<String>>,
}

pub async fn update(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<UpdateReleaseRequest>,
) -> Audited<Json<Value>> {
    let target = format!(
        "release {} date {}",
        request.release_id,
        match &request.release_date {
            None => "unchanged",
            Some(None) => "cleared",
            Some(Some(date)) => date,
        }
    );
    Audited(target, update_release(state, request).await)
}

async fn update_release(
    state: AppState,
    request: UpdateReleaseRequest,
) -> Result<Json<Value>, ApiError> {
    let Some(release_date) = request.release_date else {
        let release = state.catalog.release(&request.release_id).await?;
        return release_answer_with_rollouts(&state, "Release updated successfully", &release)
            .await;
    };
    let release_date = release_date
        .as_deref()
        .map(|text| {
            OffsetDateTime::parse(text, &Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .map_err(|e| {
                    ApiError::BadRequest(format!(
                        "release_date {text:?} is not an RFC 3339 date such as 2026-01-31T09:00:00Z: {e}"
                    ))
                })
        })
        .transpose()?;
    let release = state
        .catalog
        .set_release_date(&request.release_id, release_date, &Actor::Api)
        .await?;
    release_answer_with_rollouts(&state, "Release updated successfully", &release).await
}

#[derive(Deserialize)]
pub struct SetActiveRequest {
    release_id: String,
    bundle_id: String,
    /// Defaults to `production`.
    channel: Option<String>,
}

pub async fn set_active(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<SetActiveRequest>,
) -> Audited<Json<Value>> {
    let target = format!(
        "release {} channel {} -> bundle {}",
        request.release_id,
        request
            .channel
            .as_deref()
            .unwrap_or(crate::domain::DEFAULT_CHANNEL),
        request.bundle_id
    );
    Audited(target, set_active_bundle(state, request).await)
}

async fn set_active_bundle(
    state: AppState,
    request: SetActiveRequest,
) -> Result<Json<Value>, ApiError> {
    let release = state
        .catalog
        .set_active_bundle(
            &request.release_id,
            &request.bundle_id,
            request.channel.as_deref(),
            &Actor::Api,
        )
        .await?;
    tracing::info!(release = %release.id, bundle = request.bundle_id, channel = ?request.channel, "active bundle set");
    release_answer_with_rollouts(&state, "Release updated successfully", &release).await
}

#[derive(Deserialize)]
pub struct DeleteReleaseRequest {
    release_id: String,
}

pub async fn delete(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<DeleteReleaseRequest>,
) -> Audited<Json<Value>> {
    let result = state
        .catalog
        .delete_release(&request.release_id, &Actor::Api)
        .await
        .map(|release| {
            tracing::info!(release = %release.id, key = %release.key, "release deleted");
            release_answer("Release deleted successfully", &release)
        })
        .map_err(ApiError::from);
    Audited(format!("release {}", request.release_id), result)
}
