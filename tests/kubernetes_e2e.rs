//! Against a real Kubernetes API server (etcd + kube-apiserver from `scripts/services start`),
//! without the operator: the CRDs install, the examples are accepted, invalid resources are
//! refused by the API server with a message, ServiceAccount tokens, RBAC and Leases work (what
//! the operator's own tests build on), and Argo CD's health check, run in Argo CD's Lua VM
//! (gopher-lua), reads status written through the status subresource.
//! Each test works in its own namespace, so they run in parallel against one API server.

mod common;

use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use common::{kube_control_plane, service_var, KubeControlPlane};

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Server-side applies one resource into `namespace`.
fn apply(kube: &KubeControlPlane, namespace: &str, resource: &Value) -> common::KubectlOutput {
    kube.kubectl_with_input(
        &["apply", "--server-side", "-n", namespace, "-f", "-"],
        &resource.to_string(),
    )
}

fn get_json(kube: &KubeControlPlane, namespace: &str, what: &str) -> Value {
    serde_json::from_str(
        &kube
            .kubectl(&["get", "-n", namespace, what, "-o", "json"])
            .ok(),
    )
    .unwrap()
}

#[test]
fn crds_are_established_with_their_names() {
    let Some(kube) = kube_control_plane() else {
        return;
    };
    kube.install_crds();
    for (crd, short) in [
        ("bundles.capgo-server.io", "cbundle"),
        ("releases.capgo-server.io", "crel"),
        ("channels.capgo-server.io", "cchannel"),
    ] {
        let crd = get_json(&kube, "default", &format!("crd/{crd}"));
        let conditions = crd["status"]["conditions"].as_array().unwrap();
        for wanted in ["Established", "NamesAccepted"] {
            assert!(
                conditions
                    .iter()
                    .any(|c| c["type"] == wanted && c["status"] == "True"),
                "{wanted}: {conditions:?}"
            );
        }
        // A non-structural schema would be served but flagged here.
        assert!(
            !conditions
                .iter()
                .any(|c| c["type"] == "NonStructuralSchema"),
            "{conditions:?}"
        );
        assert_eq!(crd["status"]["acceptedNames"]["shortNames"], json!([short]));
    }
    let resources = kube
        .kubectl(&["api-resources", "--api-group=capgo-server.io", "-o", "name"])
        .ok();
    assert_eq!(
        resources.lines().collect::<Vec<_>>(),
        [
            "bundles.capgo-server.io",
            "channels.capgo-server.io",
            "releases.capgo-server.io"
        ]
    );
}

#[test]
fn examples_are_accepted_and_read_back() {
    let Some(kube) = kube_control_plane() else {
        return;
    };
    kube.install_crds();
    // The examples name their namespace; creating it again on a second run changes nothing.
    kube.kubectl_with_input(
        &["apply", "--server-side", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}).to_string(),
    )
    .ok();
    kube.kubectl(&["apply", "--server-side", "-f", &repo("deploy/examples")])
        .ok();
    let bundles = get_json(&kube, "apps", "bundles");
    let names: Vec<&str> = bundles["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shop-web-1-4-0", "shop-web-1-4-1"]);
    let release = get_json(&kube, "apps", "release/shop-android-1-4-0");
    assert_eq!(
        release["spec"]["channels"],
        json!({"production": "shop-web-1-4-1", "beta": "shop-web-1-4-0"})
    );
    assert_eq!(release["metadata"]["generation"], 1);
    // Status belongs to the status subresource: nothing wrote it yet.
    assert!(release.get("status").is_none(), "{release}");
    // Settings a Channel leaves out are stored with their defaults (the schema's).
    let production = get_json(&kube, "apps", "channel/shop-production");
    let spec = &production["spec"];
    assert_eq!(
        (&spec["updatePolicy"], &spec["blockUnderNative"]),
        (&json!("major"), &json!(true))
    );
    for allowed in [
        "allowIos",
        "allowAndroid",
        "allowElectron",
        "allowEmulator",
        "allowDevice",
        "allowDevBuild",
        "allowProdBuild",
        "allowDeviceSelfSet",
    ] {
        assert_eq!(spec[allowed], true, "{allowed}: {production}");
    }
    let beta = get_json(&kube, "apps", "channel/shop-beta");
    assert_eq!(beta["spec"]["allowEmulator"], false);
    assert_eq!(beta["spec"]["updatePolicy"], "none");
    assert_eq!(beta["spec"]["devices"].as_array().unwrap().len(), 2);
}

