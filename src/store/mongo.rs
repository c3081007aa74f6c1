//! The production metadata store: MongoDB (official driver), shared by every replica.
//!
//! Collections keep the seed's names and field names where they overlap (`bundles`,
//! `releases`, `crc_checksum`, `builtin_bundle_id`, …). Every write that can change an
//! `/updates` answer stamps the release document with a number from a shared counter, so
//! replicas notice each other's changes by polling [`MetadataStore::catalog_version`]: the
//! newest stamp (inserts and promotes) read through an index, a deletion counter, a counter
//! every channel-settings and device-override write bumps (see `mongo/targeting.rs`), and one
//! every rollout start or step bumps (see `mongo/rollouts.rs`).

mod app_keys;
mod fleet;
mod manifests;
mod rollouts;
mod targeting;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use super::{AccessStore, CatalogStore, CatalogVersion, StoreError};
use crate::domain::access::{ApiToken, AuditCursor, AuditEntry};
use crate::domain::bundle::BundleDetails;
use crate::domain::channel::Channel;
use crate::domain::stats::{day_of, StatsEvent};
use crate::domain::{
    Bundle, BundleEncryption, ChannelName, InvalidInput, RecordId, Release, ReleaseKey,
    ResourceRef, UnixMillis, DEFAULT_CHANNEL,
};

