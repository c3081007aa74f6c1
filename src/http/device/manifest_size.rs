//! `POST /updates/manifest_size` (plugins 8.47+, for `getLatest({includeBundleSize})` and
//! `getBundleDownloadSize()`): how many bytes the files of a manifest weigh. The body is the
//! device's InfoObject plus `version` (the bundle) and `manifest` (or `files`): the entries it
//! still has to download. Failures are tolerated by the plugin (it reports the files as
//! unknown), so bad bodies get a plain 400.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::{device_error, server_refusal, DeviceBody, MAX_MANIFEST_SIZE_BODY};
use crate::domain::device::{DeviceInfo, DeviceRefusal};
use crate::domain::manifest::{SizeQuery, MAX_MANIFEST_FILES};
use crate::http::AppState;

pub async fn sizes(
    State(state): State<AppState>,
    DeviceBody(body): DeviceBody<MAX_MANIFEST_SIZE_BODY>,
) -> Response {
    let parsed = body.as_ref().map_err(Clone::clone).and_then(parse);
    let (device, version, queries) = match parsed {
        Ok(parsed) => parsed,
        Err(refusal) => {
            return device_error(StatusCode::BAD_REQUEST, refusal.error, &refusal.message)
        }
    };
    match state
        .catalog
        .manifest_sizes(device.release.app_id, &version, queries)
        .await
    {
        Ok(sizes) => Json(sizes).into_response(),
        Err(error) => {
            let refusal = server_refusal(&error);
            device_error(
                StatusCode::SERVICE_UNAVAILABLE,
                refusal.error,
                &refusal.message,
            )
        }
    }
}

fn parse(body: &Value) -> Result<(DeviceInfo<'_>, String, Vec<SizeQuery>), DeviceRefusal> {
    let device = DeviceInfo::parse(body)?;
    let version = match body.get("version") {
        Some(Value::String(version)) if !version.is_empty() => version.clone(),
        _ => {
            return Err(DeviceRefusal::invalid(
                "version must name the bundle whose files are sized",
            ))
        }
    };
    let entries = match body.get("manifest").or_else(|| body.get("files")) {
        Some(Value::Array(entries)) => entries,
        _ => {
            return Err(DeviceRefusal::invalid(
                "manifest must be the array of files to size",
            ))
        }
    };
    if entries.len() > MAX_MANIFEST_FILES {
        return Err(DeviceRefusal::invalid(format!(
            "manifest lists {} files; at most {MAX_MANIFEST_FILES} are sized at once",
            entries.len()
        )));
    }
    let mut queries = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let text = |field: &str| match entry.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(DeviceRefusal::invalid(format!(
                "manifest[{index}].{field} must be a string"
            ))),
        };
        if !entry.is_object() {
            return Err(DeviceRefusal::invalid(format!(
                "manifest[{index}] must be an object with file_name and file_hash"
            )));
        }
        // Entries without a hash cannot be sized and are left out, as the official backend
        // does.
        let (Some(file_name), Some(file_hash)) = (text("file_name")?, text("file_hash")?) else {
            continue;
        };
        queries.push(SizeQuery {
            file_name,
            file_hash,
            download_url: text("download_url")?,
        });
    }
    Ok((device, version, queries))
}