/// The committed invalid manifests, and a few more, each refused by the API server with a
/// message naming the field, whether sent as a create (`kubectl apply`, Argo CD's default) or
/// as a server-side apply (whose type errors read differently). This pins what the schema
/// enforces: types, patterns and CEL across fields, and rollout plans that cannot work.
#[test]
fn invalid_resources_are_refused_by_the_api_server() {
    let Some(kube) = kube_control_plane() else {
        return;
    };
    kube.install_crds();
    let namespace = kube.fresh_namespace("invalid");
    // Name → (what a create answers, what a server-side apply answers).
    let expected = |name: &str| -> (&[&str], &[&str]) {
        match name {
            "no-app-id" => (
                &["spec.appId: Required value"],
                &["spec.appId: Required value"],
            ),
            "source-is-a-string" => (
                &["spec.source in body must be of type object"],
                &[".spec.source: expected map"],
            ),
            "unknown-platform" => {
                let refused: &[&str] = &[
                    "spec.platform: Unsupported value: \"windows\"",
                    "supported values: \"android\", \"ios\", \"electron\"",
                ];
                (refused, refused)
            }
            "channels-is-a-list" => (
                &["spec.channels in body must be of type object"],
                &[".spec.channels: expected map"],
            ),
            "version-code-is-a-number" => (
                &["spec.versionCode in body must be of type string"],
                &[".spec.versionCode: expected string"],
            ),
            "channel-is-a-number" => (
                &["spec.channels.production in body must be of type string"],
                &[".spec.channels.production: expected string"],
            ),
            "encryption-without-session-key" => (
                &["spec.encryption.sessionKey: Required value"],
                &["spec.encryption.sessionKey: Required value"],
            ),
            "misspelled-field" => (
                &["unknown field \"spec.chanels\""],
                &[".spec.chanels: field not declared in schema"],
            ),
            "Upper-Case-Name" => (
                &["metadata.name: Invalid value: \"Upper-Case-Name\""],
                &["metadata.name: Invalid value: \"Upper-Case-Name\""],
            ),
            // The rules added for issue 15: patterns and CEL across fields.
            "both-sources" | "no-source" => {
                let refused: &[&str] = &["set exactly one of source.url and source.bucketKey"];
                (refused, refused)
            }
            "ftp-source" => {
                let refused: &[&str] = &["spec.source.url", "should match"];
                (refused, refused)
            }
            "short-sha256" => {
                let refused: &[&str] = &["spec.sha256", "should match"];
                (refused, refused)
            }
            "app-id-with-a-space" => {
                let refused: &[&str] = &["spec.appId", "should match"];
                (refused, refused)
            }
            "empty-version-name" => {
                let refused: &[&str] = &["spec.versionName", "at least 1 chars long"];
                (refused, refused)
            }
            "reserved-version-name" => {
                let refused: &[&str] = &["versionName \"builtin\" and \"unknown\" are reserved"];
                (refused, refused)
            }
            "builtin-channel" | "channel-with-a-slash" => {
                let refused: &[&str] = &["channel names are 1 to 64 letters"];
                (refused, refused)
            }
            "bundle-name-upper-case" => {
                let refused: &[&str] = &["spec.builtinBundle", "should match"];
                (refused, refused)
            }
            // Channels: the settings that cannot work.
            "unknown-update-policy" => {
                let refused: &[&str] = &[
                    "spec.updatePolicy: Unsupported value: \"minor_only\"",
                    "supported values: \"none\", \"major\", \"minor\", \"patch\", \"version_number\"",
                ];
                (refused, refused)
            }
            "device-id-with-a-space" => {
                let refused: &[&str] = &["spec.devices[1]", "should match"];
                (refused, refused)
            }
            "too-many-devices" => {
                let refused: &[&str] = &["spec.devices", "must have at most 1000 items"];
                (refused, refused)
            }
            "builtin-channel-resource" => {
                let refused: &[&str] = &["\"builtin\" is not a channel name"];
                (refused, refused)
            }
            "channel-resource-with-a-slash" => {
                let refused: &[&str] = &["spec.channel", "should match"];
                (refused, refused)
            }
            "setting-is-a-string" => (
                &["spec.allowAndroid in body must be of type boolean"],
                &[".spec.allowAndroid: expected boolean"],
            ),
            "misspelled-setting" => (
                &["unknown field \"spec.allowAndriod\""],
                &[".spec.allowAndriod: field not declared in schema"],
            ),
            // Releases: rollout plans that cannot work (issue 17).
            "rollout-steps-shrinking" | "rollout-steps-short-of-100" => {
                let refused: &[&str] = &[
                    "spec.rollouts[production].steps",
                    "steps must grow at every step, and the last one must be 100",
                ];
                (refused, refused)
            }
            "rollout-step-of-zero" => {
                let refused: &[&str] = &["steps are percents from 0.01 to 100"];
                (refused, refused)
            }
            "rollout-step-above-100" => {
                let refused: &[&str] = &[
                    "spec.rollouts.production.steps[1]",
                    "should be less than or equal to 100",
                ];
                (refused, refused)
            }
            "rollout-with-21-steps" => {
                let refused: &[&str] = &[
                    "spec.rollouts.production.steps",
                    "must have at most 20 items",
                ];
                (refused, refused)
            }
            "rollout-interval-in-words" => {
                let refused: &[&str] = &["spec.rollouts.production.interval", "should match"];
                (refused, refused)
            }
            "rollout-interval-under-a-second" => {
                let refused: &[&str] = &["interval must be at least 1s and at most 720h"];
                (refused, refused)
            }
            "rollout-window-over-30-days" => {
                let refused: &[&str] = &["window must be at least 1s and at most 720h"];
                (refused, refused)
            }
            "rollout-failure-rate-above-1" => {
                let refused: &[&str] = &[
                    "spec.rollouts.production.maxFailureRate",
                    "should be less than or equal to 1",
                ];
                (refused, refused)
            }
            "rollout-min-devices-too-high" => {
                let refused: &[&str] = &[
                    "spec.rollouts.production.minDevices",
                    "should be less than or equal to 100000",
                ];
                (refused, refused)
            }
            "rollout-of-an-unlisted-channel" => {
                let refused: &[&str] = &["every channel in rollouts must be a channel in channels"];
                (refused, refused)
            }
            "rollout-of-builtin" => {
                let refused: &[&str] = &["spec.rollouts", "channel names are 1 to 64 letters"];
                (refused, refused)
            }
            "rollout-misspelled-field" => (
                &["unknown field \"spec.rollouts.production.stepz\""],
                &[".spec.rollouts.production.stepz: field not declared in schema"],
            ),
            other => panic!("no expectation for {other}"),
        }
    };
    let bundle = |name: &str, spec: Value| {
        json!({"apiVersion": "capgo-server.io/v1alpha1", "kind": "Bundle",
               "metadata": {"name": name}, "spec": spec})
    };
    let release = |name: &str, extra: Value| {
        let mut spec = json!({"platform": "ios", "appId": "com.example.shop",
                              "versionName": "1.4.0", "versionCode": "140",
                              "builtinBundle": "shop-web-1-4-0"});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"apiVersion": "capgo-server.io/v1alpha1", "kind": "Release",
               "metadata": {"name": name}, "spec": spec})
    };
    let channel = |name: &str, extra: Value| {
        let mut spec = json!({"appId": "com.example.shop", "channel": "beta"});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"apiVersion": "capgo-server.io/v1alpha1", "kind": "Channel",
               "metadata": {"name": name}, "spec": spec})
    };
    let rollout = |name: &str, rollouts: Value| {
        release(
            name,
            json!({"channels": {"production": "shop-web-1-4-1"}, "rollouts": rollouts}),
        )
    };
    let too_many: Vec<String> = (0..1001).map(|i| format!("device-{i}")).collect();
    let too_many_steps: Vec<u32> = (1..=20).chain([100]).collect();
    let mut cases = documents("tests/fixtures/invalid-manifests.yaml");
    assert_eq!(cases.len(), 5);
    cases.extend([
        release(
            "channel-is-a-number",
            json!({"channels": {"production": 3}}),
        ),
        bundle(
            "encryption-without-session-key",
            json!({"appId": "com.example.shop", "versionName": "1.0.0",
                   "source": {"url": "https://example.com/a.zip"},
                   "encryption": {"checksum": "ab"}}),
        ),
        release(
            "misspelled-field",
            json!({"chanels": {"production": "shop-web-1-4-1"}}),
        ),
        release("Upper-Case-Name", json!({})),
        bundle(
            "both-sources",
            json!({"appId": "com.example.shop", "versionName": "1.0.0",
                   "source": {"url": "https://example.com/a.zip", "bucketKey": "imports/a.zip"}}),
        ),
        bundle(
            "no-source",
            json!({"appId": "com.example.shop", "versionName": "1.0.0", "source": {}}),
        ),
        bundle(
            "ftp-source",
            json!({"appId": "com.example.shop", "versionName": "1.0.0",
                   "source": {"url": "ftp://example.com/a.zip"}}),
        ),
        bundle(
            "short-sha256",
            json!({"appId": "com.example.shop", "versionName": "1.0.0",
                   "source": {"url": "https://example.com/a.zip"}, "sha256": "abc"}),
        ),
        bundle(
            "app-id-with-a-space",
            json!({"appId": "com.example shop", "versionName": "1.0.0",
                   "source": {"url": "https://example.com/a.zip"}}),
        ),
        bundle(
            "empty-version-name",
            json!({"appId": "com.example.shop", "versionName": "",
                   "source": {"url": "https://example.com/a.zip"}}),
        ),
        bundle(
            "reserved-version-name",
            json!({"appId": "com.example.shop", "versionName": "builtin",
                   "source": {"url": "https://example.com/a.zip"}}),
        ),
        release(
            "builtin-channel",
            json!({"channels": {"builtin": "shop-web-1-4-1"}}),
        ),
        release(
            "channel-with-a-slash",
            json!({"channels": {"beta/1": "shop-web-1-4-1"}}),
        ),
        release(
            "bundle-name-upper-case",
            json!({"builtinBundle": "Shop_Web"}),
        ),
        channel(
            "unknown-update-policy",
            json!({"updatePolicy": "minor_only"}),
        ),
        channel(
            "device-id-with-a-space",
            json!({"devices": ["qa-phone-1", "qa phone 2"]}),
        ),
        channel("too-many-devices", json!({ "devices": too_many })),
        channel("builtin-channel-resource", json!({"channel": "builtin"})),
        channel(
            "channel-resource-with-a-slash",
            json!({"channel": "beta/1"}),
        ),
        channel("setting-is-a-string", json!({"allowAndroid": "false"})),
        channel("misspelled-setting", json!({"allowAndriod": false})),
        rollout(
            "rollout-steps-shrinking",
            json!({"production": {"steps": [50, 25, 100]}}),
        ),
        rollout(
            "rollout-steps-short-of-100",
            json!({"production": {"steps": [5, 50]}}),
        ),
        rollout(
            "rollout-step-of-zero",
            json!({"production": {"steps": [0, 100]}}),
        ),
        rollout(
            "rollout-step-above-100",
            json!({"production": {"steps": [5, 150]}}),
        ),
        rollout(
            "rollout-with-21-steps",
            json!({"production": {"steps": too_many_steps}}),
        ),
        rollout(
            "rollout-interval-in-words",
            json!({"production": {"interval": "10 minutes"}}),
        ),
        rollout(
            "rollout-interval-under-a-second",
            json!({"production": {"interval": "500ms"}}),
        ),
        rollout(
            "rollout-window-over-30-days",
            json!({"production": {"window": "800h"}}),
        ),
        rollout(
            "rollout-failure-rate-above-1",
            json!({"production": {"maxFailureRate": 1.5}}),
        ),
        rollout(
            "rollout-min-devices-too-high",
            json!({"production": {"minDevices": 100_001}}),
        ),
        rollout("rollout-of-an-unlisted-channel", json!({"beta": {}})),
        rollout("rollout-of-builtin", json!({"builtin": {}})),
        rollout(
            "rollout-misspelled-field",
            json!({"production": {"stepz": [100]}}),
        ),
    ]);
    for case in &cases {
        let name = case["metadata"]["name"].as_str().unwrap();
        let (created, applied) = expected(name);
        let create =
            kube.kubectl_with_input(&["create", "-n", &namespace, "-f", "-"], &case.to_string());
        let apply = apply(&kube, &namespace, case);
        for (how, output, parts) in [
            ("create", create, created),
            ("server-side apply", apply, applied),
        ] {
            assert!(
                !output.success,
                "{name} was accepted by {how}: {}",
                output.stdout
            );
            for part in parts {
                assert!(
                    output.stderr.contains(part),
                    "{name}, {how}: {}",
                    output.stderr
                );
            }
        }
    }
    // Nothing was stored.
    let left = kube
        .kubectl(&[
            "get",
            "bundles,releases,channels",
            "-n",
            &namespace,
            "-o",
            "name",
        ])
        .ok();
    assert_eq!(left.trim(), "", "{left}");
}

