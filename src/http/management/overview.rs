//! `GET /api/v1/apps.overview?app_id=…`: where an app's fleet is, the figures the UI's
//! landing page shows (see `Catalog::fleet_overview`).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{checked_app_id, ApiQuery};
use super::views::{ReleaseView, RolloutView, UnregisteredBuildView};
use super::ApiError;
use crate::catalog::{ChannelFleet, FleetOverview};
use crate::domain::fleet::{RECENT_HOURS, WEEK_DAYS};
use crate::domain::rfc3339;
use crate::domain::stats::day_of;
use crate::http::AppState;

#[derive(Deserialize)]
pub struct OverviewQuery {
    app_id: String,
}

pub async fn overview(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<OverviewQuery>,
) -> Result<Json<Value>, ApiError> {
    let app_id = checked_app_id(&query.app_id)?;
    let overview = state.catalog.fleet_overview(app_id).await?;
    Ok(Json(view(&overview)))
}

/// Days as `YYYY-MM-DD`.
fn date(day: i64) -> String {
    rfc3339(day).chars().take(10).collect()
}

fn channel_view(channel: &ChannelFleet) -> Value {
    let adoption = &channel.adoption;
    json!({
        "channel": channel.channel.as_str(),
        "serves": channel.serves,
        "devices_recent": channel.devices.devices_recent,
        "devices_week": channel.devices.devices_week,
        "bundles": channel.devices.bundles,
        "adoption": {
            "bundle": channel.serves,
            "counted_from": adoption.counted_from.map(date),
            "promoted": adoption.promoted,
            "days": adoption.days.iter().map(|d| json!({
                "day": date(d.day),
                "active_devices": d.active_devices,
                "on_bundle": d.on_bundle,
                "share": d.share,
            })).collect::<Vec<_>>(),
            "days_to_half": adoption.days_to_half,
            "days_to_ninety_percent": adoption.days_to_ninety_percent,
        },
        "rollout": channel.rollout.as_ref().map(RolloutView::from),
    })
}

fn view(overview: &FleetOverview) -> Value {
    json!({
        "app_id": overview.app_id,
        "today": date(day_of(overview.now)),
        "generated_at": rfc3339(overview.now),
        "windows": {
            "recent": format!("the last {RECENT_HOURS} hours: the current UTC hour and the {} before it", RECENT_HOURS - 1),
            "week": format!("the last {WEEK_DAYS} UTC days, today included"),
        },
        "releases": overview.releases.iter().map(|r| json!({
            "release": ReleaseView::from(&r.release),
            "channels": r.channels.iter().map(channel_view).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "bundles": overview.bundles,
        "failures_by_day": overview.failures_by_day.iter().map(|d| json!({
            "day": date(d.day),
            "installed": d.installed,
            "failed": d.failed,
            "failure_rate": d.failure_rate,
        })).collect::<Vec<_>>(),
        "unregistered_builds": overview
            .unregistered_builds
            .iter()
            .map(UnregisteredBuildView::from)
            .collect::<Vec<_>>(),
    })
}
