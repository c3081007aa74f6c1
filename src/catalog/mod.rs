//! The operations people, devices and the operator perform on the catalog of bundles and
//! releases. Every rule lives here (or in `domain`) once; the REST API, the UI and the
//! operator all call these, and none of them touches a store.

mod app_keys;
mod bundles;
mod canary_tally;
mod devices;
mod error;
mod fleet;
mod fleet_tally;
mod imports;
mod manifests;
mod releases;
mod rollouts;
pub mod staging;
pub mod target_cache;
mod targeting;
mod unregistered;
pub mod zip_check;

use std::sync::Arc;
use std::time::Duration;

pub use bundles::{BundleDetailsChange, BundleDownload, ExpectedChecksum, NewBundle, SourceError};
pub use devices::{ChannelChange, DeviceChannel, DeviceTarget};
pub use error::CatalogError;
pub use fleet::{
    BundleActivity, ChannelFleet, DailyActivity, FleetOverview, ReleaseFleet, Retained,
    FLEET_GAUGES_INTERVAL,
};
pub use imports::{ImportedBundle, ImportedRelease};
pub use manifests::ManifestFill;
pub use releases::{DesiredRelease, NewRelease};
pub use rollouts::{NewRollout, RolloutAction, DRIVER_LEASE_TTL, ROLLOUT_TICK};
pub use targeting::{ChannelOverview, ChannelRulesChange, DesiredChannel, DeviceLookup};

use crate::store::{BlobStore, CatalogStore};
use canary_tally::CanaryTally;
use fleet_tally::FleetTally;
use staging::Staging;
use target_cache::TargetCache;
use unregistered::UnregisteredTally;

/// What the catalog is built with besides its stores.
#[derive(Debug, Clone)]
pub struct CatalogSettings {
    /// How long an `/updates` resolution is reused (CACHE_RESULT_DURATION).
    pub cache_duration: Duration,
    /// Where uploads are written while they are checked.
    pub staging: Staging,
    /// Largest accepted bundle (MAX_BUNDLE_SIZE).
    pub max_bundle_size: u64,
    /// The only folder `Bundle` resources may import objects of the bucket from
    /// (BUNDLE_IMPORT_PREFIX).
    pub import_prefix: String,
}

pub struct Catalog {
    metadata: Arc<dyn CatalogStore>,
    blobs: Arc<dyn BlobStore>,
    targets: TargetCache,
    unregistered: UnregisteredTally,
    canaries: CanaryTally,
    fleet: FleetTally,
    staging: Staging,
    max_bundle_size: u64,
    import_prefix: String,
}

impl Catalog {
    pub fn new(
        metadata: Arc<dyn CatalogStore>,
        blobs: Arc<dyn BlobStore>,
        settings: CatalogSettings,
    ) -> Catalog {
        Catalog {
            metadata,
            blobs,
            targets: TargetCache::new(settings.cache_duration),
            unregistered: UnregisteredTally::default(),
            canaries: CanaryTally::default(),
            fleet: FleetTally::default(),
            staging: settings.staging,
            max_bundle_size: settings.max_bundle_size,
            import_prefix: settings.import_prefix,
        }
    }

    /// Largest accepted bundle, in bytes.
    pub fn max_bundle_size(&self) -> u64 {
        self.max_bundle_size
    }
}

/// The ticker of a background job: the first tick at once, and a tick missed while the job
/// ran late is delayed rather than fired in a burst.
fn ticker(every: std::time::Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}
