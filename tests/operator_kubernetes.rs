//! The operator in the real binary (`CONTROLLER_ENABLED=true`) against a real Kubernetes API
//! server (etcd + kube-apiserver from `scripts/services start`): Bundles fetched from a
//! loopback source become Ready, Releases reach devices, Channels decide whom they serve and
//! which devices are forced onto them (and give both back when deleted), status is server-side
//! applied by `capgo-server` alone, resyncs write nothing, deletions wait for the Releases that
//! hold them, the chart's own RBAC is enough (and a missing rule is reported, not crash-looped
//! on; without access to Channels the rest still works, and Channels start once granted), two
//! replicas elect one leader and fail over, the operator waits for a cluster that is not there
//! yet, and the chart installs, upgrades and uninstalls.
//!
//! Each test works in its own namespace with its own lease, so they run in parallel against
//! one API server. No kubelet runs: nothing here needs pods.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use common::{
    device_body, kube_control_plane, offered, sha256_hex, web_bundle, Client, KubeControlPlane,
    ServerProcess, API_KEY, APP_ID,
};

/// Zips served over HTTP on loopback, from their own thread and runtime (the tests block on
/// kubectl, which must not stall the source).
struct ZipHost {
    base: String,
    _stop: tokio_util::sync::DropGuard,
}

impl ZipHost {
    fn start(files: BTreeMap<String, Vec<u8>>) -> ZipHost {
        use axum::extract::Path as UrlPath;
        use axum::response::IntoResponse;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let files = Arc::new(files);
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let router = axum::Router::new().route(
                    "/{name}",
                    axum::routing::get(move |UrlPath(name): UrlPath<String>| {
                        let files = files.clone();
                        async move {
                            match files.get(&name) {
                                Some(bytes) => bytes.clone().into_response(),
                                None => axum::http::StatusCode::NOT_FOUND.into_response(),
                            }
                        }
                    }),
                );
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopped.cancelled_owned())
                    .await
                    .unwrap();
            });
        });
        ZipHost {
            base,
            _stop: stop.drop_guard(),
        }
    }
}

/// Three web bundles of the test app, served on loopback.
struct Web {
    host: ZipHost,
    sha256: BTreeMap<&'static str, String>,
}

const VERSIONS: [&str; 3] = ["1.0.0", "1.0.1", "1.0.2"];

impl Web {
    fn start() -> Web {
        let mut files = BTreeMap::new();
        let mut sha256 = BTreeMap::new();
        for version in VERSIONS {
            let zip = web_bundle(version);
            sha256.insert(version, sha256_hex(&zip));
            files.insert(format!("web-{version}.zip"), zip);
        }
        Web {
            host: ZipHost::start(files),
            sha256,
        }
    }

    /// The Bundle resource for `version`, named `web-1-0-1` for 1.0.1.
    fn bundle(&self, version: &str) -> Value {
        json!({
            "apiVersion": "capgo-server.io/v1alpha1",
            "kind": "Bundle",
            "metadata": {"name": bundle_name(version)},
            "spec": {
                "appId": APP_ID,
                "versionName": version,
                "source": {"url": format!("{}/web-{version}.zip", self.host.base)},
                "sha256": self.sha256[version],
            },
        })
    }
}

fn bundle_name(version: &str) -> String {
    format!("web-{}", version.replace('.', "-"))
}

/// The Android 1.0.0 (build 10) store release: 1.0.0 inside, channels as given.
fn release(channels: &[(&str, &str)]) -> Value {
    let channels: BTreeMap<&str, String> = channels
        .iter()
        .map(|(channel, version)| (*channel, bundle_name(version)))
        .collect();
    json!({
        "apiVersion": "capgo-server.io/v1alpha1",
        "kind": "Release",
        "metadata": {"name": "shop"},
        "spec": {
            "platform": "android",
            "appId": APP_ID,
            "versionName": "1.0.0",
            "versionCode": "10",
            "builtinBundle": bundle_name("1.0.0"),
            "channels": channels,
        },
    })
}

/// A namespace of its own on the shared API server, with the CRDs installed.
struct Cluster {
    kube: KubeControlPlane,
    namespace: String,
}

impl Cluster {
    fn new(prefix: &str) -> Option<Cluster> {
        let kube = kube_control_plane()?;
        common::install_crypto_provider();
        kube.install_crds();
        let namespace = kube.fresh_namespace(prefix);
        Some(Cluster { kube, namespace })
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        self.kube.kubectl(&all).ok()
    }

    fn apply(&self, resource: &Value) {
        self.kube
            .kubectl_with_input(
                &[
                    "apply",
                    "--server-side",
                    "--field-manager=capgo-tests",
                    "-n",
                    &self.namespace,
                    "-f",
                    "-",
                ],
                &resource.to_string(),
            )
            .ok();
    }

    fn get(&self, what: &str) -> Value {
        serde_json::from_str(&self.kubectl(&["get", what, "-o", "json"])).unwrap()
    }

    /// `kubectl wait --for=condition=Ready` on `what`, as a pipeline would.
    fn wait_ready(&self, what: &[&str], server: &ServerProcess) {
        let mut args = vec![
            "-n",
            self.namespace.as_str(),
            "wait",
            "--for=condition=Ready",
            "--timeout=120s",
        ];
        args.extend_from_slice(what);
        let output = self.kube.kubectl(&args);
        assert!(
            output.success,
            "{what:?} not Ready: {}\n{}\nserver log:\n{}",
            output.stderr,
            self.kubectl(&["get", "bundles,releases", "-o", "yaml"]),
            server.log_text()
        );
    }

