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
