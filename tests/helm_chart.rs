//! The Helm chart: lint and render over the values files in charts/capgo-server/ci/, check what
//! renders, validate it against the Kubernetes schemas offline (kubernetes-validate), check the
//! values schema refuses wrong types, and run the Argo CD health check's test in Lua.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

use capgo_server::config::Config;

struct Tools {
    helm: String,
    validate: String,
    lua: String,
}

/// The tools `scripts/services start` installs; `None` (with a note) when absent, a failure
/// when the test command requires them.
fn tools() -> Option<Tools> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let found = (|| {
        Some(Tools {
            helm: var("CAPGO_TEST_HELM")?,
            validate: var("CAPGO_TEST_KUBERNETES_VALIDATE")?,
            lua: var("CAPGO_TEST_LUA")?,
        })
    })();
    if found.is_none() {
        assert!(
            var("CAPGO_REQUIRE_SERVICES").is_none(),
            "helm, kubernetes-validate and lua are required: run `scripts/services start`"
        );
        eprintln!("skipped: no chart tools (run `scripts/services start` and source target/test-services/env)");
    }
    found
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

const CHART: &str = "charts/capgo-server";

fn helm(tools: &Tools, args: &[&str]) -> std::process::Output {
    Command::new(&tools.helm)
        .args(args)
        .current_dir(repo(""))
        .output()
        .unwrap()
}

/// Renders the chart with a values file into documents.
fn render(tools: &Tools, values: &str) -> Vec<Value> {
    let output = helm(
        tools,
        &[
            "template",
            "capgo",
            CHART,
            "--namespace",
            "apps",
            "-f",
            values,
        ],
    );
    assert!(
        output.status.success(),
        "{values}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn kinds(docs: &[Value], kind: &str) -> usize {
    docs.iter().filter(|d| d["kind"] == kind).count()
}

fn container(docs: &[Value]) -> &Value {
    &find(docs, "Deployment", "capgo-capgo-server")["spec"]["template"]["spec"]["containers"][0]
}

fn env_from_secret<'a>(docs: &'a [Value], name: &str) -> Option<(&'a str, &'a str)> {
    let env = container(docs)["env"].as_array()?;
    let entry = env.iter().find(|e| e["name"] == name)?;
    let reference = &entry["valueFrom"]["secretKeyRef"];
    Some((reference["name"].as_str()?, reference["key"].as_str()?))
}

/// The rendered config.yml, loaded by the server's own configuration parser.
fn rendered_config(docs: &[Value]) -> Config {
    let text = find(docs, "ConfigMap", "capgo-capgo-server")["data"]["config.yml"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), |_| None).expect("the chart's config.yml loads in capgo-server")
}

