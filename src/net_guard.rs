//! Server-side request forgery (SSRF) guard for downloads.
//!
//! URL lists come from the web, so a row can name the machine running capfilt, its private
//! network or a cloud metadata service. The guard rejects those destinations on every connection.
//! Literal IP hosts are checked before the request and on each redirect. Host names are checked
//! after DNS resolution, on the exact addresses the connection then uses, so a name cannot pass
//! the check with a public address and connect to a private one (DNS rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// The reason given for cloud metadata addresses, which stay rejected even when
/// `allow_private_networks` is set.
pub const CLOUD_METADATA: &str = "cloud metadata service";

/// Instance metadata endpoints that hand out credentials. 169.254.169.254 serves AWS, GCP,
/// Azure, Oracle and OpenStack; 169.254.170.2 serves AWS ECS task credentials; 168.63.129.16 is
/// Azure's WireServer, a public-range address; 100.100.100.200 serves Alibaba Cloud.
const CLOUD_METADATA_V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(168, 63, 129, 16),
    Ipv4Addr::new(100, 100, 100, 200),
];

/// The AWS instance metadata service over IPv6.
const CLOUD_METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)];

const PRIVATE: &str = "private network";
const DOCUMENTATION: &str = "documentation range";

/// IPv4 ranges that are not public unicast destinations, most specific first so the reason
/// names the narrowest range.
const FORBIDDEN_V4: [(Ipv4Net, &str); 17] = [
    (v4(255, 255, 255, 255, 32), "broadcast"),
    (v4(0, 0, 0, 0, 32), "unspecified"),
    (v4(0, 0, 0, 0, 8), "this network (0.0.0.0/8)"),
    (v4(10, 0, 0, 0, 8), PRIVATE),
    (v4(100, 64, 0, 0, 10), "carrier-grade NAT"),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(169, 254, 0, 0, 16), "link-local"),
    (v4(172, 16, 0, 0, 12), PRIVATE),
    (v4(192, 0, 0, 0, 24), "IETF protocol assignments"),
    (v4(192, 0, 2, 0, 24), DOCUMENTATION),
    (v4(192, 88, 99, 0, 24), "6to4 relay anycast"),
    (v4(192, 168, 0, 0, 16), PRIVATE),
    (v4(198, 18, 0, 0, 15), "benchmarking range"),
    (v4(198, 51, 100, 0, 24), DOCUMENTATION),
    (v4(203, 0, 113, 0, 24), DOCUMENTATION),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved (240.0.0.0/4)"),
];

/// IPv6 ranges that are not public unicast destinations, most specific first. Forms that carry
/// an IPv4 destination are handled by `embedded_ipv4` before this table.
const FORBIDDEN_V6: [(Ipv6Net, &str); 14] = [
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 96), "IPv4-compatible IPv6 (deprecated)"),
    (v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), "NAT64 local-use prefix"),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard-only prefix"),
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), "Teredo tunnel"),
    (v6([0x2001, 0x2, 0, 0, 0, 0, 0, 0], 48), "benchmarking range"),
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), "IETF protocol assignments"),
    (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), DOCUMENTATION),
    (v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), DOCUMENTATION),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "unique local"),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), "site-local (deprecated)"),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

const IPV4_MAPPED: Ipv6Net = v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96);
const IPV4_TRANSLATED: Ipv6Net = v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96);
const NAT64_WELL_KNOWN: Ipv6Net = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const SIX_TO_FOUR: Ipv6Net = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)
}

const fn v6(s: [u16; 8], prefix: u8) -> Ipv6Net {
    Ipv6Net::new_assert(Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]), prefix)
}

/// Returns why `ip` is no public destination (loopback, private, metadata ...), or `None` for a
/// public unicast address. IPv6 forms that reach an IPv4 address (IPv4-mapped, NAT64, 6to4) get
/// the verdict of that IPv4 address.
pub fn is_forbidden(ip: IpAddr) -> Option<&'static str> {
    if is_cloud_metadata(ip) {
        return Some(CLOUD_METADATA);
    }

    match ip {
        IpAddr::V4(ip) => forbidden_v4(ip),
        IpAddr::V6(ip) => forbidden_v6(ip),
    }
}

/// Returns whether `ip` is a cloud instance metadata endpoint, directly or through an IPv6 form that
/// carries it.
pub fn is_cloud_metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => CLOUD_METADATA_V4.contains(&ip),
        IpAddr::V6(ip) => {
            CLOUD_METADATA_V6.contains(&ip) || embedded_ipv4(ip).is_some_and(|inner| CLOUD_METADATA_V4.contains(&inner))
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    FORBIDDEN_V4.iter().find(|(net, _)| net.contains(&ip)).map(|(_, reason)| *reason)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(inner) = embedded_ipv4(ip) {
        return forbidden_v4(inner);
    }

    FORBIDDEN_V6.iter().find(|(net, _)| net.contains(&ip)).map(|(_, reason)| *reason)
}