const DUPLICATE_KEY: i32 = 11000;
/// Shared counters: the stamp of answer-changing writes, release deletions, channel ids (and
/// [`targeting::TARGETING_COUNTER`], [`rollouts::ROLLOUT_COUNTER`]).
const REVISION_COUNTER: &str = "catalog_revision";
const DELETIONS_COUNTER: &str = "release_deletions";
const CHANNEL_ID_COUNTER: &str = "channel_id";
/// How long a pin or a deletion mark holds when its writer died before removing it. Longer
/// than any single write, so a live writer's marks never expire under it.
const PIN_LIFETIME_MS: i64 = 30_000;
/// How often a release write is retried when another writer changed the release meanwhile.
const WRITE_ATTEMPTS: usize = 5;
/// How long an operation waits for a reachable server before failing (and `/updates` falls
/// back to what it last knew). The driver's 30 s default would stall devices.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize, Deserialize)]
struct BundleDoc {
    #[serde(rename = "_id")]
    id: ObjectId,
    app_id: String,
    version_name: String,
    description: String,
    sha256: String,
    crc_checksum: String,
    size: i64,
    blob_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encrypted_checksum: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    created_at: DateTime,
    /// `Kind/namespace/name` of the Kubernetes resource this record was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    /// Absent in bundles stored before bundles had links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link: Option<String>,
    /// Absent in bundles stored before bundles had a minimum native version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_update_version: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChannelEntry {
    name: String,
    bundle_id: ObjectId,
    /// When the channel was pointed at `bundle_id` (absent: before this was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    assigned_at: Option<DateTime>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ReleaseDoc {
    #[serde(rename = "_id")]
    id: ObjectId,
    platform: String,
    app_id: String,
    version_name: String,
    version_code: String,
    builtin_bundle_id: ObjectId,
    /// The bundle of the `production` channel, as the seed called it.
    #[serde(default)]
    active_bundle_id: Option<ObjectId>,
    #[serde(default)]
    channels: Vec<ChannelEntry>,
    #[serde(default)]
    released_date: Option<DateTime>,
    created_at: DateTime,
    updated_at: DateTime,
    /// Stamp from the shared counter, bumped by every write to the release.
    #[serde(default)]
    revision: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChannelDoc {
    #[serde(rename = "_id")]
    id: i64,
    app_id: String,
    name: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct StatsDoc {
    occurred_at: DateTime,
    /// The UTC day of `occurred_at` in milliseconds, stored so counting per day needs no date
    /// operators.
    day: i64,
    app_id: String,
    device_id: String,
    action: String,
    platform: Option<String>,
    version_name: Option<String>,
    old_version_name: Option<String>,
    version_build: Option<String>,
    version_code: Option<String>,
    plugin_version: Option<String>,
    is_emulator: Option<bool>,
    is_prod: Option<bool>,
    custom_id: Option<String>,
    metadata: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ApiTokenDoc {
    #[serde(rename = "_id")]
    id: ObjectId,
    name: String,
    scope: String,
    digest: String,
    created_at: DateTime,
    created_by: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct AuditDoc {
    #[serde(rename = "_id")]
    id: ObjectId,
    at: DateTime,
    actor: String,
    action: String,
    target: String,
    client_ip: String,
    status: i32,
    message: String,
}

impl ApiTokenDoc {
    fn into_token(self) -> Result<ApiToken, StoreError> {
        Ok(ApiToken {
            id: record_id(self.id),
            scope: self.scope.parse().map_err(|e: InvalidInput| {
                StoreError::internal(format!("API token {} has a bad scope", self.id), e)
            })?,
            name: self.name,
            digest: self.digest,
            created_at: millis(self.created_at),
            created_by: self.created_by,
        })
    }
}

impl From<AuditDoc> for AuditEntry {
    fn from(d: AuditDoc) -> AuditEntry {
        AuditEntry {
            id: record_id(d.id),
            at: millis(d.at),
            actor: d.actor,
            action: d.action,
            target: d.target,
            client_ip: d.client_ip,
            status: u16::try_from(d.status).unwrap_or(0),
            message: d.message,
        }
    }
}

fn oid(id: &RecordId) -> ObjectId {
    ObjectId::parse_str(id.as_str()).expect("record ids are ObjectId-shaped by construction")
}

fn record_id(id: ObjectId) -> RecordId {
    RecordId::from_stored(id.to_hex())
}

fn millis(at: DateTime) -> UnixMillis {
    at.timestamp_millis()
}

impl From<&Bundle> for BundleDoc {
    fn from(b: &Bundle) -> BundleDoc {
        let encryption = b.encryption.as_ref();
        BundleDoc {
            id: oid(&b.id),
            app_id: b.app_id.clone(),
            version_name: b.version_name.clone(),
            description: b.description.clone(),
            sha256: b.sha256.clone(),
            crc_checksum: b.crc32.clone(),
            size: b.size as i64,
            blob_key: b.blob_key.clone(),
            session_key: encryption.map(|e| e.session_key.clone()),
            encrypted_checksum: encryption.map(|e| e.checksum.clone()),
            key_id: encryption.and_then(|e| e.key_id.clone()),
            created_at: DateTime::from_millis(b.created_at),
            owner: b.owner.as_ref().map(ResourceRef::to_stored),
            link: b.link.clone(),
            min_update_version: b.min_update_version.clone(),
        }
    }
}

impl From<BundleDoc> for Bundle {
    fn from(d: BundleDoc) -> Bundle {
        Bundle {
            id: record_id(d.id),
            app_id: d.app_id,
            version_name: d.version_name,
            description: d.description,
            link: d.link,
            min_update_version: d.min_update_version,
            sha256: d.sha256,
            crc32: d.crc_checksum,
            size: d.size as u64,
            blob_key: d.blob_key,
            encryption: d.session_key.map(|session_key| BundleEncryption {
                session_key,
                checksum: d.encrypted_checksum.unwrap_or_default(),
                key_id: d.key_id,
            }),
            created_at: millis(d.created_at),
            owner: d.owner.as_deref().and_then(ResourceRef::from_stored),
        }
    }
}

impl ReleaseDoc {
    fn new(r: &Release, revision: i64) -> ReleaseDoc {
        ReleaseDoc {
            id: oid(&r.id),
            platform: r.key.platform.as_str().to_string(),
            app_id: r.key.app_id.clone(),
            version_name: r.key.version_name.clone(),
            version_code: r.key.version_code.clone(),
            builtin_bundle_id: oid(&r.builtin_bundle_id),
            active_bundle_id: r.production_bundle().map(oid),
            channels: r
                .channels
                .iter()
                .map(|(name, bundle)| ChannelEntry {
                    name: name.to_string(),
                    bundle_id: oid(bundle),
                    assigned_at: r.assigned_at.get(name).copied().map(DateTime::from_millis),
                })
                .collect(),
            released_date: r.release_date.map(DateTime::from_millis),
            created_at: DateTime::from_millis(r.created_at),
            updated_at: DateTime::from_millis(r.updated_at),
            revision,
            owner: r.owner.as_ref().map(ResourceRef::to_stored),
        }
    }

    fn into_release(self) -> Result<Release, StoreError> {
        Ok(Release {
            id: record_id(self.id),
            key: ReleaseKey {
                platform: self.platform.parse().map_err(|e: InvalidInput| {
                    StoreError::internal(format!("release {} has a bad platform", self.id), e)
                })?,
                app_id: self.app_id,
                version_name: self.version_name,
                version_code: self.version_code,
            },
            builtin_bundle_id: record_id(self.builtin_bundle_id),
            assigned_at: self
                .channels
                .iter()
                .filter_map(|c| {
                    Some((
                        ChannelName::from_stored(c.name.clone()),
                        millis(c.assigned_at?),
                    ))
                })
                .collect(),
            channels: self
                .channels
                .into_iter()
                .map(|c| (ChannelName::from_stored(c.name), record_id(c.bundle_id)))
                .collect(),
            release_date: self.released_date.map(millis),
            created_at: millis(self.created_at),
            updated_at: millis(self.updated_at),
            owner: self.owner.as_deref().and_then(ResourceRef::from_stored),
        })
    }
}

/// The bundles one write pinned (see [`MongoMetadataStore::pin_bundles`]).
struct BundlePins {
    op: ObjectId,
    bundles: Vec<ObjectId>,
}

/// Bundles not marked for deletion, or whose mark expired (its deleter died).
fn not_being_deleted() -> Document {
    let expired = DateTime::from_millis(DateTime::now().timestamp_millis() - PIN_LIFETIME_MS);
    doc! {"$or": [{"deleting_since": null}, {"deleting_since": {"$lt": expired}}]}
}

/// Bundles no live write has pinned.
fn no_fresh_pins() -> Document {
    let expired = DateTime::from_millis(DateTime::now().timestamp_millis() - PIN_LIFETIME_MS);
    doc! {"pins": {"$not": {"$elemMatch": {"at": {"$gte": expired}}}}}
}

pub(super) fn map_error(e: mongodb::error::Error) -> StoreError {
    let duplicate = match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().any(|w| w.code == DUPLICATE_KEY)),
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    };
    if duplicate {
        return StoreError::Duplicate(e.to_string());
    }
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. } => StoreError::unavailable("MongoDB is unreachable", e),
        _ => StoreError::internal("MongoDB", e),
    }
}