    /// The condition `type_` of `what` (`bundle/web-1-0-0`), or null.
    fn condition(&self, what: &str, type_: &str) -> Value {
        let object = self.get(what);
        object["status"]["conditions"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or(Value::Null)
    }

    /// A Channel of the test app named `name`, with `spec` merged over its app id.
    fn channel(name: &str, spec: Value) -> Value {
        let mut full = json!({"appId": APP_ID});
        full.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        json!({
            "apiVersion": "capgo-server.io/v1alpha1",
            "kind": "Channel",
            "metadata": {"name": name},
            "spec": full,
        })
    }

    /// resourceVersion of every Bundle, Release and Channel.
    fn resource_versions(&self) -> BTreeMap<String, String> {
        let list = self.get("bundles,releases,channels");
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                (
                    format!("{}/{}", item["kind"], item["metadata"]["name"]),
                    item["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect()
    }

    /// The server with the operator on, watching this namespace only, reading the cluster
    /// through `kubeconfig`.
    fn start_operator(
        &self,
        data: &Path,
        kubeconfig: &str,
        identity: &str,
        extra: &[(String, String)],
    ) -> ServerProcess {
        let mut env: Vec<(String, String)> = vec![
            ("CONTROLLER_ENABLED".into(), "true".into()),
            ("CONTROLLER_NAMESPACES".into(), self.namespace.clone()),
            ("CONTROLLER_LEASE_NAMESPACE".into(), self.namespace.clone()),
            ("KUBECONFIG".into(), kubeconfig.into()),
            ("HOSTNAME".into(), identity.into()),
            // The sources below are on loopback, which a server refuses by default.
            ("BUNDLE_SOURCE_ALLOW_PRIVATE".into(), "true".into()),
            ("MANAGEMENT_API_TOKENS".into(), API_KEY.into()),
        ];
        env.extend_from_slice(extra);
        common::start_with_public_url(data, &common::env_refs(&env))
    }

    /// A kubeconfig for this API server that authenticates with `token`, served at `server`.
    fn kubeconfig_for(&self, dir: &Path, server: &str, token: &str) -> String {
        let path = dir.join("kubeconfig");
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": self.kube.ca}}],
            "users": [{"name": "operator", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "operator"}}],
            "current-context": "test",
        });
        std::fs::write(&path, config.to_string()).unwrap();
        path.display().to_string()
    }
}