/// Returns the IPv4 address that an IPv6 address delivers to: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-translated (`::ffff:0:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4 (`2002:AABB:CCDD::`).
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let octets = ip.octets();

    if IPV4_MAPPED.contains(&ip) || IPV4_TRANSLATED.contains(&ip) || NAT64_WELL_KNOWN.contains(&ip) {
        return Some(Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]));
    }
    if SIX_TO_FOUR.contains(&ip) {
        return Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]));
    }
    None
}

/// A connection the guard rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct BlockedAddress {
    pub ip: IpAddr,
    pub reason: &'static str,
    /// The host name that resolved to `ip`, when the URL named a host rather than an address.
    pub host: Option<String>,
}

impl std::fmt::Display for BlockedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Some(host) => write!(f, "{host} resolved to {}, ", self.ip)?,
            None => write!(f, "{} is ", self.ip)?,
        }

        let hint = if self.reason == CLOUD_METADATA {
            "only --allow-cidr can allow it"
        } else {
            "allow it with --allow-cidr or --allow-private-networks"
        };
        write!(f, "in a forbidden range ({}); {hint}", self.reason)
    }
}

/// A DNS lookup failure, split so callers can retry only the temporary ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name may resolve later: a server failure or a timeout.
    #[error("temporary DNS failure for {name}: {message}")]
    Temporary { name: String, message: String },
    /// The name does not exist or has no addresses; retrying will not help.
    #[error("{name} not found in DNS: {message}")]
    NotFound { name: String, message: String },
}

impl DnsError {
    pub fn is_temporary(&self) -> bool {
        matches!(self, DnsError::Temporary { .. })
    }
}

/// An `allowed_cidrs` entry that is neither a CIDR block nor an IP address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid allowed CIDR {value:?} (expected a block such as 10.1.0.0/16 or fd12::/64, or one address): {message}")]
pub struct InvalidCidr {
    pub value: String,
    pub message: String,
}

/// The destination policy: which addresses downloads may connect to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetGuard {
    allow_private_networks: bool,
    allowed: Vec<IpNet>,
}

impl NetGuard {
    /// Builds the policy. `allowed_cidrs` entries are CIDR blocks or single addresses; they allow
    /// any address they contain, cloud metadata included.
    pub fn new(allow_private_networks: bool, allowed_cidrs: &[String]) -> Result<Self, InvalidCidr> {
        let allowed = allowed_cidrs.iter().map(|value| parse_cidr(value)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { allow_private_networks, allowed })
    }

    /// Returns whether private networks are open. Cloud metadata stays rejected even then.
    pub fn allows_private_networks(&self) -> bool {
        self.allow_private_networks
    }

    /// Accepts or rejects one destination address.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), BlockedAddress> {
        if self.is_explicitly_allowed(ip) {
            return Ok(());
        }

        let Some(reason) = is_forbidden(ip) else {
            return Ok(());
        };
        if self.allow_private_networks && reason != CLOUD_METADATA {
            return Ok(());
        }
        Err(BlockedAddress { ip, reason, host: None })
    }

    /// Checks a URL whose host is an IP literal. Host names pass here because the resolver
    /// checks the addresses they resolve to.
    pub fn check_url(&self, url: &Url) -> Result<(), BlockedAddress> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) | None => Ok(()),
        }
    }

    /// Keeps the resolved addresses of `host` that the policy accepts, or rejects the host when
    /// none remains.
    pub fn filter_resolved(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, BlockedAddress> {
        let mut first_rejection = None;
        let mut accepted = Vec::with_capacity(addrs.len());

        for addr in addrs {
            match self.check_ip(addr.ip()) {
                Ok(()) => accepted.push(addr),
                Err(blocked) => {
                    tracing::debug!(host, ip = %addr.ip(), reason = blocked.reason, "dropped a resolved address");
                    first_rejection.get_or_insert(blocked);
                }
            }
        }

        match (accepted.is_empty(), first_rejection) {
            (true, Some(blocked)) => Err(BlockedAddress { host: Some(host.to_string()), ..blocked }),
            _ => Ok(accepted),
        }
    }

    /// IPv4-mapped forms match allowed IPv4 blocks too, so allowing 10.1.0.0/16 also allows
    /// `::ffff:10.1.2.3`.
    fn is_explicitly_allowed(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.allowed.iter().any(|net| net.contains(&ip) || net.contains(&canonical))
    }
}

