//! Settings: `config/config.yml` (or `--config PATH`) overridden key by key by the
//! environment. Each YAML key is its environment variable's name in lower case, so
//! `CACHE_RESULT_DURATION` is `cache_result_duration` in the file.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::domain::duration::parse_go_duration;

use ipnet::IpNet;

use crate::domain::net_policy::{HostPattern, SourcePolicy};
use crate::domain::stats::MAX_BATCH;

/// Where the default config file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/config.yml";

#[derive(Debug, Clone)]
pub struct Config {
    pub mongo_connection_string: Option<String>,
    pub mongo_database: String,
    pub s3_base_endpoint: Option<String>,
    pub s3_bucket: Option<String>,
    /// Lifetime of presigned download URLs (when S3_PUBLIC_BASE_URL is not set).
    pub s3_presign_duration: Duration,
    /// Devices download from `<this>/<key>` instead of presigned URLs (public bucket or CDN).
    pub s3_public_base_url: Option<String>,
    /// How often a replica checks the shared metadata store for other replicas' changes.
    pub catalog_sync_interval: Duration,
    /// Longest a device request (not a bundle download) may take to arrive and be answered.
    pub device_request_timeout: Duration,
    /// With shared storage: age past which an unrecorded object, or an unfinished multipart
    /// upload, is left over from a failed upload and removed.
    pub orphan_grace_period: Duration,
    /// How long raw stats events are kept (STATS_RETENTION); the fleet overview's daily
    /// counts are kept for FLEET_RETENTION.
    pub stats_retention: Duration,
    pub fleet_retention: Duration,
    /// Time a connection may take to send a request's headers (also the keep-alive idle limit).
    pub http_header_timeout: Duration,
    /// A response write without progress for this long ends the connection.
    pub http_write_stall_timeout: Duration,
    /// Open device-port connections per peer address (0: no cap).
    pub max_connections_per_ip: u32,
    /// Largest request line plus headers.
    pub http_max_header_size: u64,
    /// Full-access management tokens. Empty means "generate one in DATA_DIR".
    pub management_api_tokens: Vec<String>,
    /// Requests per minute per client IP on the device API; 0 disables the limit.
    pub limit_request_per_minute: u32,
    /// `/stats` events per minute per client IP (0: no limit).
    pub stats_events_per_minute: u32,
    pub trusted_proxies: Vec<IpNet>,
    pub cache_result_duration: Duration,
    pub oauth_issuer: Option<String>,
    pub oauth_client_id: Option<String>,
    /// When set, OIDC access tokens must list it in `aud`.
    pub oauth_audience: Option<String>,
    pub listen_address: IpAddr,
    pub user_port: u16,
    pub management_port: u16,
    pub data_dir: PathBuf,
    /// How devices reach the public port; download URLs are built from it. `None`: derived
    /// from the port actually bound (see [`Config::public_base_url_for`]).
    pub public_base_url: Option<String>,
    pub max_bundle_size: u64,
    pub log_format: LogFormat,
    /// Run the Kubernetes operator (on the lease holder).
    pub controller_enabled: bool,
    /// Namespaces whose Bundles and Releases are reconciled; empty means all.
    pub controller_namespaces: Vec<String>,
    pub controller_lease_namespace: String,
    pub controller_lease_name: String,
    /// Where `Bundle` resources may fetch `source.url` from.
    pub bundle_sources: SourcePolicy,
    /// The bucket prefix `Bundle` resources may import `source.bucketKey` objects from.
    pub bundle_import_prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("config file {path}: unknown key `{key}` (known keys: {known})")]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("invalid value for {env} (`{yaml_key}` in the config file): {value:?}: {reason}")]
    Invalid {
        env: &'static str,
        yaml_key: String,
        value: String,
        reason: String,
    },
}