/// A Bundle's app id and version name key its stored record and object: the API server
/// refuses to change them (a CEL transition rule), while other fields may change.
#[test]
fn a_bundles_identity_cannot_change() {
    let Some(kube) = kube_control_plane() else {
        return;
    };
    kube.install_crds();
    let namespace = kube.fresh_namespace("immutable");
    let bundle = |app: &str, version: &str, description: &str| {
        json!({"apiVersion": "capgo-server.io/v1alpha1", "kind": "Bundle",
               "metadata": {"name": "web"},
               "spec": {"appId": app, "versionName": version, "description": description,
                        "source": {"url": "https://example.com/a.zip"}}})
    };
    apply(
        &kube,
        &namespace,
        &bundle("com.example.shop", "1.0.0", "first"),
    )
    .ok();
    apply(
        &kube,
        &namespace,
        &bundle("com.example.shop", "1.0.0", "edited"),
    )
    .ok();
    for (changed, message) in [
        (
            bundle("com.example.other", "1.0.0", "edited"),
            "appId cannot change once set",
        ),
        (
            bundle("com.example.shop", "1.0.1", "edited"),
            "versionName cannot change once set",
        ),
    ] {
        let output = apply(&kube, &namespace, &changed);
        assert!(!output.success, "{changed} was accepted");
        assert!(output.stderr.contains(message), "{}", output.stderr);
    }
    let stored = get_json(&kube, &namespace, "bundle/web");
    assert_eq!(stored["spec"]["versionName"], "1.0.0");
    assert_eq!(stored["spec"]["description"], "edited");
}