/// Parses a CIDR block, or a single address as a block of one.
fn parse_cidr(value: &str) -> Result<IpNet, InvalidCidr> {
    let trimmed = value.trim();

    if let Ok(net) = trimmed.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    match trimmed.parse::<IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(error) => Err(InvalidCidr { value: value.to_string(), message: error.to_string() }),
    }
}

/// DNS through the operating system's resolver (`getaddrinfo`, on a blocking thread).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|error| classify_lookup_error(&host, &error))?;
            Ok(Box::new(addrs.collect::<Vec<_>>().into_iter()) as Addrs)
        })
    }
}

/// Messages `getaddrinfo` gives for names that do not exist, from glibc, musl and macOS.
const NOT_FOUND_MESSAGES: [&str; 4] = [
    "name or service not known",
    "no address associated with hostname",
    "name does not resolve",
    "nodename nor servname provided",
];

/// Splits lookup failures into permanent and temporary ones. Anything not known to be permanent
/// counts as temporary, because a wrong guess there costs only a bounded number of retries.
// NOTE: std reports `getaddrinfo` errors only as text, so this matches the C libraries' messages.
fn classify_lookup_error(host: &str, error: &std::io::Error) -> DnsError {
    let message = error.to_string();
    let lower = message.to_ascii_lowercase();

    if NOT_FOUND_MESSAGES.iter().any(|known| lower.contains(known)) {
        DnsError::NotFound { name: host.to_string(), message }
    } else {
        DnsError::Temporary { name: host.to_string(), message }
    }
}

/// A resolver that passes only the addresses the guard accepts to the connector.
pub struct GuardedResolver {
    inner: Arc<dyn Resolve>,
    guard: Arc<NetGuard>,
}