/// Every setting: its environment variable and its default (text, parsed like any value).
/// Its key in the config file is the variable's name in lower case.
const SETTINGS: &[(&str, Option<&str>)] = &[
    ("MONGO_CONNECTION_STRING", None),
    ("MONGO_DATABASE", Some("capgo")),
    ("S3_BASE_ENDPOINT", None),
    ("S3_BUCKET", None),
    ("S3_PRESIGN_DURATION", Some("24h")),
    ("S3_PUBLIC_BASE_URL", None),
    ("CATALOG_SYNC_INTERVAL", Some("1s")),
    ("DEVICE_REQUEST_TIMEOUT", Some("30s")),
    ("HTTP_HEADER_TIMEOUT", Some("10s")),
    ("HTTP_WRITE_STALL_TIMEOUT", Some("30s")),
    ("MAX_CONNECTIONS_PER_IP", Some("64")),
    ("ORPHAN_GRACE_PERIOD", Some("1h")),
    ("STATS_RETENTION", Some("720h")),
    ("FLEET_RETENTION", Some("9600h")),
    ("HTTP_MAX_HEADER_SIZE", Some("32KiB")),
    ("MANAGEMENT_API_TOKENS", None),
    ("LIMIT_REQUEST_PER_MINUTE", Some("100")),
    ("STATS_EVENTS_PER_MINUTE", Some("6000")),
    ("TRUSTED_PROXIES", None),
    ("CACHE_RESULT_DURATION", Some("10m")),
    ("OAUTH_ISSUER", None),
    ("OAUTH_CLIENT_ID", None),
    ("OAUTH_AUDIENCE", None),
    ("LISTEN_ADDRESS", Some("0.0.0.0")),
    ("CAPGO_USER_PORT", Some("8000")),
    ("CAPGO_MANAGEMENT_PORT", Some("8001")),
    ("DATA_DIR", Some("./data")),
    ("PUBLIC_BASE_URL", None),
    ("MAX_BUNDLE_SIZE", Some("512MiB")),
    ("LOG_FORMAT", Some("text")),
    ("CONTROLLER_ENABLED", Some("false")),
    ("CONTROLLER_NAMESPACES", None),
    ("CONTROLLER_LEASE_NAMESPACE", Some("default")),
    ("CONTROLLER_LEASE_NAME", Some("capgo-server-controller")),
    ("BUNDLE_SOURCE_ALLOW_PRIVATE", Some("false")),
    ("BUNDLE_SOURCE_ALLOWED_HOSTS", None),
    ("BUNDLE_IMPORT_PREFIX", Some("imports/")),
];

fn yaml_key(env: &str) -> String {
    env.to_ascii_lowercase()
}

