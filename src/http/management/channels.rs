//! `/api/v1/channels.*`: the settings of an app's channels (which devices a channel serves and
//! which bundles it may move them to).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::audit::Audited;
use super::error::{checked_app_id, ApiJson, ApiQuery};
use super::views::ChannelView;
use super::ApiError;
use crate::catalog::ChannelRulesChange;
use crate::domain::Actor;
use crate::http::AppState;

#[derive(Deserialize)]
pub struct ChannelsQuery {
    /// Every app the server knows when absent.
    app_id: Option<String>,
}

/// `GET /api/v1/channels.list?app_id=…`: each channel of the app (of every known app without
/// `app_id`) with its settings, by app then channel.
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ChannelsQuery>,
) -> Result<Json<Value>, ApiError> {
    let app_id = query.app_id.as_deref().map(checked_app_id).transpose()?;
    let channels = state.catalog.list_channels(app_id).await?;
    let data: Vec<ChannelView> = channels.iter().map(ChannelView::from).collect();
    Ok(Json(json!({ "data": data })))
}

/// `channels.update`: the channel and any subset of its settings; settings left out keep
/// their value. A field this server does not know is refused rather than ignored, so a typo
/// never looks like a saved setting.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateChannelRequest {
    app_id: String,
    channel: String,
    allow_ios: Option<bool>,
    allow_android: Option<bool>,
    allow_electron: Option<bool>,
    allow_emulator: Option<bool>,
    allow_device: Option<bool>,
    allow_dev_build: Option<bool>,
    allow_prod_build: Option<bool>,
    update_policy: Option<String>,
    block_under_native: Option<bool>,
    allow_device_self_set: Option<bool>,
}

impl UpdateChannelRequest {
    fn change(&self) -> ChannelRulesChange {
        ChannelRulesChange {
            allow_ios: self.allow_ios,
            allow_android: self.allow_android,
            allow_electron: self.allow_electron,
            allow_emulator: self.allow_emulator,
            allow_device: self.allow_device,
            allow_dev_build: self.allow_dev_build,
            allow_prod_build: self.allow_prod_build,
            update_policy: self.update_policy.clone(),
            block_under_native: self.block_under_native,
            allow_device_self_set: self.allow_device_self_set,
        }
    }
}

pub async fn update(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<UpdateChannelRequest>,
) -> Audited<Json<Value>> {
    let target = format!("channel {} of {}", request.channel, request.app_id);
    Audited(target, update_channel(state, request).await)
}

async fn update_channel(
    state: AppState,
    request: UpdateChannelRequest,
) -> Result<Json<Value>, ApiError> {
    let app_id = checked_app_id(&request.app_id)?;
    let settings = state
        .catalog
        .configure_channel(app_id, &request.channel, request.change(), &Actor::Api)
        .await?;
    tracing::info!(app = app_id, channel = %settings.channel, rules = ?settings.rules, "channel settings changed");
    let channels = state.catalog.list_channels(Some(app_id)).await?;
    let channel = channels
        .iter()
        .find(|c| c.settings.channel == settings.channel)
        .ok_or_else(|| {
            ApiError::Internal(format!(
                "channel {} of {app_id} is not listed right after it was configured",
                settings.channel
            ))
        })?;
    Ok(Json(json!({
        "message": "Channel updated successfully",
        "channel": ChannelView::from(channel),
    })))
}
