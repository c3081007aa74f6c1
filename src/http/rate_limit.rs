//! LIMIT_REQUEST_PER_MINUTE per client IP on the device API (and STATS_EVENTS_PER_MINUTE
//! `/stats` events per client IP), with the 429 answer plugins
//! understand: a `Retry-After` header and `retryAfterSeconds` in the body (without a hint,
//! plugins 7.23.8 to 8.51.4 go silent until the app restarts).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::json;

use super::AppState;

pub struct DeviceRateLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl DeviceRateLimiter {
    /// `None` when `per_minute` is 0 (no limit).
    pub fn per_minute(per_minute: u32) -> Option<DeviceRateLimiter> {
        let per_minute = NonZeroU32::new(per_minute)?;
        Some(DeviceRateLimiter {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
        })
    }

    /// `Err(wait)` when `client` is over its limit.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        self.limiter
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// [`Self::check`] for `n` units at once (the events of one `/stats` post). `n` above the
    /// per-minute quota can never pass, and is refused with a minute's wait.
    pub fn check_n(&self, client: IpAddr, n: u32) -> Result<(), Duration> {
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        match self.limiter.check_key_n(&client, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
            Err(_) => Err(Duration::from_secs(60)),
        }
    }

    /// Forgets clients whose buckets are full again, so memory follows active clients only.
    pub fn forget_idle_clients(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The 429 answer when `client` (the request's address) is over its device request rate, else
/// `None`.
pub fn refuse_if_limited(state: &AppState, client: IpAddr) -> Option<Response> {
    let limiter = state.rate_limiter.as_ref()?;
    let wait = limiter.check(client).err()?;
    crate::metrics::global().rate_limited();
    Some(too_many_requests(wait))
}

pub fn too_many_requests(wait: Duration) -> Response {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let reset_at = SystemTime::now()
        .checked_add(Duration::from_secs(seconds))
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    let body = json!({
        "error": "too_many_requests",
        "message": "Too many requests",
        "retryAfterSeconds": seconds,
        "moreInfo": { "retryAfterSeconds": seconds, "rateLimitResetAt": reset_at },
    });
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, seconds.to_string())],
        Json(body),
    )
        .into_response()
}
