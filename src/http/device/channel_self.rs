//! `/channel_self`: plugins 5.34+, 6.34+, 7.34+ and 8 keep the chosen channel on the device and
//! send it as `defaultChannel`; older ones ask the server to remember it. The server checks the
//! channel's settings (devices may only choose channels that allow it, for their platform and
//! kind), reports overrides, and lists the channels a device may choose.

use std::borrow::Cow;
use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{device_error, server_refusal, DeviceBody, DeviceBytes};
use crate::catalog::{CatalogError, ChannelChange};
use crate::domain::device::{DeviceFields, DeviceRefusal};
use crate::http::AppState;

fn refusal_response(refusal: DeviceRefusal) -> Response {
    device_error(StatusCode::BAD_REQUEST, refusal.error, &refusal.message)
}

fn unavailable(error: &CatalogError) -> Response {
    let refusal = server_refusal(error);
    device_error(
        StatusCode::SERVICE_UNAVAILABLE,
        refusal.error,
        &refusal.message,
    )
}

/// POST (`setChannel`): accepts a channel the app has and lets devices choose; remembers it
/// for plugins that keep no channel themselves.
pub async fn set_channel(State(state): State<AppState>, DeviceBody(body): DeviceBody) -> Response {
    let parsed = body.and_then(|body| {
        let fields = DeviceFields::new(&body)?;
        Ok((
            fields.required_str("app_id")?.to_string(),
            fields.device_id()?.into_owned(),
            fields.traits()?,
            fields.plugin_version()?,
            fields.channel("channel")?,
        ))
    });
    let (app_id, device_id, traits, plugin, channel) = match parsed {
        Ok(parsed) => parsed,
        Err(refusal) => return refusal_response(refusal),
    };
    let Some(channel) = channel else {
        return device_error(
            StatusCode::OK,
            "missing_channel",
            "Cannot set a channel without its name",
        );
    };
    // Plugins that do not say their version are current ones (every plugin since 5 sends it).
    let remember = plugin.is_some_and(|v| !v.keeps_channel_locally());
    let change = state
        .catalog
        .choose_channel(&app_id, &device_id, traits, &channel, remember)
        .await;
    match change {
        Ok(ChannelChange::Accepted) => {
            Json(json!({"status": "ok", "allowSet": true})).into_response()
        }
        Ok(ChannelChange::NotFound) => device_error(
            StatusCode::OK,
            "channel_not_found",
            &format!("Channel {channel} does not exist for {app_id}"),
        ),
        Ok(ChannelChange::NotAllowed(refusal)) => {
            let error = if refusal.error == "cannot_update_via_private_channel" {
                "channel_self_set_not_allowed"
            } else {
                refusal.error
            };
            device_error(StatusCode::OK, error, &refusal.message)
        }
        Ok(ChannelChange::Forced(forced)) => device_error(
            StatusCode::OK,
            "cannot_override",
            &format!("This device is assigned to channel {forced} and cannot change it"),
        ),
        Err(error) => unavailable(&error),
    }
}

/// PUT (`getChannel`): the channel the server puts the device on (`override`), else the one
/// it sends, else the default one.
pub async fn get_channel(State(state): State<AppState>, DeviceBody(body): DeviceBody) -> Response {
    let parsed = body.and_then(|body| {
        let fields = DeviceFields::new(&body)?;
        Ok((
            fields.required_str("app_id")?.to_string(),
            fields
                .optional_str("device_id")?
                .map(|_| fields.device_id().map(Cow::into_owned))
                .transpose()?,
            fields.channel("channel")?,
            fields.channel("defaultChannel")?,
        ))
    });
    let (app_id, device_id, asked, default) = match parsed {
        Ok(parsed) => parsed,
        Err(refusal) => return refusal_response(refusal),
    };
    let found = match state
        .catalog
        .channel_of_device(&app_id, device_id.as_deref(), default)
        .await
    {
        Ok(found) => found,
        Err(error) => return unavailable(&error),
    };
    let (channel, status) = match (found.overridden, asked) {
        (true, _) => (found.channel, "override"),
        (false, Some(asked)) => (asked, "override"),
        (false, None) => (found.channel, "default"),
    };
    Json(json!({"channel": channel.as_str(), "status": status, "allowSet": true})).into_response()
}

/// GET (`listChannels`): the InfoObject comes as query parameters; the answer is a bare array
/// with numeric ids, of the channels this device may choose.
pub async fn list_channels(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let body = Value::Object(
        query
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect::<Map<_, _>>(),
    );
    let parsed = DeviceFields::new(&body)
        .and_then(|f| Ok((f.required_str("app_id")?.to_string(), f.traits()?)));
    let (app_id, traits) = match parsed {
        Ok(parsed) => parsed,
        Err(refusal) => return refusal_response(refusal),
    };
    match state.catalog.channels_for_device(&app_id, traits).await {
        Ok(channels) => Json(
            channels
                .iter()
                .map(|(c, rules)| {
                    json!({
                        "id": c.id,
                        "name": c.name.as_str(),
                        "public": c.name.is_default(),
                        "allow_self_set": c.name.is_default() || rules.allow_device_self_set,
                    })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(error) => unavailable(&error),
    }
}

/// DELETE (`unsetChannel` of plugins up to 7.33): the InfoObject as a JSON body or as query
/// parameters. Forgets the channel the server remembered for the device. Current plugins clear
/// their channel locally and never call it.
pub async fn unset_channel(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    DeviceBytes(body): DeviceBytes,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(refusal) => {
            return device_error(StatusCode::BAD_REQUEST, refusal.error, &refusal.message)
        }
    };
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(
            query
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        )
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(value) => value,
            Err(e) => {
                return device_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &format!("the request body is not valid JSON: {e}"),
                )
            }
        }
    };
    let parsed = DeviceFields::new(&body).and_then(|fields| {
        Ok((
            fields.required_str("app_id")?.to_string(),
            fields
                .optional_str("device_id")?
                .map(|_| fields.device_id().map(Cow::into_owned))
                .transpose()?,
        ))
    });
    let (app_id, device_id) = match parsed {
        Ok(parsed) => parsed,
        Err(refusal) => return refusal_response(refusal),
    };
    if let Some(device_id) = device_id {
        if let Err(error) = state
            .catalog
            .forget_device_choice(&app_id, &device_id)
            .await
        {
            return unavailable(&error);
        }
    }
    Json(json!({"status": "ok"})).into_response()
}