/// Raw values by environment-variable name, after file and environment are merged.
struct RawValues(BTreeMap<&'static str, String>);

impl RawValues {
    fn get(&self, env: &'static str) -> Option<&str> {
        self.0
            .get(env)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    fn parse<T>(
        &self,
        env: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.get(env) {
            None => Ok(None),
            Some(value) => parse(value.trim())
                .map(Some)
                .map_err(|reason| ConfigError::Invalid {
                    env,
                    yaml_key: yaml_key(env),
                    value: shown_value(env, value),
                    reason,
                }),
        }
    }

    fn required<T>(
        &self,
        env: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        // Every required setting has a default in SETTINGS, so it is always present.
        self.parse(env, parse)?.ok_or_else(|| ConfigError::Invalid {
            env,
            yaml_key: yaml_key(env),
            value: String::new(),
            reason: "a value is required".into(),
        })
    }
}

impl Config {
    /// Loads the file (the explicit one must exist; the default one may be absent), then
    /// applies environment overrides from `env`.
    pub fn load(
        explicit_path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file_values = match explicit_path {
            Some(path) => read_yaml_file(path)?,
            None => {
                let default = Path::new(DEFAULT_CONFIG_PATH);
                if default.exists() {
                    read_yaml_file(default)?
                } else {
                    BTreeMap::new()
                }
            }
        };
        Self::from_file_values(&file_values, env)
    }

    fn from_file_values(
        file_values: &BTreeMap<String, String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut raw = BTreeMap::new();
        for &(name, default) in SETTINGS {
            let value = env(name)
                .or_else(|| file_values.get(&yaml_key(name)).cloned())
                .or_else(|| default.map(str::to_string));
            if let Some(value) = value {
                raw.insert(name, value);
            }
        }
        Self::from_raw(&RawValues(raw))
    }

    /// From a config file's text and environment overrides (what [`Config::load`] does after
    /// reading the file; the fuzz target calls it directly).
    pub fn from_yaml(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file_values = parse_yaml_settings(text, Path::new(DEFAULT_CONFIG_PATH))?;
        Self::from_file_values(&file_values, env)
    }

    /// Loads from the process environment.
    pub fn from_process(explicit_path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load(explicit_path, |name| std::env::var(name).ok())
    }

    fn from_raw(raw: &RawValues) -> Result<Config, ConfigError> {
        let config = Config {
            mongo_connection_string: raw.get("MONGO_CONNECTION_STRING").map(str::to_string),
            mongo_database: raw.required("MONGO_DATABASE", |v| Ok(v.to_string()))?,
            s3_base_endpoint: raw.parse("S3_BASE_ENDPOINT", parse_http_url)?,
            s3_bucket: raw.get("S3_BUCKET").map(str::to_string),
            s3_presign_duration: raw.required("S3_PRESIGN_DURATION", |v| {
                let lifetime = parse_go_duration(v)?;
                if lifetime < Duration::from_secs(1)
                    || lifetime > Duration::from_secs(7 * 24 * 3600)
                {
                    return Err("presigned URLs live from 1s to 7 days (168h)".into());
                }
                Ok(lifetime)
            })?,
            s3_public_base_url: raw.parse("S3_PUBLIC_BASE_URL", |v| {
                parse_http_url(v).map(|url| url.trim_end_matches('/').to_string())
            })?,
            device_request_timeout: raw.required(
                "DEVICE_REQUEST_TIMEOUT",
                duration_of_at_least_100ms("allow devices at least 100ms"),
            )?,
            orphan_grace_period: raw.required("ORPHAN_GRACE_PERIOD", parse_go_duration)?,
            stats_retention: raw.required("STATS_RETENTION", duration_of_at_least_a_day)?,
            fleet_retention: raw.required("FLEET_RETENTION", duration_of_at_least_a_day)?,
            http_header_timeout: raw.required(
                "HTTP_HEADER_TIMEOUT",
                duration_of_at_least_100ms("allow clients at least 100ms"),
            )?,
            http_write_stall_timeout: raw.required(
                "HTTP_WRITE_STALL_TIMEOUT",
                duration_of_at_least_100ms("allow clients at least 100ms"),
            )?,
            max_connections_per_ip: raw.required("MAX_CONNECTIONS_PER_IP", |v| {
                v.parse::<u32>()
                    .map_err(|_| "expected a whole number of connections (0: no cap)".into())
            })?,
            http_max_header_size: raw.required("HTTP_MAX_HEADER_SIZE", |v| {
                let size = parse_byte_size(v)?;
                if !(1024..=1024 * 1024).contains(&size) {
                    return Err("expected between 1KiB and 1MiB".into());
                }
                Ok(size)
            })?,
            catalog_sync_interval: raw.required(
                "CATALOG_SYNC_INTERVAL",
                duration_of_at_least_100ms("check at most every 100ms"),
            )?,
            management_api_tokens: raw
                .parse("MANAGEMENT_API_TOKENS", parse_tokens)?
                .unwrap_or_default(),
            limit_request_per_minute: raw.required("LIMIT_REQUEST_PER_MINUTE", |v| {
                v.parse::<u32>().map_err(|_| {
                    "expected a whole number of requests per minute (0 disables)".into()
                })
            })?,
            stats_events_per_minute: raw.required("STATS_EVENTS_PER_MINUTE", |v| {
                let bad = || {
                    format!(
                        "expected a whole number of events per minute, 0 (no limit) or at least \
                         {MAX_BATCH} (one full batch)"
                    )
                };
                let n = v.parse::<u32>().map_err(|_| bad())?;
                if n != 0 && (n as usize) < MAX_BATCH {
                    return Err(bad());
                }
                Ok(n)
            })?,
            trusted_proxies: raw
                .parse("TRUSTED_PROXIES", parse_trusted_proxies)?
                .unwrap_or_default(),
            cache_result_duration: raw.required("CACHE_RESULT_DURATION", parse_go_duration)?,
            // Kept exactly as written: tokens' `iss` must equal it.
            oauth_issuer: raw.parse("OAUTH_ISSUER", parse_http_url)?,
            oauth_audience: raw.get("OAUTH_AUDIENCE").map(str::to_string),
            oauth_client_id: raw.get("OAUTH_CLIENT_ID").map(str::to_string),
            listen_address: raw.required("LISTEN_ADDRESS", |v| {
                v.parse::<IpAddr>()
                    .map_err(|_| "expected an IP address such as 0.0.0.0 or ::".into())
            })?,
            user_port: raw.required("CAPGO_USER_PORT", parse_port)?,
            management_port: raw.required("CAPGO_MANAGEMENT_PORT", parse_port)?,
            data_dir: raw.required("DATA_DIR", |v| Ok(PathBuf::from(v)))?,
            public_base_url: raw.parse("PUBLIC_BASE_URL", |v| {
                parse_http_url(v).map(|url| url.trim_end_matches('/').to_string())
            })?,
            max_bundle_size: raw.required("MAX_BUNDLE_SIZE", parse_byte_size)?,
            log_format: raw.required("LOG_FORMAT", |v| match v {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("expected `text` or `json`".into()),
            })?,
            controller_enabled: raw.required("CONTROLLER_ENABLED", parse_bool)?,
            controller_namespaces: raw
                .parse("CONTROLLER_NAMESPACES", |v| {
                    Ok(v.split(',')
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .map(str::to_string)
                        .collect())
                })?
                .unwrap_or_default(),
            controller_lease_namespace: raw
                .required("CONTROLLER_LEASE_NAMESPACE", |v| Ok(v.to_string()))?,
            controller_lease_name: raw.required("CONTROLLER_LEASE_NAME", |v| Ok(v.to_string()))?,
            bundle_sources: SourcePolicy {
                allow_private: raw.required("BUNDLE_SOURCE_ALLOW_PRIVATE", parse_bool)?,
                allowed_hosts: raw
                    .parse("BUNDLE_SOURCE_ALLOWED_HOSTS", |v| {
                        v.split(',')
                            .map(str::trim)
                            .filter(|h| !h.is_empty())
                            .map(HostPattern::parse)
                            .collect()
                    })?
                    .unwrap_or_default(),
            },
            bundle_import_prefix: raw.required("BUNDLE_IMPORT_PREFIX", |v| {
                crate::domain::bundle::check_import_prefix(v).map_err(|e| e.0)?;
                Ok(v.to_string())
            })?,
        };
        config.check_combinations()?;
        Ok(config)
    }

    /// Rules that tie two settings together.
    fn check_combinations(&self) -> Result<(), ConfigError> {
        let presigned = self.s3_bucket.is_some() && self.s3_public_base_url.is_none();
        if presigned && self.s3_presign_duration <= self.cache_result_duration {
            return Err(ConfigError::Invalid {
                env: "S3_PRESIGN_DURATION",
                yaml_key: yaml_key("S3_PRESIGN_DURATION"),
                value: format!("{:?}", self.s3_presign_duration),
                reason: format!(
                    "presigned URLs must outlive cached answers (CACHE_RESULT_DURATION is {:?})",
                    self.cache_result_duration
                ),
            });
        }
        Ok(())
    }

    /// PUBLIC_BASE_URL, or `http://localhost:<port>` for the device API's bound port.
    pub fn public_base_url_for(&self, bound_port: u16) -> String {
        self.public_base_url
            .clone()
            .unwrap_or_else(|| format!("http://localhost:{bound_port}"))
    }

    /// True when neither MongoDB nor S3 is configured: everything lives in DATA_DIR, which
    /// only this process writes.
    pub fn uses_embedded_storage(&self) -> bool {
        self.mongo_connection_string.is_none() && self.s3_bucket.is_none()
    }
}

fn read_yaml_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_yaml_settings(&text, path)
}

/// The settings in a config file's text (`path` names it in errors).
fn parse_yaml_settings(text: &str, path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let document: Option<BTreeMap<String, serde_yaml::Value>> = serde_yaml::from_str(text)
        .map_err(|source| ConfigError::Yaml {
            path: path.to_path_buf(),
            source,
        })?;
    let mut values = BTreeMap::new();
    for (key, value) in flatten(document.unwrap_or_default()) {
        let Some(&(env, _)) = SETTINGS.iter().find(|(name, _)| yaml_key(name) == key) else {
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key,
                known: SETTINGS
                    .iter()
                    .map(|(name, _)| yaml_key(name))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let text = yaml_scalar_text(&value).ok_or_else(|| ConfigError::Invalid {
            env,
            yaml_key: key.clone(),
            value: shown_value(env, &format!("{value:?}")),
            reason: "expected a string, a number, a boolean or a list of those".into(),
        })?;
        values.insert(key, text);
    }
    Ok(values)
}

/// Nested maps name their keys with `_`: `controller: {enabled: true}` is `controller_enabled`.
fn flatten(document: BTreeMap<String, serde_yaml::Value>) -> Vec<(String, serde_yaml::Value)> {
    let mut flat = Vec::new();
    for (key, value) in document {
        match value {
            serde_yaml::Value::Mapping(inner) => {
                let inner: BTreeMap<String, serde_yaml::Value> = inner
                    .into_iter()
                    .filter_map(|(k, v)| k.as_str().map(|k| (format!("{key}_{k}"), v)))
                    .collect();
                flat.extend(flatten(inner));
            }
            other => flat.push((key, other)),
        }
    }
    flat
}

/// YAML scalars become their text; lists become comma-separated text, as in the environment.
fn yaml_scalar_text(value: &serde_yaml::Value) -> Option<String> {
    use serde_yaml::Value;
    match value {
        Value::Null => Some(String::new()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        Value::Sequence(items) => items
            .iter()
            .map(|item| match item {
                Value::Sequence(_) | Value::Mapping(_) => None,
                other => yaml_scalar_text(other),
            })
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join(",")),
        Value::Mapping(_) | Value::Tagged(_) => None,
    }
}

/// Settings whose values are secrets (or hold one, as a password in a connection string): a
/// message about them never repeats the value.
const SECRET_SETTINGS: &[&str] = &["MANAGEMENT_API_TOKENS", "MONGO_CONNECTION_STRING"];

/// How an invalid value is quoted in an error message.
fn shown_value(env: &str, value: &str) -> String {
    if SECRET_SETTINGS.contains(&env) {
        format!(
            "<{} characters, not shown: a secret>",
            value.chars().count()
        )
    } else {
        value.to_string()
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected `true` or `false`".into()),
    }
}

fn parse_port(value: &str) -> Result<u16, String> {
    value
        .parse::<u16>()
        .map_err(|_| "expected a TCP port from 0 to 65535 (0 picks a free port)".into())
}

/// A Go duration of at least 100ms; shorter ones are refused with `too_short`.
fn duration_of_at_least_100ms(
    too_short: &'static str,
) -> impl Fn(&str) -> Result<Duration, String> {
    move |value| {
        let duration = parse_go_duration(value)?;
        if duration < Duration::from_millis(100) {
            return Err(too_short.into());
        }
        Ok(duration)
    }
}

/// Retention settings: at least a day (a shorter one would delete what the overview's "last
/// 24 h" reads).
fn duration_of_at_least_a_day(value: &str) -> Result<Duration, String> {
    let duration = parse_go_duration(value)?;
    if duration < Duration::from_secs(86_400) {
        return Err("keep at least a day (24h)".into());
    }
    Ok(duration)
}

fn parse_http_url(value: &str) -> Result<String, String> {
    let rest = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"))
        .ok_or("expected an absolute http:// or https:// URL")?;
    if rest.is_empty() || rest.starts_with('/') || value.chars().any(char::is_whitespace) {
        return Err("expected an absolute http:// or https:// URL with a host".into());
    }
    Ok(value.to_string())
}

fn parse_tokens(value: &str) -> Result<Vec<String>, String> {
    let tokens: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(short) = tokens.iter().find(|t| t.len() < 8) {
        return Err(format!(
            "token of {} characters is too short to be secret (at least 8)",
            short.len()
        ));
    }
    Ok(tokens)
}

fn parse_trusted_proxies(value: &str) -> Result<Vec<IpNet>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{entry}` is neither an IP address nor a CIDR range"))
        })
        .collect()
}

/// Parses a byte size: a whole number with an optional `KiB`, `MiB`, `GiB` (or `KB`, `MB`,
/// `GB`, decimal) suffix.
pub fn parse_byte_size(value: &str) -> Result<u64, String> {
    const UNITS: &[(&str, u64)] = &[
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("KB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("B", 1),
    ];
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let bad = || format!("expected a size such as `512MiB` or `1073741824`, got `{value}`");
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale = if unit.is_empty() {
        1
    } else {
        UNITS
            .iter()
            .find(|(name, _)| *name == unit.trim())
            .map(|(_, scale)| *scale)
            .ok_or_else(bad)?
    };
    let size = number.checked_mul(scale).ok_or_else(bad)?;
    if size == 0 {
        return Err("the maximum bundle size must be above zero".into());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)], yaml: Option<&str>) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yml");
        if let Some(yaml) = yaml {
            std::fs::write(&path, yaml).unwrap();
        }
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(yaml.map(|_| path.as_path()), |name| env.get(name).cloned())
    }

    #[test]
    fn defaults_match_the_seed() {
        let config = load(&[], None).unwrap();
        assert_eq!(config.mongo_database, "capgo");
        assert_eq!(config.limit_request_per_minute, 100);
        assert_eq!(config.cache_result_duration, Duration::from_secs(600));
        assert_eq!(config.user_port, 8000);
        assert_eq!(config.management_port, 8001);
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(
            config.public_base_url_for(config.user_port),
            "http://localhost:8000"
        );
        assert!(config.uses_embedded_storage());
        assert!(config.management_api_tokens.is_empty());
    }

    #[test]
    fn environment_overrides_file() {
        let yaml = "cache_result_duration: 1s\nmanagement_api_tokens:\n  - file-token-1\n  - file-token-2\ncapgo_user_port: 9000\n";
        let config = load(&[("CAPGO_USER_PORT", "9100")], Some(yaml)).unwrap();
        assert_eq!(config.cache_result_duration, Duration::from_secs(1));
        assert_eq!(
            config.management_api_tokens,
            vec!["file-token-1", "file-token-2"]
        );
        assert_eq!(config.user_port, 9100);
    }

    #[test]
    fn invalid_value_names_key_and_value() {
        let err = load(&[("CACHE_RESULT_DURATION", "10x")], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CACHE_RESULT_DURATION"), "{err}");
        assert!(err.contains("10x"), "{err}");
        let err = load(&[], Some("capgo_management_port: eighty\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CAPGO_MANAGEMENT_PORT") && err.contains("eighty"),
            "{err}"
        );
        let err = load(&[("TRUSTED_PROXIES", "10.0.0.0/8,nope")], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn an_invalid_secret_is_not_repeated() {
        let tokens = "first-secret-token-1,second-secret-token-2,tiny1";
        let err = load(&[("MANAGEMENT_API_TOKENS", tokens)], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("MANAGEMENT_API_TOKENS"), "{err}");
        assert!(err.contains("not shown"), "{err}");
        for secret in ["first-secret-token-1", "second-secret-token-2", "tiny1"] {
            assert!(!err.contains(secret), "{err}");
        }
        let yaml = "management_api_tokens:\n  - {nested: first-secret-token-1}\n";
        let err = load(&[], Some(yaml)).unwrap_err().to_string();
        assert!(!err.contains("first-secret-token-1"), "{err}");
    }

    #[test]
    fn shipped_config_file_parses_and_documents_every_setting() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
        let text = std::fs::read_to_string(&path).unwrap();
        Config::load(Some(&path), |_| None).expect("the shipped config file loads");
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                .unwrap();
        for (env, _) in SETTINGS {
            assert!(
                text.contains(&format!("# {}:", yaml_key(env))),
                "{env} is not in config.yml"
            );
            assert!(
                readme.contains(&format!("`{env}`")),
                "{env} is not in README.md"
            );
        }
    }

    #[test]
    fn nested_keys_name_flat_settings() {
        let config = load(
            &[],
            Some("controller:\n  enabled: true\n  namespaces: [apps, web]\n"),
        )
        .unwrap();
        assert!(config.controller_enabled);
        assert_eq!(config.controller_namespaces, ["apps", "web"]);
        let err = load(&[], Some("controller:\n  enable: true\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("controller_enable"), "{err}");
    }

    #[test]
    fn unknown_file_key_is_refused() {
        let err = load(&[], Some("cache_duration: 1s\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key `cache_duration`"), "{err}");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("1.5h").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "10", "m", "1d", "-1s", "1s2"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn trusted_proxies_accept_ips_and_cidrs() {
        let nets = parse_trusted_proxies("127.0.0.1, 10.0.0.0/8,::1").unwrap();
        assert_eq!(nets.len(), 3);
        assert!(nets[1].contains(&"10.1.2.3".parse::<IpAddr>().unwrap()));
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_byte_size("1000").unwrap(), 1000);
        assert!(parse_byte_size("0").is_err());
        assert!(parse_byte_size("12 parsecs").is_err());
    }
}
