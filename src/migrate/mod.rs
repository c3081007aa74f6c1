//! `capgo-server migrate`: creates or upgrades the storage schema and, given the seed's
//! database (`--from-seed-database`), brings the records of a tanapoln/capgo-server (the seed)
//! into this server, keeping their ids.
//!
//! Safe while the seed still serves, because it only adds:
//! - the seed's database is only read (`find`; see [`crate::store::seed`]), its bucket only
//!   read (`GetObject`); this server's database must be another one;
//! - every object is **copied** into this server's blob store under its own key layout
//!   (`bundles/<id>.zip`), after the checks every upload passes (size, zip layout, and the
//!   seed's CRC32 against the bytes). Referencing the seed's objects where they are would have
//!   let a bundle deletion here delete the seed's object, and would have made the orphan sweep
//!   judge keys it does not own; copied, the seed's objects are never written or deleted, and
//!   the sweep, which lists `bundles/` and `files/` only, never sees them even in a shared bucket;
//! - records are written through the catalog under the seed's ids: a record already here is
//!   skipped, so a second run adds nothing and an interrupted run continues where it stopped
//!   (an object stored by a run killed before its record was written is stored again; one left
//!   behind is the orphan sweep's).
//!
//! Which records are kept of the duplicates the seed allowed, and what a seed release becomes,
//! are decided in [`crate::domain::seed`]; the rules every record passes are the catalog's.

mod report;

use std::collections::HashMap;
use std::time::Duration;

use crate::app::{self, DataDir, StartupError};
use crate::catalog::{
    Catalog, CatalogError, ExpectedChecksum, ImportedBundle, ImportedRelease, NewBundle,
    NewRelease, SourceError,
};
use crate::cli::MigrateArgs;
use crate::config::Config;
use crate::domain::seed::{
    object_key, plan_bundles, plan_releases, resolve_bundles, BundleStep, ReleaseStep, SeedBundle,
    SeedRelease,
};
use crate::domain::RecordId;
use crate::store::s3::{DownloadUrls, S3BlobStore, S3Settings};
use crate::store::seed::{DatabaseKind, SeedDatabase};
use crate::store::{BlobStore, StoreError};
use report::Report;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// The settings cannot work (a missing setting, the seed's database as the target).
    #[error("{0}")]
    Refused(String),
    #[error("cannot read the seed ({what})")]
    Seed {
        what: String,
        #[source]
        source: StoreError,
    },
    #[error("the migration stopped before the end (see the summary); run it again: it continues where it stopped")]
    Interrupted,
    #[error("{0} seed record(s) were not migrated (see the summary); fix them and run again: what was migrated is skipped")]
    Incomplete(usize),
    #[error("could not list the bundles to give them manifests")]
    Manifests(#[source] CatalogError),
    #[error("{0} bundle(s) did not get their manifest (see the log); run again: bundles done are skipped")]
    ManifestsIncomplete(usize),
}

/// Runs the command: the schema job, then the seed's records when a seed database is given.
pub async fn run(config: &Config, args: &MigrateArgs) -> Result<(), MigrateError> {
    let Some(seed_database) = args.from_seed_database.as_deref() else {
        let data = DataDir::open(&config.data_dir)?;
        let catalog = app::migrate(config, &data).await?;
        return fill_manifests(&catalog).await;
    };
    let seed = SeedSettings::resolve(config, args, seed_database)?;
    refuse_the_seed_as_target(config, &seed).await?;
    let database = SeedDatabase::open(&seed.mongo, &seed.database, seed.mongo_setting)
        .await
        .map_err(|source| MigrateError::Seed {
            what: format!("MongoDB database {:?}", seed.database),
            source,
        })?;
    let objects = S3BlobStore::connect(S3Settings {
        bucket: seed.bucket.clone(),
        endpoint: seed.endpoint.clone(),
        // Only read here; no URL is ever made from this store.
        download_urls: DownloadUrls::Presigned(Duration::from_secs(60)),
    })
    .await
    .map_err(|source| MigrateError::Seed {
        what: format!(
            "S3 bucket {:?}: --from-seed-bucket / SEED_S3_BUCKET, --from-seed-s3-endpoint / SEED_S3_BASE_ENDPOINT",
            seed.bucket
        ),
        source,
    })?;
    let data = DataDir::open(&config.data_dir)?;
    let catalog = app::migrate(config, &data).await?;
    let mut report = Report::new(&seed.database, &seed.bucket);
    let outcome = Migration {
        catalog: &catalog,
        objects: &objects,
        bucket: &seed.bucket,
        report: &mut report,
    }
    .run(&database)
    .await;
    println!("{report}");
    outcome?;
    match report.not_migrated() {
        0 => fill_manifests(&catalog).await,
        n => Err(MigrateError::Incomplete(n)),
    }
}

