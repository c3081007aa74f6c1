//! `POST /updates`: the check every app launch and foreground makes.

use axum::extract::{Request, State};
use axum::Json;

use axum::body::Bytes;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::{device_info, read_body, server_refusal, DeviceBytes, MAX_DEVICE_BODY};
use crate::domain::device::DeviceRefusal;
use crate::domain::update::UpdateAnswer;
use crate::http::AppState;

/// Always HTTP 200: plugins handle `error` + `kind` answers gracefully whatever the status,
/// and older ones only report `download_fail` for non-2xx answers.
pub async fn check_for_update(
    State(state): State<AppState>,
    DeviceBytes(body): DeviceBytes,
) -> Response {
    respond(&state, body).await
}

/// [`check_for_update`] for the device port's own dispatch ([`super::DeviceApi`]).
pub async fn check_request(state: &AppState, request: Request) -> Response {
    respond(state, read_body(request, MAX_DEVICE_BODY).await).await
}

async fn respond(state: &AppState, body: Result<Bytes, DeviceRefusal>) -> Response {
    let answer = answer_for(state, body).await;
    crate::metrics::global().update_answer(answer.kind());
    match answer {
        // Rendered once per cached target: no serialization per device.
        UpdateAnswer::Update(rendered) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            rendered.json,
        )
            .into_response(),
        other => Json(other).into_response(),
    }
}

async fn answer_for(state: &AppState, body: Result<Bytes, DeviceRefusal>) -> UpdateAnswer {
    let device = match body.and_then(|bytes| device_info(&bytes)) {
        Ok(device) => device,
        Err(refusal) => return UpdateAnswer::refused(refusal),
    };
    match state.catalog.resolve_target(&device).await {
        Ok(target) => target.answer(&device),
        Err(error) => UpdateAnswer::refused(server_refusal(&error)),
    }
}
