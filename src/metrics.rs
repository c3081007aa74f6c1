//! Prometheus metrics, exposed in the text format at `/metrics` on the management port.
//!
//! One process-wide registry: the layers that observe something (HTTP, the answer cache, the
//! operator) record into it without threading a handle through every call.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The kinds of /updates answers (`UpdateAnswer::kind`).
const ANSWER_KINDS: [&str; 5] = ["update", "revert", "up_to_date", "blocked", "failed"];

#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(index) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[index] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn add(&mut self, other: &Histogram) {
        for (total, count) in self.buckets.iter_mut().zip(other.buckets) {
            *total += count;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let prefix = if labels.is_empty() {
            String::new()
        } else {
            format!("{labels},")
        };
        for (bound, count) in BUCKETS.iter().zip(self.buckets) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{prefix}le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{prefix}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Latency per route pattern, looked up by `&str` so a request allocates nothing.
type RouteHistograms = BTreeMap<Box<str>, Histogram>;

/// Shards of the figures every request adds to (see [`RequestFigures`]).
const REQUEST_SHARDS: usize = 8;

/// What requests add to, one per thread (a thread-local index, shards shared only past
/// [`REQUEST_SHARDS`] threads): the cores answering checks each write their own cache line
/// instead of passing one lock and a few counters back and forth on every request. A scrape
/// adds the shards up.
#[derive(Default)]
#[repr(align(128))]
struct RequestShard(Mutex<RequestFigures>);

#[derive(Default)]
struct RequestFigures {
    /// (server, status class) → route → (count, latency).
    http: BTreeMap<(&'static str, &'static str), RouteHistograms>,
    /// Update answers by kind, in the order of [`ANSWER_KINDS`].
    update_answers: [u64; ANSWER_KINDS.len()],
    cache_hits: u64,
    cache_misses: u64,
}

impl RequestFigures {
    fn add(&mut self, other: &RequestFigures) {
        for (key, routes) in &other.http {
            let totals = self.http.entry(*key).or_default();
            for (route, histogram) in routes {
                totals.entry(route.clone()).or_default().add(histogram);
            }
        }
        for (total, count) in self.update_answers.iter_mut().zip(other.update_answers) {
            *total += count;
        }
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: [RequestShard; REQUEST_SHARDS],
    rate_limited: AtomicU64,
    auth_failures: AtomicU64,
    stats_events: AtomicU64,
    canary_marks_dropped: AtomicU64,
    fleet_notes_dropped: AtomicU64,
    /// (kind, result) → duration.
    reconciles: Mutex<BTreeMap<(&'static str, &'static str), Histogram>>,
    /// (store, operation, result) → duration.
    store_operations: Mutex<BTreeMap<(&'static str, &'static str, &'static str), Histogram>>,
    /// The fleet overview's figures, computed in the background and replaced whole (a scrape
    /// only prints them).
    fleet: Mutex<Vec<GaugeFamily>>,
}

/// Gauges of one name: help text and samples (rendered labels, value).
#[derive(Debug, Clone, PartialEq)]
pub struct GaugeFamily {
    pub name: &'static str,
    pub help: &'static str,
    pub samples: Vec<(String, f64)>,
}

impl GaugeFamily {
    pub fn new(name: &'static str, help: &'static str) -> GaugeFamily {
        GaugeFamily {
            name,
            help,
            samples: Vec::new(),
        }
    }

    /// Adds a sample; label values are escaped here.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        let labels = labels
            .iter()
            .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
            .collect::<Vec<_>>()
            .join(",");
        self.samples.push((labels, value));
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

pub fn global() -> &'static Metrics {
    &METRICS
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prometheus label values escape backslashes, quotes and newlines.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn http_request(&self, server: &'static str, route: &str, status: u16, took: Duration) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let mut figures = self.own_shard();
        // Look up without allocating: a key is built only the first time a series appears.
        let series = figures.http.entry((server, class)).or_default();
        match series.get_mut(route) {
            Some(histogram) => histogram.observe(took.as_secs_f64()),
            None => series
                .entry(route.into())
                .or_default()
                .observe(took.as_secs_f64()),
        }
    }

    pub fn update_answer(&self, kind: &'static str) {
        if let Some(index) = ANSWER_KINDS.iter().position(|k| *k == kind) {
            self.own_shard().update_answers[index] += 1;
        }
    }

    pub fn cache_lookup(&self, hit: bool) {
        let mut figures = self.own_shard();
        if hit {
            figures.cache_hits += 1;
        } else {
            figures.cache_misses += 1;
        }
    }

    /// The calling thread's [`RequestShard`].
    fn own_shard(&self) -> std::sync::MutexGuard<'_, RequestFigures> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % REQUEST_SHARDS;
        }
        lock(&self.requests[SHARD.with(|shard| *shard)].0)
    }

    /// The shards added up.
    fn request_figures(&self) -> RequestFigures {
        let mut total = RequestFigures::default();
        for shard in &self.requests {
            total.add(&lock(&shard.0));
        }
        total
    }

    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    pub fn auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats_events(&self, count: usize) {
        self.stats_events.fetch_add(count as u64, Ordering::Relaxed);
    }

    /// A check or report not counted for the fleet overview because a bound was reached.
    pub fn fleet_note_dropped(&self) {
        self.fleet_notes_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Rollout health signals not recorded because a bound was reached.
    pub fn canary_marks_dropped(&self, count: u64) {
        self.canary_marks_dropped
            .fetch_add(count, Ordering::Relaxed);
    }

    pub fn reconcile(&self, kind: &'static str, succeeded: bool, took: Duration) {
        let result = if succeeded { "success" } else { "error" };
        lock(&self.reconciles)
            .entry((kind, result))
            .or_default()
            .observe(took.as_secs_f64());
    }

    pub fn store_operation(
        &self,
        store: &'static str,
        operation: &'static str,
        succeeded: bool,
        took: Duration,
    ) {
        let result = if succeeded { "ok" } else { "error" };
        lock(&self.store_operations)
            .entry((store, operation, result))
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// Replaces the fleet gauges.
    pub fn set_fleet_gauges(&self, families: Vec<GaugeFamily>) {
        *lock(&self.fleet) = families;
    }

    /// Everything, in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };

        let requests = self.request_figures();
        let http = &requests.http;
        family(
            &mut out,
            "capgo_http_requests_total",
            "counter",
            "HTTP requests by server, route and status class.",
        );
        for ((server, class), routes) in http {
            for (route, histogram) in routes {
                let _ = writeln!(
                    out,
                    "capgo_http_requests_total{{server=\"{server}\",route=\"{}\",status=\"{class}\"}} {}",
                    escape(route),
                    histogram.count
                );
            }
        }
        family(
            &mut out,
            "capgo_http_request_duration_seconds",
            "histogram",
            "HTTP request latency by server and route.",
        );
        let mut by_route: BTreeMap<(&str, &str), Histogram> = BTreeMap::new();
        let all_routes = http
            .iter()
            .flat_map(|((server, _), routes)| routes.iter().map(move |(r, h)| (*server, r, h)));
        for (server, route, histogram) in all_routes {
            by_route.entry((server, route)).or_default().add(histogram);
        }
        for ((server, route), histogram) in &by_route {
            let labels = format!("server=\"{server}\",route=\"{}\"", escape(route));
            histogram.render(&mut out, "capgo_http_request_duration_seconds", &labels);
        }

        family(
            &mut out,
            "capgo_update_answers_total",
            "counter",
            "/updates answers by kind (update, revert, up_to_date, blocked, failed).",
        );
        for (kind, count) in ANSWER_KINDS.iter().zip(requests.update_answers) {
            let _ = writeln!(out, "capgo_update_answers_total{{kind=\"{kind}\"}} {count}");
        }
        family(
            &mut out,
            "capgo_answer_cache_lookups_total",
            "counter",
            "/updates answer cache lookups by result.",
        );
        let _ = writeln!(
            out,
            "capgo_answer_cache_lookups_total{{result=\"hit\"}} {}",
            requests.cache_hits
        );
        let _ = writeln!(
            out,
            "capgo_answer_cache_lookups_total{{result=\"miss\"}} {}",
            requests.cache_misses
        );
        for (name, help, value) in [
            (
                "capgo_rate_limited_requests_total",
                "Device requests refused with 429.",
                &self.rate_limited,
            ),
            (
                "capgo_auth_failures_total",
                "Management requests refused with 401 for a wrong or expired credential.",
                &self.auth_failures,
            ),
            (
                "capgo_stats_events_total",
                "Device stats events stored.",
                &self.stats_events,
            ),
            (
                "capgo_rollout_signals_dropped_total",
                "Rollout health signals not recorded: a rollout's followed devices or the \
                 pending batch were at their bound.",
                &self.canary_marks_dropped,
            ),
            (
                "capgo_fleet_notes_dropped_total",
                "Checks or reports not counted in the fleet overview: the tally between two \
                 flushes was at its bound.",
                &self.fleet_notes_dropped,
            ),
        ] {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }

        family(
            &mut out,
            "capgo_reconcile_duration_seconds",
            "histogram",
            "Operator reconciles by kind and result (count = runs).",
        );
        for ((kind, result), histogram) in lock(&self.reconciles).iter() {
            histogram.render(
                &mut out,
                "capgo_reconcile_duration_seconds",
                &format!("kind=\"{kind}\",result=\"{result}\""),
            );
        }
        family(
            &mut out,
            "capgo_store_operation_duration_seconds",
            "histogram",
            "Store operations by store (metadata, blob), operation and result (ok, error).",
        );
        for ((store, operation, result), histogram) in lock(&self.store_operations).iter() {
            histogram.render(
                &mut out,
                "capgo_store_operation_duration_seconds",
                &format!("store=\"{store}\",operation=\"{operation}\",result=\"{result}\""),
            );
        }
        for gauge in lock(&self.fleet).iter() {
            family(&mut out, gauge.name, "gauge", gauge.help);
            for (labels, value) in &gauge.samples {
                let _ = writeln!(out, "{}{{{labels}}} {value}", gauge.name);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let mut histogram = Histogram::default();
        histogram.observe(0.0004);
        histogram.observe(0.003);
        histogram.observe(20.0);
        let mut out = String::new();
        histogram.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    /// Requests recorded on many threads (more than there are shards) are all counted once.
    #[test]
    fn every_threads_requests_are_added_up() {
        let metrics = Metrics::default();
        std::thread::scope(|scope| {
            for thread in 0..REQUEST_SHARDS + 3 {
                let metrics = &metrics;
                scope.spawn(move || {
                    for _ in 0..=thread {
                        metrics.http_request("device", "/updates", 200, Duration::from_millis(2));
                        metrics.update_answer("up_to_date");
                        metrics.cache_lookup(thread % 2 == 0);
                    }
                });
            }
        });
        let requests: u64 = (1..=REQUEST_SHARDS as u64 + 3).sum();
        let hits: u64 = (0..REQUEST_SHARDS as u64 + 3)
            .filter(|thread| thread % 2 == 0)
            .map(|thread| thread + 1)
            .sum();
        let out = metrics.render();
        for line in [
            format!("capgo_http_requests_total{{server=\"device\",route=\"/updates\",status=\"2xx\"}} {requests}"),
            format!("capgo_http_request_duration_seconds_count{{server=\"device\",route=\"/updates\"}} {requests}"),
            format!("capgo_update_answers_total{{kind=\"up_to_date\"}} {requests}"),
            format!("capgo_answer_cache_lookups_total{{result=\"hit\"}} {hits}"),
            format!("capgo_answer_cache_lookups_total{{result=\"miss\"}} {}", requests - hits),
        ] {
            assert!(out.contains(&format!("{line}\n")), "{line} in\n{out}");
        }
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
