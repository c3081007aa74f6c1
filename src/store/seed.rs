//! The seed's MongoDB database (tanapoln/capgo-server: collections `bundles` and `releases`,
//! fields as its Go models wrote them), read only: `capgo-server migrate` lists its documents
//! and never writes, creates an index, or changes anything there.

use mongodb::bson::oid::ObjectId;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;

use super::mongo::{all, map_error, open_database};
use super::StoreError;
use crate::domain::seed::{SeedActive, SeedBundle, SeedRelease};
use crate::domain::{RecordId, UnixMillis};

/// What a MongoDB database holds, judged from its collections and a sample document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseKind {
    /// No collections (or no such database).
    Empty,
    /// The seed's: `bundles` and/or `releases`, bundles with a `public_download_url`.
    Seed,
    /// This server's (its counters, channels, tokens, or bundles with a `blob_key`).
    CapgoServer,
    /// Something else; its collections.
    Other(Vec<String>),
}

/// Collections only this server makes.
const OUR_COLLECTIONS: &[&str] = &[
    "counters",
    "channels",
    "stats_events",
    "api_tokens",
    "audit_log",
];

/// A seed database, once it was checked to be one.
pub struct SeedDatabase {
    db: Database,
}

/// A seed document that cannot be read as the seed wrote it, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// `bundles` or `releases`.
    pub collection: &'static str,
    /// Its `_id`, as far as it could be read.
    pub id: String,
    pub problem: String,
}

impl SeedDatabase {
    /// What the database `database` at `uri` holds; `setting` names where the URI came from.
    pub async fn kind_of(
        uri: &str,
        database: &str,
        setting: &str,
    ) -> Result<DatabaseKind, StoreError> {
        kind(&open_database(uri, database, setting).await?).await
    }

    /// Opens the seed's database, refusing (with what it found instead) one that is not.
    pub async fn open(
        uri: &str,
        database: &str,
        setting: &str,
    ) -> Result<SeedDatabase, StoreError> {
        let db = open_database(uri, database, setting).await?;
        let refusal = match kind(&db).await? {
            DatabaseKind::Seed => return Ok(SeedDatabase { db }),
            DatabaseKind::Empty => "it has no collections (or does not exist)".to_string(),
            DatabaseKind::CapgoServer => {
                "it is a capgo-server database (it has this server's collections or fields)"
                    .to_string()
            }
            DatabaseKind::Other(names) => format!(
                "it has neither a `bundles` collection with the seed's fields nor a `releases` \
                 collection (it has: {})",
                names.join(", ")
            ),
        };
        Err(StoreError::invalid(format!(
            "MongoDB database {database:?} is not a tanapoln/capgo-server (seed) database: \
             {refusal}; give the seed's MONGO_DATABASE (its default is \"capgo\") and connection"
        )))
    }

    /// Every document of `bundles`, in the collection's natural order; documents that are not
    /// as the seed wrote them come back apart.
    pub async fn bundles(&self) -> Result<(Vec<SeedBundle>, Vec<Unreadable>), StoreError> {
        self.read("bundles", seed_bundle).await
    }

    /// Every document of `releases`, in natural order (the order the seed's `/updates` found
    /// them in when duplicates existed).
    pub async fn releases(&self) -> Result<(Vec<SeedRelease>, Vec<Unreadable>), StoreError> {
        self.read("releases", seed_release).await
    }

    async fn read<T>(
        &self,
        collection: &'static str,
        parse: fn(&Document) -> Result<T, String>,
    ) -> Result<(Vec<T>, Vec<Unreadable>), StoreError> {
        let docs: Vec<Document> =
            all(self.db.collection::<Document>(collection).find(doc! {})).await?;
        let mut records = Vec::new();
        let mut unreadable = Vec::new();
        for document in &docs {
            match parse(document) {
                Ok(record) => records.push(record),
                Err(problem) => unreadable.push(Unreadable {
                    collection,
                    id: document
                        .get("_id")
                        .map_or_else(|| "(no _id)".to_string(), describe_id),
                    problem,
                }),
            }
        }
        Ok((records, unreadable))
    }
}

async fn kind(db: &Database) -> Result<DatabaseKind, StoreError> {
    let names = db.list_collection_names().await.map_err(map_error)?;
    if names.is_empty() {
        return Ok(DatabaseKind::Empty);
    }
    if names.iter().any(|n| OUR_COLLECTIONS.contains(&n.as_str())) {
        return Ok(DatabaseKind::CapgoServer);
    }
    if !names.iter().any(|n| n == "bundles" || n == "releases") {
        return Ok(DatabaseKind::Other(names));
    }
    let sample = db
        .collection::<Document>("bundles")
        .find_one(doc! {})
        .await
        .map_err(map_error)?;
    Ok(match sample {
        Some(bundle) if bundle.contains_key("blob_key") => DatabaseKind::CapgoServer,
        Some(bundle) if !bundle.contains_key("public_download_url") => DatabaseKind::Other(names),
        _ => DatabaseKind::Seed,
    })
}

fn describe_id(id: &Bson) -> String {
    match id {
        Bson::ObjectId(oid) => oid.to_hex(),
        other => other.to_string(),
    }
}

