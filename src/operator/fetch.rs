//! Fetching a `Bundle`'s `source.url` under the source rules of
//! [`crate::domain::net_policy`]: the URL and every redirect are checked before they are
//! requested (at most [`MAX_REDIRECTS`]), and names are resolved here, so the connection goes
//! to an address that was checked (a name that answers differently the second time, DNS
//! rebinding, gains nothing). Proxies from the environment are not used: they would hide the
//! address actually reached.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::domain::net_policy::{SourcePolicy, SourceRefused};

/// Most redirects followed from a source URL.
pub const MAX_REDIRECTS: usize = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a whole download may take (MAX_BUNDLE_SIZE bounds its size).
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The source breaks the rules: a person must change the spec or the settings.
    #[error("source.url refused: {0}")]
    Refused(SourceRefused),
    /// The source could not be reached or read; it may work later.
    #[error("fetching the source failed")]
    Transport(#[source] reqwest::Error),
}

/// An HTTP client for bundle sources.
#[derive(Clone)]
pub struct SourceFetcher {
    http: reqwest::Client,
    policy: Arc<SourcePolicy>,
}

impl SourceFetcher {
    pub fn new(policy: SourcePolicy) -> SourceFetcher {
        SourceFetcher::with_hosts(policy, HashMap::new())
    }

    /// For tests: `hosts` answers names without DNS; the addresses are checked like any other.
    pub fn with_hosts(policy: SourcePolicy, hosts: HashMap<String, Vec<IpAddr>>) -> SourceFetcher {
        crate::install_crypto_provider();
        let policy = Arc::new(policy);
        let redirects = policy.clone();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(FETCH_TIMEOUT)
            .no_proxy()
            .dns_resolver(Arc::new(CheckedResolver {
                policy: policy.clone(),
                hosts: Arc::new(hosts),
            }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                let hop = attempt.previous().len();
                if hop > MAX_REDIRECTS {
                    return attempt.error(SourceRefused(format!(
                        "more than {MAX_REDIRECTS} redirects"
                    )));
                }
                match redirects.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(SourceRefused(reason)) => {
                        attempt.error(SourceRefused(format!("redirect #{hop} refused: {reason}")))
                    }
                }
            }))
            .build()
            .expect("the HTTP client builds with the installed TLS provider");
        SourceFetcher { http, policy }
    }

    /// `GET url`, following acceptable redirects.
    pub async fn get(&self, url: &str) -> Result<reqwest::Response, FetchError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| FetchError::Refused(SourceRefused(format!("not a valid URL: {e}"))))?;
        self.policy
            .check_url(&parsed)
            .map_err(FetchError::Refused)?;
        self.http
            .get(parsed)
            .send()
            .await
            .map_err(|e| match refusal_in(&e) {
                Some(refused) => FetchError::Refused(refused),
                None => FetchError::Transport(e),
            })
    }
}

/// A refusal of the resolver or the redirect policy, wherever reqwest wrapped it.
fn refusal_in(error: &reqwest::Error) -> Option<SourceRefused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(refused) = current.downcast_ref::<SourceRefused>() {
            return Some(refused.clone());
        }
        source = current.source();
    }
    None
}

/// Resolves names and keeps only the addresses the policy accepts: the connector connects to
/// what this returns, nothing else.
struct CheckedResolver {
    policy: Arc<SourcePolicy>,
    hosts: Arc<HashMap<String, Vec<IpAddr>>>,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let fixed = self.hosts.get(name.as_str()).cloned();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addresses: Vec<IpAddr> = match fixed {
                Some(addresses) => addresses,
                None => tokio::net::lookup_host((host.as_str(), 0))
                    .await?
                    .map(|address| address.ip())
                    .collect(),
            };
            let allowed = policy.filter_resolved(addresses)?;
            let addrs: Addrs = Box::new(
                allowed
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, 0))
                    .collect::<Vec<_>>()
                    .into_iter(),
            );
            Ok(addrs)
        })
    }
}
