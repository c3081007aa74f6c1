//! Response shapes: the seed's fields first (so its scripts and UI keep working), then ours.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog::{Catalog, CatalogError};
use crate::domain::{rfc3339, Bundle, Release, DEFAULT_CHANNEL};

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
}

impl BundleView {
    /// The view of `bundle`, with the URL devices download it from.
    pub async fn new(bundle: &Bundle, catalog: &Catalog) -> Result<BundleView, CatalogError> {
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
        })
    }
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
            active_bundle_id: release
                .channels
                .iter()
                .find(|(name, _)| name.as_str() == DEFAULT_CHANNEL)
                .map(|(_, id)| id.to_string()),
            updated_at: rfc3339(release.updated_at),
            created_at: rfc3339(release.created_at),
            channels: release
                .channels
                .iter()
                .map(|(name, id)| (name.to_string(), id.to_string()))
                .collect(),
            owner: release.owner.as_ref().map(ToString::to_string),
        }
    }
}
