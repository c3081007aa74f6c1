//! The example manifests validate against the generated CRD schemas (a JSON Schema validator
//! over each CRD's openAPIV3Schema, as the API server would), and invalid ones are rejected.

use std::collections::BTreeMap;
use std::path::Path;

use capgo_server::operator::crd;
use serde::Deserialize;
use serde_json::Value;

fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Kind → validator for its `openAPIV3Schema`, from the committed CRDs.
fn validators() -> BTreeMap<String, jsonschema::Validator> {
    documents("crds/capgo-server.yaml")
        .into_iter()
        .map(|crd| {
            let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
            let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            (kind, jsonschema::validator_for(schema).unwrap())
        })
        .collect()
}

#[test]
fn examples_are_valid_resources() {
    let validators = validators();
    let mut seen = Vec::new();
    for path in [
        "deploy/examples/bundles.yaml",
        "deploy/examples/release.yaml",
        "deploy/examples/channels.yaml",
    ] {
        for doc in documents(path) {
            let kind = doc["kind"].as_str().unwrap();
            let errors: Vec<String> = validators[kind]
                .iter_errors(&doc)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{path} {kind}: {errors:?}");
            match kind {
                "Bundle" => drop(serde_json::from_value::<crd::Bundle>(doc.clone()).unwrap()),
                "Release" => drop(serde_json::from_value::<crd::Release>(doc.clone()).unwrap()),
                _ => drop(serde_json::from_value::<crd::Channel>(doc.clone()).unwrap()),
            }
            seen.push(kind.to_string());
        }
    }
    assert_eq!(seen, ["Bundle", "Bundle", "Release", "Channel", "Channel"]);
}

/// The example Channels ask for what their comments say: what the operator hands the catalog.
#[test]
fn example_channels_ask_for_what_they_say() {
    use capgo_server::domain::channel_policy::{ChannelRules, UpdatePolicy};
    use capgo_server::operator::channels::desired_channel;

    let channels: Vec<crd::Channel> = documents("deploy/examples/channels.yaml")
        .into_iter()
        .map(|doc| serde_json::from_value(doc).unwrap())
        .collect();
    let production = desired_channel(&channels[0]).unwrap();
    assert_eq!(
        production.rules,
        ChannelRules {
            update_policy: UpdatePolicy::Major,
            block_under_native: true,
            ..ChannelRules::default()
        }
    );
    let beta = desired_channel(&channels[1]).unwrap();
    assert_eq!(
        beta.rules,
        ChannelRules {
            allow_emulator: false,
            allow_dev_build: false,
            ..ChannelRules::default()
        }
    );
    assert_eq!(beta.devices.len(), 2);
}

/// A Channel with `spec` merged over a valid one.
fn channel(spec: Value) -> Value {
    let mut valid = serde_json::json!({"appId": "com.example.shop", "channel": "beta"});
    valid
        .as_object_mut()
        .unwrap()
        .extend(spec.as_object().unwrap().clone());
    serde_json::json!({"apiVersion": "capgo-server.io/v1alpha1", "kind": "Channel",
                       "metadata": {"name": "shop-beta"}, "spec": valid})
}

/// What the OpenAPI part of the schema refuses (the API server adds its CEL rules, an unknown
/// field, and "builtin": tests/kubernetes_e2e.rs).
#[test]
fn channel_settings_that_cannot_work_are_rejected_by_the_schema() {
    let validator = &validators()["Channel"];
    assert!(validator.is_valid(&channel(serde_json::json!({}))));
    let many: Vec<String> = (0..1000).map(|i| format!("device-{i}")).collect();
    assert!(validator.is_valid(&channel(serde_json::json!({ "devices": many }))));
    let too_many: Vec<String> = (0..1001).map(|i| format!("device-{i}")).collect();
    for (what, spec) in [
        (
            "an unknown policy",
            serde_json::json!({"updatePolicy": "minor_only"}),
        ),
        (
            "a policy in capitals",
            serde_json::json!({"updatePolicy": "Major"}),
        ),
        (
            "a setting as a string",
            serde_json::json!({"allowIos": "false"}),
        ),
        (
            "a device id with a space",
            serde_json::json!({"devices": ["qa phone"]}),
        ),
        ("an empty device id", serde_json::json!({"devices": [""]})),
        (
            "a 37-character device id",
            serde_json::json!({"devices": ["a".repeat(37)]}),
        ),
        ("1001 devices", serde_json::json!({ "devices": too_many })),
        (
            "a channel with a slash",
            serde_json::json!({"channel": "beta/1"}),
        ),
        (
            "a 65-character channel",
            serde_json::json!({"channel": "c".repeat(65)}),
        ),
        (
            "an app id with a space",
            serde_json::json!({"appId": "com.example shop"}),
        ),
    ] {
        assert!(
            !validator.is_valid(&channel(spec)),
            "{what} should be rejected"
        );
    }
}

