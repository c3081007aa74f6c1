//! What checks and stats say about the fleet becomes per-day counts of distinct devices,
//! written in batches (the in-process app over SQLite; the store contract covers MongoDB).

mod common;

use common::*;
use serde_json::json;

use capgo_server::domain::fleet::{FleetKey, Outcome};

#[tokio::test]
async fn checks_and_reports_become_daily_counts_of_distinct_devices() {
    // The whole fleet is one test client: no per-IP limits.
    let app = TestApp::with_env(&[
        ("LIMIT_REQUEST_PER_MINUTE", "0"),
        ("STATS_EVENTS_PER_MINUTE", "0"),
    ]);
    let builtin = app.upload_bundle("1.0.0").await;
    let next = app.upload_bundle("1.0.1").await;
    let release = app.create_release(&builtin).await;
    let (status, body) = app.set_active(&release, &next, None).await;
    assert_eq!(status.as_u16(), 200, "{body}");

    // 300 devices on the builtin bundle check in twice each; 120 of them then install 1.0.1
    // and check in again; 30 report a failure.
    let id = |n: usize| format!("00000000-0000-4000-8000-{n:012x}");
    for round in 0..2 {
        for n in 0..300 {
            let mut body = device_body("builtin", "8.51.14");
            body["device_id"] = json!(id(n));
            let answer = app.check(&body).await;
            assert_eq!(answer["version"], "1.0.1", "round {round}");
        }
    }
    let installs: Vec<_> = (0..120)
        .map(|n| {
            json!({"app_id": APP_ID, "device_id": id(n), "action": "set",
                        "version_name": "1.0.1", "platform": "android"})
        })
        .chain((200..230).map(|n| {
            json!({"app_id": APP_ID, "device_id": id(n), "action": "download_fail",
                   "version_name": "1.0.1", "platform": "android"})
        }))
        .collect();
    let (status, body) = app.device_post("/stats", json!(installs).to_string()).await;
    assert_eq!(status.as_u16(), 200, "{body}");
    for n in 0..120 {
        let mut body = device_body("1.0.1", "8.51.14");
        body["device_id"] = json!(id(n));
        app.check(&body).await;
    }

    let catalog = &app.state.catalog;
    assert!(
        catalog.fleet_counts(APP_ID, 1).await.unwrap().is_empty(),
        "nothing written per check"
    );
    catalog.flush_fleet_counts().await.unwrap();
    let counts = catalog.fleet_counts(APP_ID, 7).await.unwrap();
    let of = |wanted: &dyn Fn(&FleetKey) -> bool| {
        let found: Vec<_> = counts.iter().filter(|c| wanted(&c.key)).collect();
        assert_eq!(found.len(), 1, "{counts:?}");
        (found[0].events, found[0].devices.estimate())
    };
    let on = |bundle: &'static str| move |key: &FleetKey| matches!(key, FleetKey::Check { bundle: b, channel, .. } if b == bundle && channel.as_str() == "production");
    // Sketch estimates: within three standard errors (5%) of the truth.
    let (events, devices) = of(&on("builtin"));
    assert_eq!(events, 600);
    assert!((285..=315).contains(&devices), "{devices}");
    let (events, devices) = of(&on("1.0.1"));
    assert_eq!(events, 120);
    assert!((114..=126).contains(&devices), "{devices}");
    let (_, installed) = of(&|k| {
        matches!(
            k,
            FleetKey::Report {
                outcome: Outcome::Installed,
                ..
            }
        )
    });
    assert!((114..=126).contains(&installed), "{installed}");
    let (_, failed) = of(&|k| {
        matches!(
            k,
            FleetKey::Report {
                outcome: Outcome::Failed,
                ..
            }
        )
    });
    assert!((28..=32).contains(&failed), "{failed}");

    // A second flush merges into the same day.
    let mut body = device_body("1.0.1", "8.51.14");
    body["device_id"] = json!(id(999));
    app.check(&body).await;
    catalog.flush_fleet_counts().await.unwrap();
    let counts = catalog.fleet_counts(APP_ID, 7).await.unwrap();
    let merged = counts.iter().find(|c| on("1.0.1")(&c.key)).unwrap();
    assert_eq!(merged.events, 121);

    // The overview reads them: what production serves, where its devices are, how 1.0.1 fares.
    let (status, overview) = app
        .get(&format!("/api/v1/apps.overview?app_id={APP_ID}"))
        .await;
    assert_eq!(status.as_u16(), 200, "{overview}");
    let near = |value: &serde_json::Value, truth: f64| {
        let value = value.as_f64().unwrap_or(f64::NAN);
        (value - truth).abs() <= truth * 0.05 + 0.01
    };
    let production = overview["releases"][0]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "production")
        .unwrap()
        .clone();
    assert_eq!(production["serves"], "1.0.1", "{production}");
    assert!(near(&production["devices_recent"], 301.0), "{production}");
    assert!(near(&production["devices_week"], 301.0), "{production}");
    let bundles = production["bundles"].as_array().unwrap();
    assert_eq!(bundles[0]["bundle"], "builtin");
    assert!(near(&bundles[0]["devices_week"], 300.0), "{production}");
    assert_eq!(bundles[1]["bundle"], "1.0.1");
    assert!(near(&bundles[1]["devices_week"], 121.0), "{production}");
    let adoption = &production["adoption"];
    assert!(
        near(&adoption["days"][0]["share"], 121.0 / 301.0),
        "{adoption}"
    );
    assert!(adoption["days_to_half"].is_null(), "{adoption}");
    // 120 installed, 30 others failed: 30 of 150 reporting devices.
    let health = &overview["bundles"][0];
    assert_eq!(health["bundle"], "1.0.1", "{overview}");
    assert!(near(&health["failure_rate_week"], 0.2), "{health}");
    assert!(
        near(&overview["failures_by_day"][0]["failure_rate"], 0.2),
        "{overview}"
    );
    assert_eq!(overview["unregistered_builds"], json!([]));

    for bad in ["", "app_id=", "app_id=not%20an%20app"] {
        let (status, body) = app.get(&format!("/api/v1/apps.overview?{bad}")).await;
        assert_eq!(status.as_u16(), 400, "{bad}: {body}");
    }
}