/// Gives bundles stored before manifests existed theirs (see [`Catalog::fill_manifests`]).
async fn fill_manifests(catalog: &Catalog) -> Result<(), MigrateError> {
    let fill = catalog
        .fill_manifests()
        .await
        .map_err(MigrateError::Manifests)?;
    println!(
        "manifests: {} recorded now, {} already there, {} bundles served as zips only \
         (encrypted, or more files than a manifest lists), {} failed",
        fill.filled, fill.present, fill.not_applicable, fill.failed
    );
    match fill.failed {
        0 => Ok(()),
        n => Err(MigrateError::ManifestsIncomplete(n)),
    }
}

/// Where the seed is, from the options and this server's own settings.
struct SeedSettings {
    mongo: String,
    mongo_setting: &'static str,
    database: String,
    bucket: String,
    endpoint: Option<String>,
}

impl SeedSettings {
    fn resolve(
        config: &Config,
        args: &MigrateArgs,
        database: &str,
    ) -> Result<SeedSettings, MigrateError> {
        let (mongo, mongo_setting) = match (&args.from_seed_mongo, &config.mongo_connection_string)
        {
            (Some(uri), _) => (
                uri.clone(),
                "--from-seed-mongo / SEED_MONGO_CONNECTION_STRING",
            ),
            (None, Some(uri)) => (uri.clone(), "MONGO_CONNECTION_STRING"),
            (None, None) => {
                return Err(MigrateError::Refused(
                    "the seed's MongoDB is unknown: give --from-seed-mongo (or \
                     SEED_MONGO_CONNECTION_STRING), or MONGO_CONNECTION_STRING when this server \
                     uses the same MongoDB"
                        .into(),
                ))
            }
        };
        let bucket = args
            .from_seed_bucket
            .clone()
            .or_else(|| config.s3_bucket.clone())
            .ok_or_else(|| {
                MigrateError::Refused(
                    "the seed's bucket is unknown: give --from-seed-bucket (or SEED_S3_BUCKET), \
                     the seed's S3_BUCKET"
                        .into(),
                )
            })?;
        Ok(SeedSettings {
            mongo,
            mongo_setting,
            database: database.to_string(),
            bucket,
            endpoint: args
                .from_seed_s3_endpoint
                .clone()
                .or_else(|| config.s3_base_endpoint.clone()),
        })
    }
}

/// Refuses to write into the seed's database: this server's schema job would create indexes
/// there, and its records have other fields under the same collection names. Checked before
/// this server's stores are opened (which runs the schema job).
async fn refuse_the_seed_as_target(
    config: &Config,
    seed: &SeedSettings,
) -> Result<(), MigrateError> {
    let Some(target) = &config.mongo_connection_string else {
        return Ok(()); // the embedded store
    };
    let advice = "this server must use a database of its own: set MONGO_DATABASE to a new name \
                  (e.g. capgo_server) and keep --from-seed-database for the seed's";
    if *target == seed.mongo && config.mongo_database == seed.database {
        return Err(MigrateError::Refused(format!(
            "MONGO_DATABASE and --from-seed-database are both {:?}: the migration writes into \
             MONGO_DATABASE and never into the seed's database; {advice}",
            seed.database
        )));
    }
    let kind = SeedDatabase::kind_of(target, &config.mongo_database, "MONGO_CONNECTION_STRING")
        .await
        .map_err(|e| MigrateError::Startup(StartupError::Store(e)))?;
    if kind == DatabaseKind::Seed {
        return Err(MigrateError::Refused(format!(
            "MONGO_DATABASE {:?} holds the seed's records (bundles with public_download_url and \
             no blob_key): the migration never writes into the seed's database; {advice}",
            config.mongo_database
        )));
    }
    Ok(())
}

/// One run over the seed's records.
struct Migration<'a> {
    catalog: &'a Catalog,
    objects: &'a S3BlobStore,
    bucket: &'a str,
    report: &'a mut Report,
}

/// Why a record was not brought over.
enum Failure {
    /// This record cannot be, as it is (the reason says why).
    Refused(String),
    /// Storage failed: the run stops, and the next one continues.
    Stop(String),
}

impl Failure {
    fn from_store(e: StoreError) -> Failure {
        let text = crate::error::Chain(&e).to_string();
        match e {
            StoreError::Unavailable { .. } | StoreError::Internal { .. } => Failure::Stop(text),
            StoreError::Duplicate(_) | StoreError::Reference(_) => Failure::Refused(text),
        }
    }

    fn from_catalog(e: CatalogError) -> Failure {
        let text = crate::error::Chain(&e).to_string();
        match e {
            CatalogError::Unavailable { .. } | CatalogError::Internal { .. } => Failure::Stop(text),
            _ => Failure::Refused(text),
        }
    }
}

