//! Channel settings, device overrides, `setChannel` of old plugins and unregistered native
//! builds, through the device router: what each setting answers, and that a device's
//! channel follows overrides, its own choice and the channel's rules.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use serde_json::{json, Value};

use capgo_server::catalog::ChannelRulesChange;
use capgo_server::domain::Actor;

/// Release android 1.0.0 (10) with builtin 1.0.0; production serves 1.0.1, beta 1.1.0.
async fn catalog() -> TestApp {
    let app = TestApp::new();
    let builtin = app.upload_bundle("1.0.0").await;
    let next = app.upload_bundle("1.0.1").await;
    let beta = app.upload_bundle("1.1.0").await;
    let release = app.create_release(&builtin).await;
    app.set_active(&release, &next, None).await;
    app.set_active(&release, &beta, Some("beta")).await;
    app
}

async fn configure(app: &TestApp, channel: &str, change: ChannelRulesChange) {
    app.state
        .catalog
        .configure_channel(APP_ID, channel, change, &Actor::Api)
        .await
        .unwrap();
}

fn on_channel(channel: &str) -> Value {
    let mut body = device_body("builtin", "8.51.14");
    body["defaultChannel"] = json!(channel);
    body
}

fn with(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

#[tokio::test]
async fn device_rules_block_quietly_with_the_official_codes() {
    let app = catalog().await;
    let body = device_body("builtin", "8.51.14");
    assert_eq!(app.check(&body).await["version"], "1.0.1");

    let cases: [(ChannelRulesChange, Value, &str); 6] = [
        (
            ChannelRulesChange {
                allow_android: Some(false),
                ..Default::default()
            },
            body.clone(),
            "disabled_platform_android",
        ),
        (
            ChannelRulesChange {
                allow_emulator: Some(false),
                ..Default::default()
            },
            with(body.clone(), "is_emulator", json!(true)),
            "disable_emulator",
        ),
        (
            ChannelRulesChange {
                allow_device: Some(false),
                ..Default::default()
            },
            body.clone(),
            "disable_device",
        ),
        (
            ChannelRulesChange {
                allow_dev_build: Some(false),
                ..Default::default()
            },
            with(body.clone(), "is_prod", json!(false)),
            "disable_dev_build",
        ),
        (
            ChannelRulesChange {
                allow_prod_build: Some(false),
                ..Default::default()
            },
            body.clone(),
            "disable_prod_build",
        ),
        (
            ChannelRulesChange {
                update_policy: Some("patch".into()),
                ..Default::default()
            },
            body.clone(),
            "disable_auto_update_to_patch",
        ),
    ];
    for (change, device, error) in cases {
        configure(&app, "production", change).await;
        let answer = app.check(&device).await;
        assert_eq!(answer["error"], error, "{answer}");
        assert_eq!(answer["kind"], "blocked", "{answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
        // Back to the defaults for the next case.
        configure(&app, "production", everything_allowed()).await;
        assert_eq!(
            app.check(&device).await["version"],
            "1.0.1",
            "{error} reset"
        );
    }
    // Devices that do not say (old plugins) pass the emulator and build checks.
    configure(
        &app,
        "production",
        ChannelRulesChange {
            allow_emulator: Some(false),
            allow_dev_build: Some(false),
            ..Default::default()
        },
    )
    .await;
    let mut silent = body.clone();
    silent.as_object_mut().unwrap().remove("is_emulator");
    silent.as_object_mut().unwrap().remove("is_prod");
    assert_eq!(app.check(&silent).await["version"], "1.0.1");
}

fn everything_allowed() -> ChannelRulesChange {
    ChannelRulesChange {
        allow_ios: Some(true),
        allow_android: Some(true),
        allow_electron: Some(true),
        allow_emulator: Some(true),
        allow_device: Some(true),
        allow_dev_build: Some(true),
        allow_prod_build: Some(true),
        update_policy: Some("none".into()),
        block_under_native: Some(false),
        allow_device_self_set: Some(true),
    }
}

#[tokio::test]
async fn store_updates_fire_breaking_events_and_never_go_below_native() {
    let app = TestApp::new();
    let builtin = app.upload_bundle("1.0.0").await;
    let major = app.upload_bundle("2.0.0").await;
    let older = app.upload_bundle("0.9.0").await;
    let release = app.create_release(&builtin).await;
    app.set_active(&release, &major, None).await;
    configure(
        &app,
        "production",
        ChannelRulesChange {
            update_policy: Some("major".into()),
            block_under_native: Some(true),
            ..Default::default()
        },
    )
    .await;
    let answer = app.check(&device_body("builtin", "8.51.14")).await;
    assert_eq!(
        answer,
        json!({
            "error": "disable_auto_update_to_major",
            "message": answer["message"],
            "kind": "blocked",
            "version": "2.0.0",
            "major": true,
            "breaking": true,
        })
    );
    app.set_active(&release, &older, None).await;
    let answer = app.check(&device_body("builtin", "8.51.14")).await;
    assert_eq!(answer["error"], "disable_auto_update_under_native");
    assert!(answer.get("breaking").is_none(), "{answer}");
    // A rollback to the builtin bundle is never blocked by version rules.
    app.set_active(&release, &builtin, None).await;
    assert_eq!(
        app.check(&device_body("2.0.0", "8.51.14")).await,
        json!({"version": "builtin"})
    );
}

#[tokio::test]
async fn version_number_policy_uses_the_bundles_minimum() {
    let app = TestApp::new();
    let builtin = app.upload_bundle("1.0.0").await;
    let zip = web_bundle("needs-1.2");
    let (status, uploaded) = app
        .upload(&[
            ("app_id", Part::Text(APP_ID)),
            ("version_name", Part::Text("1.5.0")),
            ("min_update_version", Part::Text("1.2.0")),
            ("bundle", Part::File(&zip)),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{uploaded}");
    let release = app.create_release(&builtin).await;
    app.set_active(&release, uploaded["bundle"]["id"].as_str().unwrap(), None)
        .await;
    configure(
        &app,
        "production",
        ChannelRulesChange {
            update_policy: Some("version_number".into()),
            ..Default::default()
        },
    )
    .await;
    let answer = app.check(&device_body("builtin", "8.51.14")).await;
    assert_eq!(
        answer["error"], "disable_auto_update_to_metadata",
        "{answer}"
    );
    assert_eq!(answer["breaking"], true);
    // A minimum that is not a version is refused at upload, naming the field.
    let (status, refused) = app
        .upload(&[
            ("app_id", Part::Text(APP_ID)),
            ("version_name", Part::Text("1.6.0")),
            ("min_update_version", Part::Text("soon")),
            ("bundle", Part::File(&zip)),
        ])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(refused["error"]
        .as_str()
        .unwrap()
        .contains("min_update_version"));
}

#[tokio::test]
async fn private_channels_refuse_devices_that_choose_them() {
    let app = catalog().await;
    configure(
        &app,
        "beta",
        ChannelRulesChange {
            allow_device_self_set: Some(false),
            ..Default::default()
        },
    )
    .await;
    let answer = app.check(&on_channel("beta")).await;
    assert_eq!(answer["error"], "cannot_update_via_private_channel");
    assert_eq!(answer["kind"], "blocked");

    let mut set = device_body("builtin", "8.51.14");
    set["channel"] = json!("beta");
    let (status, answer) = app.device_post("/channel_self", set.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["error"], "channel_self_set_not_allowed", "{answer}");

    let names = list_channels(&app, "android", false, true).await;
    assert_eq!(names, ["production"], "a private channel is not offered");

    // A device a person puts on it gets it.
    app.state
        .catalog
        .force_devices(APP_ID, &[DEVICE_ID.to_uppercase()], "beta")
        .await
        .unwrap();
    assert_eq!(app.check(&on_channel("beta")).await["version"], "1.1.0");
    assert_eq!(
        app.check(&device_body("builtin", "8.51.14")).await["version"],
        "1.1.0",
        "the override wins over the device's own channel"
    );
}

async fn list_channels(app: &TestApp, platform: &str, emulator: bool, prod: bool) -> Vec<String> {
    let request = Request::get(format!(
        "/channel_self?app_id={APP_ID}&platform={platform}&is_emulator={emulator}&is_prod={prod}&device_id={DEVICE_ID}"
    ))
    .body(Body::empty())
    .unwrap();
    let (status, answer) = TestApp::call(&app.device, request).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn channel_lists_follow_platform_and_device_kind() {
    let app = catalog().await;
    assert_eq!(
        list_channels(&app, "android", false, true).await,
        ["production", "beta"]
    );
    configure(
        &app,
        "beta",
        ChannelRulesChange {
            allow_ios: Some(false),
            allow_emulator: Some(false),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        list_channels(&app, "ios", false, true).await,
        ["production"]
    );
    assert_eq!(
        list_channels(&app, "android", true, true).await,
        ["production"]
    );
    assert_eq!(
        list_channels(&app, "android", false, true).await,
        ["production", "beta"]
    );
}

fn put(body: &Value) -> Request<Body> {
    Request::put("/channel_self")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn old_plugins_have_their_channel_remembered_until_they_unset_it() {
    let app = catalog().await;
    // 7.33.0 keeps no channel of its own: it sends its configured default on every check.
    let old = device_body("builtin", "7.33.0");
    assert_eq!(app.check(&old).await["version"], "1.0.1");
    let mut set = old.clone();
    set["channel"] = json!("beta");
    let (_, answer) = app.device_post("/channel_self", set.to_string()).await;
    assert_eq!(answer, json!({"status": "ok", "allowSet": true}));
    assert_eq!(app.check(&old).await["version"], "1.1.0", "remembered");
    assert_eq!(
        TestApp::call(&app.device, put(&old)).await.1,
        json!({"channel": "beta", "status": "override", "allowSet": true})
    );
    // Another device of the same build is not affected.
    let other = with(
        old.clone(),
        "device_id",
        json!("00000000-0000-4000-8000-000000000001"),
    );
    assert_eq!(app.check(&other).await["version"], "1.0.1");
    // One record per device, however often it chooses.
    for _ in 0..3 {
        app.device_post("/channel_self", set.to_string()).await;
    }
    assert_eq!(
        app.state
            .catalog
            .device_overrides(APP_ID)
            .await
            .unwrap()
            .len(),
        1
    );

    let delete = Request::delete("/channel_self")
        .body(Body::from(old.to_string()))
        .unwrap();
    assert_eq!(
        TestApp::call(&app.device, delete).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    assert_eq!(app.check(&old).await["version"], "1.0.1", "forgotten");
    assert!(app
        .state
        .catalog
        .device_overrides(APP_ID)
        .await
        .unwrap()
        .is_empty());

    // Current plugins keep their channel themselves: nothing is stored for them.
    let mut current = device_body("builtin", "8.51.14");
    current["channel"] = json!("beta");
    let (_, answer) = app.device_post("/channel_self", current.to_string()).await;
    assert_eq!(answer["status"], "ok");
    assert!(app
        .state
        .catalog
        .device_overrides(APP_ID)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn forced_devices_cannot_choose_another_channel() {
    let app = catalog().await;
    app.state
        .catalog
        .force_devices(APP_ID, &[DEVICE_ID.to_string()], "beta")
        .await
        .unwrap();
    for plugin in ["7.33.0", "8.51.14"] {
        let mut set = device_body("builtin", plugin);
        set["channel"] = json!("production");
        let (_, answer) = app.device_post("/channel_self", set.to_string()).await;
        assert_eq!(answer["error"], "cannot_override", "{plugin}: {answer}");
        assert_eq!(
            TestApp::call(&app.device, put(&device_body("builtin", plugin)))
                .await
                .1,
            json!({"channel": "beta", "status": "override", "allowSet": true}),
            "{plugin}"
        );
        assert_eq!(
            app.check(&on_channel("production")).await["version"],
            "1.1.0"
        );
        // Unsetting from the device leaves a forced override alone.
        let delete = Request::delete("/channel_self")
            .body(Body::from(device_body("builtin", plugin).to_string()))
            .unwrap();
        TestApp::call(&app.device, delete).await;
        assert_eq!(
            app.state
                .catalog
                .device_overrides(APP_ID)
                .await
                .unwrap()
                .len(),
            1
        );
    }
    app.state
        .catalog
        .release_devices(APP_ID, &[DEVICE_ID.to_string()])
        .await
        .unwrap();
    assert_eq!(
        app.check(&device_body("builtin", "8.51.14")).await["version"],
        "1.0.1"
    );
}

#[tokio::test]
async fn overrides_refuse_what_cannot_work() {
    let app = catalog().await;
    let catalog = &app.state.catalog;
    let error = catalog
        .force_devices(APP_ID, &[DEVICE_ID.to_string()], "nightly")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("channel"), "{error}");
    let error = catalog
        .force_devices(APP_ID, &["not a device".to_string()], "beta")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("device_ids"), "{error}");
    let error = catalog
        .force_devices(APP_ID, &[], "beta")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("device_ids"), "{error}");
    let error = catalog
        .configure_channel(
            APP_ID,
            "beta",
            ChannelRulesChange {
                update_policy: Some("sometimes".into()),
                ..Default::default()
            },
            &Actor::Api,
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("update_policy"), "{error}");
    let error = catalog
        .configure_channel("com.unknown.app", "beta", Default::default(), &Actor::Api)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("no release"), "{error}");
    assert!(catalog.device_overrides(APP_ID).await.unwrap().is_empty());
}

#[tokio::test]
async fn unregistered_builds_are_quiet_and_counted_without_a_write_per_check() {
    let app = catalog().await;
    let mut unknown = device_body("builtin", "8.51.14");
    unknown["version_build"] = json!("1.1.0");
    unknown["version_code"] = json!("11");
    for n in 0..5 {
        let device = format!("00000000-0000-4000-8000-00000000000{}", n % 3);
        let answer = app
            .check(&with(unknown.clone(), "device_id", json!(device)))
            .await;
        assert_eq!(answer["error"], "no_release");
        assert_eq!(
            answer["kind"], "blocked",
            "quiet: no download_fail from 8.45.11+"
        );
    }
    // Another app's devices are not counted (anyone can send any app id).
    let stranger = with(unknown.clone(), "app_id", json!("com.stranger.app"));
    assert_eq!(app.check(&stranger).await["error"], "no_release");

    let builds = app.state.catalog.unregistered_builds().await.unwrap();
    assert_eq!(builds.len(), 1, "{builds:?}");
    assert_eq!(builds[0].key.version_name, "1.1.0");
    assert_eq!(builds[0].key.version_code, "11");
    assert_eq!((builds[0].devices, builds[0].checks), (3, 5));

    // Registering the build removes it from the list, and its devices get answers.
    let bundles = app.get("/api/v1/bundles.list").await.1;
    let builtin = bundles["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["version_name"] == "1.0.0")
        .unwrap()["id"]
        .clone();
    let (status, body) = app
        .post_json(
            "/api/v1/releases.create",
            json!({"platform": "android", "app_id": APP_ID, "version_name": "1.1.0",
                   "version_code": "11", "builtin_bundle_id": builtin}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(app
        .state
        .catalog
        .unregistered_builds()
        .await
        .unwrap()
        .is_empty());
    assert_eq!(app.check(&unknown).await["kind"], "up_to_date");
}

#[tokio::test]
async fn link_and_comment_reach_plugins_that_read_them() {
    let app = TestApp::new();
    let builtin = app.upload_bundle("1.0.0").await;
    let zip = web_bundle("noted");
    let (status, uploaded) = app
        .upload(&[
            ("app_id", Part::Text(APP_ID)),
            ("version_name", Part::Text("1.0.1")),
            ("description", Part::Text("Faster checkout")),
            ("link", Part::Text("https://example.com/notes/1.0.1")),
            ("bundle", Part::File(&zip)),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{uploaded}");
    let release = app.create_release(&builtin).await;
    app.set_active(&release, uploaded["bundle"]["id"].as_str().unwrap(), None)
        .await;
    let answer = app.check(&device_body("builtin", "8.51.14")).await;
    assert_eq!(answer["link"], "https://example.com/notes/1.0.1");
    assert_eq!(answer["comment"], "Faster checkout");
    assert_update_answer(&answer);
    for old in ["6.34.0", "7.20.0", "8.34.9"] {
        let answer = app.check(&device_body("builtin", old)).await;
        assert!(
            answer.get("link").is_none() && answer.get("comment").is_none(),
            "{old}: {answer}"
        );
    }
    let (status, refused) = app
        .upload(&[
            ("app_id", Part::Text(APP_ID)),
            ("version_name", Part::Text("1.0.2")),
            ("link", Part::Text("javascript:alert(1)")),
            ("bundle", Part::File(&zip)),
        ])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(refused["error"].as_str().unwrap().contains("link"));
}

#[tokio::test]
async fn channel_self_refuses_malformed_device_fields() {
    let app = catalog().await;
    let mut set = device_body("builtin", "7.33.0");
    set["channel"] = json!("beta");
    for (key, value, names) in [
        ("device_id", json!("x".repeat(37)), "device_id"),
        ("platform", json!("windows"), "windows"),
        ("is_emulator", json!("maybe"), "is_emulator"),
        ("channel", json!("no spaces"), "channel"),
    ] {
        let body = with(set.clone(), key, value);
        let (status, answer) = app.device_post("/channel_self", body.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(names),
            "{key}: {answer}"
        );
        assert!(answer["error"].is_string());
    }
    assert!(app
        .state
        .catalog
        .device_overrides(APP_ID)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_channel_resource_takes_over_a_device_people_forced_only_when_it_adopts() {
    use capgo_server::catalog::{CatalogError, DesiredChannel};
    use capgo_server::domain::channel_policy::ChannelRules;
    use capgo_server::domain::{ChannelName, ResourceRef};

    let app = catalog().await;
    let catalog = &app.state.catalog;
    catalog
        .force_devices(APP_ID, &[DEVICE_ID.to_string()], "production")
        .await
        .unwrap();
    let mut desired = DesiredChannel {
        app_id: APP_ID.into(),
        channel: ChannelName::parse("beta").unwrap(),
        rules: ChannelRules::default(),
        devices: vec![DEVICE_ID.to_string()],
        owner: ResourceRef::new("Channel", "apps", "beta"),
        adopt: false,
    };
    let refused = catalog.apply_channel(&desired).await.unwrap_err();
    assert!(
        matches!(&refused, CatalogError::Owned { adoptable: true, message } if message.contains("adopt")),
        "{refused}"
    );
    assert_eq!(
        app.check(&device_body("builtin", "8.51.14")).await["version"],
        "1.0.1",
        "nothing written"
    );
    desired.adopt = true;
    assert!(catalog.apply_channel(&desired).await.unwrap());
    assert_eq!(
        app.check(&device_body("builtin", "8.51.14")).await["version"],
        "1.1.0"
    );
}