fn validate_offline(tools: &Tools, docs: &[Value]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rendered.yaml");
    let text: Vec<String> = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect();
    std::fs::write(&path, text.join("---\n")).unwrap();
    let output = Command::new(&tools.validate)
        .args(["-k", "1.33.0", "--strict", "--quiet"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_ci_values_file_lints_renders_and_validates() {
    let Some(tools) = tools() else { return };
    let mut files: Vec<_> = std::fs::read_dir(repo("charts/capgo-server/ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3);
    for file in files {
        let file = file.to_str().unwrap();
        let lint = helm(&tools, &["lint", CHART, "-f", file]);
        assert!(
            lint.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&lint.stdout)
        );
        let docs = render(&tools, file);
        validate_offline(&tools, &docs);

        let pod = &find(&docs, "Deployment", "capgo-capgo-server")["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{file}");
        let security = &container(&docs)["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true, "{file}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{file}");
        let ports: Vec<&str> = container(&docs)["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(ports, ["public", "management"], "{file}");
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(
                container(&docs)[probe]["httpGet"]["path"],
                "/_healthz",
                "{file} {probe}"
            );
        }
        let mounts = container(&docs)["volumeMounts"].as_array().unwrap();
        let writable: Vec<&str> = mounts
            .iter()
            .filter(|m| m["readOnly"] != true)
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        assert_eq!(
            writable,
            ["/data"],
            "{file}: only the data folder is writable"
        );
        assert_eq!(
            kinds(&docs, "Service"),
            2,
            "{file}: public and management separately"
        );
        assert_eq!(
            kinds(&docs, "ClusterRole"),
            0,
            "{file}: nothing cluster-wide by default"
        );
        for role in docs.iter().filter(|d| d["kind"] == "Role") {
            for rule in role["rules"].as_array().unwrap() {
                let text = rule.to_string();
                assert!(!text.contains("\"*\""), "{file}: no wildcards in {text}");
            }
        }
        let config = rendered_config(&docs);
        assert!(config.controller_enabled);
        assert_eq!(config.controller_lease_namespace, "apps");
    }
}

#[test]
fn defaults_are_one_replica_on_a_persistent_volume() {
    let Some(tools) = tools() else { return };
    let docs = render(&tools, "charts/capgo-server/ci/default-values.yaml");
    let deployment = find(&docs, "Deployment", "capgo-capgo-server");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(
        deployment["spec"]["strategy"]["type"], "Recreate",
        "one volume, one process"
    );
    assert_eq!(kinds(&docs, "PersistentVolumeClaim"), 1);
    assert_eq!(kinds(&docs, "PodDisruptionBudget"), 0);
    assert_eq!(kinds(&docs, "Secret"), 0);
    assert!(
        env_from_secret(&docs, "MANAGEMENT_API_TOKENS").is_none(),
        "generated by the server"
    );
    let config = rendered_config(&docs);
    assert!(config.uses_embedded_storage());
    assert_eq!(
        config.controller_namespaces,
        ["apps"],
        "watches its own namespace by default"
    );
    let leader = find(&docs, "Role", "capgo-capgo-server-leader");
    assert_eq!(leader["rules"][0]["resources"][0], "leases");
    let operator = find(&docs, "Role", "capgo-capgo-server-operator");
    let resources: Vec<String> = operator["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
        })
        .collect();
    for needed in [
        "bundles",
        "releases",
        "channels",
        "bundles/status",
        "releases/status",
        "channels/status",
        "events",
    ] {
        assert!(
            resources.iter().any(|r| r == needed),
            "{needed} in {resources:?}"
        );
    }
}

#[test]
fn external_storage_reads_credentials_from_existing_secrets() {
    let Some(tools) = tools() else { return };
    let docs = render(
        &tools,
        "charts/capgo-server/ci/external-existing-secrets-values.yaml",
    );
    assert_eq!(
        env_from_secret(&docs, "MONGO_CONNECTION_STRING"),
        Some(("capgo-mongo", "uri"))
    );
    assert_eq!(
        env_from_secret(&docs, "AWS_ACCESS_KEY_ID"),
        Some(("capgo-s3", "AWS_ACCESS_KEY_ID"))
    );
    assert_eq!(
        env_from_secret(&docs, "MANAGEMENT_API_TOKENS"),
        Some(("capgo-tokens", "management-api-tokens"))
    );
    assert_eq!(
        kinds(&docs, "Secret"),
        0,
        "no secret values in the chart's output"
    );
    assert_eq!(kinds(&docs, "PersistentVolumeClaim"), 0);
    assert_eq!(kinds(&docs, "PodDisruptionBudget"), 1);
    let deployment = find(&docs, "Deployment", "capgo-capgo-server");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert!(
        deployment["spec"]["strategy"].is_null(),
        "rolling updates with shared storage"
    );
    assert!(deployment["spec"]["template"]["spec"]["volumes"][1]["emptyDir"].is_object());
    let config = rendered_config(&docs);
    assert_eq!(config.s3_bucket.as_deref(), Some("capgo-bundles"));
    assert_eq!(config.trusted_proxies.len(), 1);
    assert_eq!(
        config.public_base_url.as_deref(),
        Some("https://updates.example.com")
    );
}

#[test]
fn ingresses_service_monitor_and_three_replicas() {
    let Some(tools) = tools() else { return };
    let docs = render(
        &tools,
        "charts/capgo-server/ci/ingress-monitoring-3-replicas-values.yaml",
    );
    assert_eq!(
        find(&docs, "Deployment", "capgo-capgo-server")["spec"]["replicas"],
        3
    );
    let public = find(&docs, "Ingress", "capgo-capgo-server-public");
    assert_eq!(
        public["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
        "capgo-capgo-server-public"
    );
    let management = find(&docs, "Ingress", "capgo-capgo-server-management");
    assert_eq!(
        management["spec"]["rules"][0]["host"],
        "capgo-admin.example.com"
    );
    let config = rendered_config(&docs);
    assert_eq!(
        (
            config.oauth_issuer.as_deref(),
            config.oauth_client_id.as_deref(),
            config.oauth_audience.as_deref()
        ),
        (
            Some("https://login.example.com/realms/capgo"),
            Some("capgo-ui"),
            Some("capgo-server")
        ),
        "OIDC settings reach the server"
    );
    let monitor = find(&docs, "ServiceMonitor", "capgo-capgo-server");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "management");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    let secret = find(&docs, "Secret", "capgo-capgo-server-secrets");
    for key in [
        "management-api-tokens",
        "mongo-connection-string",
        "AWS_ACCESS_KEY_ID",
    ] {
        assert!(secret["stringData"][key].is_string(), "{key}");
    }
    let namespaces: Vec<&str> = docs
        .iter()
        .filter(|d| {
            d["kind"] == "RoleBinding" && d["metadata"]["name"] == "capgo-capgo-server-operator"
        })
        .map(|d| d["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(
        namespaces,
        ["apps", "web"],
        "a Role in each watched namespace"
    );
}

#[test]
fn watching_every_namespace_needs_and_gets_a_narrow_cluster_role() {
    let Some(tools) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("all.yaml");
    std::fs::write(&values, "controller:\n  watchAllNamespaces: true\n").unwrap();
    let docs = render(&tools, values.to_str().unwrap());
    let role = find(&docs, "ClusterRole", "capgo-capgo-server-operator");
    let groups: Vec<&str> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r["apiGroups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_str().unwrap())
        })
        .collect();
    assert!(
        groups
            .iter()
            .all(|g| *g == "capgo-server.io" || *g == "events.k8s.io"),
        "{groups:?}"
    );
    assert!(
        rendered_config(&docs).controller_namespaces.is_empty(),
        "empty means every namespace"
    );
}

#[test]
fn wrong_values_are_refused_with_a_clear_message() {
    let Some(tools) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("replicaCount: three\n", "replicaCount"),
        ("storage:\n  mode: cloud\n", "mode"),
        (
            "config:\n  cacheResultDuration: 10 minutes\n",
            "cacheResultDuration",
        ),
        ("replicas: 2\n", "replicas"),
        (
            "replicaCount: 2\n",
            "replicaCount > 1 needs storage.mode=external",
        ),
        (
            "storage:\n  mode: external\n",
            "storage.mongo.existingSecret",
        ),
    ];
    for (index, (values, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{index}.yaml"));
        std::fs::write(&path, values).unwrap();
        let output = helm(
            &tools,
            &["template", "capgo", CHART, "-f", path.to_str().unwrap()],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{values:?} should be refused");
        assert!(stderr.contains(expected), "{values:?}: {stderr}");
    }
}

#[test]
fn argo_cd_health_check_reads_conditions() {
    let Some(tools) = tools() else { return };
    let output = Command::new(&tools.lua)
        .arg("tests/argocd/health_test.lua")
        .arg("deploy/argocd/health.lua")
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
