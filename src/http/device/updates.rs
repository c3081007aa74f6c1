//! `POST /updates`: the check every app launch and foreground makes.

use axum::extract::State;
use axum::Json;

use super::{server_refusal, DeviceBody};
use crate::domain::device::{DeviceInfo, DeviceRefusal};
use crate::domain::update::UpdateAnswer;
use crate::http::AppState;

/// Always HTTP 200: plugins handle `error` + `kind` answers gracefully whatever the status,
/// and older ones only report `download_fail` for non-2xx answers.
pub async fn check_for_update(
    State(state): State<AppState>,
    DeviceBody(body): DeviceBody,
) -> Json<UpdateAnswer> {
    let answer = answer_for(&state, body).await;
    crate::metrics::global().update_answer(answer.kind());
    Json(answer)
}

async fn answer_for(
    state: &AppState,
    body: Result<serde_json::Value, DeviceRefusal>,
) -> UpdateAnswer {
    let device = match body.and_then(|body| DeviceInfo::parse(&body)) {
        Ok(device) => device,
        Err(refusal) => return UpdateAnswer::refused(refusal),
    };
    match state.catalog.resolve_target(&device).await {
        Ok(target) => target.answer(&device),
        Err(error) => UpdateAnswer::refused(server_refusal(&error)),
    }
}