fn object_id(doc: &Document, field: &str) -> Result<ObjectId, String> {
    match doc.get(field) {
        Some(Bson::ObjectId(oid)) => Ok(*oid),
        None => Err(format!("{field} is missing")),
        Some(other) => Err(format!("{field} is not an ObjectId: {other}")),
    }
}

fn record_id(oid: ObjectId) -> RecordId {
    RecordId::from_stored(oid.to_hex())
}

fn string(doc: &Document, field: &str) -> Result<String, String> {
    match doc.get(field) {
        Some(Bson::String(text)) => Ok(text.clone()),
        None => Err(format!("{field} is missing")),
        Some(other) => Err(format!("{field} is not a string: {other}")),
    }
}

fn date(doc: &Document, field: &str) -> Result<Option<UnixMillis>, String> {
    match doc.get(field) {
        Some(Bson::DateTime(at)) => Ok(Some(at.timestamp_millis())),
        None | Some(Bson::Null) => Ok(None),
        Some(other) => Err(format!("{field} is not a date: {other}")),
    }
}

fn required_date(doc: &Document, field: &str) -> Result<UnixMillis, String> {
    date(doc, field)?.ok_or_else(|| format!("{field} is missing"))
}

fn seed_bundle(doc: &Document) -> Result<SeedBundle, String> {
    Ok(SeedBundle {
        id: record_id(object_id(doc, "_id")?),
        app_id: string(doc, "app_id")?,
        version_name: string(doc, "version_name")?,
        // Always written by the seed, "" when empty.
        description: match doc.get("description") {
            None | Some(Bson::Null) => String::new(),
            _ => string(doc, "description")?,
        },
        crc_checksum: string(doc, "crc_checksum")?,
        public_download_url: string(doc, "public_download_url")?,
        created_at: required_date(doc, "created_at")?,
    })
}

fn seed_release(doc: &Document) -> Result<SeedRelease, String> {
    let created_at = required_date(doc, "created_at")?;
    Ok(SeedRelease {
        id: record_id(object_id(doc, "_id")?),
        platform: string(doc, "platform")?,
        app_id: string(doc, "app_id")?,
        version_name: string(doc, "version_name")?,
        version_code: string(doc, "version_code")?,
        released_date: date(doc, "released_date")?,
        builtin_bundle_id: record_id(object_id(doc, "builtin_bundle_id")?),
        active: match doc.get("active_bundle_id") {
            None | Some(Bson::Null) => SeedActive::None,
            Some(Bson::ObjectId(oid)) if oid.bytes() == [0; 12] => SeedActive::Zero,
            Some(_) => SeedActive::Bundle(record_id(object_id(doc, "active_bundle_id")?)),
        },
        created_at,
        updated_at: date(doc, "updated_at")?.unwrap_or(created_at),
    })
}

#[cfg(test)]
mod tests {
    use mongodb::bson::DateTime;

    use super::*;

    fn oid(hex: &str) -> ObjectId {
        ObjectId::parse_str(hex).unwrap()
    }

    #[test]
    fn documents_as_the_seed_wrote_them() {
        let bundle = doc! {
            "_id": oid("66ed2f22a1b2c3d4e5000001"), "app_id": "com.example.app",
            "version_name": "1.0.0", "description": "", "crc_checksum": "abb346f3",
            "signature": "", "public_download_url": "http://minio:9000/capgo/2024-09/1.0.0_x.zip",
            "created_at": DateTime::from_millis(1_726_820_130_123),
        };
        let parsed = seed_bundle(&bundle).unwrap();
        assert_eq!(parsed.id.as_str(), "66ed2f22a1b2c3d4e5000001");
        assert_eq!(parsed.created_at, 1_726_820_130_123);
        assert_eq!(parsed.description, "");

        let release = |active: Bson, released: Bson| {
            doc! {
                "_id": oid("66ed3030a1b2c3d4e5000065"), "platform": "android",
                "app_id": "com.example.app", "version_name": "1.0.0", "version_code": "1",
                "released_date": released, "builtin_bundle_id": oid("66ed2f22a1b2c3d4e5000001"),
                "active_bundle_id": active,
                "updated_at": DateTime::from_millis(2), "created_at": DateTime::from_millis(1),
            }
        };
        let none = seed_release(&release(Bson::Null, Bson::Null)).unwrap();
        assert_eq!(none.active, SeedActive::None);
        assert_eq!(none.released_date, None);
        let zero = seed_release(&release(
            Bson::ObjectId(oid("000000000000000000000000")),
            Bson::DateTime(DateTime::from_millis(5)),
        ))
        .unwrap();
        assert_eq!(zero.active, SeedActive::Zero);
        assert_eq!(zero.released_date, Some(5));
        let set = seed_release(&release(
            Bson::ObjectId(oid("66fd28e6a1b2c3d4e5000003")),
            Bson::Null,
        ))
        .unwrap();
        assert_eq!(
            set.active,
            SeedActive::Bundle(RecordId::from_stored("66fd28e6a1b2c3d4e5000003".into()))
        );
        assert!(seed_release(&release(Bson::String("x".into()), Bson::Null))
            .unwrap_err()
            .contains("active_bundle_id is not an ObjectId"));
        let mut numeric_code = release(Bson::Null, Bson::Null);
        numeric_code.insert("version_code", 12);
        assert!(seed_release(&numeric_code)
            .unwrap_err()
            .contains("version_code is not a string"));
    }
}