#[test]
fn invalid_manifests_are_rejected_by_the_schema() {
    let validators = validators();
    let invalid = documents("tests/fixtures/invalid-manifests.yaml");
    assert_eq!(invalid.len(), 5);
    for doc in invalid {
        let kind = doc["kind"].as_str().unwrap();
        assert!(
            !validators[kind].is_valid(&doc),
            "{} should be rejected",
            doc["metadata"]["name"]
        );
    }
}

/// The example Release asks for the rollout plan its comment describes.
#[test]
fn the_example_release_stages_production_as_it_says() {
    use capgo_server::domain::rollout::ALL_DEVICES;
    let release: crd::Release =
        serde_json::from_value(documents("deploy/examples/release.yaml").remove(0)).unwrap();
    assert_eq!(
        release.spec.rollouts.keys().collect::<Vec<_>>(),
        ["production"],
        "beta switches at once"
    );
    let plan = release.spec.rollouts["production"]
        .to_domain()
        .plan()
        .unwrap();
    assert_eq!(plan.steps, [1_000, 5_000, ALL_DEVICES]);
    assert_eq!(plan.interval, std::time::Duration::from_secs(30 * 60));
    assert_eq!((plan.max_failure_rate, plan.min_devices), (0.05, 50));
}

/// A Release with `rollouts` as given and a production channel.
fn release_with_rollouts(rollouts: Value) -> Value {
    serde_json::json!({"apiVersion": "capgo-server.io/v1alpha1", "kind": "Release",
                       "metadata": {"name": "shop"},
                       "spec": {"platform": "ios", "appId": "com.example.shop",
                                "versionName": "1.4.0", "versionCode": "140",
                                "builtinBundle": "shop-web-1-4-0",
                                "channels": {"production": "shop-web-1-4-1"},
                                "rollouts": rollouts}})
}

/// What the OpenAPI part of the schema refuses in rollout plans (the API server's CEL rules,
/// growing steps and duration bounds among them, are tested in tests/kubernetes_e2e.rs).
#[test]
fn rollout_plans_that_cannot_work_are_rejected_by_the_schema() {
    let validator = &validators()["Release"];
    for valid in [
        serde_json::json!({}),
        serde_json::json!({"production": {}}),
        serde_json::json!({"production": {"steps": [0.5, 50, 100], "interval": "1h30m",
                                          "window": "1.5h", "maxFailureRate": 0,
                                          "minDevices": 100_000}}),
    ] {
        let errors: Vec<String> = validator
            .iter_errors(&release_with_rollouts(valid.clone()))
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{valid}: {errors:?}");
    }
    let steps: Vec<u32> = (1..=21).collect();
    for (what, rollouts) in [
        ("no steps", serde_json::json!({"production": {"steps": []}})),
        (
            "21 steps",
            serde_json::json!({"production": {"steps": steps}}),
        ),
        (
            "a step above 100",
            serde_json::json!({"production": {"steps": [50, 101]}}),
        ),
        (
            "steps as a string",
            serde_json::json!({"production": {"steps": "5,100"}}),
        ),
        (
            "an interval in words",
            serde_json::json!({"production": {"interval": "10 minutes"}}),
        ),
        (
            "an interval without a unit",
            serde_json::json!({"production": {"interval": "600"}}),
        ),
        (
            "a window as a number",
            serde_json::json!({"production": {"window": 3600}}),
        ),
        (
            "a failure rate above 1",
            serde_json::json!({"production": {"maxFailureRate": 1.5}}),
        ),
        (
            "a negative failure rate",
            serde_json::json!({"production": {"maxFailureRate": -0.1}}),
        ),
        (
            "too many devices",
            serde_json::json!({"production": {"minDevices": 100_001}}),
        ),
        (
            "negative devices",
            serde_json::json!({"production": {"minDevices": -1}}),
        ),
        (
            "fractional devices",
            serde_json::json!({"production": {"minDevices": 2.5}}),
        ),
        (
            "a plan that is a list",
            serde_json::json!({"production": [50, 100]}),
        ),
    ] {
        assert!(
            !validator.is_valid(&release_with_rollouts(rollouts)),
            "{what} should be rejected"
        );
    }
}
