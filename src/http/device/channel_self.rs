//! `/channel_self`: plugins 5.34+, 6.34+, 7.34+ and 8 keep the chosen channel on the device and
//! send it as `defaultChannel`; the server validates it, reports it and lists the channels.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{device_error, server_refusal, DeviceBody};
use crate::domain::device::{DeviceFields, DeviceRefusal};
use crate::domain::DEFAULT_CHANNEL;
use crate::http::AppState;

fn refusal_response(refusal: DeviceRefusal) -> Response {
    device_error(StatusCode::BAD_REQUEST, refusal.error, &refusal.message)
}

/// POST (`setChannel`): accepts a channel the app has.
pub async fn set_channel(State(state): State<AppState>, DeviceBody(body): DeviceBody) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(refusal) => return refusal_response(refusal),
    };
    let outcome = (|| {
        let fields = DeviceFields::new(&body)?;
        Ok::<_, DeviceRefusal>((
            fields.required_str("app_id")?.to_string(),
            fields.channel("channel")?,
        ))
    })();
    let (app_id, channel) = match outcome {
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
    match state.catalog.device_may_choose(&app_id, &channel).await {
        Ok(true) => {}
        Ok(false) => {
            return device_error(
                StatusCode::OK,
                "channel_not_found",
                &format!("Channel {channel} does not exist for {app_id}"),
            )
        }
        Err(error) => {
            let refusal = server_refusal(&error);
            return device_error(
                StatusCode::SERVICE_UNAVAILABLE,
                refusal.error,
                &refusal.message,
            );
        }
    }
    Json(json!({"status": "ok", "allowSet": true})).into_response()
}

/// PUT (`getChannel`): the channel the device follows.
pub async fn get_channel(DeviceBody(body): DeviceBody) -> Response {
    let outcome = body.and_then(|body| {
        let fields = DeviceFields::new(&body)?;
        fields.required_str("app_id")?;
        Ok((
            fields.channel("channel")?,
            fields.channel("defaultChannel")?,
        ))
    });
    match outcome {
        Ok((Some(chosen), _)) => {
            Json(json!({"channel": chosen.as_str(), "status": "override", "allowSet": true}))
                .into_response()
        }
        Ok((None, default)) => Json(json!({
            "channel": default.as_ref().map_or(DEFAULT_CHANNEL, |c| c.as_str()),
            "status": "default",
            "allowSet": true,
        }))
        .into_response(),
        Err(refusal) => refusal_response(refusal),
    }
}

/// GET (`listChannels`): the InfoObject comes as query parameters; the answer is a bare array
/// with numeric ids.
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
    let app_id =
        match DeviceFields::new(&body).and_then(|f| f.required_str("app_id").map(str::to_string)) {
            Ok(app_id) => app_id,
            Err(refusal) => return refusal_response(refusal),
        };
    match state.catalog.channels(&app_id).await {
        Ok(channels) => Json(
            channels
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "name": c.name.as_str(),
                        "public": c.name.is_default(),
                        "allow_self_set": true,
                    })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
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

/// DELETE (`unsetChannel` of plugins up to 7.33): the InfoObject as a JSON body or as query
/// parameters. Current plugins clear their channel locally and never call it.
pub async fn unset_channel(Query(query): Query<HashMap<String, String>>, body: Bytes) -> Response {
    let has_app_id = if body.iter().all(u8::is_ascii_whitespace) {
        query.get("app_id").is_some_and(|a| !a.is_empty())
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(value) => value
                .get("app_id")
                .and_then(Value::as_str)
                .is_some_and(|a| !a.is_empty()),
            Err(e) => {
                return device_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &format!("the request body is not valid JSON: {e}"),
                )
            }
        }
    };
    if !has_app_id {
        return device_error(
            StatusCode::BAD_REQUEST,
            "missing_info",
            "field `app_id` is required",
        );
    }
    Json(json!({"status": "ok"})).into_response()
}
