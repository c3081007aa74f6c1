//! Where the server may fetch a `Bundle` resource's `source.url` from: public addresses only,
//! unless the operator allows private networks or lists the hosts it trusts. Whoever can create
//! a `Bundle` in a watched namespace chooses the URL, so without these rules the server would
//! fetch (and publish) whatever answers on its own loopback, the cloud metadata service or the
//! cluster network.
//!
//! Pure rules: the fetcher (`operator::fetch`) applies [`SourcePolicy::check_url`] to the URL
//! and to every redirect, and [`SourcePolicy::check_address`] to every address a name resolves
//! to, connecting only to addresses that passed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// What kind of network an address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    /// `127.0.0.0/8`, `::1` (and the name `localhost`).
    Loopback,
    /// RFC 1918, IPv6 unique-local and site-local, local-use NAT64.
    Private,
    /// `100.64.0.0/10`, carrier-grade NAT (also some clouds' internal services).
    SharedAddressSpace,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// A cloud instance metadata service (`169.254.169.254`, `fd00:ec2::254`, …).
    Metadata,
    Multicast,
    /// `0.0.0.0/8`, `::`: "this host" on many systems.
    Unspecified,
    Broadcast,
    /// Documentation, benchmarking, IETF and future-use ranges, tunnels that hide an address.
    Reserved,
}

impl AddressClass {
    /// Loopback, private and shared (CGNAT) addresses: what BUNDLE_SOURCE_ALLOW_PRIVATE opens.
    /// Link-local and metadata addresses are never fetched from.
    fn is_private_network(self) -> bool {
        matches!(
            self,
            AddressClass::Loopback | AddressClass::Private | AddressClass::SharedAddressSpace
        )
    }

    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "a public address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private-network address",
            AddressClass::SharedAddressSpace => "a shared (carrier-grade NAT) address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Metadata => "a cloud metadata address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Broadcast => "the broadcast address",
            AddressClass::Reserved => "a reserved address",
        }
    }
}

/// The class of `ip`. IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4)
/// are classified by the IPv4 address they reach.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, d] = ip.octets();
    match (a, b, c, d) {
        (169, 254, 169, 254) | (169, 254, 170, 2) | (169, 254, 169, 123) => AddressClass::Metadata,
        (100, 100, 100, 200) => AddressClass::Metadata,
        (0, ..) => AddressClass::Unspecified,
        (127, ..) => AddressClass::Loopback,
        (10, ..) | (192, 168, ..) => AddressClass::Private,
        (172, 16..=31, ..) => AddressClass::Private,
        (100, 64..=127, ..) => AddressClass::SharedAddressSpace,
        (169, 254, ..) => AddressClass::LinkLocal,
        (255, 255, 255, 255) => AddressClass::Broadcast,
        (224..=239, ..) => AddressClass::Multicast,
        (240..=255, ..) => AddressClass::Reserved,
        (192, 0, 0, _) | (192, 0, 2, _) | (198, 51, 100, _) | (203, 0, 113, _) => {
            AddressClass::Reserved
        }
        (198, 18..=19, ..) => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let segments = ip.segments();
    let embedded_v4 = |high: u16, low: u16| {
        Ipv4Addr::new((high >> 8) as u8, high as u8, (low >> 8) as u8, low as u8)
    };
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    match segments {
        // IPv4-compatible (deprecated), `::a.b.c.d`.
        [0, 0, 0, 0, 0, 0, high, low] => classify_v4(embedded_v4(high, low)),
        // NAT64 well-known prefix: reaches the embedded IPv4 address.
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => classify_v4(embedded_v4(high, low)),
        [0x64, 0xff9b, 1, ..] => AddressClass::Private,
        // 6to4: the IPv4 address of the relay's other end.
        [0x2002, high, low, ..] => match classify_v4(embedded_v4(high, low)) {
            AddressClass::Public => AddressClass::Public,
            _ => AddressClass::Reserved,
        },
        [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254] => AddressClass::Metadata,
        // Teredo hides the client's address; documentation; discard-only.
        [0x2001, 0, ..] | [0x2001, 0xdb8, ..] | [0x100, 0, 0, 0, ..] => AddressClass::Reserved,
        [first, ..] if first & 0xfe00 == 0xfc00 => AddressClass::Private,
        [first, ..] if first & 0xffc0 == 0xfe80 => AddressClass::LinkLocal,
        [first, ..] if first & 0xffc0 == 0xfec0 => AddressClass::Private,
        [first, ..] if first & 0xff00 == 0xff00 => AddressClass::Multicast,
        _ => AddressClass::Public,
    }
}

/// A host a source may come from: `cdn.example.com` exactly, or `*.example.com` for any name
/// below `example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern(String);

