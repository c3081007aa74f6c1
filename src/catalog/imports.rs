//! Records brought over from another server (`capgo-server migrate` from the seed). They keep
//! their ids and times, so ids in people's scripts keep working, and pass the same rules as
//! records made here: a bundle goes through the ingest path (size limit, SHA-256 and CRC32 of
//! its bytes, the zip checks, the expected checksum), a release through the release rules.

use futures_util::Stream;

use super::bundles::SourceError;
use super::{Catalog, CatalogError, NewBundle, NewRelease};
use crate::domain::{Bundle, ChannelName, RecordId, Release, UnixMillis};

/// A bundle record from elsewhere: what it is, and the id and time it had there.
#[derive(Debug, Clone)]
pub struct ImportedBundle {
    pub id: RecordId,
    pub created_at: UnixMillis,
    pub new: NewBundle,
}

/// A release record from elsewhere.
#[derive(Debug, Clone)]
pub struct ImportedRelease {
    pub id: RecordId,
    pub new: NewRelease,
    /// The bundle its `production` channel serves, if any.
    pub production_bundle_id: Option<RecordId>,
    pub release_date: Option<UnixMillis>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

impl Catalog {
    /// Stages `body` and adds the bundle under its own id: the whole ingest path.
    pub async fn import_bundle<S, B, E>(
        &self,
        imported: ImportedBundle,
        body: S,
    ) -> Result<Bundle, SourceError<E>>
    where
        S: Stream<Item = Result<B, E>>,
        B: AsRef<[u8]>,
    {
        self.check_new_bundle(&imported.new).await?;
        let staged = self.stage(body).await?;
        Ok(self
            .add_bundle_as(imported.id, imported.created_at, imported.new, staged)
            .await?)
    }

    /// Records the release under its own id, with its production bundle (of the same app).
    pub async fn import_release(&self, imported: ImportedRelease) -> Result<Release, CatalogError> {
        let mut release = self
            .checked_release(imported.new, imported.id, imported.created_at)
            .await?;
        if let Some(bundle_id) = &imported.production_bundle_id {
            let bundle = self
                .bundle_for_app(bundle_id.as_str(), "active_bundle_id", &release.key.app_id)
                .await?;
            release
                .channels
                .insert(ChannelName::default_channel(), bundle.id);
        }
        release.release_date = imported.release_date;
        release.updated_at = imported.updated_at;
        self.insert_release(&release).await?;
        Ok(release)
    }
}