/// A Channel's app id and channel name key the settings and devices it manages: the API
/// server refuses to change them, while its settings and devices may change.
#[test]
fn a_channels_identity_cannot_change() {
    let Some(kube) = kube_control_plane() else {
        return;
    };
    kube.install_crds();
    let namespace = kube.fresh_namespace("immutable-channel");
    let channel = |app: &str, channel: &str, policy: &str| {
        json!({"apiVersion": "capgo-server.io/v1alpha1", "kind": "Channel",
               "metadata": {"name": "shop-beta"},
               "spec": {"appId": app, "channel": channel, "updatePolicy": policy}})
    };
    apply(
        &kube,
        &namespace,
        &channel("com.example.shop", "beta", "none"),
    )
    .ok();
    apply(
        &kube,
        &namespace,
        &channel("com.example.shop", "beta", "patch"),
    )
    .ok();
    for (changed, message) in [
        (
            channel("com.example.other", "beta", "patch"),
            "appId cannot change once set",
        ),
        (
            channel("com.example.shop", "alpha", "patch"),
            "channel cannot change once set",
        ),
    ] {
        let output = apply(&kube, &namespace, &changed);
        assert!(!output.success, "{changed} was accepted");
        assert!(output.stderr.contains(message), "{}", output.stderr);
    }
    let stored = get_json(&kube, &namespace, "channel/shop-beta");
    assert_eq!(stored["spec"]["channel"], "beta");
    assert_eq!(stored["spec"]["updatePolicy"], "patch");
}

