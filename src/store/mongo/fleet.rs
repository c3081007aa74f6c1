//! The fleet overview's counts and the retention of raw stats (see [`FleetStore`]).
//!
//! `fleet_counts`: one document per period and key, `_id` the key itself (with the period's
//! `start` and `span`), with `events`, the device sketch as binary, and a revision. Replicas merge without a transaction: read,
//! merge, write back only if the revision is unchanged (or insert if absent), retrying.

use async_trait::async_trait;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{doc, Binary, Bson, DateTime, Document};
use mongodb::Collection;

use super::{all, map_error, plain_index, MongoMetadataStore, StoreError};
use crate::domain::fleet::{FleetCount, FleetKey, Span};
use crate::domain::sketch::DistinctSketch;
use crate::domain::{ChannelName, Platform, ReleaseKey, UnixMillis};
use crate::store::FleetStore;

/// How often a merge is retried when another replica wrote the same count meanwhile.
const MERGE_ATTEMPTS: usize = 8;

fn span_name(span: Span) -> &'static str {
    match span {
        Span::Day => "day",
        Span::Hour => "hour",
    }
}

fn id_of(count: &FleetCount) -> Document {
    let (start, span) = (count.start, span_name(count.span));
    match &count.key {
        FleetKey::Check {
            release,
            channel,
            bundle,
        } => doc! {
            "app_id": &release.app_id, "start": start, "span": span, "kind": "check",
            "platform": release.platform.as_str(), "version_build": &release.version_name,
            "version_code": &release.version_code, "channel": channel.as_str(), "bundle": bundle,
        },
        FleetKey::Report {
            app_id,
            bundle,
            action,
        } => doc! {
            "app_id": app_id, "start": start, "span": span, "kind": "report", "bundle": bundle,
            "action": action,
        },
    }
}

fn count_from(document: &Document) -> Option<FleetCount> {
    let id = document.get_document("_id").ok()?;
    let text = |field: &str| id.get_str(field).ok().map(str::to_string);
    let app_id = text("app_id")?;
    let key = match id.get_str("kind").ok()? {
        "check" => FleetKey::Check {
            release: ReleaseKey {
                platform: text("platform")?.parse::<Platform>().ok()?,
                app_id,
                version_name: text("version_build")?,
                version_code: text("version_code")?,
            },
            channel: ChannelName::parse(&text("channel")?).ok()?,
            bundle: text("bundle")?,
        },
        _ => FleetKey::Report {
            app_id,
            bundle: text("bundle")?,
            action: text("action")?,
        },
    };
    let span = [Span::Day, Span::Hour]
        .into_iter()
        .find(|span| id.get_str("span") == Ok(span_name(*span)))?;
    Some(FleetCount {
        start: id.get_i64("start").ok()?,
        span,
        key,
        events: document.get_i64("events").ok()? as u64,
        devices: DistinctSketch::from_bytes(document.get_binary_generic("devices").ok()?)?,
    })
}

fn binary(sketch: &DistinctSketch) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: sketch.to_bytes(),
    })
}

impl MongoMetadataStore {
    fn fleet(&self) -> Collection<Document> {
        self.db.collection("fleet_counts")
    }

    pub(super) async fn migrate_fleet(&self) -> Result<(), StoreError> {
        self.fleet()
            .create_index(plain_index(doc! {"_id.app_id": 1, "_id.start": 1}))
            .await
            .map_err(map_error)?;
        self.fleet()
            .create_index(plain_index(doc! {"_id.span": 1, "_id.start": 1}))
            .await
            .map_err(map_error)?;
        self.db
            .collection::<Document>("stats_events")
            .create_index(plain_index(doc! {"occurred_at": 1}))
            .await
            .map_err(map_error)?;
        Ok(())
    }

    /// Merges one count: read, merge, compare-and-swap on the revision.
    async fn merge_fleet_count(&self, count: &FleetCount) -> Result<(), StoreError> {
        let id = id_of(count);
        for _ in 0..MERGE_ATTEMPTS {
            let stored = self
                .fleet()
                .find_one(doc! {"_id": &id})
                .await
                .map_err(map_error)?;
            let Some(stored) = stored else {
                let inserted = self
                    .fleet()
                    .insert_one(doc! {
                        "_id": &id, "events": count.events as i64,
                        "devices": binary(&count.devices), "revision": 0i64,
                    })
                    .await;
                match inserted.map_err(map_error) {
                    Ok(_) => return Ok(()),
                    Err(StoreError::Duplicate(_)) => continue,
                    Err(e) => return Err(e),
                }
            };
            let revision = stored.get_i64("revision").unwrap_or(0);
            let mut merged = count.clone();
            if let Some(existing) = count_from(&stored) {
                merged.merge(&existing);
            }
            let written = self
                .fleet()
                .update_one(
                    doc! {"_id": &id, "revision": revision},
                    doc! {"$set": {
                        "events": merged.events as i64,
                        "devices": binary(&merged.devices),
                        "revision": revision + 1,
                    }},
                )
                .await
                .map_err(map_error)?;
            if written.matched_count > 0 {
                return Ok(());
            }
        }
        Err(StoreError::unavailable(
            "merging a fleet count",
            format!("other writers changed it {MERGE_ATTEMPTS} times in a row"),
        ))
    }
}

#[async_trait]
impl FleetStore for MongoMetadataStore {
    async fn record_fleet_counts(&self, counts: &[FleetCount]) -> Result<(), StoreError> {
        for count in counts {
            self.merge_fleet_count(count).await?;
        }
        Ok(())
    }

    async fn fleet_counts(
        &self,
        app_id: &str,
        since: UnixMillis,
    ) -> Result<Vec<FleetCount>, StoreError> {
        let docs: Vec<Document> = all(self
            .fleet()
            .find(doc! {"_id.app_id": app_id, "_id.start": {"$gte": since}})
            .sort(doc! {"_id.start": 1}))
        .await?;
        Ok(docs.iter().filter_map(count_from).collect())
    }

    async fn delete_fleet_counts_before(
        &self,
        span: Span,
        before: UnixMillis,
    ) -> Result<u64, StoreError> {
        let deleted = self
            .fleet()
            .delete_many(doc! {"_id.span": span_name(span), "_id.start": {"$lt": before}})
            .await
            .map_err(map_error)?;
        Ok(deleted.deleted_count)
    }

    async fn delete_stats_before(&self, before: UnixMillis) -> Result<u64, StoreError> {
        let deleted = self
            .db
            .collection::<Document>("stats_events")
            .delete_many(doc! {"occurred_at": {"$lt": DateTime::from_millis(before)}})
            .await
            .map_err(map_error)?;
        Ok(deleted.deleted_count)
    }
}
