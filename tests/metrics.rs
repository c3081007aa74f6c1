//! `/metrics` on the management port: valid Prometheus text format, and the series move when
//! devices and people use the server.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::json;

/// Parses the text exposition format strictly: every sample belongs to a family declared by a
/// TYPE line before it, names and labels are well formed, values are numbers.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            families.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            other => other
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels: {line}"
                );
                for pair in labels[1..labels.len() - 1]
                    .split("\",")
                    .filter(|p| !p.is_empty())
                {
                    let (key, quoted) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("bad label: {line}"));
                    assert!(
                        key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "bad label name: {line}"
                    );
                    assert!(quoted.starts_with('"'), "unquoted label: {line}");
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| families.contains_key(*f));
        assert!(
            families.contains_key(name) || family.is_some(),
            "sample before its TYPE: {line}"
        );
        samples.insert(series.to_string(), value);
    }
    samples
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let data = tempfile::tempdir().unwrap();
    let server = start_with_public_url(
        data.path(),
        &[
            ("MANAGEMENT_API_TOKENS", API_KEY),
            ("LIMIT_REQUEST_PER_MINUTE", "4"),
        ],
    );
    let client = Client::new(&server, API_KEY);
    let scrape = || async {
        let response = client
            .http
            .get(format!("{}/metrics", server.management_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        parse(&response.text().await.unwrap())
    };
    let before = scrape().await;
    let value =
        |samples: &BTreeMap<String, f64>, series: &str| samples.get(series).copied().unwrap_or(0.0);

    let (_, builtin) = client.upload(APP_ID, "1.0.0", web_bundle("1.0.0")).await;
    client
        .manage("releases.create", json!({"platform": "android", "app_id": APP_ID, "version_name": "1.0.0",
                                          "version_code": "10", "builtin_bundle_id": builtin["bundle"]["id"]}))
        .await;
    let mut unknown = device_body("builtin", "8.51.14");
    unknown["version_code"] = json!("99");
    client
        .device("/updates", &device_body("builtin", "8.51.14"))
        .await; // up to date (miss)
    client
        .device("/updates", &device_body("builtin", "8.51.14"))
        .await; // up to date (hit)
    client.device("/updates", &unknown).await; // blocked: a build without a release
    let events = json!([{"app_id": APP_ID, "device_id": DEVICE_ID, "action": "set"}, {"app_id": APP_ID, "device_id": DEVICE_ID, "action": "download_complete"}]);
    client.device("/stats", &events).await;
    for _ in 0..3 {
        client
            .device("/updates", &device_body("builtin", "8.51.14"))
            .await; // the 4th passes; the 5th and 6th are refused (4 a minute)
    }
    let after = scrape().await;

    assert_eq!(
        value(&after, "capgo_update_answers_total{kind=\"up_to_date\"}")
            - value(&before, "capgo_update_answers_total{kind=\"up_to_date\"}"),
        3.0
    );
    assert_eq!(
        value(&after, "capgo_update_answers_total{kind=\"blocked\"}"),
        1.0
    );
    assert!(
        value(&after, "capgo_answer_cache_lookups_total{result=\"hit\"}") >= 2.0,
        "{after:?}"
    );
    assert!(value(&after, "capgo_answer_cache_lookups_total{result=\"miss\"}") >= 2.0);
    assert_eq!(value(&after, "capgo_rate_limited_requests_total"), 2.0);
    assert_eq!(value(&after, "capgo_stats_events_total"), 2.0);
    assert_eq!(
        value(
            &after,
            "capgo_http_requests_total{server=\"device\",route=\"/updates\",status=\"4xx\"}"
        ),
        2.0,
        "the two 429s"
    );
    assert_eq!(
        value(
            &after,
            "capgo_http_requests_total{server=\"device\",route=\"/updates\",status=\"2xx\"}"
        ),
        4.0
    );
    assert_eq!(value(&after, "capgo_http_requests_total{server=\"management\",route=\"/api/v1/bundles.upload\",status=\"2xx\"}"), 1.0);
    assert_eq!(
        value(
            &after,
            "capgo_http_request_duration_seconds_count{server=\"device\",route=\"/updates\"}"
        ),
        6.0
    );
    // Store latency, by operation: the /updates cache misses read what their channel serves.
    assert!(
        value(
            &after,
            "capgo_store_operation_duration_seconds_count{store=\"metadata\",operation=\"served_records\",result=\"ok\"}"
        ) >= 2.0
    );
    assert_eq!(
        value(
            &after,
            "capgo_store_operation_duration_seconds_count{store=\"blob\",operation=\"put_file\",result=\"ok\"}"
        ),
        3.0,
        "the upload stored its zip and its two files"
    );
    // Unknown paths share one series, so they cannot grow the label set.
    client
        .http
        .get(format!("{}/api/v1/nope-{}", server.management_url, 1))
        .send()
        .await
        .unwrap();
    client
        .http
        .get(format!("{}/api/v1/nope-{}", server.management_url, 2))
        .send()
        .await
        .unwrap();
    let unknown_paths = scrape().await;
    assert_eq!(value(&unknown_paths, "capgo_http_requests_total{server=\"management\",route=\"/api/v1/{*rest}\",status=\"4xx\"}"), 2.0);
}