/// A ServiceAccount gets a real token from the TokenRequest API; RBAC refuses it until a Role
/// allows it; then it can take a Lease (the operator's leader election) and list Releases.
#[test]
fn service_account_tokens_rbac_and_leases_work() {
    let Some(kube) = kube_control_plane() else {
        return;
    };
    kube.install_crds();
    let version: Value =
        serde_json::from_str(&kube.kubectl(&["get", "--raw", "/version"]).ok()).unwrap();
    let client: Value =
        serde_json::from_str(&kube.kubectl(&["version", "--client", "-o", "json"]).ok()).unwrap();
    assert_eq!(version["major"], "1");
    assert_eq!(
        version["gitVersion"], client["clientVersion"]["gitVersion"],
        "kube-apiserver and kubectl come from one build"
    );

    let namespace = kube.fresh_namespace("rbac");
    let ns = namespace.as_str();
    kube.kubectl(&["create", "serviceaccount", "operator", "-n", ns])
        .ok();
    let token = kube
        .kubectl(&["create", "token", "operator", "-n", ns, "--duration=10m"])
        .ok();
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let as_operator = |args: &[&str]| {
        let mut all = vec!["--token", token];
        all.extend_from_slice(args);
        kube.kubectl(&all)
    };
    let who = as_operator(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ])
    .ok();
    assert_eq!(who, format!("system:serviceaccount:{ns}:operator"));
    let denied = as_operator(&["get", "releases", "-n", ns]);
    assert!(!denied.success);
    assert!(denied.stderr.contains("Forbidden"), "{}", denied.stderr);

    kube.kubectl(&[
        "create",
        "role",
        "operator",
        "-n",
        ns,
        "--verb=get,list,watch",
        "--resource=releases.capgo-server.io",
    ])
    .ok();
    kube.kubectl(&[
        "create",
        "role",
        "leader",
        "-n",
        ns,
        "--verb=get,create,update",
        "--resource=leases.coordination.k8s.io",
    ])
    .ok();
    for role in ["operator", "leader"] {
        kube.kubectl(&[
            "create",
            "rolebinding",
            role,
            "-n",
            ns,
            &format!("--role={role}"),
            &format!("--serviceaccount={ns}:operator"),
        ])
        .ok();
    }
    // RBAC decisions follow the bindings at once; the authorizer's cache may lag a moment.
    let mut listed = as_operator(&["get", "releases", "-n", ns]);
    for _ in 0..50 {
        if listed.success {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        listed = as_operator(&["get", "releases", "-n", ns]);
    }
    listed.ok();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "capgo-server-operator", "namespace": ns},
        "spec": {"holderIdentity": "replica-0", "leaseDurationSeconds": 15},
    });
    let mut create = vec!["--token", token, "create", "-f", "-"];
    create.extend_from_slice(&["-o", "jsonpath={.spec.holderIdentity}"]);
    assert_eq!(
        kube.kubectl_with_input(&create, &lease.to_string()).ok(),
        "replica-0"
    );
    let not_allowed = as_operator(&["delete", "lease", "capgo-server-operator", "-n", ns]);
    assert!(!not_allowed.success, "the Role does not grant delete");
}

