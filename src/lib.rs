//! capgo-server: a self-hosted backend for Capgo live updates (`@capgo/capacitor-updater`).
//!
//! Layers, outer calling inner only (see `docs/architecture.md`):
//! - [`domain`]: pure types and decisions (the update decision lives here), no I/O;
//! - [`store`]: metadata and blob storage traits with their implementations;
//! - [`catalog`]: the operations people, devices and the operator perform, each rule once;
//! - [`access`]: who calls the management API (keys, tokens, OIDC) and the audit log;
//! - [`http`]: the device API (public port) and the management API (management port);
//! - [`operator`]: `Bundle` and `Release` custom resources reconciled into the catalog;
//! - [`migrate`]: `capgo-server migrate`, the schema and the seed's records.

pub mod access;
pub mod app;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod migrate;
pub mod operator;
pub mod store;
pub mod telemetry;

/// Installs aws-lc as the process's TLS crypto provider (every client here: MongoDB, S3, OIDC,
/// Kubernetes); a no-op when one is installed already.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
