//! Command line: `capgo-server [--config PATH] [serve|migrate|crdgen]`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "capgo-server",
    version,
    about = "Self-hosted live-update server for Capacitor apps (@capgo/capacitor-updater)",
    after_help = "Settings come from config/config.yml (or --config) and the environment; \
                  see README.md for the full table. With no arguments the server starts."
)]
pub struct Cli {
    /// YAML config file (default: config/config.yml when it exists). Environment variables
    /// override its keys.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the device API and the management API (the default).
    Serve,
    /// Create or upgrade the storage schema, then exit. With --from-seed-database, also bring
    /// the records of a tanapoln/capgo-server (the seed) into this server.
    Migrate(MigrateArgs),
    /// Print the Bundle and Release CustomResourceDefinitions as YAML.
    Crdgen,
}

/// Where the seed's records are. Each option also reads the environment variable shown.
#[derive(Debug, Clone, Default, Args)]
pub struct MigrateArgs {
    /// The seed's MongoDB database (its MONGO_DATABASE, "capgo" by default): read only, never
    /// changed. Must differ from this server's MONGO_DATABASE on the same MongoDB.
    #[arg(long, env = "SEED_MONGO_DATABASE", value_name = "NAME")]
    pub from_seed_database: Option<String>,
    /// The seed's MongoDB connection string (default: MONGO_CONNECTION_STRING).
    #[arg(
        long,
        env = "SEED_MONGO_CONNECTION_STRING",
        value_name = "URI",
        hide_env_values = true
    )]
    pub from_seed_mongo: Option<String>,
    /// The seed's S3 bucket (its S3_BUCKET; default: S3_BUCKET), read with the same AWS
    /// credentials.
    #[arg(long, env = "SEED_S3_BUCKET", value_name = "BUCKET")]
    pub from_seed_bucket: Option<String>,
    /// The seed's S3-compatible endpoint (its S3_BASE_ENDPOINT; default: S3_BASE_ENDPOINT).
    #[arg(long, env = "SEED_S3_BASE_ENDPOINT", value_name = "URL")]
    pub from_seed_s3_endpoint: Option<String>,
}
