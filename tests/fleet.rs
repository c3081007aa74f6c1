//! What checks and stats say about the fleet becomes per-day (and, for checks, per-hour)
//! counts of distinct devices, written in batches and bounded to what the catalog has (the
//! in-process app over SQLite; the store contract covers MongoDB).

mod common;

use common::*;
use serde_json::json;

use capgo_server::domain::fleet::{FleetCount, FleetKey, Span, OTHER_BUNDLE};

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
    // What an attacker controls cannot make the counts grow: 50 made-up bundles in checks
    // and stats, made-up actions, a channel the app does not have, an app with no release.
    for n in 0..50 {
        let mut body = device_body(&format!("6.6.{n}"), "8.51.14");
        body["device_id"] = json!(id(1000 + n));
        app.check(&body).await;
    }
    let forged: Vec<_> = (0..50)
        .map(|n| {
            json!({"app_id": APP_ID, "device_id": id(2000 + n), "action": format!("made_up_{n}"),
                   "version_name": format!("6.6.{n}"), "platform": "android"})
        })
        .collect();
    let (status, body) = app.device_post("/stats", json!(forged).to_string()).await;
    assert_eq!(status.as_u16(), 200, "{body}");
    let mut elsewhere = device_body("builtin", "8.51.14");
    elsewhere["device_id"] = json!(id(3000));
    elsewhere["defaultChannel"] = json!("no-such-channel");
    app.check(&elsewhere).await;
    let mut stranger = device_body("builtin", "8.51.14");
    stranger["app_id"] = json!("com.example.unknown");
    app.device_post("/updates", stranger.to_string()).await;
    let strangers: Vec<_> = (0..20)
        .map(|n| {
            json!({"app_id": format!("com.example.unknown{n}"), "device_id": id(4000 + n),
                        "action": "set", "version_name": "1.0.0", "platform": "android"})
        })
        .collect();
    let (status, body) = app
        .device_post("/stats", json!(strangers).to_string())
        .await;
    assert_eq!(status.as_u16(), 200, "{body}");

    let catalog = &app.state.catalog;
    let counts = catalog.stored_fleet_counts(APP_ID, 1).await.unwrap();
    assert!(
        counts.daily.is_empty() && counts.hourly.is_empty(),
        "nothing written per check"
    );
    let unwritten = catalog.fleet_counts(APP_ID, 1).await.unwrap();
    assert_eq!(
        unwritten.daily.len(),
        6,
        "what this process noted is read at once"
    );
    catalog.flush_fleet_counts().await.unwrap();
    let counts = catalog.stored_fleet_counts(APP_ID, 7).await.unwrap();
    let sorted = |mut counts: Vec<FleetCount>| {
        counts.sort_by(|a, b| (a.start, &a.key).cmp(&(b.start, &b.key)));
        counts
    };
    assert_eq!(
        sorted(catalog.fleet_counts(APP_ID, 7).await.unwrap().daily),
        sorted(counts.daily.clone()),
        "written once"
    );
    let find = |counts: &[FleetCount], wanted: &dyn Fn(&FleetKey) -> bool| {
        let found: Vec<(u64, u64)> = counts
            .iter()
            .filter(|c| wanted(&c.key))
            .map(|c| (c.events, c.devices.estimate()))
            .collect();
        assert_eq!(found.len(), 1, "{counts:?}");
        found[0]
    };
    let of = |wanted: &dyn Fn(&FleetKey) -> bool| find(&counts.daily, wanted);
    let on = |bundle: &'static str| move |key: &FleetKey| matches!(key, FleetKey::Check { bundle: b, channel, .. } if b == bundle && channel.as_str() == "production");
    // Sketch estimates: within three standard errors (5%) of the truth. The device on a
    // channel the app does not have is counted on production, served like it.
    let (events, devices) = of(&on("builtin"));
    assert_eq!(events, 601);
    assert!((286..=316).contains(&devices), "{devices}");
    // The same checks in the hourly counts (one hour, or two if the test ran across one).
    let hourly: Vec<&FleetCount> = counts
        .hourly
        .iter()
        .filter(|c| on("builtin")(&c.key))
        .collect();
    assert!(hourly.iter().all(|c| c.span == Span::Hour));
    assert_eq!(hourly.iter().map(|c| c.events).sum::<u64>(), events);
    if hourly.len() == 1 {
        assert_eq!(hourly[0].devices.estimate(), devices);
    }
    let (events, devices) = of(&on("1.0.1"));
    assert_eq!(events, 120);
    assert!((114..=126).contains(&devices), "{devices}");
    assert_eq!(
        of(&on(OTHER_BUNDLE)),
        (50, 50),
        "made-up bundles counted as one"
    );
    let reported = |action: &'static str, bundle: &'static str| move |k: &FleetKey| matches!(k, FleetKey::Report { action: a, bundle: b, .. } if a == action && b == bundle);
    let (_, installed) = of(&reported("set", "1.0.1"));
    assert!((114..=126).contains(&installed), "{installed}");
    let (_, failed) = of(&reported("download_fail", "1.0.1"));
    assert!((28..=32).contains(&failed), "{failed}");
    assert_eq!(
        of(&reported("other", OTHER_BUNDLE)).1,
        50,
        "made-up actions counted as one"
    );
    assert_eq!(
        counts.daily.len(),
        6,
        "builtin, 1.0.1, other; set, download_fail, other: {counts:?}"
    );
    for unknown in ["com.example.unknown", "com.example.unknown3"] {
        assert!(
            catalog
                .fleet_counts(unknown, 7)
                .await
                .unwrap()
                .daily
                .is_empty(),
            "apps with no bundle or release add no counts"
        );
    }

    // A second flush merges into the same day.
    let mut body = device_body("1.0.1", "8.51.14");
    body["device_id"] = json!(id(999));
    app.check(&body).await;
    let counts = catalog.fleet_counts(APP_ID, 7).await.unwrap();
    assert_eq!(
        find(&counts.daily, &on("1.0.1")).0,
        121,
        "noted, merged when read"
    );
    catalog.flush_fleet_counts().await.unwrap();
    let counts = catalog.stored_fleet_counts(APP_ID, 7).await.unwrap();
    assert_eq!(find(&counts.daily, &on("1.0.1")).0, 121);

    // The overview reads them: what production serves, where its devices are, how 1.0.1 fares.
    let (status, overview) = app
        .get(&format!("/api/v1/apps.overview?app_id={APP_ID}"))
        .await;
    assert_eq!(status.as_u16(), 200, "{overview}");
    // Sketch estimates: within 5% of the truth.
    let near_f = |value: f64, truth: f64| (value - truth).abs() <= truth * 0.05 + 0.01;
    let near =
        |value: &serde_json::Value, truth: f64| near_f(value.as_f64().unwrap_or(f64::NAN), truth);
    let production = overview_channel(&overview, "production");
    assert_eq!(production["serves"], "1.0.1", "{production}");
    assert!(near(&production["devices_recent"], 352.0), "{production}");
    assert!(near(&production["devices_week"], 352.0), "{production}");
    let bundles = production["bundles"].as_array().unwrap();
    assert_eq!(bundles[0]["bundle"], "builtin");
    assert!(near(&bundles[0]["devices_week"], 300.0), "{production}");
    assert_eq!(bundles[1]["bundle"], "1.0.1");
    assert!(near(&bundles[1]["devices_week"], 121.0), "{production}");
    let adoption = &production["adoption"];
    assert!(
        near(&adoption["days"][0]["share"], 121.0 / 352.0),
        "{adoption}"
    );
    assert!(adoption["days_to_half"].is_null(), "{adoption}");
    assert_eq!(
        adoption["promoted"], true,
        "counted from set-active: {adoption}"
    );
    assert_eq!(adoption["counted_from"], overview["today"], "{adoption}");
    // 120 installed, 30 others failed: 30 of 150 reporting devices.
    let health = &overview["bundles"][0];
    assert_eq!(health["bundle"], "1.0.1", "{overview}");
    assert!(near(&health["failure_rate_week"], 0.2), "{health}");
    assert!(
        near(&overview["failures_by_day"][0]["failure_rate"], 0.2),
        "{overview}"
    );
    assert_eq!(overview["unregistered_builds"], json!([]));

    // The same figures as gauges on /metrics, computed in the background (here: once).
    catalog.publish_fleet_gauges().await.unwrap();
    let (status, metrics) = app.get("/metrics").await;
    assert_eq!(status.as_u16(), 200);
    let metrics = metrics.as_str().unwrap().to_string();
    let gauge = |name: &str, labels: &str| -> f64 {
        let prefix = format!("{name}{{{labels}}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
            .parse()
            .unwrap()
    };
    let build = format!(
        "app_id=\"{APP_ID}\",platform=\"android\",version_name=\"1.0.0\",version_code=\"10\",channel=\"production\""
    );
    assert!(near_f(
        gauge(
            "capgo_fleet_channel_devices",
            &format!("{build},window=\"24h\"")
        ),
        352.0
    ));
    assert!(near_f(
        gauge(
            "capgo_fleet_devices",
            &format!("{build},bundle=\"1.0.1\",window=\"7d\"")
        ),
        121.0
    ));
    assert!(near_f(
        gauge(
            "capgo_fleet_adoption_ratio",
            &format!("{build},bundle=\"1.0.1\"")
        ),
        121.0 / 352.0
    ));
    let bundle = format!("app_id=\"{APP_ID}\",bundle=\"1.0.1\"");
    assert!(near_f(
        gauge(
            "capgo_fleet_bundle_devices",
            &format!("{bundle},outcome=\"failed\"")
        ),
        30.0
    ));
    assert!(near_f(
        gauge("capgo_fleet_bundle_failure_ratio", &bundle),
        0.2
    ));

    // A bundle's activity comes from the same counts (kept longer than raw stats).
    let (status, activity) = app
        .get(&format!("/api/v1/bundles.activity?bundle_id={next}&days=3"))
        .await;
    assert_eq!(status.as_u16(), 200, "{activity}");
    assert!(near(&activity["actions"]["set"], 120.0), "{activity}");
    assert!(
        near(&activity["actions"]["download_fail"], 30.0),
        "{activity}"
    );
    let today = activity["daily"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(near(&today["installs"], 120.0), "{activity}");
    assert!(near(&today["failures"], 30.0), "{activity}");

    for bad in ["", "app_id=", "app_id=not%20an%20app"] {
        let (status, body) = app.get(&format!("/api/v1/apps.overview?{bad}")).await;
        assert_eq!(status.as_u16(), 400, "{bad}: {body}");
    }
}

/// The fleet gauges are computed one app at a time: each app's figures count its own devices,
/// whether their checks were written or are still only noted.
#[tokio::test]
async fn each_apps_gauges_count_only_its_own_devices() {
    let app = TestApp::with_env(&[("LIMIT_REQUEST_PER_MINUTE", "0")]);
    const OTHER_APP: &str = "com.example.other";
    for app_id in [APP_ID, OTHER_APP] {
        let builtin = app.upload_bundle_for(app_id, "1.0.0").await;
        app.create_release_for(app_id, &builtin).await;
    }
    let check = |app_id: &'static str, n: usize| {
        let mut body = device_body("builtin", "8.51.14");
        body["app_id"] = json!(app_id);
        body["device_id"] = json!(format!("00000000-0000-4000-8000-{n:012x}"));
        body
    };
    // 40 devices of the first app written to the store, then 25 of the second and 10 more of
    // the first only noted.
    for n in 0..40 {
        app.check(&check(APP_ID, n)).await;
    }
    let catalog = &app.state.catalog;
    catalog.flush_fleet_counts().await.unwrap();
    for n in 0..25 {
        app.check(&check(OTHER_APP, 1000 + n)).await;
    }
    for n in 40..50 {
        app.check(&check(APP_ID, n)).await;
    }

    catalog.publish_fleet_gauges().await.unwrap();
    let (status, metrics) = app.get("/metrics").await;
    assert_eq!(status.as_u16(), 200);
    let metrics = metrics.as_str().unwrap();
    for (app_id, devices) in [(APP_ID, 50.0), (OTHER_APP, 25.0)] {
        let prefix = format!(
            "capgo_fleet_channel_devices{{app_id=\"{app_id}\",platform=\"android\",\
             version_name=\"1.0.0\",version_code=\"10\",channel=\"production\",window=\"24h\"}} "
        );
        let value: f64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
            .parse()
            .unwrap();
        // A sketch's estimate: exact but for a register collision at these sizes.
        assert!((value - devices).abs() <= 2.0, "{app_id}: {value}");
    }
}