/// Every document a query returns, with driver errors mapped.
pub(super) async fn all<T>(
    query: impl std::future::IntoFuture<Output = mongodb::error::Result<mongodb::Cursor<T>>>,
) -> Result<Vec<T>, StoreError>
where
    T: serde::de::DeserializeOwned + Send + Sync + Unpin,
{
    query
        .await
        .map_err(map_error)?
        .try_collect()
        .await
        .map_err(map_error)
}

pub struct MongoMetadataStore {
    db: Database,
}

/// A database on the MongoDB server at `uri`, once the server answered; `setting` names where
/// the URI came from in error messages.
pub(super) async fn open_database(
    uri: &str,
    database: &str,
    setting: &str,
) -> Result<Database, StoreError> {
    let mut options = ClientOptions::parse(uri)
        .await
        .map_err(|e| StoreError::internal(format!("{setting} is not a valid MongoDB URI"), e))?;
    options
        .server_selection_timeout
        .get_or_insert(SERVER_SELECTION_TIMEOUT);
    options
        .connect_timeout
        .get_or_insert(SERVER_SELECTION_TIMEOUT);
    options
        .app_name
        .get_or_insert_with(|| "capgo-server".to_string());
    let db = Client::with_options(options)
        .map_err(map_error)?
        .database(database);
    db.run_command(doc! {"ping": 1})
        .await
        .map_err(|e| match map_error(e) {
            StoreError::Unavailable { source, .. } => StoreError::Unavailable {
                context: format!("cannot reach MongoDB database {database:?} ({setting})"),
                source,
            },
            other => other,
        })?;
    Ok(db)
}

/// An index on `keys` that refuses a second document with the same values.
fn unique_index(keys: Document) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().unique(true).build())
        .build()
}

/// An index on `keys` for queries.
fn plain_index(keys: Document) -> IndexModel {
    IndexModel::builder().keys(keys).build()
}

