//! Staged rollouts against the real binary over real sockets: a simulated fleet of a few
//! thousand devices checks in and reports stats from this test, and the rollout advances,
//! completes, rolls back, survives a restart, and is driven by one process of two.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Enough devices that a step's share lands within 2% of its target (the standard deviation at
/// 50% is 0.56%).
const FLEET: usize = 8000;

fn device_id(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// The settings every server of these tests runs with: no per-IP limits (the whole fleet is
/// one address).
const UNLIMITED: [(&str, &str); 4] = [
    ("MANAGEMENT_API_TOKENS", API_KEY),
    ("LIMIT_REQUEST_PER_MINUTE", "0"),
    ("STATS_EVENTS_PER_MINUTE", "0"),
    ("MAX_CONNECTIONS_PER_IP", "0"),
];

/// An app with an android release serving `1.0.1` on production, and a `1.1.0` bundle to roll
/// out; returns (release id, stable id, canary id).
async fn catalog(client: &Client) -> (String, String, String) {
    let builtin = client.upload_bundle("1.0.0").await;
    let stable = client.upload_bundle("1.0.1").await;
    let canary = client.upload_bundle("1.1.0").await;
    let release = client.create_release("android", &builtin).await;
    client.set_active(&release, &stable, "production").await;
    (release, stable, canary)
}

async fn rollout_of(client: &Client, release: &str) -> Value {
    let list = client
        .list(&format!("rollouts.list?release_id={release}"))
        .await;
    list["data"][0].clone()
}

/// Polls the rollout until `done` holds (or panics after `within`).
async fn wait_for(
    client: &Client,
    release: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let rollout = rollout_of(client, release).await;
        if done(&rollout) {
            return rollout;
        }
        assert!(
            started.elapsed() < within,
            "{what} did not happen within {within:?}: {rollout}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn start(client: &Client, release: &str, canary: &str, plan: Value) -> Value {
    let mut body = plan;
    body["release_id"] = json!(release);
    body["bundle_id"] = json!(canary);
    let (status, answer) = client.manage("rollouts.start", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["rollout"].clone()
}

/// Waits until `log()` shows at least `expected` driver moves ("rollout moved" lines: one
/// reaches the test a moment after the store shows its move), for up to 10 s.
async fn wait_for_moves(log: &impl Fn() -> String, expected: usize) {
    let started = Instant::now();
    while log().matches("rollout moved").count() < expected
        && started.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The driver's moves in `log()` once at least `expected` are there and two driver ticks
/// passed without more.
async fn moves_in(log: impl Fn() -> String, expected: usize) -> usize {
    wait_for_moves(&log, expected).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    log().matches("rollout moved").count()
}

/// A hand move on the production rollout of `release`, which must succeed.
async fn manage(client: &Client, route: &str, release: &str) -> Value {
    let (status, answer) = client.manage(route, json!({"release_id": release})).await;
    assert_eq!(status, 200, "{route}: {answer}");
    answer["rollout"].clone()
}

fn in_canary(offers: &BTreeMap<String, String>) -> BTreeSet<String> {
    offered(offers, "1.1.0").into_iter().collect()
}

/// Checks the share of the fleet offered the canary against the step's percent, and that
/// everyone else is offered nothing (they run stable already).
fn assert_share(offers: &BTreeMap<String, String>, percent: f64) -> BTreeSet<String> {
    let canary = in_canary(offers);
    let measured = canary.len() as f64 / offers.len() as f64 * 100.0;
    assert!(
        (measured - percent).abs() <= 2.0,
        "{measured:.2}% of devices got the canary at a {percent}% step"
    );
    assert!(
        offers.values().all(|v| v.is_empty() || v == "1.1.0"),
        "devices outside the canary stay on stable"
    );
    canary
}

#[tokio::test]
async fn a_healthy_canary_advances_step_by_step_to_every_device() {
    let data = tempfile::tempdir().unwrap();
    let server = start_with_public_url(data.path(), &UNLIMITED);
    let client = Client::new(&server, API_KEY);
    let (release, _, canary) = catalog(&client).await;
    let ids: Vec<String> = (0..FLEET).map(device_id).collect();

    let started = start(
        &client,
        &release,
        &canary,
        json!({"steps": [10, 50, 100], "interval": "2s", "min_devices": 20,
               "max_failure_rate": 0.2}),
    )
    .await;
    assert_eq!(started["phase"], "progressing");
    assert_eq!(started["percent"], 10.0);

    let mut previous = BTreeSet::new();
    for (step, percent) in [(0, 10.0), (1, 50.0), (2, 100.0)] {
        // Held while the fleet is measured (health counts since the start, so a step may
        // advance as soon as its interval is over); resuming runs the interval again.
        manage(&client, "rollouts.pause", &release).await;
        let offers = client.offers(&ids, "1.0.1").await;
        let canary_devices = assert_share(&offers, percent);
        assert!(
            previous.is_subset(&canary_devices),
            "a device left the canary as it grew ({} of {} stayed)",
            previous.intersection(&canary_devices).count(),
            previous.len()
        );
        // The canary installs fine on every device that got it.
        let installs: Vec<_> = canary_devices
            .iter()
            .map(|id| (id.clone(), "set", "1.1.0"))
            .collect();
        client.report(&installs).await;
        manage(&client, "rollouts.resume", &release).await;
        previous = canary_devices;
        let rollout = wait_for(
            &client,
            &release,
            Duration::from_secs(30),
            "the next step",
            |r| r["step"].as_u64() > Some(step) || r["phase"] == "done",
        )
        .await;
        assert_ne!(rollout["phase"], "rolled_back", "{rollout}");
        assert!(
            rollout["devices"].as_u64().unwrap() >= 20,
            "health counted the installs: {rollout}"
        );
        assert_eq!(rollout["failed"], 0, "{rollout}");
    }
    let done = rollout_of(&client, &release).await;
    assert_eq!(done["phase"], "done", "{done}");
    assert_eq!(done["percent"], 100.0);
    // The canary is now the channel's bundle: devices still on stable are all offered it.
    let releases = client.list("releases.list").await;
    assert_eq!(releases["data"][0]["channels"]["production"], canary);
    let offers = client.offers(&ids[..500], "1.0.1").await;
    assert!(offers.values().all(|v| v == "1.1.0"));
    assert_eq!(
        moves_in(|| server.log_text(), 3).await,
        3,
        "two steps and the completion, each once"
    );
    server.stop();
}

#[tokio::test]
async fn failures_above_the_gate_roll_back_every_device_and_forged_reports_do_not_count() {
    let data = tempfile::tempdir().unwrap();
    let server = start_with_public_url(data.path(), &UNLIMITED);
    let client = Client::new(&server, API_KEY);
    let (release, _, canary) = catalog(&client).await;
    let ids: Vec<String> = (0..FLEET).map(device_id).collect();
    start(
        &client,
        &release,
        &canary,
        json!({"steps": [20, 100], "interval": "1h", "min_devices": 20,
               "max_failure_rate": 0.1}),
    )
    .await;

    // Failures reported by devices the server never answered with the canary: ignored.
    let strangers: Vec<_> = (FLEET..FLEET + 2000)
        .map(|n| (device_id(n), "update_fail", "1.1.0"))
        .collect();
    client.report(&strangers).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let untouched = rollout_of(&client, &release).await;
    assert_eq!(untouched["phase"], "progressing", "{untouched}");
    assert_eq!(untouched["devices"], 0, "{untouched}");

    let offers = client.offers(&ids, "1.0.1").await;
    let canary_devices: Vec<String> = assert_share(&offers, 20.0).into_iter().collect();
    // A third of the canary fails to apply it; one device repeating its failure counts once.
    let mut events = Vec::new();
    for (n, id) in canary_devices.iter().enumerate() {
        let action = if n % 3 == 0 { "update_fail" } else { "set" };
        events.push((id.clone(), action, "1.1.0"));
    }
    for _ in 0..20 {
        events.push((canary_devices[0].clone(), "update_fail", "1.1.0"));
    }
    let reported_at = Instant::now();
    client.report(&events).await;
    let rolled_back = wait_for(
        &client,
        &release,
        Duration::from_secs(10),
        "the roll-back",
        |r| r["phase"] == "rolled_back",
    )
    .await;
    println!(
        "rolled back {:?} after the failures were reported",
        reported_at.elapsed()
    );
    // The gate may close before every report arrived: the numbers are those it saw then.
    let (devices, failed) = (
        rolled_back["devices"].as_u64().unwrap(),
        rolled_back["failed"].as_u64().unwrap(),
    );
    assert!(
        devices >= 20 && devices <= canary_devices.len() as u64,
        "{rolled_back}"
    );
    assert!(failed * 10 > devices, "above the gate: {rolled_back}");
    assert!(
        rolled_back["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("{failed} of {devices} devices failed")),
        "{rolled_back}"
    );
    // Every device gets stable again: those that installed the canary are sent back.
    let on_canary = client.offers(&canary_devices, "1.1.0").await;
    assert!(on_canary.values().all(|v| v == "1.0.1"), "{on_canary:?}");
    let on_stable = client.offers(&ids, "1.0.1").await;
    assert!(on_stable.values().all(String::is_empty));
    let releases = client.list("releases.list").await;
    assert_ne!(releases["data"][0]["channels"]["production"], canary);
    assert_eq!(
        releases["data"][0]["rollouts"]["production"]["phase"],
        "rolled_back"
    );
    server.stop();
}

#[tokio::test]
async fn a_restart_mid_rollout_continues_where_it_was() {
    let data = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..FLEET).map(device_id).collect();
    let server = start_with_public_url(data.path(), &UNLIMITED);
    let client = Client::new(&server, API_KEY);
    let (release, _, canary) = catalog(&client).await;
    start(
        &client,
        &release,
        &canary,
        // Long enough that step 2 is still running when the process is killed.
        json!({"steps": [10, 50, 100], "interval": "5s", "min_devices": 5}),
    )
    .await;
    let offers = client.offers(&ids, "1.0.1").await;
    let first = in_canary(&offers);
    let installs: Vec<_> = first
        .iter()
        .map(|id| (id.clone(), "set", "1.1.0"))
        .collect();
    client.report(&installs).await;
    wait_for(&client, &release, Duration::from_secs(30), "step 2", |r| {
        r["step"] == 1
    })
    .await;
    wait_for_moves(&|| server.log_text(), 1).await;
    // Killed, not stopped: nothing gets a chance to tidy up.
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let before_restart = server.log_text();
    drop(server);

    let server = start_with_public_url(data.path(), &UNLIMITED);
    let client = Client::new(&server, API_KEY);
    let resumed = rollout_of(&client, &release).await;
    assert_eq!(resumed["step"], 1, "{resumed}");
    assert_eq!(resumed["phase"], "progressing", "{resumed}");
    let offers = client.offers(&ids, "1.0.1").await;
    let second = assert_share(&offers, 50.0);
    assert!(
        first.is_subset(&second),
        "the same devices stay in the canary across the restart"
    );
    let installs: Vec<_> = second
        .iter()
        .map(|id| (id.clone(), "set", "1.1.0"))
        .collect();
    client.report(&installs).await;
    let done = wait_for(
        &client,
        &release,
        // A killed driver's lease runs out first (15 s).
        Duration::from_secs(60),
        "completion",
        |r| r["phase"] == "done",
    )
    .await;
    assert_eq!(done["step"], 2);
    let log = || format!("{before_restart}\n{}", server.log_text());
    assert_eq!(
        moves_in(log, 3).await,
        3,
        "no step skipped or taken twice across the restart: {}",
        log()
    );
    assert!(
        before_restart.contains("rollout moved") && server.log_text().contains("rollout moved"),
        "the first process took step 2, the second the rest"
    );
    server.stop();
}

#[tokio::test]
async fn people_pause_resume_promote_and_abort_and_bad_requests_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let server = start_with_public_url(data.path(), &UNLIMITED);
    let client = Client::new(&server, API_KEY);
    let (release, stable, canary) = catalog(&client).await;

    for (plan, field) in [
        (json!({"steps": [50, 25, 100]}), "steps"),
        (json!({"steps": [10, 50]}), "steps"),
        (json!({"interval": "soon"}), "interval"),
        (json!({"interval": "10ms"}), "interval"),
        (json!({"window": "-1s"}), "window"),
        (json!({"max_failure_rate": 2}), "maxFailureRate"),
        (json!({"percent": 10}), "percent"),
        (json!({"channel": "no spaces"}), "channel"),
    ] {
        let mut body = plan;
        body["release_id"] = json!(release);
        body["bundle_id"] = json!(canary);
        let (status, answer) = client.manage("rollouts.start", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer.to_string().contains(field),
            "{body}: the error names {field}: {answer}"
        );
    }
    let (status, answer) = client
        .manage(
            "rollouts.start",
            json!({"release_id": release, "bundle_id": stable}),
        )
        .await;
    assert_eq!(status, 400, "the channel already serves it: {answer}");
    let (status, _) = client
        .manage("rollouts.pause", json!({"release_id": release}))
        .await;
    assert_eq!(status, 404, "no rollout to pause");

    start(
        &client,
        &release,
        &canary,
        json!({"steps": [50, 100], "interval": "1s", "min_devices": 1}),
    )
    .await;
    let (status, answer) = client
        .manage(
            "rollouts.start",
            json!({"release_id": release, "bundle_id": canary}),
        )
        .await;
    assert_eq!(status, 409, "one active rollout per channel: {answer}");
    let (status, answer) = client
        .manage(
            "releases.set-active",
            json!({"release_id": release, "bundle_id": canary, "channel": "production"}),
        )
        .await;
    assert_eq!(status, 409, "a promote cannot bypass the rollout: {answer}");
    let (status, answer) = client
        .manage("bundles.delete", json!({"bundle_id": canary}))
        .await;
    assert_eq!(status, 409, "the canary is in use: {answer}");

    let (status, paused) = client
        .manage("rollouts.pause", json!({"release_id": release}))
        .await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["rollout"]["phase"], "paused");
    // Healthy devices and time do not move a paused rollout.
    let ids: Vec<String> = (0..400).map(device_id).collect();
    let offers = client.offers(&ids, "1.0.1").await;
    let installs: Vec<_> = in_canary(&offers)
        .into_iter()
        .map(|id| (id, "set", "1.1.0"))
        .collect();
    client.report(&installs).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = rollout_of(&client, &release).await;
    assert_eq!(
        (still["phase"].as_str(), still["step"].as_u64()),
        (Some("paused"), Some(0)),
        "{still}"
    );
    let (status, resumed) = client
        .manage("rollouts.resume", json!({"release_id": release}))
        .await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["rollout"]["phase"], "progressing");
    let (status, promoted) = client
        .manage("rollouts.promote", json!({"release_id": release}))
        .await;
    assert_eq!(status, 200, "{promoted}");
    assert_eq!(promoted["rollout"]["phase"], "done");
    let releases = client.list("releases.list").await;
    assert_eq!(releases["data"][0]["channels"]["production"], canary);

    // Back to the old bundle through another rollout, aborted by hand.
    start(&client, &release, &stable, json!({"interval": "1h"})).await;
    let (status, aborted) = client
        .manage("rollouts.abort", json!({"release_id": release}))
        .await;
    assert_eq!(status, 200, "{aborted}");
    assert_eq!(aborted["rollout"]["phase"], "rolled_back");
    assert!(
        aborted["rollout"]["reason"]
            .as_str()
            .unwrap()
            .contains("aborted by"),
        "{aborted}"
    );
    let offers = client.offers(&ids, "1.1.0").await;
    assert!(
        offers.values().all(String::is_empty),
        "every device stays on the channel's bundle"
    );
    server.stop();
}

#[tokio::test]
async fn with_two_replicas_one_drives_and_the_other_takes_over() {
    let Some(services) = Services::get() else {
        return;
    };
    let (_bucket, mut env) = services.env_with_fresh_bucket().await;
    for (key, value) in &UNLIMITED[1..] {
        env.push((key.to_string(), value.to_string()));
    }
    env.push(("CATALOG_SYNC_INTERVAL".into(), "200ms".into()));
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_with_public_url(data_a.path(), &env_refs(&env));
    let b = start_with_public_url(data_b.path(), &env_refs(&env));
    let (client_a, client_b) = (Client::new(&a, API_KEY), Client::new(&b, API_KEY));
    let (release, _, canary) = catalog(&client_a).await;
    start(
        &client_a,
        &release,
        &canary,
        json!({"steps": [20, 60, 100], "interval": "2s", "min_devices": 5}),
    )
    .await;
    // Devices check in on one replica and report on the other.
    let ids: Vec<String> = (0..1000).map(device_id).collect();
    let offers = client_b.offers(&ids, "1.0.1").await;
    let installs: Vec<_> = in_canary(&offers)
        .into_iter()
        .map(|id| (id, "set", "1.1.0"))
        .collect();
    client_a.report(&installs).await;
    wait_for(
        &client_b,
        &release,
        Duration::from_secs(30),
        "step 2",
        |r| r["step"] == 1,
    )
    .await;
    // Held (through either replica) so the driver cannot move it between the count of its
    // moves below and its death; its log is read once it has had time to reach us.
    manage(&client_b, "rollouts.pause", &release).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader_is_a = a.log_text().contains("leading=true");
    assert_ne!(
        leader_is_a,
        b.log_text().contains("leading=true"),
        "exactly one replica drives"
    );
    let (leader, follower, follower_client) = if leader_is_a {
        (a, b, client_b)
    } else {
        (b, a, client_a)
    };
    let moves_before = moves_in(|| leader.log_text(), 1).await;
    assert_eq!(
        follower.log_text().matches("rollout moved").count(),
        0,
        "the follower never moves a rollout"
    );
    let mut leader = leader;
    leader.child.kill().unwrap();
    leader.child.wait().unwrap();
    let killed_at = Instant::now();
    manage(&follower_client, "rollouts.resume", &release).await;

    let offers = follower_client.offers(&ids, "1.0.1").await;
    let installs: Vec<_> = in_canary(&offers)
        .into_iter()
        .map(|id| (id, "set", "1.1.0"))
        .collect();
    follower_client.report(&installs).await;
    let done = wait_for(
        &follower_client,
        &release,
        Duration::from_secs(60),
        "completion by the other replica",
        |r| r["phase"] == "done",
    )
    .await;
    println!(
        "the other replica completed the rollout {:?} after the driver was killed",
        killed_at.elapsed()
    );
    assert_eq!(done["step"], 2);
    assert_eq!(
        moves_before + moves_in(|| follower.log_text(), 3 - moves_before).await,
        3,
        "each step once across both replicas"
    );
    follower.stop();
}
