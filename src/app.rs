//! Wiring: builds the stores, the catalog and both servers from a [`Config`], and runs them
//! until shutdown.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access::keys::{load_or_generate_token, ApiKeys};
use crate::catalog::staging::Staging;
use crate::catalog::{Catalog, CatalogError, CatalogSettings};
use crate::config::{Config, LogFormat};

use crate::access::Access;
use crate::http::serve::ConnectionLimits;
use crate::http::{self, AppState};
use crate::operator::{self, OperatorSettings};
use crate::store::fs_blobs::FilesystemBlobStore;
use crate::store::mongo::MongoMetadataStore;
use crate::store::s3::{DownloadUrls, S3BlobStore, S3Settings};
use crate::store::sqlite::SqliteMetadataStore;
use crate::store::timed::{TimedBlobStore, TimedMetadataStore};
use crate::store::{BlobStore, MetadataStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot prepare the data folder {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another capgo-server process is using the data folder {0} (one process per DATA_DIR; \
         several replicas need MongoDB and S3)"
    )]
    DataDirInUse(PathBuf),
    #[error("cannot open storage")]
    Store(#[from] StoreError),
    #[error("cannot prepare the catalog")]
    Catalog(#[from] CatalogError),
    #[error("cannot listen for the {what} on {address}: {source}")]
    Bind {
        what: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// DATA_DIR, held by this process alone for as long as the value lives: the start-up clean-up
/// of interrupted uploads and orphaned files is only safe when nobody else is writing there.
pub struct DataDir {
    root: PathBuf,
    _lock: File,
}

impl DataDir {
    pub fn open(root: &Path) -> Result<DataDir, StartupError> {
        let io = |source| StartupError::DataDir {
            path: root.to_path_buf(),
            source,
        };
        make_private_dir(root).map_err(io)?;
        let lock = File::create(root.join(".lock")).map_err(io)?;
        match lock.try_lock() {
            Ok(()) => Ok(DataDir {
                root: root.to_path_buf(),
                _lock: lock,
            }),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(StartupError::DataDirInUse(root.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(source)) => Err(io(source)),
        }
    }

    /// The SQLite file, created readable by this user only (SQLite gives its `-wal` and `-shm`
    /// files the same mode).
    fn database(&self) -> std::io::Result<PathBuf> {
        let path = self.root.join("capgo.db");
        let mut options = std::fs::OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(&path)?;
        Ok(path)
    }
    fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
    fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }
    fn generated_token(&self) -> PathBuf {
        self.root.join("management-api-token")
    }
}

/// Creates DATA_DIR readable by this user only (it holds the database, the bundles and the
/// generated token), and takes group and other access away from one that exists.
fn make_private_dir(root: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(root)?;
        let mode = std::fs::metadata(root)?.permissions().mode();
        if mode & 0o077 != 0 {
            // A volume mounted by someone else may refuse: worth a warning, not a failed start.
            let private = std::fs::Permissions::from_mode(mode & 0o700);
            if let Err(e) = std::fs::set_permissions(root, private) {
                tracing::warn!(path = %root.display(), error = %e, "DATA_DIR is readable by other users and cannot be made private");
            }
        }
        Ok(())
    }
    #[cfg(not(unix))]
    builder.create(root)
}

/// The metadata and blob stores the configuration selects.
pub struct Stores {
    pub metadata: Arc<dyn MetadataStore>,
    pub blobs: Arc<dyn BlobStore>,
}

/// Opens the stores the configuration selects: MongoDB when MONGO_CONNECTION_STRING is set,
/// else SQLite in DATA_DIR; S3 when S3_BUCKET is set, else a folder in DATA_DIR.
pub async fn open_stores(
    config: &Config,
    data: &DataDir,
    public_base_url: &str,
) -> Result<Stores, StartupError> {
    let metadata: Arc<dyn MetadataStore> = match &config.mongo_connection_string {
        Some(uri) => Arc::new(MongoMetadataStore::connect(uri, &config.mongo_database).await?),
        None => {
            let path = data.database().map_err(|source| StartupError::DataDir {
                path: data.root.clone(),
                source,
            })?;
            Arc::new(SqliteMetadataStore::open(&path)?)
        }
    };
    let blobs: Arc<dyn BlobStore> = match &config.s3_bucket {
        Some(bucket) => Arc::new(
            S3BlobStore::connect(S3Settings {
                bucket: bucket.clone(),
                endpoint: config.s3_base_endpoint.clone(),
                download_urls: match &config.s3_public_base_url {
                    Some(base) => DownloadUrls::Public(base.clone()),
                    None => DownloadUrls::Presigned(config.s3_presign_duration),
                },
            })
            .await?,
        ),
        None => Arc::new(FilesystemBlobStore::open(data.blobs(), public_base_url)?),
    };
    Ok(Stores {
        metadata: Arc::new(TimedMetadataStore(metadata)),
        blobs: Arc::new(TimedBlobStore(blobs)),
    })
}

/// `capgo-server migrate`: creates or upgrades the schema (opening the stores does), and
/// returns the catalog over them for what the command does next.
pub async fn migrate(config: &Config, data: &DataDir) -> Result<Catalog, StartupError> {
    let stores = open_stores(config, data, &config.public_base_url_for(config.user_port)).await?;
    tracing::info!(data_dir = %config.data_dir.display(), "schema is up to date");
    catalog_over(config, data, &stores)
}

/// The catalog over `stores`, staging uploads in DATA_DIR (emptied first: the folder is locked
/// to this process, so nothing else can be mid-upload there).
fn catalog_over(config: &Config, data: &DataDir, stores: &Stores) -> Result<Catalog, StartupError> {
    let staging = Staging::new(data.staging())?;
    // DATA_DIR is locked to this process: nothing else can be mid-upload now.
    match staging.remove_leftovers() {
        Ok(0) => {}
        Ok(n) => tracing::info!(files = n, "removed staging files of interrupted uploads"),
        Err(e) => tracing::warn!(error = %e, "could not clear the staging folder"),
    }
    Ok(Catalog::new(
        stores.metadata.clone(),
        stores.blobs.clone(),
        CatalogSettings {
            cache_duration: config.cache_result_duration,
            staging,
            max_bundle_size: config.max_bundle_size,
            import_prefix: config.bundle_import_prefix.clone(),
        },
    ))
}

fn management_keys(config: &Config, data: &DataDir) -> Result<ApiKeys, StartupError> {
    if !config.management_api_tokens.is_empty() {
        return Ok(ApiKeys::new(&config.management_api_tokens));
    }
    let path = data.generated_token();
    let (token, generated) =
        load_or_generate_token(&path).map_err(|source| StartupError::DataDir {
            path: path.clone(),
            source,
        })?;
    if generated {
        // Never through the log pipeline (OTLP, a collector of JSON lines): in text mode,
        // printed once to the terminal; in JSON mode only the file that holds it is named.
        if config.log_format == LogFormat::Text {
            println!(
                "MANAGEMENT_API_TOKENS is not set: generated a management API token, shown once \
                 (send it as x-api-key): {token}"
            );
        }
        tracing::warn!(
            file = %path.display(),
            "MANAGEMENT_API_TOKENS is not set: generated a management API token into this file (readable by this user only)"
        );
    } else {
        tracing::info!(file = %path.display(), "MANAGEMENT_API_TOKENS is not set: using the generated token in this file");
    }
    Ok(ApiKeys::new(&[token]))
}

/// Serves both ports until `shutdown` is cancelled (or a server fails).
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), StartupError> {
    let data = DataDir::open(&config.data_dir)?;
    let public = bind(
        "device API",
        SocketAddr::new(config.listen_address, config.user_port),
    )
    .await?;
    let management = bind(
        "management API",
        SocketAddr::new(config.listen_address, config.management_port),
    )
    .await?;
    let public_port = public.local_addr().map_or(config.user_port, |a| a.port());
    let public_base_url = config.public_base_url_for(public_port);

    let stores = open_stores(&config, &data, &public_base_url).await?;
    let catalog = Arc::new(catalog_over(&config, &data, &stores)?);
    // With shared storage another replica may be between storing an object and recording it.
    let orphan_age = if config.uses_embedded_storage() {
        Duration::ZERO
    } else {
        config.orphan_grace_period
    };
    catalog.sweep_orphans(orphan_age).await?;
    // From now on uploads run beside the sweep in every deployment: file objects of deleted
    // bundles go once they have been unused for the grace period.
    tokio::spawn(sweep_orphans_periodically(
        catalog.clone(),
        config.orphan_grace_period,
        shutdown.clone(),
    ));
    tokio::spawn({
        let (catalog, shutdown, every) = (
            catalog.clone(),
            shutdown.clone(),
            config.catalog_sync_interval,
        );
        async move { catalog.follow_external_changes(every, shutdown).await }
    });
    tokio::spawn({
        let (catalog, shutdown) = (catalog.clone(), shutdown.clone());
        async move {
            catalog
                .record_unregistered_periodically(UNREGISTERED_BUILDS_FLUSH, shutdown)
                .await
        }
    });
    tokio::spawn({
        let (catalog, shutdown) = (catalog.clone(), shutdown.clone());
        async move {
            catalog
                .record_fleet_periodically(FLEET_COUNTS_FLUSH, shutdown)
                .await
        }
    });
    tokio::spawn({
        let (catalog, shutdown) = (catalog.clone(), shutdown.clone());
        async move {
            catalog
                .publish_fleet_gauges_periodically(crate::catalog::FLEET_GAUGES_INTERVAL, shutdown)
                .await
        }
    });
    tokio::spawn(apply_retention_periodically(
        catalog.clone(),
        config.stats_retention,
        config.fleet_retention,
        shutdown.clone(),
    ));
    tokio::spawn({
        let (catalog, shutdown) = (catalog.clone(), shutdown.clone());
        // Unique per process, readable in logs: the host (the pod name on Kubernetes) and an id.
        let holder = format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "capgo-server".into()),
            crate::domain::RecordId::generate()
        );
        async move { catalog.run_rollout_background(holder, shutdown).await }
    });
    if config.controller_enabled {
        start_operator(&config, catalog.clone(), shutdown.clone()).await;
    }
    let access = Access::from_config(
        &config,
        stores.metadata.clone(),
        management_keys(&config, &data)?,
    );
    let state = AppState::new(&config, catalog, access);

    if state.rate_limiter.is_some() || state.stats_limiter.is_some() {
        let (state, stop) = (state.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut every_minute = tokio::time::interval(Duration::from_secs(60));
            while stop
                .run_until_cancelled(every_minute.tick())
                .await
                .is_some()
            {
                for limiter in [&state.rate_limiter, &state.stats_limiter]
                    .into_iter()
                    .flatten()
                {
                    limiter.forget_idle_clients();
                }
            }
        });
    }

    tracing::info!(
        metadata = if config.mongo_connection_string.is_some() { "mongodb" } else { "sqlite" },
        blobs = if config.s3_bucket.is_some() { "s3" } else { "filesystem" },
        data_dir = %config.data_dir.display(),
        public_base_url,
        "capgo-server ready"
    );
    let limits = ConnectionLimits {
        header_timeout: config.http_header_timeout,
        max_header_bytes: usize::try_from(config.http_max_header_size).unwrap_or(usize::MAX),
        write_stall_timeout: config.http_write_stall_timeout,
        gate: None,
    };
    // Whatever the device port suffers, descriptors stay for the management port.
    let open_files = http::connections::raise_open_file_limit();
    let device_limits = ConnectionLimits {
        gate: Some(http::connections::ConnectionGate::new(
            config.max_connections_per_ip as usize,
            http::connections::device_connections_for(open_files),
            config.trusted_proxies.clone(),
        )),
        ..limits.clone()
    };
    let public_server = run_server(
        "device API",
        public,
        http::device::DeviceApi::new(state.clone()),
        device_limits,
        shutdown.clone(),
    );
    let management_server = run_server(
        "management API",
        management,
        http::observe::observed_router("management", http::management::router(state)),
        limits,
        shutdown.clone(),
    );
    tokio::join!(public_server, management_server);
    Ok(())
}