/// The health check, run as Argo CD runs it (gopher-lua, Argo CD's libraries), on a Release
/// read back from the API server after its status was written through the status subresource.
#[test]
fn argo_cd_health_reads_status_from_the_api_server() {
    let Some(kube) = kube_control_plane() else {
        return;
    };
    let Some(health) = service_var("CAPGO_TEST_ARGOCD_HEALTH", "Argo CD health-check runner")
    else {
        return;
    };
    kube.install_crds();
    let namespace = kube.fresh_namespace("health");
    let ns = namespace.as_str();
    let mut release = documents("deploy/examples/release.yaml").remove(0);
    release["metadata"]["namespace"] = json!(ns);
    apply(&kube, ns, &release).ok();

    let judge_object = |what: &str| -> (String, String) {
        let object = kube.kubectl(&["get", "-n", ns, what, "-o", "json"]).ok();
        let mut child = std::process::Command::new(&health)
            .arg(repo("deploy/argocd/health.lua"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), object.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let result: Value = serde_json::from_slice(&output.stdout).unwrap();
        (
            result["status"].as_str().unwrap().to_string(),
            result["message"].as_str().unwrap_or("").to_string(),
        )
    };
    let set_status_of = |what: &str, generation: i64, conditions: &[(&str, &str, &str)]| {
        let conditions: Vec<Value> = conditions
            .iter()
            .map(|(kind, status, message)| {
                json!({"type": kind, "status": status, "reason": "Test", "message": message,
                       "lastTransitionTime": "2026-11-27T10:00:00Z",
                       "observedGeneration": generation})
            })
            .collect();
        let patch = json!({"status": {"observedGeneration": generation, "conditions": conditions}});
        kube.kubectl(&[
            "patch",
            "-n",
            ns,
            what,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ])
        .ok();
    };
    let judge = || judge_object("release/shop-android-1-4-0");
    let set_status = |generation: i64, conditions: &[(&str, &str, &str)]| {
        set_status_of("release/shop-android-1-4-0", generation, conditions)
    };

    assert_eq!(
        judge(),
        (
            "Progressing".into(),
            "Waiting for capgo-server to reconcile".into()
        )
    );
    set_status(
        1,
        &[
            ("Ready", "True", "production=1.4.1 beta=1.4.0"),
            ("Stalled", "False", ""),
        ],
    );
    assert_eq!(
        judge(),
        ("Healthy".into(), "production=1.4.1 beta=1.4.0".into())
    );
    set_status(
        1,
        &[
            ("Ready", "False", "Bundle shop-web-1-4-1 does not exist"),
            ("Stalled", "True", "Bundle shop-web-1-4-1 does not exist"),
        ],
    );
    assert_eq!(
        judge(),
        (
            "Degraded".into(),
            "Bundle shop-web-1-4-1 does not exist".into()
        )
    );
    // A spec change bumps the generation: the old status no longer counts.
    kube.kubectl(&[
        "patch",
        "-n",
        ns,
        "release/shop-android-1-4-0",
        "--type=merge",
        "-p",
        r#"{"spec":{"channels":{"production":"shop-web-1-4-0"}}}"#,
    ])
    .ok();
    assert_eq!(
        judge(),
        (
            "Progressing".into(),
            "Waiting for capgo-server to observe generation 2".into()
        )
    );
    set_status(
        2,
        &[
            ("Ready", "False", "fetching shop-web-1-4-0"),
            ("Reconciling", "True", ""),
        ],
    );
    assert_eq!(
        judge(),
        ("Progressing".into(), "fetching shop-web-1-4-0".into())
    );

    // The same script serves Channels (register it for capgo-server.io_Channel too).
    let mut channel = documents("deploy/examples/channels.yaml").remove(1);
    channel["metadata"]["namespace"] = json!(ns);
    apply(&kube, ns, &channel).ok();
    let channel = "channel/shop-beta";
    assert_eq!(judge_object(channel).0, "Progressing");
    set_status_of(
        channel,
        1,
        &[
            (
                "Ready",
                "True",
                "the channel's settings and devices are as specified",
            ),
            ("Reconciling", "False", ""),
            ("Stalled", "False", ""),
        ],
    );
    assert_eq!(judge_object(channel).0, "Healthy");
    set_status_of(
        channel,
        1,
        &[
            ("Ready", "False", "converging"),
            ("Reconciling", "True", "converging"),
            ("Stalled", "False", ""),
        ],
    );
    assert_eq!(
        judge_object(channel),
        ("Progressing".into(), "converging".into())
    );
    set_status_of(
        channel,
        1,
        &[
            (
                "Ready",
                "False",
                "channel beta of com.example.shop is managed by Channel apps/other",
            ),
            ("Reconciling", "False", ""),
            (
                "Stalled",
                "True",
                "channel beta of com.example.shop is managed by Channel apps/other",
            ),
        ],
    );
    assert_eq!(
        judge_object(channel),
        (
            "Degraded".into(),
            "channel beta of com.example.shop is managed by Channel apps/other".into()
        )
    );
}

/// The health check's own test cases (tests/argocd/health_test.lua, written for Lua 5.4) with
/// every case run in Argo CD's VM instead: gopher-lua, Lua 5.1, without the string library.
#[test]
fn argo_cd_health_cases_pass_in_argo_cds_lua_vm() {
    let Some(health) = service_var("CAPGO_TEST_ARGOCD_HEALTH", "Argo CD health-check runner")
    else {
        return;
    };
    let output = std::process::Command::new(&health)
        .args([
            "-test",
            "tests/argocd/health_test.lua",
            "deploy/argocd/health.lua",
        ])
        .current_dir(repo(""))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("10 passed, 0 failed"), "{stdout}");
}