impl GuardedResolver {
    pub fn new(inner: Arc<dyn Resolve>, guard: Arc<NetGuard>) -> Self {
        Self { inner, guard }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let lookup = self.inner.resolve(name);
        let guard = self.guard.clone();

        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup.await?.collect();
            if addrs.is_empty() {
                let message = "the resolver returned no addresses".to_string();
                return Err(DnsError::NotFound { name: host, message }.into());
            }

            let accepted = guard.filter_resolved(&host, addrs)?;
            Ok(Box::new(accepted.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forbidden_table() {
        let cases: &[(&str, &str)] = &[
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("10.0.0.1", PRIVATE),
            ("10.255.255.255", PRIVATE),
            ("172.16.0.1", PRIVATE),
            ("172.31.255.255", PRIVATE),
            ("192.168.1.1", PRIVATE),
            ("169.254.0.1", "link-local"),
            ("169.254.169.254", CLOUD_METADATA),
            ("169.254.170.2", CLOUD_METADATA),
            ("168.63.129.16", CLOUD_METADATA),
            ("100.100.100.200", CLOUD_METADATA),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.127.255.255", "carrier-grade NAT"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network (0.0.0.0/8)"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved (240.0.0.0/4)"),
            ("192.0.0.8", "IETF protocol assignments"),
            ("192.0.2.10", DOCUMENTATION),
            ("198.51.100.7", DOCUMENTATION),
            ("203.0.113.200", DOCUMENTATION),
            ("198.18.0.1", "benchmarking range"),
            ("198.19.255.255", "benchmarking range"),
            ("192.88.99.1", "6to4 relay anycast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.1.2.3", PRIVATE),
            ("::ffff:169.254.169.254", CLOUD_METADATA),
            ("::ffff:0:192.168.0.1", PRIVATE),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a9fe:a9fe", CLOUD_METADATA),
            ("64:ff9b:1::1", "NAT64 local-use prefix"),
            ("2002:7f00:1::", "loopback"),
            ("2002:c0a8:101::1", PRIVATE),
            ("::127.0.0.1", "IPv4-compatible IPv6 (deprecated)"),
            ("100::1", "discard-only prefix"),
            ("2001::1", "Teredo tunnel"),
            ("2001:2::1", "benchmarking range"),
            ("2001:10::1", "IETF protocol assignments"),
            ("2001:db8::1", DOCUMENTATION),
            ("3fff::1", DOCUMENTATION),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fd00:ec2::254", CLOUD_METADATA),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local (deprecated)"),
            ("ff02::1", "multicast"),
        ];
        for (text, reason) in cases {
            assert_eq!(is_forbidden(ip(text)), Some(*reason), "{text}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.215.14",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.255.255",
            "192.167.255.255",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ];
        for text in public {
            assert_eq!(is_forbidden(ip(text)), None, "{text}");
        }
    }

    #[test]
    fn metadata_only_through_exact_addresses() {
        assert!(is_cloud_metadata(ip("169.254.169.254")));
        assert!(is_cloud_metadata(ip("::ffff:169.254.169.254")));
        assert!(is_cloud_metadata(ip("fd00:ec2::254")));
        assert!(!is_cloud_metadata(ip("169.254.169.253")));
        assert!(!is_cloud_metadata(ip("127.0.0.1")));
    }

    #[test]
    fn default_guard_rejects_loopback() {
        let guard = NetGuard::default();
        let blocked = guard.check_ip(ip("127.0.0.1")).unwrap_err();
        assert_eq!(blocked.reason, "loopback");
        assert!(blocked.to_string().contains("--allow-private-networks"), "{blocked}");
        assert!(guard.check_ip(ip("8.8.8.8")).is_ok());
    }

    #[test]
    fn private_allowance_keeps_metadata_rejected() {
        let guard = NetGuard::new(true, &[]).unwrap();
        assert!(guard.check_ip(ip("127.0.0.1")).is_ok());
        assert!(guard.check_ip(ip("10.0.0.1")).is_ok());
        assert!(guard.check_ip(ip("fe80::1")).is_ok());

        let blocked = guard.check_ip(ip("169.254.169.254")).unwrap_err();
        assert_eq!(blocked.reason, CLOUD_METADATA);
        assert!(blocked.to_string().contains("only --allow-cidr"), "{blocked}");
        assert!(guard.check_ip(ip("fd00:ec2::254")).is_err());
        assert!(guard.check_ip(ip("::ffff:169.254.169.254")).is_err());
    }

    #[test]
    fn allowed_cidrs_open_only_their_blocks() {
        let cidrs = vec!["10.1.0.0/16".to_string(), "127.0.0.2".to_string(), "169.254.169.254/32".to_string()];
        let guard = NetGuard::new(false, &cidrs).unwrap();

        assert!(guard.check_ip(ip("10.1.200.3")).is_ok());
        assert!(guard.check_ip(ip("::ffff:10.1.200.3")).is_ok());
        assert!(guard.check_ip(ip("127.0.0.2")).is_ok());
        assert!(guard.check_ip(ip("169.254.169.254")).is_ok());
        assert_eq!(guard.check_ip(ip("10.2.0.1")).unwrap_err().reason, PRIVATE);
        assert_eq!(guard.check_ip(ip("127.0.0.1")).unwrap_err().reason, "loopback");
    }

    #[test]
    fn cidr_with_host_bits_covers_its_block() {
        let guard = NetGuard::new(false, &["10.1.2.3/16".to_string()]).unwrap();
        assert!(guard.check_ip(ip("10.1.0.1")).is_ok());
    }

    #[test]
    fn invalid_cidrs_rejected() {
        for value in ["10.0.0.0/33", "not-an-address", "10.0.0/8", "fd00::/129", ""] {
            let error = NetGuard::new(false, &[value.to_string()]).unwrap_err();
            assert_eq!(error.value, value);
            assert!(error.to_string().contains("invalid allowed CIDR"), "{error}");
        }
    }

    #[test]
    fn url_literals_checked_names_deferred() {
        let guard = NetGuard::default();
        let check = |text: &str| guard.check_url(&Url::parse(text).unwrap());

        assert_eq!(check("http://127.0.0.1:8080/a.jpg").unwrap_err().reason, "loopback");
        assert_eq!(check("http://[::ffff:7f00:1]/a.jpg").unwrap_err().reason, "loopback");
        assert_eq!(check("http://2130706433/a.jpg").unwrap_err().reason, "loopback");
        assert_eq!(check("http://0x7f.1/a.jpg").unwrap_err().reason, "loopback");
        assert_eq!(check("http://[fd00:ec2::254]/latest").unwrap_err().reason, CLOUD_METADATA);
        assert!(check("http://8.8.8.8/a.jpg").is_ok());
        assert!(check("http://localhost/a.jpg").is_ok(), "names are checked after resolution");
    }

    #[test]
    fn resolved_addresses_filtered() {
        let guard = NetGuard::default();
        let public: SocketAddr = "8.8.8.8:80".parse().unwrap();
        let private: SocketAddr = "10.0.0.1:80".parse().unwrap();

        let kept = guard.filter_resolved("mixed.test", vec![private, public]).unwrap();
        assert_eq!(kept, vec![public]);

        let blocked = guard.filter_resolved("inside.test", vec![private]).unwrap_err();
        assert_eq!(blocked.host.as_deref(), Some("inside.test"));
        assert!(blocked.to_string().starts_with("inside.test resolved to 10.0.0.1, in a forbidden range (private network)"), "{blocked}");
    }

    #[test]
    fn lookup_errors_classified() {
        let not_found = std::io::Error::other("failed to lookup address information: Name or service not known");
        let temporary = std::io::Error::other("failed to lookup address information: Temporary failure in name resolution");
        assert!(!classify_lookup_error("a.test", &not_found).is_temporary());
        assert!(classify_lookup_error("a.test", &temporary).is_temporary());
    }
}