/// Starts the Kubernetes operator in the background when a cluster is reachable (in-cluster
/// service account or kubeconfig); without one, says so and serves HTTP anyway.
async fn start_operator(config: &Config, catalog: Arc<Catalog>, shutdown: CancellationToken) {
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "CONTROLLER_ENABLED is set but no Kubernetes cluster is reachable; the operator is off");
            return;
        }
    };
    // Kubernetes sets HOSTNAME to the pod name: the replica's identity in the lease.
    let identity = std::env::var("HOSTNAME")
        .unwrap_or_else(|_| format!("capgo-server-{}", crate::domain::RecordId::generate()));
    let settings = OperatorSettings {
        namespaces: config.controller_namespaces.clone(),
        lease_namespace: config.controller_lease_namespace.clone(),
        lease_name: config.controller_lease_name.clone(),
        identity: identity.clone(),
    };
    let sources = operator::fetch::SourceFetcher::new(config.bundle_sources.clone());
    let ctx = operator::Context::new(client, catalog, &identity, sources);
    tokio::spawn(operator::run(settings, ctx, shutdown));
}

/// How often storage is swept for orphans (objects older than ORPHAN_GRACE_PERIOD that no
/// record refers to, file objects of deleted bundles, and abandoned multipart uploads).
const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// How often the counts of native builds devices run without a release are written: one batch
/// per interval, whatever the number of checks.
const UNREGISTERED_BUILDS_FLUSH: Duration = Duration::from_secs(10);

