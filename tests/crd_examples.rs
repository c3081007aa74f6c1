//! The example manifests validate against the generated CRD schemas (a JSON Schema validator
//! over each CRD's openAPIV3Schema, as the API server would), and invalid ones are rejected.

use std::collections::BTreeMap;
use std::path::Path;

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
    ] {
        for doc in documents(path) {
            let kind = doc["kind"].as_str().unwrap();
            let errors: Vec<String> = validators[kind]
                .iter_errors(&doc)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{path} {kind}: {errors:?}");
            match kind {
                "Bundle" => drop(
                    serde_json::from_value::<capgo_server::operator::crd::Bundle>(doc.clone())
                        .unwrap(),
                ),
                _ => drop(
                    serde_json::from_value::<capgo_server::operator::crd::Release>(doc.clone())
                        .unwrap(),
                ),
            }
            seen.push(kind.to_string());
        }
    }
    assert_eq!(seen, ["Bundle", "Bundle", "Release"]);
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