/// What `/updates` answers a device of the release on `channel` ("" for the default).
async fn device_gets(client: &Client, channel: &str) -> Value {
    let mut body = device_body("1.0.0", "8.51.14");
    body["defaultChannel"] = json!(channel);
    let (status, answer) = client.device("/updates", &body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// What `/updates` answers the Android device `device_id` of the release, on the default
/// channel.
async fn device_with_id_gets(client: &Client, device_id: &str) -> Value {
    let mut body = device_body("1.0.0", "8.51.14");
    body["device_id"] = json!(device_id);
    let (status, answer) = client.device("/updates", &body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// What `PUT /channel_self` (the plugin's `getChannel`) answers the device `device_id`.
async fn channel_of(client: &Client, device_id: &str) -> Value {
    let mut body = device_body("1.0.0", "8.51.14");
    body["device_id"] = json!(device_id);
    let response = client
        .http
        .put(format!("{}/channel_self", client.server_public))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.unwrap()
}

/// Polls `check` every 50 ms until it returns `Some`, for up to `limit`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn reconciles(client: &Client, kind: &str) -> f64 {
    client
        .metric(&format!(
            "capgo_reconcile_duration_seconds_count{{kind=\"{kind}\",result=\"success\"}}"
        ))
        .await
}

/// Applies three Bundles and a Release, waits until all are Ready, and returns how long the
/// Release took to follow its last Bundle.
async fn apply_and_wait(cluster: &Cluster, web: &Web, server: &ServerProcess) -> Duration {
    cluster.apply(&release(&[("production", "1.0.1"), ("beta", "1.0.2")]));
    for version in VERSIONS {
        cluster.apply(&web.bundle(version));
    }
    let bundles: Vec<String> = VERSIONS
        .iter()
        .map(|v| format!("bundle/{}", bundle_name(v)))
        .collect();
    let names: Vec<&str> = bundles.iter().map(String::as_str).collect();
    cluster.wait_ready(&names, server);
    let bundles_ready = Instant::now();
    eventually(Duration::from_secs(120), "the Release Ready", || async {
        (cluster.condition("release/shop", "Ready")["status"] == "True").then_some(())
    })
    .await;
    let followed = bundles_ready.elapsed();
    cluster.wait_ready(&["release/shop"], server);
    followed
}

#[tokio::test]
async fn releases_reach_devices_and_status_belongs_to_the_operator() {
    let Some(cluster) = Cluster::new("op-flow") else {
        return;
    };
    let web = Web::start();
    let data = tempfile::tempdir().unwrap();
    let server = cluster.start_operator(data.path(), &cluster.kube.kubeconfig, "replica-a", &[]);
    let client = Client::new(&server, API_KEY);

    let followed = apply_and_wait(&cluster, &web, &server).await;
    println!("measured: a Release followed its last Bundle turning Ready in {followed:?}");
    let status = cluster.get("release/shop")["status"].clone();
    assert_eq!(
        status["channels"],
        json!({"production": "1.0.1", "beta": "1.0.2"}),
        "{status}"
    );
    assert_eq!(status["serving"], "beta=1.0.2 production=1.0.1");
    assert_eq!(device_gets(&client, "").await["version"], "1.0.1");
    assert_eq!(device_gets(&client, "beta").await["version"], "1.0.2");

    // Only `status`, server-side applied, belongs to the operator's field manager.
    for what in ["release/shop", "bundle/web-1-0-1"] {
        let object: Value = serde_json::from_str(&cluster.kubectl(&[
            "get",
            what,
            "-o",
            "json",
            "--show-managed-fields",
        ]))
        .unwrap();
        let managed = object["metadata"]["managedFields"].as_array().unwrap();
        let ours: Vec<&Value> = managed
            .iter()
            .filter(|entry| entry["manager"] == "capgo-server")
            .collect();
        assert!(!ours.is_empty(), "{what}: {managed:?}");
        for entry in ours {
            assert_eq!(entry["operation"], "Apply", "{what}: {entry}");
            assert_eq!(entry["subresource"], "status", "{what}: {entry}");
            let fields: Vec<&String> = entry["fieldsV1"].as_object().unwrap().keys().collect();
            assert_eq!(fields, ["f:status"], "{what}: {entry}");
        }
    }

    // A promote is a patch of the Release; time it from the patch to the first device answer.
    let patched = Instant::now();
    cluster.kubectl(&[
        "patch",
        "release/shop",
        "--type=merge",
        "-p",
        r#"{"spec":{"channels":{"production":"web-1-0-2"}}}"#,
    ]);
    eventually(Duration::from_secs(60), "devices on 1.0.2", || async {
        (device_gets(&client, "").await["version"] == "1.0.2").then_some(())
    })
    .await;
    println!(
        "measured: kubectl patch to the first device answer with the promoted bundle in {:?}",
        patched.elapsed()
    );
    eventually(
        Duration::from_secs(60),
        "status after the promote",
        || async {
            (cluster.get("release/shop")["status"]["channels"]["production"] == "1.0.2")
                .then_some(())
        },
    )
    .await;

    // A restart reconciles everything again and must write nothing.
    let before = cluster.resource_versions();
    let ok_before = reconciles(&client, "Bundle").await;
    assert!(ok_before >= 3.0, "{ok_before}");
    assert!(server.stop().success());
    let server = cluster.start_operator(data.path(), &cluster.kube.kubeconfig, "replica-a", &[]);
    let client = Client::new(&server, API_KEY);
    eventually(
        Duration::from_secs(60),
        "a resync after the restart",
        || async {
            let bundles = reconciles(&client, "Bundle").await;
            let releases = reconciles(&client, "Release").await;
            (bundles >= 3.0 && releases >= 1.0).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        cluster.resource_versions(),
        before,
        "a resync of unchanged resources changes nothing\n{}",
        server.log_text()
    );
}

#[tokio::test]
async fn a_used_bundle_waits_and_deletion_removes_records_objects_and_finalizers() {
    let Some(cluster) = Cluster::new("op-delete") else {
        return;
    };
    let web = Web::start();
    let data = tempfile::tempdir().unwrap();
    let server = cluster.start_operator(data.path(), &cluster.kube.kubeconfig, "replica-a", &[]);
    let client = Client::new(&server, API_KEY);
    apply_and_wait(&cluster, &web, &server).await;
    let stored = || {
        common::list_files(data.path())
            .into_iter()
            .filter(|f| f.ends_with(".zip"))
            .count()
    };
    assert_eq!(stored(), 3, "{:?}", common::list_files(data.path()));

    // web-1-0-1 is what production devices get: its deletion waits, and says why.
    cluster.kubectl(&["delete", "bundle/web-1-0-1", "--wait=false"]);
    let held = eventually(Duration::from_secs(60), "the deletion held", || async {
        let stalled = cluster.condition("bundle/web-1-0-1", "Stalled");
        (stalled["reason"] == "DeletionBlocked").then_some(stalled)
    })
    .await;
    assert!(
        held["message"].as_str().unwrap().contains("1.0.0"),
        "names the release using it: {held}"
    );
    let events = cluster.get("events.events.k8s.io");
    assert!(
        events["items"].as_array().unwrap().iter().any(|e| {
            e["regarding"]["name"] == "web-1-0-1"
                && e["reason"] == "DeletionBlocked"
                && e["type"] == "Warning"
                && e["reportingController"] == "capgo-server"
        }),
        "an Event for the held deletion: {events}"
    );
    assert_eq!(
        device_gets(&client, "").await["version"],
        "1.0.1",
        "still served"
    );

    // The Release goes, then the held Bundle follows at once (the controller watches
    // Releases), then the rest.
    cluster.kubectl(&["delete", "release/shop", "--timeout=60s"]);
    cluster.kubectl(&["wait", "--for=delete", "bundle/web-1-0-1", "--timeout=60s"]);
    cluster.kubectl(&["delete", "bundles", "--all", "--timeout=60s"]);
    assert_eq!(
        cluster.get("bundles,releases")["items"],
        json!([]),
        "finalizers removed"
    );
    assert_eq!(client.list("releases.list").await["data"], json!([]));
    assert_eq!(client.list("bundles.list").await["data"], json!([]));
    assert_eq!(stored(), 0, "{:?}", common::list_files(data.path()));
}

#[tokio::test]
async fn channels_decide_whom_they_serve_and_give_it_back_when_deleted() {
    let Some(cluster) = Cluster::new("op-channel") else {
        return;
    };
    let web = Web::start();
    let data = tempfile::tempdir().unwrap();
    let server = cluster.start_operator(data.path(), &cluster.kube.kubeconfig, "replica-a", &[]);
    let client = Client::new(&server, API_KEY);
    apply_and_wait(&cluster, &web, &server).await;
    assert_eq!(device_gets(&client, "").await["version"], "1.0.1");

    // Production stops serving Android; two testers (written as people paste them) are
    // forced onto beta.
    cluster.apply(&Cluster::channel(
        "shop-production",
        json!({"channel": "production", "allowAndroid": false}),
    ));
    cluster.apply(&Cluster::channel(
        "shop-beta",
        json!({"channel": "beta", "devices": ["QA-Phone-1", "qa-phone-2"]}),
    ));
    let applied = Instant::now();
    cluster.wait_ready(&["channel/shop-production", "channel/shop-beta"], &server);
    println!(
        "measured: two Channels Ready {:?} after kubectl apply",
        applied.elapsed()
    );
    let beta = cluster.get("channel/shop-beta");
    assert_eq!(beta["status"]["devices"], 2, "{beta}");
    assert_eq!(beta["status"]["observedGeneration"], 1, "{beta}");
    assert_eq!(
        (
            beta["spec"]["allowIos"].clone(),
            beta["spec"]["updatePolicy"].clone()
        ),
        (json!(true), json!("none")),
        "the API server fills in the defaults: {beta}"
    );

    // A restart reconciles both again and writes nothing.
    let before = cluster.resource_versions();
    assert!(server.stop().success());
    let server = cluster.start_operator(data.path(), &cluster.kube.kubeconfig, "replica-a", &[]);
    let client = Client::new(&server, API_KEY);
    eventually(
        Duration::from_secs(60),
        "the Channels reconciled after the restart",
        || async { (reconciles(&client, "Channel").await >= 2.0).then_some(()) },
    )
    .await;
    assert_eq!(
        cluster.resource_versions(),
        before,
        "a resync of unchanged Channels changes nothing\n{}",
        server.log_text()
    );

    let refused = device_gets(&client, "").await;
    assert_eq!(refused["error"], "disabled_platform_android", "{refused}");
    assert_eq!(refused["kind"], "blocked", "{refused}");
    assert_eq!(
        channel_of(&client, "qa-phone-1").await,
        json!({"channel": "beta", "status": "override", "allowSet": true})
    );
    assert_eq!(
        device_with_id_gets(&client, "qa-phone-1").await["version"],
        "1.0.2",
        "served beta, which serves Android"
    );

    // What a Channel manages is changed through it, not through the REST API.
    let managed_by = |answer: &Value, name: &str| {
        let message = answer["error"].as_str().unwrap_or_default().to_string();
        assert!(
            message.contains(&format!("Channel {}/{name}", cluster.namespace)),
            "names the resource: {answer}"
        );
    };
    let (status, answer) = client
        .manage(
            "channels.update",
            json!({"app_id": APP_ID, "channel": "production", "allow_android": true}),
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    managed_by(&answer, "shop-production");
    let (status, answer) = client
        .manage(
            "devices.set-channel",
            json!({"app_id": APP_ID, "device_ids": ["qa-phone-1"], "channel": "production"}),
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    managed_by(&answer, "shop-beta");

    // Deleted: settings back to the defaults, the testers back on production.
    cluster.kubectl(&["delete", "channels", "--all", "--timeout=60s"]);
    assert_eq!(
        cluster.get("channels")["items"],
        json!([]),
        "finalizers removed"
    );
    assert_eq!(device_gets(&client, "").await["version"], "1.0.1");
    assert_eq!(channel_of(&client, "qa-phone-1").await["status"], "default");
    assert_eq!(
        device_with_id_gets(&client, "qa-phone-1").await["version"],
        "1.0.1"
    );
}

/// A ServiceAccount token (TokenRequest) for `account` in the cluster's namespace.
fn token_for(cluster: &Cluster, account: &str) -> String {
    cluster
        .kubectl(&["create", "token", account, "--duration=1h"])
        .trim()
        .to_string()
}

fn helm() -> Option<String> {
    common::service_var("CAPGO_TEST_HELM", "helm")
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The ServiceAccount and the RBAC objects `helm template` renders for an operator watching
/// `namespace` (its own).
fn chart_rbac(helm: &str, namespace: &str) -> Vec<Value> {
    let output = std::process::Command::new(helm)
        .args(["template", "capgo"])
        .arg(repo("charts/capgo-server"))
        .args(["--namespace", namespace])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    yaml_documents(&String::from_utf8(output.stdout).unwrap())
        .into_iter()
        .filter(|doc| {
            [
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "ClusterRole",
                "ClusterRoleBinding",
            ]
            .contains(&doc["kind"].as_str().unwrap_or_default())
        })
        .collect()
}

#[tokio::test]
async fn the_charts_namespaced_rbac_is_enough_and_a_missing_rule_is_reported() {
    let Some(cluster) = Cluster::new("op-rbac") else {
        return;
    };
    let Some(helm) = helm() else { return };
    let rbac = chart_rbac(&helm, &cluster.namespace);
    assert!(
        rbac.iter()
            .all(|doc| doc["kind"] != "ClusterRole" && doc["kind"] != "ClusterRoleBinding"),
        "watching its namespace needs no cluster-wide permission: {rbac:?}"
    );
    let operator_role = rbac
        .iter()
        .find(|doc| {
            doc["kind"] == "Role" && doc["metadata"]["name"] == "capgo-capgo-server-operator"
        })
        .unwrap()
        .clone();
    // First a Role from before Channels (as on a cluster whose CRDs or Role were not
    // upgraded): Bundles and Releases work, and the log says Channels wait.
    let mut before_channels = operator_role.clone();
    for rule in before_channels["rules"].as_array_mut().unwrap() {
        rule["resources"]
            .as_array_mut()
            .unwrap()
            .retain(|resource| !resource.as_str().unwrap().starts_with("channels"));
    }
    assert_ne!(before_channels, operator_role, "the chart grants Channels");
    for doc in &rbac {
        cluster.apply(if doc == &operator_role {
            &before_channels
        } else {
            doc
        });
    }
    let token = token_for(&cluster, "capgo-capgo-server");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = cluster.kubeconfig_for(dir.path(), &cluster.kube.server, &token);

    let web = Web::start();
    let data = tempfile::tempdir().unwrap();
    let server = cluster.start_operator(data.path(), &kubeconfig, "replica-a", &[]);
    let client = Client::new(&server, API_KEY);
    apply_and_wait(&cluster, &web, &server).await;
    assert_eq!(device_gets(&client, "").await["version"], "1.0.1");
    assert!(
        server
            .log_text()
            .contains("Channel resources are not reconciled"),
        "{}",
        server.log_text()
    );
    cluster.apply(&Cluster::channel(
        "shop-beta",
        json!({"channel": "beta", "devices": ["qa-phone-1"]}),
    ));
    // The chart's Role: the Channel controller starts without a restart.
    let granted = Instant::now();
    cluster.apply(&operator_role);
    cluster.wait_ready(&["channel/shop-beta"], &server);
    println!(
        "measured: a Channel Ready {:?} after its Role rules were granted",
        granted.elapsed()
    );

    // Take away the rule that lets it add its finalizer; a new Bundle then cannot proceed,
    // and the Bundle and the log say what was denied.
    let mut crippled = operator_role.clone();
    let rules = crippled["rules"].as_array_mut().unwrap();
    let before = rules.len();
    rules.retain(|rule| {
        rule["verbs"] != json!(["patch", "update"])
            || rule["resources"] != json!(["bundles", "releases", "channels"])
    });
    assert_eq!(
        rules.len(),
        before - 1,
        "the finalizer rule: {operator_role}"
    );
    cluster.apply(&crippled);
    let mut extra = web.bundle("1.0.2");
    extra["metadata"]["name"] = json!("web-extra");
    extra["spec"]["versionName"] = json!("1.0.3");
    extra["spec"]["sha256"] = Value::Null;
    cluster.apply(&extra);
    let denied = eventually(
        Duration::from_secs(60),
        "a PermissionDenied condition",
        || async {
            let stalled = cluster.condition("bundle/web-extra", "Stalled");
            (stalled["reason"] == "PermissionDenied").then_some(stalled)
        },
    )
    .await;
    let message = denied["message"].as_str().unwrap();
    assert!(
        message.contains("patch") && message.contains("bundles"),
        "names the verb and the resource: {message}"
    );
    assert!(
        server
            .log_text()
            .contains("the operator was denied a request"),
        "{}",
        server.log_text()
    );
    let mut server = server;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "still running: no crash loop"
    );

    // Give the rule back: the Bundle proceeds without a restart.
    cluster.apply(&operator_role);
    cluster.wait_ready(&["bundle/web-extra"], &server);
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_the_other_takes_over() {
    let Some(cluster) = Cluster::new("op-lease") else {
        return;
    };
    let Some(services) = common::Services::get() else {
        return;
    };
    let (bucket, storage) = services.env_with_fresh_bucket().await;
    let web = Web::start();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let kubeconfig = cluster.kube.kubeconfig.clone();
    let mut replicas = BTreeMap::new();
    replicas.insert(
        "replica-a",
        cluster.start_operator(data_a.path(), &kubeconfig, "replica-a", &storage),
    );
    replicas.insert(
        "replica-b",
        cluster.start_operator(data_b.path(), &kubeconfig, "replica-b", &storage),
    );
    let holder = || {
        let lease = cluster.get("lease/capgo-server-controller");
        lease["spec"]["holderIdentity"].as_str().map(str::to_string)
    };
    let leader = eventually(Duration::from_secs(60), "a lease holder", || async {
        holder()
    })
    .await;
    let follower = if leader == "replica-a" {
        "replica-b"
    } else {
        "replica-a"
    };

    cluster.apply(&web.bundle("1.0.0"));
    cluster.wait_ready(&["bundle/web-1-0-0"], &replicas[leader.as_str()]);
    let leader_client = Client::new(&replicas[leader.as_str()], API_KEY);
    let follower_client = Client::new(&replicas[follower], API_KEY);
    assert!(reconciles(&leader_client, "Bundle").await >= 1.0);
    assert_eq!(
        reconciles(&follower_client, "Bundle").await,
        0.0,
        "only the lease holder reconciles"
    );

    // SIGKILL the leader: no chance to release the lease.
    let killed = Instant::now();
    let mut dead = replicas.remove(leader.as_str()).unwrap();
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    cluster.apply(&web.bundle("1.0.1"));
    eventually(
        Duration::from_secs(90),
        "the follower holding the lease",
        || async { (holder().as_deref() == Some(follower)).then_some(()) },
    )
    .await;
    let took_over = killed.elapsed();
    cluster.wait_ready(&["bundle/web-1-0-1"], &replicas[follower]);
    println!(
        "measured: the follower took the lease {took_over:?} after the leader was killed (lease {} s, renewed {} s before expiry)",
        capgo_server::operator::LEASE_DURATION_SECONDS,
        capgo_server::operator::LEASE_GRACE_SECONDS
    );

    // One record and one stored object per Bundle, though two replicas share the storage.
    let bundles = follower_client.list("bundles.list").await;
    let mut versions: Vec<&str> = bundles["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["version_name"].as_str().unwrap())
        .collect();
    versions.sort();
    assert_eq!(versions, ["1.0.0", "1.0.1"], "{bundles}");
    let objects = services
        .s3_client()
        .await
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let zips = objects
        .contents()
        .iter()
        .filter(|o| o.key().unwrap_or_default().ends_with(".zip"))
        .count();
    assert_eq!(zips, 2, "{objects:?}");
}

#[tokio::test]
async fn the_operator_waits_for_an_api_server_that_is_not_there_yet() {
    let Some(cluster) = Cluster::new("op-cold") else {
        return;
    };
    let proxy =
        common::FaultyProxy::start(&common::FaultyProxy::target_of(&cluster.kube.server)).await;
    proxy.cut();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = cluster.kubeconfig_for(
        dir.path(),
        &format!("https://{}", proxy.address),
        &cluster.kube.admin_token,
    );
    let web = Web::start();
    let data = tempfile::tempdir().unwrap();
    let server = cluster.start_operator(data.path(), &kubeconfig, "replica-a", &[]);
    eventually(
        Duration::from_secs(30),
        "the operator saying it waits",
        || async {
            server
                .log_text()
                .contains("cannot reach the Kubernetes API server")
                .then_some(())
        },
    )
    .await;
    cluster.apply(&web.bundle("1.0.0"));
    proxy.restore();
    cluster.wait_ready(&["bundle/web-1-0-0"], &server);
    assert!(
        server.log_text().contains("the operator starts"),
        "{}",
        server.log_text()
    );
}

#[test]
fn the_chart_installs_upgrades_and_uninstalls_keeping_the_volume() {
    let Some(kube) = kube_control_plane() else {
        return;
    };
    let Some(helm) = helm() else { return };
    kube.install_crds();
    // The monitoring values render a ServiceMonitor: a cluster that asks for one has the
    // Prometheus operator's CRD (a minimal stand-in here).
    kube.kubectl_with_input(
        &["apply", "--server-side", "-f", "-"],
        &json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
            "spec": {
                "group": "monitoring.coreos.com",
                "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor"},
                "scope": "Namespaced",
                "versions": [{"name": "v1", "served": true, "storage": true,
                              "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}],
            },
        })
        .to_string(),
    )
    .ok();
    kube.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/servicemonitors.monitoring.coreos.com",
    ])
    .ok();
    let helm_run = |args: &[&str]| {
        let output = std::process::Command::new(&helm)
            .args(args)
            .args(["--kubeconfig", &kube.kubeconfig])
            .current_dir(repo(""))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "helm {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let values_dir = repo("charts/capgo-server/ci");
    let mut values: Vec<PathBuf> = std::fs::read_dir(&values_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    values.sort();
    assert!(values.len() >= 3, "{values:?}");
    for file in values {
        let namespace = kube.fresh_namespace("helm");
        // Values that watch other namespaces need them to exist, as on a real cluster.
        let text = std::fs::read_to_string(&file).unwrap();
        let parsed: Value = serde_yaml::from_str(&text).unwrap_or(Value::Null);
        for watched in parsed["controller"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
        {
            kube.kubectl_with_input(
                &["apply", "--server-side", "-f", "-"],
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": watched}})
                    .to_string(),
            )
            .ok();
        }
        let release = namespace.clone();
        let file = file.display().to_string();
        helm_run(&[
            "install",
            &release,
            "charts/capgo-server",
            "-n",
            &namespace,
            "-f",
            &file,
        ]);
        let manifest = helm_run(&["get", "manifest", &release, "-n", &namespace]);
        let objects = yaml_documents(&manifest);
        assert!(objects.len() > 5, "{file}: {objects:?}");
        for object in &objects {
            let kind = object["kind"].as_str().unwrap();
            let name = object["metadata"]["name"].as_str().unwrap();
            let object_namespace = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or(&namespace);
            let found = kube.kubectl(&[
                "get",
                "-n",
                object_namespace,
                &format!("{kind}/{name}"),
                "-o",
                "name",
            ]);
            assert!(
                found.success,
                "{file}: {kind}/{name} was not created: {}",
                found.stderr
            );
        }

        // An upgrade with a changed value lands in the server's settings.
        helm_run(&[
            "upgrade",
            &release,
            "charts/capgo-server",
            "-n",
            &namespace,
            "-f",
            &file,
            "--set",
            "config.cacheResultDuration=7m",
        ]);
        let config_maps: Value = serde_json::from_str(
            &kube
                .kubectl(&["get", "configmaps", "-n", &namespace, "-o", "json"])
                .ok(),
        )
        .unwrap();
        let settings: Vec<&str> = config_maps["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|map| map["data"].as_object())
            .flat_map(|data| data.values().filter_map(Value::as_str))
            .collect();
        assert!(
            settings
                .iter()
                .any(|text| text.contains("cache_result_duration: \"7m\"")),
            "{file}: {settings:?}"
        );

        let volumes_before = kube
            .kubectl(&["get", "pvc", "-n", &namespace, "-o", "name"])
            .ok();
        helm_run(&["uninstall", &release, "-n", &namespace]);
        let left = kube
            .kubectl(&[
                "get",
                "deployments,services,configmaps,pvc",
                "-n",
                &namespace,
                "-o",
                "name",
            ])
            .ok();
        let kept: Vec<&str> = left
            .lines()
            .filter(|l| !l.contains("kube-root-ca"))
            .collect();
        let volumes: Vec<&str> = volumes_before.lines().collect();
        assert_eq!(kept, volumes, "{file}: only the volume claim stays");
    }
}

/// The settings of servers whose simulated fleet checks in from one address: no per-IP limits.
fn unlimited() -> Vec<(String, String)> {
    [
        ("LIMIT_REQUEST_PER_MINUTE", "0"),
        ("STATS_EVENTS_PER_MINUTE", "0"),
        ("MAX_CONNECTIONS_PER_IP", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The Release of [`release`] serving `production` on production, whose production changes
/// roll out with `plan`.
fn release_with_rollout(production: &str, plan: Value) -> Value {
    let mut release = release(&[("production", production)]);
    release["spec"]["rollouts"] = json!({ "production": plan });
    release
}

/// The operator on its own namespace with the `shop` Release serving 1.0.1 on production,
/// whose production changes roll out with `plan`, and its Bundles, all Ready.
struct RolloutSetup {
    cluster: Cluster,
    server: ServerProcess,
    client: Client,
    /// Kept alive: the Bundles' source and the server's data.
    _web: Web,
    _data: tempfile::TempDir,
}

impl RolloutSetup {
    fn start(namespace: &str, plan: Value) -> Option<RolloutSetup> {
        let cluster = Cluster::new(namespace)?;
        let web = Web::start();
        let data = tempfile::tempdir().unwrap();
        let server = cluster.start_operator(
            data.path(),
            &cluster.kube.kubeconfig,
            "replica-a",
            &unlimited(),
        );
        let client = Client::new(&server, API_KEY);
        cluster.apply(&release_with_rollout("1.0.1", plan));
        for version in VERSIONS {
            cluster.apply(&web.bundle(version));
        }
        cluster.wait_ready(&["bundle/web-1-0-1", "bundle/web-1-0-2"], &server);
        cluster.wait_ready(&["release/shop"], &server);
        Some(RolloutSetup {
            cluster,
            server,
            client,
            _web: web,
            _data: data,
        })
    }
}

/// A few hundred devices: enough to see a 50% step within ±15% (five standard deviations).
const FLEET: usize = 400;

fn fleet() -> Vec<String> {
    (0..FLEET)
        .map(|n| format!("00000000-0000-4000-8000-{n:012x}"))
        .collect()
}

/// `status.rollouts.production` of the Release, once `done` holds for it.
async fn rollout_status(
    cluster: &Cluster,
    server: &ServerProcess,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let status = cluster.get("release/shop")["status"].clone();
        if done(&status["rollouts"]["production"]) {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {status}\nserver log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The production rollout as the REST API shows it (the driver's own view, without the
/// operator's delay).
async fn rest_rollout(client: &Client, release_id: &str) -> Value {
    let list = client
        .list(&format!("rollouts.list?release_id={release_id}"))
        .await;
    list["data"][0].clone()
}

/// A hand move on the production rollout, through the REST API.
async fn act(client: &Client, route: &str, release_id: &str) {
    let (status, answer) = client
        .manage(route, json!({"release_id": release_id}))
        .await;
    assert_eq!(status, 200, "{route}: {answer}");
}

/// The rollout Events of the Release `shop`: (type, reason, note, repeated).
fn rollout_events(cluster: &Cluster) -> Vec<(String, String, String, bool)> {
    let events = cluster.get("events.events.k8s.io");
    let mut found: Vec<(String, String, String, bool)> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["regarding"]["kind"] == "Release"
                && e["regarding"]["name"] == "shop"
                && e["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("Rollout")
        })
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
                e["note"].as_str().unwrap_or_default().to_string(),
                !e["series"].is_null(),
            )
        })
        .collect();
    found.sort();
    found
}

/// The reasons of `events`, sorted.
fn reasons(events: &[(String, String, String, bool)]) -> Vec<&str> {
    let mut reasons: Vec<&str> = events.iter().map(|(_, r, _, _)| r.as_str()).collect();
    reasons.sort();
    reasons
}

/// Argo CD's verdict on the Release: deploy/argocd/health.lua run in Argo CD's Lua VM on the
/// object as the API server returns it.
struct ArgoHealth {
    runner: String,
}

impl ArgoHealth {
    fn get() -> Option<ArgoHealth> {
        let runner =
            common::service_var("CAPGO_TEST_ARGOCD_HEALTH", "Argo CD health-check runner")?;
        Some(ArgoHealth { runner })
    }

    /// (status, message) of `what`.
    fn of(&self, cluster: &Cluster, what: &str) -> (String, String) {
        let object = cluster.kubectl(&["get", what, "-o", "json"]);
        let mut child = std::process::Command::new(&self.runner)
            .arg(repo("deploy/argocd/health.lua"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), object.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        let verdict: Value = serde_json::from_slice(&output.stdout).unwrap();
        (
            verdict["status"].as_str().unwrap().to_string(),
            verdict["message"].as_str().unwrap_or_default().to_string(),
        )
    }
}

/// The condition `type_` of a Release `status`.
fn condition_in(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

/// Git changes production's bundle of a Release with a rollout plan: the operator's status
/// follows the rollout the catalog starts (Progressing, Suspended while paused through the API,
/// then Ready serving the canary), devices in the canary's share get it over real HTTP, and an
/// Event marks every transition, once.
#[tokio::test]
async fn a_release_rolls_a_changed_bundle_out_in_steps() {
    let argo = ArgoHealth::get();
    // Step 2's interval leaves time to pause it through the API once step 1 advanced.
    let plan =
        json!({"steps": [50, 100], "interval": "2s", "minDevices": 5, "maxFailureRate": 0.5});
    // Every field bound: the source and the data folder live as long as the test.
    let Some(RolloutSetup {
        cluster,
        server,
        client,
        _web,
        _data,
    }) = RolloutSetup::start("op-rollout", plan)
    else {
        return;
    };
    let status = cluster.get("release/shop")["status"].clone();
    assert!(
        status.get("rollouts").is_none(),
        "a new record takes its channels at once: {status}"
    );
    let release_id = status["releaseId"].as_str().unwrap().to_string();
    let ids = fleet();
    assert_eq!(
        offered(&client.offers(&ids, "1.0.0").await, "1.0.1").len(),
        FLEET
    );

    let patched = Instant::now();
    cluster.kubectl(&[
        "patch",
        "release/shop",
        "--type=merge",
        "-p",
        r#"{"spec":{"channels":{"production":"web-1-0-2"}}}"#,
    ]);
    let status = rollout_status(&cluster, &server, "the rollout in status", |r| {
        r["phase"] == "Progressing"
    })
    .await;
    println!(
        "measured: kubectl patch to a Progressing rollout in status in {:?}",
        patched.elapsed()
    );
    let rollout = &status["rollouts"]["production"];
    assert_eq!(
        (
            &rollout["step"],
            &rollout["steps"],
            &rollout["percent"],
            &rollout["stable"],
            &rollout["canary"]
        ),
        (
            &json!(1),
            &json!([50, 100]),
            &json!(50),
            &json!("1.0.1"),
            &json!("1.0.2")
        ),
        "{status}"
    );
    assert!(rollout["nextStepAt"].is_string(), "{rollout}");
    assert_eq!(
        status["channels"]["production"], "1.0.1",
        "stable, until it completes"
    );
    assert_eq!(status["serving"], "production=1.0.1 (50% on 1.0.2)");
    assert_eq!(status["observedGeneration"], 2);
    let ready = condition_in(&status, "Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("RolloutProgressing"))
    );
    assert_eq!(condition_in(&status, "Reconciling")["status"], "True");
    assert_eq!(condition_in(&status, "Stalled")["status"], "False");
    if let Some(argo) = &argo {
        let (health, message) = argo.of(&cluster, "release/shop");
        assert_eq!(health, "Progressing", "{message}");
        assert!(message.contains("50% of devices on 1.0.2"), "{message}");
    }

    // About half of the devices get the canary; the others stay where they are.
    let step_one = client.offers(&ids, "1.0.1").await;
    let canary = offered(&step_one, "1.0.2");
    let share = canary.len() as f64 / FLEET as f64;
    assert!(
        (0.35..=0.65).contains(&share),
        "{share} of devices in a 50% step"
    );
    assert!(
        step_one.values().all(|v| v.is_empty() || v == "1.0.2"),
        "{step_one:?}"
    );

    // They install it: the step advances; paused at once through the API, it holds there.
    client.report_all(&canary, "set", "1.0.2").await;
    let started = Instant::now();
    while rest_rollout(&client, &release_id).await["step"] != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "step 1 never advanced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    act(&client, "rollouts.pause", &release_id).await;
    let status = rollout_status(&cluster, &server, "the paused rollout", |r| {
        r["phase"] == "Paused"
    })
    .await;
    let rollout = &status["rollouts"]["production"];
    assert_eq!(
        (&rollout["step"], &rollout["percent"]),
        (&json!(2), &json!(100)),
        "{status}"
    );
    assert!(rollout.get("nextStepAt").is_none(), "{rollout}");
    let reconciling = condition_in(&status, "Reconciling");
    assert_eq!(
        (&reconciling["status"], &reconciling["reason"]),
        (&json!("True"), &json!("RolloutPaused"))
    );
    if let Some(argo) = &argo {
        let (health, message) = argo.of(&cluster, "release/shop");
        assert_eq!(health, "Suspended", "{message}");
    }
    let everyone = client.offers(&ids, "1.0.1").await;
    assert_eq!(
        offered(&everyone, "1.0.2").len(),
        FLEET,
        "the 100% step reaches every device"
    );

    // Resumed, it completes: the channel serves the canary and the Release is Ready.
    act(&client, "rollouts.resume", &release_id).await;
    let status = rollout_status(&cluster, &server, "the completed rollout", |r| {
        r["phase"] == "Done"
    })
    .await;
    cluster.wait_ready(&["release/shop"], &server);
    assert_eq!(status["channels"]["production"], "1.0.2", "{status}");
    assert_eq!(status["serving"], "production=1.0.2");
    assert!(
        status["rollouts"]["production"]["finishedAt"].is_string(),
        "{status}"
    );
    if let Some(argo) = &argo {
        assert_eq!(argo.of(&cluster, "release/shop").0, "Healthy");
    }
    assert_eq!(
        offered(&client.offers(&ids, "1.0.1").await, "1.0.2").len(),
        FLEET
    );

    // One Normal Event per transition, none repeated.
    let events = eventually(
        Duration::from_secs(10),
        "the completion's Event",
        || async {
            let events = rollout_events(&cluster);
            events
                .iter()
                .any(|(_, reason, _, _)| reason == "RolloutCompleted")
                .then_some(events)
        },
    )
    .await;
    assert_eq!(
        reasons(&events),
        [
            "RolloutCompleted",
            "RolloutPaused",
            "RolloutResumed",
            "RolloutStarted",
            "RolloutStepAdvanced"
        ],
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .all(|(type_, _, _, repeated)| type_ == "Normal" && !repeated),
        "{events:?}"
    );
    let started_note = &events.iter().find(|e| e.1 == "RolloutStarted").unwrap().2;
    assert!(
        started_note.contains("production: rolling out 1.0.2 (from 1.0.1) in steps of 50%, 100%"),
        "{started_note}"
    );

    // Nothing under way: the Release is no longer polled, and nothing more is written.
    let before = cluster.resource_versions();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(cluster.resource_versions(), before, "{}", server.log_text());
}

/// Canary devices report failures: the rollout rolls back by itself, every device gets the
/// stable bundle again, and the Release is Degraded for Argo CD (Stalled, reason RolledBack)
/// with a Warning Event, not retried, not announced again after a restart, until Git names
/// another bundle for the channel.
#[tokio::test]
async fn failing_canary_devices_roll_a_release_back_and_degrade_it() {
    let argo = ArgoHealth::get();
    let plan =
        json!({"steps": [50, 100], "interval": "1s", "minDevices": 5, "maxFailureRate": 0.2});
    let Some(RolloutSetup {
        cluster,
        server,
        client,
        _web,
        _data: data,
    }) = RolloutSetup::start("op-rollback", plan)
    else {
        return;
    };
    cluster.kubectl(&[
        "patch",
        "release/shop",
        "--type=merge",
        "-p",
        r#"{"spec":{"channels":{"production":"web-1-0-2"}}}"#,
    ]);
    let status = rollout_status(&cluster, &server, "the rollout in status", |r| {
        r["phase"] == "Progressing"
    })
    .await;
    let rollout_id = status["rollouts"]["production"]["id"].clone();
    let ids = fleet();
    let canary = offered(&client.offers(&ids, "1.0.1").await, "1.0.2");
    assert!(canary.len() > FLEET / 4, "{} of {FLEET}", canary.len());

    // Every canary device fails to apply it.
    let reported = Instant::now();
    client.report_all(&canary, "update_fail", "1.0.2").await;
    let status = rollout_status(&cluster, &server, "the roll-back in status", |r| {
        r["phase"] == "RolledBack"
    })
    .await;
    println!(
        "measured: failures reported to a RolledBack status in {:?}",
        reported.elapsed()
    );
    let rollout = &status["rollouts"]["production"];
    let reason = rollout["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("devices failed on the canary"), "{rollout}");
    assert!(rollout["failed"].as_u64().unwrap() >= 5, "{rollout}");
    assert_eq!(rollout["failureRate"], 1.0, "{rollout}");
    assert_eq!(status["channels"]["production"], "1.0.1", "{status}");
    assert_eq!(status["serving"], "production=1.0.1");
    let stalled = condition_in(&status, "Stalled");
    assert_eq!(
        (&stalled["status"], &stalled["reason"]),
        (&json!("True"), &json!("RolledBack"))
    );
    let message = stalled["message"].as_str().unwrap();
    assert!(
        message.contains("production: rolled back from 1.0.2 to 1.0.1")
            && message.contains(&reason),
        "{message}"
    );
    assert_eq!(condition_in(&status, "Ready")["status"], "False");
    assert_eq!(condition_in(&status, "Reconciling")["status"], "False");
    if let Some(argo) = &argo {
        assert_eq!(
            argo.of(&cluster, "release/shop"),
            ("Degraded".to_string(), message.to_string())
        );
    }

    // Every device gets stable again: those that took the canary are sent back.
    let sent_back = client.offers(&canary, "1.0.2").await;
    assert!(sent_back.values().all(|v| v == "1.0.1"), "{sent_back:?}");
    let on_stable = client.offers(&ids, "1.0.1").await;
    assert!(on_stable.values().all(String::is_empty), "{on_stable:?}");

    // One Warning Event with the reason, and no second Stalled Event beside it.
    let events = eventually(Duration::from_secs(10), "the roll-back's Event", || async {
        let events = rollout_events(&cluster);
        events
            .iter()
            .any(|(_, reason, _, _)| reason == "RolloutRolledBack")
            .then_some(events)
    })
    .await;
    assert_eq!(
        reasons(&events),
        ["RolloutRolledBack", "RolloutStarted"],
        "{events:?}"
    );
    let (type_, _, note, _) = events.iter().find(|e| e.1 == "RolloutRolledBack").unwrap();
    assert_eq!(type_, "Warning");
    assert!(
        note.contains(&reason) && note.contains("back on 1.0.1"),
        "{note}"
    );
    let all_events = cluster.get("events.events.k8s.io");
    assert!(
        !all_events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "RolledBack"),
        "{all_events}"
    );

    // The spec still names 1.0.2: no new rollout toward it, and a restart announces nothing
    // again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = cluster.get("release/shop")["status"].clone();
    assert_eq!(again["rollouts"]["production"]["id"], rollout_id, "{again}");
    assert_eq!(again["rollouts"]["production"]["phase"], "RolledBack");
    let before = cluster.resource_versions();
    assert!(server.stop().success());
    let server = cluster.start_operator(
        data.path(),
        &cluster.kube.kubeconfig,
        "replica-a",
        &unlimited(),
    );
    let client = Client::new(&server, API_KEY);
    eventually(
        Duration::from_secs(60),
        "a resync after the restart",
        || async { (reconciles(&client, "Release").await >= 1.0).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.resource_versions(), before, "{}", server.log_text());
    assert_eq!(rollout_events(&cluster), events, "nothing announced again");

    // Git names another bundle (stable again): Ready and Healthy.
    cluster.kubectl(&[
        "patch",
        "release/shop",
        "--type=merge",
        "-p",
        r#"{"spec":{"channels":{"production":"web-1-0-1"}}}"#,
    ]);
    let ready = eventually(Duration::from_secs(60), "Ready on stable", || async {
        let status = cluster.get("release/shop")["status"].clone();
        (status["observedGeneration"] == 3 && condition_in(&status, "Ready")["status"] == "True")
            .then_some(status)
    })
    .await;
    assert_eq!(
        condition_in(&ready, "Stalled")["status"],
        "False",
        "{ready}"
    );
    assert_eq!(
        ready["rollouts"]["production"]["phase"], "RolledBack",
        "kept as history"
    );
    if let Some(argo) = &argo {
        assert_eq!(argo.of(&cluster, "release/shop").0, "Healthy");
    }
}
