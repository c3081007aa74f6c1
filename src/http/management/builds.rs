//! `/api/v1/builds.*`: the native builds devices run that have no release yet.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{checked_app_id, ApiQuery};
use super::views::UnregisteredBuildView;
use super::ApiError;
use crate::http::AppState;

#[derive(Deserialize)]
pub struct UnregisteredQuery {
    /// Only this app's builds; every app's when absent.
    app_id: Option<String>,
}

/// `GET /api/v1/builds.unregistered?app_id=…`: builds devices asked about that have no
/// release, seen most recently first. Registering one (`releases.create`) removes it.
pub async fn unregistered(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<UnregisteredQuery>,
) -> Result<Json<Value>, ApiError> {
    let app_id = query.app_id.as_deref().map(checked_app_id).transpose()?;
    let builds = state.catalog.unregistered_builds().await?;
    let data: Vec<UnregisteredBuildView> = builds
        .iter()
        .filter(|build| app_id.is_none_or(|app_id| build.key.app_id == app_id))
        .map(UnregisteredBuildView::from)
        .collect();
    Ok(Json(json!({ "data": data })))
}
