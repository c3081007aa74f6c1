//! Command line: `capgo-server [--config PATH] [serve|migrate]`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    /// Create or upgrade the storage schema, then exit.
    Migrate,
    /// Print the Bundle and Release CustomResourceDefinitions as YAML.
    Crdgen,
}