impl Migration<'_> {
    async fn run(&mut self, database: &SeedDatabase) -> Result<(), MigrateError> {
        let seed_error = |what: &str| {
            let what = what.to_string();
            move |source| MigrateError::Seed { what, source }
        };
        let (bundles, unreadable_bundles) =
            database.bundles().await.map_err(seed_error("bundles"))?;
        let (releases, unreadable_releases) =
            database.releases().await.map_err(seed_error("releases"))?;
        self.report
            .unreadable(&unreadable_bundles, &unreadable_releases);
        let stop = |report: &mut Report, why: String| {
            report.stopped(why);
            MigrateError::Interrupted
        };

        let here = match self.catalog.list_bundles().await {
            Ok(here) => here,
            Err(e) => return Err(stop(self.report, crate::error::Chain(&e).to_string())),
        };
        let steps = plan_bundles(&bundles, &releases, &here);
        let mut copied: HashMap<RecordId, Result<(), String>> = HashMap::new();
        for (bundle, step) in bundles.iter().zip(&steps) {
            match step {
                BundleStep::Copy => match self.copy_bundle(bundle).await {
                    Ok(()) => {
                        self.report.bundle_copied();
                        copied.insert(bundle.id.clone(), Ok(()));
                    }
                    Err(Failure::Refused(why)) => {
                        self.report.bundle_not_migrated(bundle, &why);
                        copied.insert(bundle.id.clone(), Err(why));
                    }
                    Err(Failure::Stop(why)) => {
                        self.report
                            .bundle_not_migrated(bundle, "the run stopped here");
                        return Err(stop(self.report, why));
                    }
                },
                BundleStep::AlreadyHere => self.report.bundle_already_here(),
                BundleStep::Duplicate { kept, because } => {
                    self.report.bundle_duplicate(bundle, kept, *because)
                }
            }
        }

        let refs = resolve_bundles(&bundles, &steps, &copied);
        let here = match self.catalog.list_releases().await {
            Ok(here) => here,
            Err(e) => return Err(stop(self.report, crate::error::Chain(&e).to_string())),
        };
        for (release, plan) in releases.iter().zip(plan_releases(&releases, &refs, &here)) {
            for note in &plan.notes {
                self.report.release_note(release, note);
            }
            match plan.step {
                ReleaseStep::Copy {
                    builtin,
                    production,
                } => match self.copy_release(release, builtin, production).await {
                    Ok(()) => self.report.release_copied(),
                    Err(Failure::Refused(why)) => self.report.release_not_migrated(release, &why),
                    Err(Failure::Stop(why)) => {
                        self.report
                            .release_not_migrated(release, "the run stopped here");
                        return Err(stop(self.report, why));
                    }
                },
                ReleaseStep::AlreadyHere { differences } => {
                    self.report.release_already_here(release, &differences)
                }
                ReleaseStep::Duplicate { kept, because } => {
                    self.report.release_duplicate(release, &kept, because)
                }
                ReleaseStep::NotMigrated(why) => self.report.release_not_migrated(release, &why),
            }
        }
        Ok(())
    }

    /// Reads the bundle's object from the seed's bucket through the ingest path into this
    /// server's blob store, and records it under its seed id.
    async fn copy_bundle(&self, bundle: &SeedBundle) -> Result<(), Failure> {
        let key = object_key(&bundle.public_download_url, self.bucket).map_err(Failure::Refused)?;
        let bytes = self
            .objects
            .read(&key)
            .await
            .map_err(Failure::from_store)?
            .ok_or_else(|| {
                Failure::Refused(format!(
                    "its object {key:?} is not in the seed's bucket {:?}",
                    self.bucket
                ))
            })?;
        let imported = ImportedBundle {
            id: bundle.id.clone(),
            created_at: bundle.created_at,
            new: NewBundle {
                app_id: bundle.app_id.clone(),
                version_name: bundle.version_name.clone(),
                description: bundle.description.clone(),
                // What the seed computed at upload: the object must still be those bytes.
                expected_checksum: Some(ExpectedChecksum {
                    value: bundle.crc_checksum.clone(),
                    field: "crc_checksum",
                }),
                ..NewBundle::default()
            },
        };
        match self.catalog.import_bundle(imported, bytes).await {
            Ok(stored) => {
                tracing::info!(bundle = %stored.id, key, sha256 = stored.sha256, "bundle copied from the seed");
                Ok(())
            }
            Err(SourceError::Source(e)) => Err(Failure::from_store(e)),
            Err(SourceError::Catalog(e)) => Err(Failure::from_catalog(e)),
        }
    }

    async fn copy_release(
        &self,
        release: &SeedRelease,
        builtin: RecordId,
        production: Option<RecordId>,
    ) -> Result<(), Failure> {
        let imported = ImportedRelease {
            id: release.id.clone(),
            new: NewRelease {
                platform: release.platform.clone(),
                app_id: release.app_id.clone(),
                version_name: release.version_name.clone(),
                version_code: release.version_code.clone(),
                builtin_bundle_id: builtin.to_string(),
            },
            production_bundle_id: production,
            release_date: release.released_date,
            created_at: release.created_at,
            updated_at: release.updated_at,
        };
        let stored = self
            .catalog
            .import_release(imported)
            .await
            .map_err(Failure::from_catalog)?;
        tracing::info!(release = %stored.id, key = %stored.key, "release copied from the seed");
        Ok(())
    }
}
