//! Wiring: builds the stores, the catalog and both servers from a [`Config`], and runs them
//! until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::catalog::staging::Staging;
use crate::catalog::{Catalog, CatalogError};
use crate::config::Config;
use crate::http::management::auth::{load_or_generate_token, ApiKeys};
use crate::http::{self, AppState};
use crate::store::fs_blobs::FilesystemBlobStore;
use crate::store::sqlite::SqliteMetadataStore;
use crate::store::{BlobStore, MetadataStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot prepare the data folder {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("cannot listen for the {what} on {address}: {source}")]
    Bind {
        what: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the {what} stopped: {source}")]
    Serve {
        what: &'static str,
        source: std::io::Error,
    },
}

/// The embedded default's layout under DATA_DIR.
struct DataDir(PathBuf);

impl DataDir {
    fn database(&self) -> PathBuf {
        self.0.join("capgo.db")
    }
    fn blobs(&self) -> PathBuf {
        self.0.join("blobs")
    }
    fn staging(&self) -> PathBuf {
        self.0.join("staging")
    }
    fn generated_token(&self) -> PathBuf {
        self.0.join("management-api-token")
    }
}

/// The metadata and blob stores the configuration selects.
pub struct Stores {
    pub metadata: Arc<dyn MetadataStore>,
    pub blobs: Arc<dyn BlobStore>,
}

/// Opens the stores the configuration selects. Only the embedded default exists in this build.
pub fn open_stores(config: &Config) -> Result<Stores, StartupError> {
    if !config.uses_embedded_storage() {
        return Err(StartupError::Unsupported(
            "MONGO_CONNECTION_STRING / S3_BUCKET are set, but this build only has the embedded \
             store; unset them to keep metadata and bundles in DATA_DIR"
                .into(),
        ));
    }
    let data = DataDir(config.data_dir.clone());
    std::fs::create_dir_all(&data.0).map_err(|source| StartupError::DataDir {
        path: data.0.clone(),
        source,
    })?;
    let metadata = SqliteMetadataStore::open(&data.database())?;
    let blobs = FilesystemBlobStore::open(data.blobs(), &config.public_base_url)?;
    Ok(Stores {
        metadata: Arc::new(metadata),
        blobs: Arc::new(blobs),
    })
}

/// `capgo-server migrate`: creates or upgrades the schema, then exits.
pub fn migrate(config: &Config) -> Result<(), StartupError> {
    open_stores(config)?;
    tracing::info!(data_dir = %config.data_dir.display(), "schema is up to date");
    Ok(())
}

fn management_keys(config: &Config) -> Result<ApiKeys, StartupError> {
    if !config.management_api_tokens.is_empty() {
        return Ok(ApiKeys::new(&config.management_api_tokens));
    }
    let path = DataDir(config.data_dir.clone()).generated_token();
    let (token, generated) =
        load_or_generate_token(&path).map_err(|source| StartupError::DataDir {
            path: path.clone(),
            source,
        })?;
    if generated {
        tracing::warn!(
            token = token.as_str(),
            file = %path.display(),
            "MANAGEMENT_API_TOKENS is not set: generated a management API token (shown once; send it as x-api-key)"
        );
    } else {
        tracing::info!(file = %path.display(), "MANAGEMENT_API_TOKENS is not set: using the generated token in this file");
    }
    Ok(ApiKeys::new(&[token]))
}

/// Serves both ports until `shutdown` is cancelled (or a server fails).
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), StartupError> {
    let stores = open_stores(&config)?;
    let data = DataDir(config.data_dir.clone());
    let staging = Staging::new(data.staging())?;
    // Single process on the embedded store: nothing else can be mid-upload now.
    match staging.remove_leftovers() {
        Ok(0) => {}
        Ok(n) => tracing::info!(files = n, "removed staging files of interrupted uploads"),
        Err(e) => tracing::warn!(error = %e, "could not clear the staging folder"),
    }
    let catalog = Arc::new(Catalog::new(
        stores.metadata,
        stores.blobs,
        config.cache_result_duration,
    ));
    catalog.sweep_orphans(Duration::ZERO).await?;
    let state = AppState::new(&config, catalog, staging, management_keys(&config)?);

    if let Some(limiter) = state.rate_limiter.clone() {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut every_minute = tokio::time::interval(Duration::from_secs(60));
            while stop
                .run_until_cancelled(every_minute.tick())
                .await
                .is_some()
            {
                limiter.forget_idle_clients();
            }
        });
    }

    let public_address = SocketAddr::new(config.listen_address, config.user_port);
    let management_address = SocketAddr::new(config.listen_address, config.management_port);
    let public = bind("device API", public_address).await?;
    let management = bind("management API", management_address).await?;
    tracing::info!(
        storage = "embedded",
        data_dir = %config.data_dir.display(),
        public_base_url = config.public_base_url,
        "capgo-server ready"
    );
    let public_server = run_server(
        "device API",
        public,
        http::device::router(state.clone()),
        shutdown.clone(),
    );
    let management_server = run_server(
        "management API",
        management,
        http::management::router(state),
        shutdown.clone(),
    );
    let result = tokio::try_join!(public_server, management_server).map(|_| ());
    shutdown.cancel();
    result
}

async fn bind(
    what: &'static str,
    address: SocketAddr,
) -> Result<(TcpListener, &'static str), StartupError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| StartupError::Bind {
            what,
            address,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| StartupError::Bind {
        what,
        address,
        source,
    })?;
    // Tests and scripts read this line to find ports chosen with port 0.
    tracing::info!(address = %bound, "{what} listening on http://{bound}");
    Ok((listener, what))
}

async fn run_server(
    what: &'static str,
    (listener, _): (TcpListener, &'static str),
    router: axum::Router,
    shutdown: CancellationToken,
) -> Result<(), StartupError> {
    let service = router
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, service)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|source| StartupError::Serve { what, source });
    tracing::info!("{what} stopped");
    result
}
