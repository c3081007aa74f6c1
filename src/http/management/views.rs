//! Response shapes: the seed's fields first (so its scripts and UI keep working), then ours.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog::{Catalog, CatalogError};
use crate::domain::{rfc3339, Bundle, Release};

#[derive(Serialize)]
pub struct BundleView {
    pub id: String,
    pub app_id: String,
    pub version_name: String,
    pub description: String,
    pub crc_checksum: String,
    pub public_download_url: String,
    pub created_at: String,
    /// SHA-256 of the stored bytes.
    pub sha256: String,
    /// What devices verify: the SHA-256, or the encrypted checksum for encrypted bundles.
    pub checksum: String,
    pub size: u64,
    pub encrypted: bool,
    pub session_key: String,
    pub key_id: Option<String>,
    /// The Kubernetes resource managing this record (`Bundle ns/name`), `null` when made
    /// through the API; owned records can only be changed through their resource.
    pub owner: Option<String>,
    /// The releases that refer to this bundle (so it cannot be deleted), and which of their
    /// channels serve it.
    pub used_by: Vec<BundleUser>,
}

/// A release that refers to a bundle.
#[derive(Serialize)]
pub struct BundleUser {
    pub release_id: String,
    pub platform: String,
    pub version_name: String,
    pub version_code: String,
    /// Whether it is the release's builtin bundle.
    pub builtin: bool,
    /// The channels whose devices get this bundle now.
    pub serving: Vec<String>,
}

impl BundleUser {
    /// Every release of `releases` that refers to `bundle`.
    pub fn of(bundle: &Bundle, releases: &[Release]) -> Vec<BundleUser> {
        releases
            .iter()
            .filter(|release| release.refers_to(&bundle.id))
            .map(|release| BundleUser {
                release_id: release.id.to_string(),
                platform: release.key.platform.to_string(),
                version_name: release.key.version_name.clone(),
                version_code: release.key.version_code.clone(),
                builtin: release.builtin_bundle_id == bundle.id,
                serving: release
                    .serving_by_channel()
                    .into_iter()
                    .filter(|(_, serving)| serving.bundle_id == &bundle.id)
                    .map(|(channel, _)| channel.to_string())
                    .collect(),
            })
            .collect()
    }
}

impl BundleView {
    /// The view of `bundle`, with the URL devices download it from and the releases (of
    /// `releases`) that use it.
    pub async fn new(
        bundle: &Bundle,
        releases: &[Release],
        catalog: &Catalog,
    ) -> Result<BundleView, CatalogError> {
        Ok(BundleView {
            id: bundle.id.to_string(),
            app_id: bundle.app_id.clone(),
            version_name: bundle.version_name.clone(),
            description: bundle.description.clone(),
            crc_checksum: bundle.crc32.clone(),
            public_download_url: catalog.download_url(bundle).await?,
            created_at: rfc3339(bundle.created_at),
            sha256: bundle.sha256.clone(),
            checksum: bundle.checksum_for(None).to_string(),
            size: bundle.size,
            encrypted: bundle.encryption.is_some(),
            session_key: bundle.session_key().to_string(),
            key_id: bundle.key_id().map(str::to_string),
            owner: bundle.owner.as_ref().map(ToString::to_string),
            used_by: BundleUser::of(bundle, releases),
        })
    }
}

/// What one channel serves: `because` is `assigned` (its own bundle), `production` (it
/// follows production) or `builtin` (nothing assigned: the bundle inside the binary).
#[derive(Serialize)]
pub struct ServingView {
    pub bundle_id: String,
    pub because: &'static str,
}

#[derive(Serialize)]
pub struct ReleaseView {
    pub id: String,
    pub app_id: String,
    pub platform: String,
    pub version_name: String,
    pub version_code: String,
    pub release_date: Option<String>,
    pub builtin_bundle_id: String,
    /// The bundle the `production` channel serves; `null` when it serves the builtin bundle
    /// because none was set (as in the seed).
    pub active_bundle_id: Option<String>,
    pub updated_at: String,
    pub created_at: String,
    /// Every channel set on this release, by name.
    pub channels: BTreeMap<String, String>,
    /// What devices of each channel get, and why: every assigned channel and `production`.
    pub serving: BTreeMap<String, ServingView>,
    /// The Kubernetes resource managing this record (`Release ns/name`), or `null`.
    pub owner: Option<String>,
}

impl From<&Release> for ReleaseView {
    fn from(release: &Release) -> ReleaseView {
        ReleaseView {
            id: release.id.to_string(),
            app_id: release.key.app_id.clone(),
            platform: release.key.platform.to_string(),
            version_name: release.key.version_name.clone(),
            version_code: release.key.version_code.clone(),
            release_date: release.release_date.map(rfc3339),
            builtin_bundle_id: release.builtin_bundle_id.to_string(),
            active_bundle_id: release.production_bundle().map(ToString::to_string),
            updated_at: rfc3339(release.updated_at),
            created_at: rfc3339(release.created_at),
            channels: release
                .channels
                .iter()
                .map(|(name, id)| (name.to_string(), id.to_string()))
                .collect(),
            serving: release
                .serving_by_channel()
                .into_iter()
                .map(|(channel, serving)| {
                    let view = ServingView {
                        bundle_id: serving.bundle_id.to_string(),
                        because: serving.because.as_str(),
                    };
                    (channel.to_string(), view)
                })
                .collect(),
            owner: release.owner.as_ref().map(ToString::to_string),
        }
    }
}