impl HostPattern {
    pub fn parse(value: &str) -> Result<HostPattern, String> {
        let value = value.trim().trim_end_matches('.').to_ascii_lowercase();
        let name = value.strip_prefix("*.").unwrap_or(&value);
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if valid {
            Ok(HostPattern(value))
        } else {
            Err(format!(
                "`{value}` is not a host name or `*.domain` pattern (IP addresses are not listed here)"
            ))
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self.0.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => host == self.0,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a source (or one of its redirects, or an address it resolved to) is refused. The text
/// names only what the spec said or the kind of address, never an address a name resolved to
/// or a redirect's target, so a status message cannot map the internal network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceRefused(pub String);

/// The operator's rules for bundle sources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourcePolicy {
    /// BUNDLE_SOURCE_ALLOW_PRIVATE: also fetch from loopback, private and shared addresses.
    pub allow_private: bool,
    /// BUNDLE_SOURCE_ALLOWED_HOSTS: when not empty, the only hosts sources may name.
    pub allowed_hosts: Vec<HostPattern>,
}

impl SourcePolicy {
    /// Checks a URL before it is requested: the spec's own, and every redirect's.
    pub fn check_url(&self, url: &Url) -> Result<(), SourceRefused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SourceRefused(format!(
                "only http and https sources are fetched, not {}",
                url.scheme()
            )));
        }
        let host = url
            .host()
            .ok_or_else(|| SourceRefused("the URL has no host".into()))?;
        let name = match &host {
            Host::Domain(name) => name.trim_end_matches('.').to_ascii_lowercase(),
            Host::Ipv4(ip) => ip.to_string(),
            Host::Ipv6(ip) => ip.to_string(),
        };
        if !self.allowed_hosts.is_empty() && !self.allowed_hosts.iter().any(|p| p.matches(&name)) {
            return Err(SourceRefused(format!(
                "host {name} is not in BUNDLE_SOURCE_ALLOWED_HOSTS"
            )));
        }
        match host {
            Host::Ipv4(ip) => self.check_address(IpAddr::V4(ip)),
            Host::Ipv6(ip) => self.check_address(IpAddr::V6(ip)),
            Host::Domain(_) if name == "localhost" || name.ends_with(".localhost") => {
                self.check_class(AddressClass::Loopback)
            }
            // Checked once resolved, address by address.
            Host::Domain(_) => Ok(()),
        }
    }

    /// Checks an address the fetcher is about to connect to.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), SourceRefused> {
        self.check_class(classify(ip))
    }

    fn check_class(&self, class: AddressClass) -> Result<(), SourceRefused> {
        if class == AddressClass::Public || self.allow_private && class.is_private_network() {
            return Ok(());
        }
        let hint = if class.is_private_network() {
            " (set BUNDLE_SOURCE_ALLOW_PRIVATE=true to fetch from your own network)"
        } else {
            ""
        };
        Err(SourceRefused(format!(
            "it is {}: bundle sources must be public{hint}",
            class.describe()
        )))
    }

    /// The addresses of a resolved name that may be connected to; refused when none may.
    pub fn filter_resolved(&self, addresses: Vec<IpAddr>) -> Result<Vec<IpAddr>, SourceRefused> {
        let mut refused = None;
        let allowed: Vec<IpAddr> = addresses
            .into_iter()
            .filter(|ip| match self.check_address(*ip) {
                Ok(()) => true,
                Err(e) => {
                    refused.get_or_insert(e);
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), refused) {
            (false, _) => Ok(allowed),
            (true, Some(SourceRefused(reason))) => Err(SourceRefused(format!(
                "the host resolves to no acceptable address: {reason}"
            ))),
            (true, None) => Err(SourceRefused("the host resolves to no address".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn classifies_internal_ranges() {
        let cases = [
            ("127.0.0.1", AddressClass::Loopback),
            ("127.255.0.9", AddressClass::Loopback),
            ("::1", AddressClass::Loopback),
            ("10.1.2.3", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("192.168.1.1", AddressClass::Private),
            ("fd12:3456::1", AddressClass::Private),
            ("fec0::1", AddressClass::Private),
            ("100.64.0.1", AddressClass::SharedAddressSpace),
            ("100.127.255.254", AddressClass::SharedAddressSpace),
            ("169.254.1.1", AddressClass::LinkLocal),
            ("fe80::1", AddressClass::LinkLocal),
            ("169.254.169.254", AddressClass::Metadata),
            ("169.254.170.2", AddressClass::Metadata),
            ("fd00:ec2::254", AddressClass::Metadata),
            ("100.100.100.200", AddressClass::Metadata),
            ("224.0.0.1", AddressClass::Multicast),
            ("ff02::1", AddressClass::Multicast),
            ("0.0.0.0", AddressClass::Unspecified),
            ("0.1.2.3", AddressClass::Unspecified),
            ("::", AddressClass::Unspecified),
            ("255.255.255.255", AddressClass::Broadcast),
            ("240.0.0.1", AddressClass::Reserved),
            ("192.0.2.1", AddressClass::Reserved),
            ("198.18.0.1", AddressClass::Reserved),
            ("2001:db8::1", AddressClass::Reserved),
            ("2001:0:4136:e378::1", AddressClass::Reserved),
            // IPv6 forms that reach an IPv4 address.
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("::ffff:169.254.169.254", AddressClass::Metadata),
            ("::ffff:10.0.0.1", AddressClass::Private),
            ("::127.0.0.1", AddressClass::Loopback),
            ("64:ff9b::a9fe:a9fe", AddressClass::Metadata),
            ("64:ff9b:1::1", AddressClass::Private),
            ("2002:7f00:1::1", AddressClass::Reserved),
            // Public.
            ("93.184.216.34", AddressClass::Public),
            ("172.32.0.1", AddressClass::Public),
            ("100.128.0.1", AddressClass::Public),
            ("2606:4700::1111", AddressClass::Public),
            ("::ffff:93.184.216.34", AddressClass::Public),
            ("2002:5db8:d822::1", AddressClass::Public),
        ];
        for (address, class) in cases {
            assert_eq!(classify(ip(address)), class, "{address}");
        }
    }

    #[test]
    fn numeric_host_forms_are_read_as_the_address_they_reach() {
        let policy = SourcePolicy::default();
        for form in [
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://0x7f.0.0.1/",
            "http://[::ffff:7f00:1]/",
            "http://2852039166/latest/meta-data",
            "http://[fd00:ec2::254]/",
        ] {
            let refused = policy.check_url(&url(form)).unwrap_err();
            assert!(refused.0.contains("must be public"), "{form}: {refused}");
        }
    }

    #[test]
    fn localhost_by_name_is_loopback() {
        let policy = SourcePolicy::default();
        for form in [
            "http://localhost:8001/metrics",
            "http://LOCALHOST./",
            "http://api.localhost/",
        ] {
            assert!(
                policy
                    .check_url(&url(form))
                    .unwrap_err()
                    .0
                    .contains("loopback"),
                "{form}"
            );
        }
        let private = SourcePolicy {
            allow_private: true,
            ..Default::default()
        };
        assert!(private
            .check_url(&url("http://localhost:8000/x.zip"))
            .is_ok());
    }

    #[test]
    fn private_networks_open_only_on_request_and_metadata_never() {
        let strict = SourcePolicy::default();
        let open = SourcePolicy {
            allow_private: true,
            ..Default::default()
        };
        for address in ["127.0.0.1", "10.0.0.5", "100.64.1.1", "fd00::1"] {
            assert!(strict.check_address(ip(address)).is_err(), "{address}");
            assert!(open.check_address(ip(address)).is_ok(), "{address}");
        }
        for address in [
            "169.254.169.254",
            "fd00:ec2::254",
            "169.254.3.4",
            "0.0.0.0",
            "224.0.0.1",
        ] {
            assert!(open.check_address(ip(address)).is_err(), "{address}");
        }
        assert!(strict.check_address(ip("93.184.216.34")).is_ok());
        assert!(strict
            .check_url(&url("https://cdn.example.com/web.zip"))
            .is_ok());
        assert!(strict
            .check_url(&url("ftp://cdn.example.com/web.zip"))
            .is_err());
        assert!(strict.check_url(&url("file:///etc/passwd")).is_err());
    }

    #[test]
    fn resolved_addresses_keep_only_acceptable_ones() {
        let policy = SourcePolicy::default();
        assert_eq!(
            policy.filter_resolved(vec![ip("127.0.0.1"), ip("93.184.216.34")]),
            Ok(vec![ip("93.184.216.34")])
        );
        let refused = policy
            .filter_resolved(vec![ip("10.0.0.1"), ip("169.254.169.254")])
            .unwrap_err();
        assert!(refused.0.contains("private-network"), "{refused}");
        assert!(
            !refused.0.contains("10.0.0.1"),
            "no resolved address: {refused}"
        );
        assert!(policy.filter_resolved(vec![]).is_err());
    }

    #[test]
    fn allowed_hosts_restrict_further() {
        let policy = SourcePolicy {
            allow_private: false,
            allowed_hosts: vec![
                HostPattern::parse("cdn.example.com").unwrap(),
                HostPattern::parse("*.artifacts.example.org").unwrap(),
            ],
        };
        assert!(policy
            .check_url(&url("https://cdn.example.com/a.zip"))
            .is_ok());
        assert!(policy
            .check_url(&url("https://CDN.example.com./a.zip"))
            .is_ok());
        assert!(policy
            .check_url(&url("https://eu.artifacts.example.org/a.zip"))
            .is_ok());
        for refused in [
            "https://artifacts.example.org/a.zip",
            "https://evilartifacts.example.org/a.zip",
            "https://cdn.example.com.evil.net/a.zip",
            "https://93.184.216.34/a.zip",
        ] {
            let e = policy.check_url(&url(refused)).unwrap_err();
            assert!(
                e.0.contains("BUNDLE_SOURCE_ALLOWED_HOSTS"),
                "{refused}: {e}"
            );
        }
        // Listed hosts still resolve to public addresses only.
        let local = SourcePolicy {
            allow_private: false,
            allowed_hosts: vec![HostPattern::parse("localhost").unwrap()],
        };
        assert!(local.check_url(&url("http://localhost/x")).is_err());
        assert!(HostPattern::parse("10.0.0.1:80").is_err());
        assert!(HostPattern::parse("*.").is_err());
    }
}
