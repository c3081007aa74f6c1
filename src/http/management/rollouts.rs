//! `/api/v1/rollouts.*`: staged rollouts of a release's channel (start, look, and pause,
//! resume, abort or promote by hand).

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::audit::Audited;
use super::error::{ApiJson, ApiQuery};
use super::views::RolloutView;
use super::ApiError;
use crate::access::Principal;
use crate::catalog::{NewRollout, RolloutAction};
use crate::domain::rollout::RolloutSpec;
use crate::domain::{Actor, ChannelName, RecordId};
use crate::http::AppState;

#[derive(Deserialize)]
pub struct RolloutsQuery {
    release_id: Option<String>,
    app_id: Option<String>,
}

/// `GET /api/v1/rollouts.list[?release_id=…|app_id=…]`: active rollouts and the last finished
/// one of each channel, newest first.
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<RolloutsQuery>,
) -> Result<Json<Value>, ApiError> {
    let release_id = query
        .release_id
        .as_deref()
        .map(|id| RecordId::parse(id, "release_id"))
        .transpose()
        .map_err(|e| ApiError::BadRequest(e.0))?;
    let data: Vec<RolloutView> = state
        .catalog
        .list_rollouts()
        .await?
        .iter()
        .filter(|r| release_id.as_ref().is_none_or(|id| &r.release_id == id))
        .filter(|r| query.app_id.as_ref().is_none_or(|app| &r.app_id == app))
        .map(RolloutView::from)
        .collect();
    Ok(Json(json!({ "data": data })))
}

/// `rollouts.start`: the channel (default `production`), the canary bundle, and the plan;
/// fields left out take the defaults. Unknown fields are refused, so a typo never looks like a
/// gate that was set.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    release_id: String,
    channel: Option<String>,
    bundle_id: String,
    steps: Option<Vec<f64>>,
    interval: Option<String>,
    window: Option<String>,
    max_failure_rate: Option<f64>,
    min_devices: Option<u64>,
}

pub async fn start(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(request): ApiJson<StartRequest>,
) -> Audited<Json<Value>> {
    let target = format!(
        "release {} channel {} rollout of bundle {}",
        request.release_id,
        request
            .channel
            .as_deref()
            .unwrap_or(crate::domain::DEFAULT_CHANNEL),
        request.bundle_id
    );
    Audited(target, start_rollout(state, principal, request).await)
}

async fn start_rollout(
    state: AppState,
    principal: Principal,
    request: StartRequest,
) -> Result<Json<Value>, ApiError> {
    let spec = RolloutSpec {
        steps: request.steps,
        interval: request.interval,
        window: request.window,
        max_failure_rate: request.max_failure_rate,
        min_devices: request.min_devices,
    };
    let new = NewRollout {
        channel: channel_of(request.channel.as_deref())?,
        bundle_id: request.bundle_id,
        plan: spec.plan().map_err(|e| ApiError::BadRequest(e.0))?,
    };
    let rollout = state
        .catalog
        .start_rollout(&request.release_id, new, &Actor::Api, &principal.name)
        .await?;
    Ok(Json(json!({
        "message": "Rollout started",
        "rollout": RolloutView::from(&rollout),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    release_id: String,
    /// Defaults to `production`.
    channel: Option<String>,
}

pub async fn pause(
    state: State<AppState>,
    principal: Extension<Principal>,
    request: ApiJson<ActionRequest>,
) -> Audited<Json<Value>> {
    act(state, principal, request, RolloutAction::Pause).await
}

pub async fn resume(
    state: State<AppState>,
    principal: Extension<Principal>,
    request: ApiJson<ActionRequest>,
) -> Audited<Json<Value>> {
    act(state, principal, request, RolloutAction::Resume).await
}

pub async fn abort(
    state: State<AppState>,
    principal: Extension<Principal>,
    request: ApiJson<ActionRequest>,
) -> Audited<Json<Value>> {
    act(state, principal, request, RolloutAction::Abort).await
}

pub async fn promote(
    state: State<AppState>,
    principal: Extension<Principal>,
    request: ApiJson<ActionRequest>,
) -> Audited<Json<Value>> {
    act(state, principal, request, RolloutAction::Promote).await
}

async fn act(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(request): ApiJson<ActionRequest>,
    action: RolloutAction,
) -> Audited<Json<Value>> {
    let channel = request
        .channel
        .as_deref()
        .unwrap_or(crate::domain::DEFAULT_CHANNEL);
    let target = format!(
        "release {} channel {channel} rollout {}",
        request.release_id,
        action.as_str()
    );
    let result = async {
        let channel = channel_of(Some(channel))?;
        let rollout = state
            .catalog
            .act_on_rollout(&request.release_id, &channel, action, &principal.name)
            .await?;
        Ok(Json(json!({
            "message": format!("Rollout {}", rollout.progress.phase.as_str()),
            "rollout": RolloutView::from(&rollout),
        })))
    }
    .await;
    Audited(target, result)
}

fn channel_of(name: Option<&str>) -> Result<ChannelName, ApiError> {
    ChannelName::parse_or_default(name).map_err(|e| ApiError::BadRequest(e.0))
}