/// How often the fleet overview's counts are written: one batch per interval, whatever the
/// number of checks and reports.
const FLEET_COUNTS_FLUSH: Duration = Duration::from_secs(10);

/// How often raw stats and old daily counts past their retention are removed.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// Applies STATS_RETENTION and FLEET_RETENTION at start and hourly (every replica may: the
/// deletes are idempotent).
async fn apply_retention_periodically(
    catalog: Arc<Catalog>,
    stats: Duration,
    fleet: Duration,
    shutdown: CancellationToken,
) {
    let mut hourly = tokio::time::interval(RETENTION_INTERVAL);
    while shutdown.run_until_cancelled(hourly.tick()).await.is_some() {
        match catalog.apply_retention(stats, fleet).await {
            Ok(removed) if removed.stats_events + removed.fleet_counts > 0 => tracing::info!(
                stats_events = removed.stats_events,
                fleet_counts = removed.fleet_counts,
                "removed what is past its retention"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %crate::error::Chain(&e), "retention failed; retrying in an hour")
            }
        }
    }
}

/// Removes objects a failed upload left behind (when its own clean-up failed too) and file
/// objects no bundle uses any more.
async fn sweep_orphans_periodically(
    catalog: Arc<Catalog>,
    min_age: Duration,
    shutdown: CancellationToken,
) {
    let mut hourly = tokio::time::interval(SWEEP_INTERVAL);
    hourly.tick().await;
    while shutdown.run_until_cancelled(hourly.tick()).await.is_some() {
        if let Err(e) = catalog.sweep_orphans(min_age).await {
            tracing::warn!(error = %crate::error::Chain(&e), "orphan sweep failed; retrying in an hour");
        }
    }
}

async fn bind(what: &'static str, address: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartupError::Bind {
            what,
            address,
            source,
        })
}

async fn run_server(
    what: &'static str,
    listener: TcpListener,
    service: impl http::serve::ConnectionService,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    if let Ok(bound) = listener.local_addr() {
        // Logged once everything is ready: tests and scripts wait for it (and read ports
        // chosen with port 0 from it).
        tracing::info!(address = %bound, "{what} listening on http://{bound}");
    }
    http::serve::serve(listener, service, limits, shutdown).await;
    tracing::info!("{what} stopped");
}
