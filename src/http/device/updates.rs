//! `POST /updates`: the check every app launch and foreground makes.

use axum::extract::{Request, State};
use axum::Json;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::{read_body, server_refusal, InfoObject, MAX_DEVICE_BODY};
use crate::domain::update::UpdateAnswer;
use crate::http::AppState;

/// The route's handler: [`check_request`]. Always HTTP 200: plugins handle `error` + `kind`
/// answers gracefully whatever the status, and older ones only report `download_fail` for
/// non-2xx answers.
pub async fn check_for_update(State(state): State<AppState>, request: Request) -> Response {
    check_request(&state, request).await
}

/// The update check, for the route and for the device port's own dispatch
/// ([`super::DeviceApi`]): the body read and the check are its only waits, in one future.
pub async fn check_request(state: &AppState, request: Request) -> Response {
    let bytes = match read_body(request, MAX_DEVICE_BODY).await {
        Ok(bytes) => bytes,
        Err(refusal) => return respond(UpdateAnswer::refused(refusal)),
    };
    let object = match InfoObject::read(&bytes) {
        Ok(object) => object,
        Err(refusal) => return respond(UpdateAnswer::refused(refusal)),
    };
    let answer = match object.device() {
        Ok(device) => match state.catalog.resolve_target(&device).await {
            Ok(target) => target.answer(&device),
            Err(error) => UpdateAnswer::refused(server_refusal(&error)),
        },
        Err(refusal) => UpdateAnswer::refused(refusal),
    };
    respond(answer)
}

fn respond(answer: UpdateAnswer) -> Response {
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
