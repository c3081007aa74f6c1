//! `/api/v1/bundles.*`

use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Multipart, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::audit::Audited;
use super::error::ApiJson;
use super::views::BundleView;
use super::ApiError;
use crate::catalog::{BundleDetailsChange, ExpectedChecksum, NewBundle, SourceError};
use crate::domain::{rfc3339, Actor};
use crate::http::AppState;

/// Longest text field accepted in the upload form.
const MAX_TEXT_FIELD: usize = 8 * 1024;

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let bundles = state.catalog.list_bundles().await?;
    let releases = state.catalog.list_releases().await?;
    let mut data = Vec::with_capacity(bundles.len());
    for bundle in &bundles {
        data.push(BundleView::new(bundle, &releases, &state.catalog).await?);
    }
    Ok(Json(json!({ "data": data })))
}

/// Multipart form: `bundle` (the file), `app_id`, `version_name`, `description`, optionally
/// `link` and `min_update_version`, and for encrypted bundles `session_key`, `checksum`,
/// `key_id`. The file streams to a staging file;
/// when `app_id` and `version_name` come before it, a duplicate is refused before the upload.
pub async fn upload(
    State(state): State<AppState>,
    form: Result<Multipart, MultipartRejection>,
) -> Audited<Json<Value>> {
    let mut new = NewBundle::default();
    let result = receive_bundle(&state, form, &mut new).await;
    Audited(
        format!("bundle {}/{}", new.app_id, new.version_name),
        result,
    )
}

/// Reads the form into `new` (so the caller can name the bundle even when this fails) and adds
/// the bundle.
async fn receive_bundle(
    state: &AppState,
    form: Result<Multipart, MultipartRejection>,
    new: &mut NewBundle,
) -> Result<Json<Value>, ApiError> {
    let mut form = form.map_err(|rejection| {
        ApiError::BadRequest(format!(
            "send the bundle as multipart/form-data (curl -F bundle=@dist.zip ...): {}",
            rejection.body_text()
        ))
    })?;
    let mut staged = None;
    // The seed's field: for a plain zip a checksum its bytes must have, for an encrypted one
    // the encrypted checksum `bundle encrypt` printed.
    let mut checksum = None;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "bundle" => {
                if staged.is_some() {
                    return Err(ApiError::BadRequest(
                        "send one `bundle` file per upload".into(),
                    ));
                }
                if !new.app_id.is_empty() && !new.version_name.is_empty() {
                    state.catalog.check_new_bundle(new).await?;
                }
                staged = Some(state.catalog.stage(field).await.map_err(|e| match e {
                    SourceError::Source(e) => multipart_error(e),
                    SourceError::Catalog(e) => e.into(),
                })?);
            }
            "app_id" => new.app_id = read_text(field).await?,
            "version_name" => new.version_name = read_text(field).await?,
            "description" => new.description = read_text(field).await?,
            "link" => new.link = non_empty(read_text(field).await?),
            "min_update_version" => new.min_update_version = non_empty(read_text(field).await?),
            "session_key" => new.session_key = non_empty(read_text(field).await?),
            "checksum" => checksum = non_empty(read_text(field).await?),
            "key_id" => new.key_id = non_empty(read_text(field).await?),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown form field {other:?}; expected bundle, app_id, version_name, \
                     description, link, min_update_version, session_key, checksum, key_id"
                )))
            }
        }
    }
    let staged = staged.ok_or_else(|| {
        ApiError::BadRequest("form field `bundle` (the zip file) is required".into())
    })?;
    if new.session_key.is_some() {
        new.encrypted_checksum = checksum;
    } else {
        new.expected_checksum = checksum.map(|value| ExpectedChecksum {
            value,
            field: "checksum",
        });
    }
    let bundle = state.catalog.add_bundle(new.clone(), staged).await?;
    tracing::info!(bundle = %bundle.id, app = bundle.app_id, version = bundle.version_name, size = bundle.size, "bundle uploaded");
    let mut answer = json!({
        "message": "Bundle uploaded successfully",
        "bundle": BundleView::new(&bundle, &[], &state.catalog).await?,
    });
    if let Some(note) = state.catalog.encryption_note(&bundle).await? {
        answer["note"] = json!(note);
    }
    Ok(Json(answer))
}

