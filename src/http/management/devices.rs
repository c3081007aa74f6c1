//! `/api/v1/devices.*`: finding an app's devices and putting them on a channel whatever they
//! ask for (device overrides).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::audit::Audited;
use super::error::{checked_app_id, ApiJson, ApiQuery};
use super::views::{DeviceLookupView, DeviceOverrideView};
use super::ApiError;
use crate::http::AppState;

/// Device ids an audit entry lists by name; beyond that it gives their number.
const DEVICES_NAMED_IN_AUDIT: usize = 3;

#[derive(Deserialize)]
pub struct AppQuery {
    app_id: String,
}

/// `GET /api/v1/devices.list?app_id=…`: every device of the app put on a channel, by device id.
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AppQuery>,
) -> Result<Json<Value>, ApiError> {
    let app_id = checked_app_id(&query.app_id)?;
    let overrides = state.catalog.device_overrides(app_id).await?;
    let data: Vec<DeviceOverrideView> = overrides.iter().map(DeviceOverrideView::from).collect();
    Ok(Json(json!({ "data": data })))
}

#[derive(Deserialize)]
pub struct FindQuery {
    app_id: String,
    /// A `device_id` or `custom_id`, exactly.
    q: String,
}

/// `GET /api/v1/devices.find?app_id=…&q=…`: devices of the app whose `device_id` or
/// `custom_id` is `q`, from their stats (and their override), most recently seen first.
pub async fn find(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<FindQuery>,
) -> Result<Json<Value>, ApiError> {
    let app_id = checked_app_id(&query.app_id)?;
    let found = state.catalog.find_devices(app_id, &query.q).await?;
    let data: Vec<DeviceLookupView> = found.iter().map(DeviceLookupView::from).collect();
    Ok(Json(json!({ "data": data })))
}

/// The devices a request names: `device_ids`, and `device_id` for one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetChannelRequest {
    app_id: String,
    /// Optional for serde so that leaving it out gets a message saying what it is for.
    channel: Option<String>,
    #[serde(default)]
    device_ids: Vec<String>,
    device_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsetChannelRequest {
    app_id: String,
    #[serde(default)]
    device_ids: Vec<String>,
    device_id: Option<String>,
}

/// Both ways of naming devices, in the order given.
fn named_devices(device_ids: &[String], device_id: &Option<String>) -> Vec<String> {
    device_ids.iter().chain(device_id).cloned().collect()
}

/// `3 devices` or `a, b` for the audit log.
fn describe_devices(devices: &[String]) -> String {
    if devices.len() <= DEVICES_NAMED_IN_AUDIT {
        format!("device {}", devices.join(", "))
    } else {
        format!("{} devices", devices.len())
    }
}

pub async fn set_channel(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<SetChannelRequest>,
) -> Audited<Json<Value>> {
    let devices = named_devices(&request.device_ids, &request.device_id);
    let target = format!(
        "{} of {} -> channel {}",
        describe_devices(&devices),
        request.app_id,
        request.channel.as_deref().unwrap_or("(none)")
    );
    Audited(target, put_on_channel(state, request, devices).await)
}

async fn put_on_channel(
    state: AppState,
    request: SetChannelRequest,
    devices: Vec<String>,
) -> Result<Json<Value>, ApiError> {
    let app_id = checked_app_id(&request.app_id)?;
    let channel = request.channel.ok_or_else(|| {
        ApiError::BadRequest("channel is required: the channel to put the devices on".into())
    })?;
    let overrides = state
        .catalog
        .force_devices(app_id, &devices, &channel)
        .await?;
    tracing::info!(
        app = app_id,
        channel,
        devices = overrides.len(),
        "devices put on a channel"
    );
    let data: Vec<DeviceOverrideView> = overrides.iter().map(DeviceOverrideView::from).collect();
    Ok(Json(json!({
        "message": format!("{} device(s) put on channel {channel}", data.len()),
        "data": data,
    })))
}

pub async fn unset_channel(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<UnsetChannelRequest>,
) -> Audited<Json<Value>> {
    let devices = named_devices(&request.device_ids, &request.device_id);
    let target = format!(
        "{} of {} -> no override",
        describe_devices(&devices),
        request.app_id
    );
    Audited(target, release(state, &request.app_id, devices).await)
}

async fn release(
    state: AppState,
    app_id: &str,
    devices: Vec<String>,
) -> Result<Json<Value>, ApiError> {
    let app_id = checked_app_id(app_id)?;
    let removed = state.catalog.release_devices(app_id, &devices).await?;
    if removed == 0 {
        return Err(ApiError::NotFound(format!(
            "none of these devices of {app_id} is on a channel by override: {}",
            devices.join(", ")
        )));
    }
    tracing::info!(app = app_id, removed, "device overrides removed");
    Ok(Json(json!({
        "message": format!("{removed} device override(s) removed"),
        "removed": removed,
    })))
}
