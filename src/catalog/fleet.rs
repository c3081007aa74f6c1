//! The fleet overview's counts: written in batches off the request path, and the retention
//! of what devices report.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Catalog, CatalogError};
use crate::domain::fleet::FleetCount;
use crate::domain::now_millis;
use crate::domain::stats::{day_of, DAY_MILLIS};
use crate::error::Chain;

/// Most counts kept for the next flush when a flush fails (the store is down): past it the
/// oldest are dropped.
const MAX_PENDING: usize = super::fleet_tally::MAX_KEYS;

/// What the retention job removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    pub stats_events: u64,
    pub fleet_counts: u64,
}

impl Catalog {
    /// Every `every`, merges what checks and reports noted into the store's daily counts, in
    /// one batch; a failed batch is merged into the next.
    pub async fn record_fleet_periodically(&self, every: Duration, shutdown: CancellationToken) {
        let mut pending: Vec<FleetCount> = Vec::new();
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = shutdown.run_until_cancelled(ticks.tick()).await.is_none();
            pending.extend(self.fleet.take());
            if pending.len() > MAX_PENDING {
                let excess = pending.len() - MAX_PENDING;
                pending.drain(..excess);
            }
            if !pending.is_empty() {
                match self.metadata.record_fleet_counts(&pending).await {
                    Ok(()) => pending.clear(),
                    Err(e) => {
                        tracing::warn!(counts = pending.len(), error = %Chain(&e), "could not write the fleet counts; retrying with the next batch")
                    }
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Writes what was noted now (tests, shutdown).
    pub async fn flush_fleet_counts(&self) -> Result<(), CatalogError> {
        let counts = self.fleet.take();
        if !counts.is_empty() {
            self.metadata.record_fleet_counts(&counts).await?;
        }
        Ok(())
    }

    /// Removes raw stats events older than `stats` and daily counts of days older than
    /// `fleet` (whole days: a day is kept while any of it is within the window).
    pub async fn apply_retention(
        &self,
        stats: Duration,
        fleet: Duration,
    ) -> Result<Retained, CatalogError> {
        let now = now_millis();
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let stats_events = self
            .metadata
            .delete_stats_before(now.saturating_sub(millis(stats)))
            .await?;
        let oldest_day = day_of(now.saturating_sub(millis(fleet)));
        let fleet_counts = self
            .metadata
            .delete_fleet_counts_before(oldest_day.min(day_of(now) - DAY_MILLIS))
            .await?;
        Ok(Retained {
            stats_events,
            fleet_counts,
        })
    }
}

impl Catalog {
    /// An app's daily counts of the last `days` days (today included).
    pub async fn fleet_counts(
        &self,
        app_id: &str,
        days: u32,
    ) -> Result<Vec<FleetCount>, CatalogError> {
        let today = day_of(now_millis());
        let since = today - DAY_MILLIS * i64::from(days.saturating_sub(1));
        Ok(self.metadata.fleet_counts(app_id, since).await?)
    }
}
