//! Failed management logins are throttled per client address: after
//! [`FAILED_LOGINS_PER_MINUTE`] wrong credentials in a minute, every attempt from that address
//! (right or wrong) is answered 429 with `Retry-After` until the minute is over, without
//! checking the credential, so guessing keys costs a minute per handful of tries.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong credentials one address may send per [`WINDOW`].
pub const FAILED_LOGINS_PER_MINUTE: u32 = 20;
const WINDOW: Duration = Duration::from_secs(60);
/// Above this many tracked addresses, finished windows are dropped.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Default)]
pub struct FailedLogins {
    windows: Mutex<HashMap<IpAddr, Window>>,
}

struct Window {
    started: Instant,
    failures: u32,
}

impl FailedLogins {
    /// `Err(wait)` while `client` has used up its failures.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        self.check_at(client, Instant::now())
    }

    /// Counts a wrong credential from `client`.
    pub fn failed(&self, client: IpAddr) {
        self.failed_at(client, Instant::now())
    }

    fn check_at(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.lock().get(&client) {
            Some(w) if w.failures >= FAILED_LOGINS_PER_MINUTE => {
                let ends = w.started + WINDOW;
                if now < ends {
                    Err(ends - now)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn failed_at(&self, client: IpAddr, now: Instant) {
        let mut windows = self.lock();
        if windows.len() > PRUNE_ABOVE {
            windows.retain(|_, w| now < w.started + WINDOW);
        }
        let window = windows.entry(client).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now >= window.started + WINDOW {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Window>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_held_for_the_rest_of_its_minute_then_free_again() {
        let logins = FailedLogins::default();
        let (guesser, other): (IpAddr, IpAddr) = (
            "203.0.113.7".parse().unwrap(),
            "203.0.113.8".parse().unwrap(),
        );
        let start = Instant::now();
        for _ in 0..FAILED_LOGINS_PER_MINUTE {
            assert!(logins.check_at(guesser, start).is_ok());
            logins.failed_at(guesser, start);
        }
        let later = start + Duration::from_secs(15);
        assert_eq!(
            logins.check_at(guesser, later),
            Err(Duration::from_secs(45))
        );
        assert!(logins.check_at(other, later).is_ok(), "per address");
        let next_minute = start + WINDOW;
        assert!(logins.check_at(guesser, next_minute).is_ok());
        logins.failed_at(guesser, next_minute);
        assert!(
            logins.check_at(guesser, next_minute).is_ok(),
            "a new window"
        );
    }
}