fn non_empty(value: String) -> Option<String> {
    Some(value).filter(|v| !v.is_empty())
}

async fn read_text(mut field: Field<'_>) -> Result<String, ApiError> {
    let name = field.name().unwrap_or_default().to_string();
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_TEXT_FIELD {
            return Err(ApiError::BadRequest(format!(
                "form field `{name}` is longer than {MAX_TEXT_FIELD} bytes"
            )));
        }
    }
    String::from_utf8(bytes)
        .map(|text| text.trim().to_string())
        .map_err(|_| ApiError::BadRequest(format!("form field `{name}` is not UTF-8 text")))
}

fn multipart_error(error: MultipartError) -> ApiError {
    let message = error.body_text();
    if error.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(format!(
            "the upload is larger than allowed (MAX_BUNDLE_SIZE): {message}"
        ))
    } else {
        ApiError::BadRequest(format!(
            "the upload is not a valid multipart/form-data body (send it with curl -F): {message}"
        ))
    }
}

#[derive(Deserialize)]
pub struct DeleteBundleRequest {
    bundle_id: String,
}

pub async fn delete(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<DeleteBundleRequest>,
) -> Audited<Json<Value>> {
    let result = async {
        let bundle = state
            .catalog
            .delete_bundle(&request.bundle_id, &Actor::Api)
            .await?;
        Ok(Json(json!({
            "message": "Bundle deleted successfully",
            "bundle": BundleView::new(&bundle, &[], &state.catalog).await?,
        })))
    }
    .await;
    Audited(format!("bundle {}", request.bundle_id), result)
}

/// `POST /api/v1/bundles.update`: fields left out keep their value; `null` clears a link or a
/// minimum.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBundleRequest {
    bundle_id: String,
    description: Option<String>,
    #[serde(default, deserialize_with = "super::error::present")]
    link: Option<Option<String>>,
    #[serde(default, deserialize_with = "super::error::present")]
    min_update_version: Option<Option<String>>,
}

pub async fn update(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<UpdateBundleRequest>,
) -> Audited<Json<Value>> {
    let target = format!("bundle {}", request.bundle_id);
    let result = async {
        let change = BundleDetailsChange {
            description: request.description,
            link: request.link,
            min_update_version: request.min_update_version,
        };
        let bundle = state
            .catalog
            .update_bundle_details(&request.bundle_id, change, &Actor::Api)
            .await?;
        let releases = state.catalog.list_releases().await?;
        Ok(Json(json!({
            "message": "Bundle updated successfully",
            "bundle": BundleView::new(&bundle, &releases, &state.catalog).await?,
        })))
    }
    .await;
    Audited(target, result)
}

#[derive(Deserialize)]
pub struct ActivityQuery {
    bundle_id: String,
    /// Days back from today, today included (default 14, at most 90).
    days: Option<u32>,
}

/// `GET /api/v1/bundles.activity?bundle_id=…&days=14`: device events for one bundle, in total
/// per action and per day as downloads, installs and failures.
pub async fn activity(
    State(state): State<AppState>,
    query: Result<Query<ActivityQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|r| ApiError::BadRequest(r.body_text()))?;
    let days = query.days.unwrap_or(14);
    if !(1..=90).contains(&days) {
        return Err(ApiError::BadRequest("days must be from 1 to 90".into()));
    }
    let bundle = state.catalog.bundle(&query.bundle_id).await?;
    let activity = state.catalog.bundle_activity(&bundle, days).await?;
    let daily: Vec<Value> = activity
        .days
        .iter()
        .map(|d| json!({"day": &rfc3339(d.day)[..10], "downloads": d.downloads, "installs": d.installs, "failures": d.failures}))
        .collect();
    Ok(Json(json!({
        "bundle_id": bundle.id.as_str(),
        "version_name": bundle.version_name,
        "actions": activity.actions,
        "daily": daily,
    })))
}
