//! How big the embedded database grows for a simulated fleet, and that it stops growing once
//! retention applies (BENCHMARKS.md, "Fleet storage"). Each simulated day, every device checks
//! in 5 times, at 5 different hours (counted as the server counts checks: per native build,
//! channel and running bundle, into that day's and that hour's sketches) and posts 2 stats
//! events (counted per bundle and action); a new bundle is promoted every 10 days and adopted
//! over a few days; then retention runs as the server's hourly job would at the end of that
//! day. Writes go through the server's own store code.
//!
//!     cargo run --release --example fleet-size -- <folder> [days] [devices]
//!
//! Prints one JSON line per day: {"day", "stats_rows", "fleet_rows", "db_bytes"}.

use std::collections::HashMap;
use std::time::Duration;

use capgo_server::domain::fleet::{FleetCount, FleetKey, Span, HOURLY_DAYS, HOUR_MILLIS};
use capgo_server::domain::stats::{aggregated_action, StatsEvent, DAY_MILLIS};
use capgo_server::domain::{ChannelName, Platform, ReleaseKey};
use capgo_server::store::sqlite::SqliteMetadataStore;
use capgo_server::store::{CatalogStore, FleetStore};

const CHECKS_PER_DAY: u64 = 5;
const BUILDS: u32 = 10;
const CHANNELS: [&str; 3] = ["production", "beta", "dev"];
const STATS_RETENTION: Duration = Duration::from_secs(30 * 86_400);
const FLEET_RETENTION: Duration = Duration::from_secs(400 * 86_400);
/// The simulation starts on this (arbitrary) day.
const FIRST_DAY: i64 = 20_000 * DAY_MILLIS;

/// The bundle a device runs on `day`: bundle `n` is promoted on day 10·n and each device
/// moves to it on one of the 4 days after.
fn running(device: u32, day: i64) -> String {
    let released = day / 10;
    let moved = (device % 4) as i64 <= day % 10;
    let bundle = if moved { released } else { released - 1 };
    if bundle < 0 {
        "builtin".into()
    } else {
        format!("1.{bundle}.0")
    }
}

fn count_of<'a>(
    counts: &'a mut HashMap<(Span, i64, FleetKey), FleetCount>,
    span: Span,
    at: i64,
    key: &FleetKey,
) -> &'a mut FleetCount {
    counts
        .entry((span, span.start_of(at), key.clone()))
        .or_insert_with(|| FleetCount::new(span, at, key.clone()))
}

fn device_id(device: u32) -> String {
    format!("00000000-0000-4000-8000-{device:012x}")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let folder = std::path::PathBuf::from(
        args.next()
            .expect("usage: fleet-size <folder> [days] [devices]"),
    );
    let days: i64 = args.next().map_or(45, |d| d.parse().expect("days"));
    let devices: u32 = args.next().map_or(100_000, |d| d.parse().expect("devices"));
    std::fs::create_dir_all(&folder).expect("the folder can be made");
    let path = folder.join("capgo.db");
    let store = SqliteMetadataStore::open(&path).expect("the database opens");
    let release = |build: u32| ReleaseKey {
        platform: if build.is_multiple_of(2) {
            Platform::Android
        } else {
            Platform::Ios
        },
        app_id: "com.sim.app".into(),
        version_name: format!("{}.0.0", build / 2 + 1),
        version_code: build.to_string(),
    };
    for day in 0..days {
        let at = FIRST_DAY + day * DAY_MILLIS;
        let mut counts: HashMap<(Span, i64, FleetKey), FleetCount> = HashMap::new();
        let mut events = Vec::with_capacity(devices as usize * 2);
        for device in 0..devices {
            let id = device_id(device);
            let bundle = running(device, day);
            let key = FleetKey::Check {
                release: release(device % BUILDS),
                channel: ChannelName::parse(CHANNELS[(device / BUILDS) as usize % 3])
                    .expect("a channel name"),
                bundle: bundle.clone(),
            };
            let count = count_of(&mut counts, Span::Day, at, &key);
            count.events += CHECKS_PER_DAY;
            count.devices.insert(&id);
            for check in 0..CHECKS_PER_DAY as i64 {
                let hour = (i64::from(device) * 7 + check * 5) % 24;
                let count = count_of(&mut counts, Span::Hour, at + hour * HOUR_MILLIS, &key);
                count.events += 1;
                count.devices.insert(&id);
            }
            // Two events a day: a foreground, and the install on the day it moves (one in 50
            // of those fails instead).
            let moved_today = bundle != running(device, day - 1);
            let action = match (moved_today, device % 50) {
                (true, 0) => "update_fail",
                (true, _) => "set",
                (false, _) => "app_moved_to_background",
            };
            for action in ["app_moved_to_foreground", action] {
                events.push(StatsEvent {
                    app_id: "com.sim.app".into(),
                    device_id: id.clone(),
                    action: action.into(),
                    platform: Some("android".into()),
                    version_name: Some(bundle.clone()),
                    old_version_name: None,
                    version_build: Some("1.0.0".into()),
                    version_code: Some("1".into()),
                    plugin_version: Some("8.51.14".into()),
                    is_emulator: Some(false),
                    is_prod: Some(true),
                    custom_id: None,
                    metadata: None,
                    occurred_at: at + i64::from(device % 86_400_000),
                });
                let key = FleetKey::Report {
                    app_id: "com.sim.app".into(),
                    bundle: bundle.clone(),
                    action: aggregated_action(action).to_string(),
                };
                let count = count_of(&mut counts, Span::Day, at, &key);
                count.events += 1;
                count.devices.insert(&id);
            }
        }
        for batch in events.chunks(1000) {
            store.insert_stats(batch).await.expect("stats are stored");
        }
        let counts: Vec<FleetCount> = counts.into_values().collect();
        for chunk in counts.chunks(256) {
            store
                .record_fleet_counts(chunk)
                .await
                .expect("counts are stored");
        }
        // The hourly job at the end of the day.
        let now = at + DAY_MILLIS - 1;
        let millis = |d: Duration| d.as_millis() as i64;
        store
            .delete_stats_before(now - millis(STATS_RETENTION))
            .await
            .expect("retention");
        store
            .delete_fleet_counts_before(Span::Day, now - millis(FLEET_RETENTION))
            .await
            .expect("retention");
        store
            .delete_fleet_counts_before(Span::Hour, now - HOURLY_DAYS * DAY_MILLIS)
            .await
            .expect("retention");
        let stats_rows: i64 = rusqlite::Connection::open(&path)
            .and_then(|c| c.query_row("SELECT COUNT(*) FROM stats_events", [], |r| r.get(0)))
            .expect("rows are counted");
        let fleet_rows = store
            .fleet_counts("com.sim.app", 0)
            .await
            .expect("counts are read")
            .len();
        let db_bytes: u64 = ["capgo.db", "capgo.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(folder.join(f)).ok())
            .map(|m| m.len())
            .sum();
        println!(
            "{{\"day\": {}, \"stats_rows\": {stats_rows}, \"fleet_rows\": {fleet_rows}, \"db_bytes\": {db_bytes}}}",
            day + 1
        );
    }
}