impl MongoMetadataStore {
    /// Connects (checking the server answers) and creates collections and indexes.
    pub async fn connect(uri: &str, database: &str) -> Result<MongoMetadataStore, StoreError> {
        let store = MongoMetadataStore {
            db: open_database(uri, database, "MONGO_CONNECTION_STRING").await?,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Creates the indexes every query needs; safe to run again.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.bundles()
            .create_indexes([
                unique_index(doc! {"app_id": 1, "version_name": 1}),
                plain_index(doc! {"created_at": -1}),
            ])
            .await
            .map_err(map_error)?;
        self.releases()
            .create_indexes([
                // The seed's unique index: one record per native build.
                unique_index(
                    doc! {"version_name": 1, "platform": 1, "app_id": 1, "version_code": 1},
                ),
                plain_index(doc! {"builtin_bundle_id": 1}),
                plain_index(doc! {"channels.bundle_id": 1}),
                plain_index(doc! {"revision": -1}),
                plain_index(doc! {"created_at": -1}),
            ])
            .await
            .map_err(map_error)?;
        self.channel_docs()
            .create_index(unique_index(doc! {"app_id": 1, "name": 1}))
            .await
            .map_err(map_error)?;
        self.stats()
            .create_index(plain_index(
                doc! {"app_id": 1, "version_name": 1, "occurred_at": 1},
            ))
            .await
            .map_err(map_error)?;
        self.api_tokens()
            .create_indexes([
                unique_index(doc! {"name": 1}),
                unique_index(doc! {"digest": 1}),
            ])
            .await
            .map_err(map_error)?;
        self.audit_log()
            .create_index(plain_index(doc! {"at": -1, "_id": -1}))
            .await
            .map_err(map_error)?;
        self.migrate_targeting().await?;
        self.migrate_manifests().await?;
        self.migrate_fleet().await?;
        self.migrate_rollouts().await
    }

    fn bundles(&self) -> Collection<BundleDoc> {
        self.db.collection("bundles")
    }
    fn releases(&self) -> Collection<ReleaseDoc> {
        self.db.collection("releases")
    }
    fn channel_docs(&self) -> Collection<ChannelDoc> {
        self.db.collection("channels")
    }
    fn stats(&self) -> Collection<StatsDoc> {
        self.db.collection("stats_events")
    }
    fn api_tokens(&self) -> Collection<ApiTokenDoc> {
        self.db.collection("api_tokens")
    }
    fn audit_log(&self) -> Collection<AuditDoc> {
        self.db.collection("audit_log")
    }
    fn counters(&self) -> Collection<Document> {
        self.db.collection("counters")
    }

    /// The next value of a shared counter.
    async fn next(&self, counter: &str) -> Result<i64, StoreError> {
        let updated = self
            .counters()
            .find_one_and_update(doc! {"_id": counter}, doc! {"$inc": {"seq": 1i64}})
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
            .map_err(map_error)?
            .ok_or_else(|| StoreError::invalid(format!("counter {counter} vanished")))?;
        updated
            .get_i64("seq")
            .map_err(|e| StoreError::internal(format!("counter {counter}"), e))
    }

    async fn ensure_channel(&self, app_id: &str, name: &str) -> Result<(), StoreError> {
        let filter = doc! {"app_id": app_id, "name": name};
        if self
            .channel_docs()
            .find_one(filter)
            .await
            .map_err(map_error)?
            .is_some()
        {
            return Ok(());
        }
        let id = self.next(CHANNEL_ID_COUNTER).await?;
        let doc = ChannelDoc {
            id,
            app_id: app_id.to_string(),
            name: name.to_string(),
        };
        match self.channel_docs().insert_one(doc).await.map_err(map_error) {
            // Another replica created it first: the same outcome.
            Ok(_) | Err(StoreError::Duplicate(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Changes which bundles a release names: read, change, then write back only if nobody
    /// wrote in between (the revision stamp), retrying otherwise. The bundles it ends up naming
    /// are pinned during the write, so a concurrent delete of one of them waits or refuses.
    async fn change_assignments(
        &self,
        id: &RecordId,
        updated_at: UnixMillis,
        change: impl Fn(&mut Release),
    ) -> Result<bool, StoreError> {
        for _ in 0..WRITE_ATTEMPTS {
            let Some(doc) = self
                .releases()
                .find_one(doc! {"_id": oid(id)})
                .await
                .map_err(map_error)?
            else {
                return Ok(false);
            };
            let read_revision = doc.revision;
            let mut release = doc.into_release()?;
            let before = release.channels.clone();
            change(&mut release);
            release.stamp_assignments(&before, updated_at);
            for channel in release.channels.keys() {
                self.ensure_channel(&release.key.app_id, channel.as_str())
                    .await?;
            }
            let pins = self.pin_bundles(release.referenced_bundles()).await?;
            let written = self
                .write_assignments(&release, read_revision, updated_at)
                .await;
            self.unpin_bundles(pins).await;
            if written? {
                return Ok(true);
            }
        }
        Err(StoreError::unavailable(
            format!("release {id} kept changing while being written"),
            format!("{WRITE_ATTEMPTS} attempts"),
        ))
    }

    /// Writes a release's assignments if its revision is still `read_revision`.
    async fn write_assignments(
        &self,
        release: &Release,
        read_revision: i64,
        updated_at: UnixMillis,
    ) -> Result<bool, StoreError> {
        let revision = self.next(REVISION_COUNTER).await?;
        let doc = ReleaseDoc::new(release, revision);
        // Documents written before revisions existed have none.
        let unchanged = if read_revision == 0 {
            doc! {"_id": doc.id, "revision": {"$in": [0i64, null]}}
        } else {
            doc! {"_id": doc.id, "revision": read_revision}
        };
        let channels: Vec<Document> = doc
            .channels
            .iter()
            .map(|c| doc! {"name": &c.name, "bundle_id": c.bundle_id, "assigned_at": c.assigned_at})
            .collect();
        let update = doc! {"$set": {
            "builtin_bundle_id": doc.builtin_bundle_id,
            "channels": channels,
            "active_bundle_id": doc.active_bundle_id,
            "updated_at": DateTime::from_millis(updated_at),
            "revision": revision,
        }};
        let result = self
            .releases()
            .update_one(unchanged, update)
            .await
            .map_err(map_error)?;
        Ok(result.matched_count > 0)
    }

    /// Pins bundles a write is about to name: a bundle being deleted cannot be pinned (the
    /// write is refused), and a pinned bundle cannot be marked for deletion. This pair of
    /// conditional single-document updates is what keeps references whole without
    /// transactions (see [`CatalogStore::delete_bundle`]).
    async fn pin_bundles<'a>(
        &self,
        ids: impl Iterator<Item = &'a RecordId>,
    ) -> Result<BundlePins, StoreError> {
        let pins = BundlePins {
            op: ObjectId::new(),
            bundles: Vec::new(),
        };
        let mut pins = pins;
        for id in ids {
            let bundle = oid(id);
            if pins.bundles.contains(&bundle) {
                continue;
            }
            let pinned = self
                .bundles()
                .update_one(
                    doc! {"$and": [{"_id": bundle}, not_being_deleted()]},
                    doc! {"$push": {"pins": {"op": pins.op, "at": DateTime::now()}}},
                )
                .await
                .map_err(map_error);
            match pinned {
                Ok(result) if result.matched_count > 0 => pins.bundles.push(bundle),
                outcome => {
                    self.unpin_bundles(pins).await;
                    outcome?;
                    return Err(StoreError::Reference(format!(
                        "bundle {id} does not exist or is being deleted"
                    )));
                }
            }
        }
        Ok(pins)
    }

    /// Removes a write's pins (and any left by a process that died mid-write). A failure only
    /// delays deletions of those bundles until the pins expire.
    async fn unpin_bundles(&self, pins: BundlePins) {
        if pins.bundles.is_empty() {
            return;
        }
        let expired = DateTime::from_millis(DateTime::now().timestamp_millis() - PIN_LIFETIME_MS);
        let bundles = doc! {"_id": {"$in": &pins.bundles}};
        // Two plain pulls rather than one with `$or`, which not every MongoDB-compatible
        // server accepts inside `$pull`.
        for pull in [doc! {"op": pins.op}, doc! {"at": {"$lt": expired}}] {
            let result = self
                .bundles()
                .update_many(bundles.clone(), doc! {"$pull": {"pins": pull}})
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %crate::error::Chain(&e), "could not unpin bundles; their pins expire by themselves");
                return;
            }
        }
    }

    /// Sets the owner of an unowned record of `collection` (`releases` or `bundles`).
    async fn adopt(
        &self,
        collection: &str,
        id: &RecordId,
        owner: &ResourceRef,
    ) -> Result<bool, StoreError> {
        let result = self
            .db
            .collection::<Document>(collection)
            .update_one(
                doc! {"_id": oid(id), "owner": null},
                doc! {"$set": {"owner": owner.to_stored()}},
            )
            .await
            .map_err(map_error)?;
        Ok(result.modified_count > 0)
    }

    async fn find_releases(&self, filter: Document) -> Result<Vec<Release>, StoreError> {
        let docs: Vec<ReleaseDoc> = all(self
            .releases()
            .find(filter)
            .sort(doc! {"created_at": -1, "_id": -1}))
        .await?;
        docs.into_iter().map(ReleaseDoc::into_release).collect()
    }
}

#[async_trait]
impl CatalogStore for MongoMetadataStore {
    async fn insert_bundle(&self, bundle: &Bundle) -> Result<(), StoreError> {
        self.bundles()
            .insert_one(BundleDoc::from(bundle))
            .await
            .map_err(map_error)?;
        Ok(())
    }

    async fn bundle(&self, id: &RecordId) -> Result<Option<Bundle>, StoreError> {
        let found = self
            .bundles()
            .find_one(doc! {"_id": oid(id)})
            .projection(manifests::without_manifest())
            .await
            .map_err(map_error)?;
        Ok(found.map(Bundle::from))
    }

    async fn bundle_by_version(
        &self,
        app_id: &str,
        version_name: &str,
    ) -> Result<Option<Bundle>, StoreError> {
        let filter = doc! {"app_id": app_id, "version_name": version_name};
        Ok(self
            .bundles()
            .find_one(filter)
            .projection(manifests::without_manifest())
            .await
            .map_err(map_error)?
            .map(Bundle::from))
    }

    async fn list_bundles(&self) -> Result<Vec<Bundle>, StoreError> {
        let docs: Vec<BundleDoc> = all(self
            .bundles()
            .find(doc! {})
            .projection(manifests::without_manifest())
            .sort(doc! {"created_at": -1, "_id": -1}))
        .await?;
        Ok(docs.into_iter().map(Bundle::from).collect())
    }

    async fn delete_bundle(&self, id: &RecordId) -> Result<bool, StoreError> {
        let bundle = oid(id);
        let mark = DateTime::now();
        let marked = self
            .bundles()
            .update_one(
                doc! {"$and": [{"_id": bundle}, not_being_deleted(), no_fresh_pins()]},
                doc! {"$set": {"deleting_since": mark}},
            )
            .await
            .map_err(map_error)?;
        if marked.matched_count == 0 {
            let exists = self
                .bundles()
                .find_one(doc! {"_id": bundle})
                .await
                .map_err(map_error)?
                .is_some();
            return if exists {
                Err(StoreError::Reference(format!(
                    "bundle {id} is being promoted or deleted right now; try again"
                )))
            } else {
                Ok(false)
            };
        }
        // Marked: no new write can name the bundle, and every write that pinned it before
        // the mark has finished, so this query sees every release that refers to it.
        let refused = if !self.releases_using_bundle(id).await?.is_empty() {
            Some(format!("bundle {id} is used by a release"))
        } else {
            let deleted = self
                .bundles()
                .delete_one(
                    doc! {"$and": [{"_id": bundle, "deleting_since": mark}, no_fresh_pins()]},
                )
                .await
                .map_err(map_error)?;
            (deleted.deleted_count == 0)
                .then(|| format!("bundle {id} was pinned while being deleted; try again"))
        };
        let Some(refused) = refused else {
            return Ok(true);
        };
        self.bundles()
            .update_one(
                doc! {"_id": bundle, "deleting_since": mark},
                doc! {"$unset": {"deleting_since": ""}},
            )
            .await
            .map_err(map_error)?;
        Err(StoreError::Reference(refused))
    }

    async fn insert_release(&self, release: &Release) -> Result<(), StoreError> {
        self.ensure_channel(&release.key.app_id, DEFAULT_CHANNEL)
            .await?;
        for channel in release.channels.keys() {
            self.ensure_channel(&release.key.app_id, channel.as_str())
                .await?;
        }
        let pins = self.pin_bundles(release.referenced_bundles()).await?;
        let revision = self.next(REVISION_COUNTER).await;
        let inserted = match revision {
            Ok(revision) => self
                .releases()
                .insert_one(ReleaseDoc::new(release, revision))
                .await
                .map(|_| ())
                .map_err(map_error),
            Err(e) => Err(e),
        };
        self.unpin_bundles(pins).await;
        inserted
    }

    async fn release(&self, id: &RecordId) -> Result<Option<Release>, StoreError> {
        let found = self
            .releases()
            .find_one(doc! {"_id": oid(id)})
            .await
            .map_err(map_error)?;
        found.map(ReleaseDoc::into_release).transpose()
    }

    async fn release_by_key(&self, key: &ReleaseKey) -> Result<Option<Release>, StoreError> {
        let filter = doc! {
            "version_name": &key.version_name, "platform": key.platform.as_str(),
            "app_id": &key.app_id, "version_code": &key.version_code,
        };
        let found = self.releases().find_one(filter).await.map_err(map_error)?;
        found.map(ReleaseDoc::into_release).transpose()
    }

    async fn list_releases(&self) -> Result<Vec<Release>, StoreError> {
        self.find_releases(doc! {}).await
    }

    async fn releases_using_bundle(
        &self,
        bundle_id: &RecordId,
    ) -> Result<Vec<Release>, StoreError> {
        let id = oid(bundle_id);
        self.find_releases(doc! {"$or": [{"builtin_bundle_id": id}, {"channels.bundle_id": id}]})
            .await
    }

    async fn set_release_date(
        &self,
        id: &RecordId,
        release_date: Option<UnixMillis>,
        updated_at: UnixMillis,
    ) -> Result<bool, StoreError> {
        let update = doc! {"$set": {
            "released_date": release_date.map(DateTime::from_millis),
            "updated_at": DateTime::from_millis(updated_at),
        }};
        let result = self
            .releases()
            .update_one(doc! {"_id": oid(id)}, update)
            .await
            .map_err(map_error)?;
        Ok(result.matched_count > 0)
    }

    async fn set_channel_bundle(
        &self,
        id: &RecordId,
        channel: &ChannelName,
        bundle_id: &RecordId,
        updated_at: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.change_assignments(id, updated_at, |release| {
            release.channels.insert(channel.clone(), bundle_id.clone());
        })
        .await
    }

    async fn replace_release_assignments(
        &self,
        id: &RecordId,
        builtin_bundle_id: &RecordId,
        channels: &BTreeMap<ChannelName, RecordId>,
        updated_at: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.change_assignments(id, updated_at, |release| {
            release.builtin_bundle_id = builtin_bundle_id.clone();
            release.channels = channels.clone();
        })
        .await
    }

    async fn delete_release(&self, id: &RecordId) -> Result<bool, StoreError> {
        let result = self
            .releases()
            .delete_one(doc! {"_id": oid(id)})
            .await
            .map_err(map_error)?;
        if result.deleted_count > 0 {
            // Counted after the delete: a replica that sees the new count also sees the delete.
            self.next(DELETIONS_COUNTER).await?;
        }
        // Also when the release was gone already: an interrupted earlier delete left them.
        self.delete_release_rollouts(id).await?;
        Ok(result.deleted_count > 0)
    }

    async fn channels(&self, app_id: &str) -> Result<Vec<Channel>, StoreError> {
        let docs: Vec<ChannelDoc> = all(self
            .channel_docs()
            .find(doc! {"app_id": app_id})
            .sort(doc! {"_id": 1}))
        .await?;
        Ok(docs
            .into_iter()
            .map(|d| Channel {
                id: d.id,
                app_id: d.app_id,
                name: ChannelName::from_stored(d.name),
            })
            .collect())
    }

    async fn insert_stats(&self, events: &[StatsEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let docs = events.iter().map(|e| StatsDoc {
            occurred_at: DateTime::from_millis(e.occurred_at),
            day: day_of(e.occurred_at),
            app_id: e.app_id.clone(),
            device_id: e.device_id.clone(),
            action: e.action.clone(),
            platform: e.platform.clone(),
            version_name: e.version_name.clone(),
            old_version_name: e.old_version_name.clone(),
            version_build: e.version_build.clone(),
            version_code: e.version_code.clone(),
            plugin_version: e.plugin_version.clone(),
            is_emulator: e.is_emulator,
            is_prod: e.is_prod,
            custom_id: e.custom_id.clone(),
            metadata: e.metadata.clone(),
        });
        self.stats().insert_many(docs).await.map_err(map_error)?;
        Ok(())
    }

    async fn bundle_blob_keys(&self) -> Result<Vec<String>, StoreError> {
        let docs: Vec<Document> = all(self
            .db
            .collection::<Document>("bundles")
            .find(doc! {})
            .projection(doc! {"blob_key": 1}))
        .await?;
        let mut keys: Vec<String> = docs
            .iter()
            .filter_map(|d| d.get_str("blob_key").ok().map(str::to_string))
            .collect();
        keys.extend(self.manifest_object_keys().await?);
        Ok(keys)
    }

    async fn catalog_version(&self) -> Result<Option<CatalogVersion>, StoreError> {
        // Read untyped: the projection leaves out fields a ReleaseDoc requires.
        let newest: Option<Document> = self
            .db
            .collection::<Document>("releases")
            .find_one(doc! {})
            .sort(doc! {"revision": -1})
            .projection(doc! {"revision": 1})
            .await
            .map_err(map_error)?;
        // Every counter in one round trip (this runs every poll, on every replica).
        let counters: Vec<Document> = all(self.counters().find(doc! {"_id": {"$in": [
            DELETIONS_COUNTER,
            targeting::TARGETING_COUNTER,
            rollouts::ROLLOUT_COUNTER,
        ]}}))
        .await?;
        let seq = |counter: &str| {
            counters
                .iter()
                .find(|d| d.get_str("_id").ok() == Some(counter))
                .and_then(|d| d.get_i64("seq").ok())
                .unwrap_or(0)
        };
        Ok(Some(CatalogVersion {
            newest_revision: newest.and_then(|d| d.get_i64("revision").ok()).unwrap_or(0),
            deletions: seq(DELETIONS_COUNTER),
            targeting_revision: seq(targeting::TARGETING_COUNTER),
            rollout_revision: seq(rollouts::ROLLOUT_COUNTER),
        }))
    }

    async fn adopt_release(&self, id: &RecordId, owner: &ResourceRef) -> Result<bool, StoreError> {
        self.adopt("releases", id, owner).await
    }

    async fn adopt_bundle(&self, id: &RecordId, owner: &ResourceRef) -> Result<bool, StoreError> {
        self.adopt("bundles", id, owner).await
    }

    async fn update_bundle_details(
        &self,
        id: &RecordId,
        details: &BundleDetails,
    ) -> Result<bool, StoreError> {
        let result = self
            .db
            .collection::<Document>("bundles")
            .update_one(
                doc! {"_id": oid(id)},
                doc! {"$set": {
                    "description": &details.description,
                    "link": details.link.as_deref(),
                    "min_update_version": details.min_update_version.as_deref(),
                }},
            )
            .await
            .map_err(map_error)?;
        Ok(result.matched_count > 0)
    }
}

#[async_trait]
impl AccessStore for MongoMetadataStore {
    async fn insert_api_token(&self, token: &ApiToken) -> Result<(), StoreError> {
        self.api_tokens()
            .insert_one(ApiTokenDoc {
                id: oid(&token.id),
                name: token.name.clone(),
                scope: token.scope.as_str().to_string(),
                digest: token.digest.clone(),
                created_at: DateTime::from_millis(token.created_at),
                created_by: token.created_by.clone(),
            })
            .await
            .map_err(map_error)?;
        Ok(())
    }

    async fn api_token_by_digest(&self, digest: &str) -> Result<Option<ApiToken>, StoreError> {
        self.api_tokens()
            .find_one(doc! {"digest": digest})
            .await
            .map_err(map_error)?
            .map(ApiTokenDoc::into_token)
            .transpose()
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        all(self.api_tokens().find(doc! {}).sort(doc! {"name": 1}))
            .await?
            .into_iter()
            .map(ApiTokenDoc::into_token)
            .collect()
    }

    async fn delete_api_token(&self, id: &RecordId) -> Result<bool, StoreError> {
        let result = self
            .api_tokens()
            .delete_one(doc! {"_id": oid(id)})
            .await
            .map_err(map_error)?;
        Ok(result.deleted_count > 0)
    }

    async fn insert_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.audit_log()
            .insert_one(AuditDoc {
                id: oid(&entry.id),
                at: DateTime::from_millis(entry.at),
                actor: entry.actor.clone(),
                action: entry.action.clone(),
                target: entry.target.clone(),
                client_ip: entry.client_ip.clone(),
                status: i32::from(entry.status),
                message: entry.message.clone(),
            })
            .await
            .map_err(map_error)?;
        Ok(())
    }

    async fn audit_page(
        &self,
        before: Option<&AuditCursor>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let filter = match before {
            None => doc! {},
            Some(cursor) => {
                let at = DateTime::from_millis(cursor.at);
                doc! {"$or": [
                    {"at": {"$lt": at}},
                    {"at": at, "_id": {"$lt": oid(&cursor.id)}},
                ]}
            }
        };
        let docs = all(self
            .audit_log()
            .find(filter)
            .sort(doc! {"at": -1, "_id": -1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX)))
        .await?;
        Ok(docs.into_iter().map(AuditEntry::from).collect())
    }
}
