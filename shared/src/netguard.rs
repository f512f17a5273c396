//! The SSRF guard: addresses a job may never call unless `allow_private_networks` is set.
//!
//! Jobs come from a queue, so their URLs are untrusted input. A URL that names (or resolves to) the
//! instance metadata endpoint, loopback or a private network could read credentials or reach
//! internal services. The producer checks literal addresses at validation; the consumer checks every
//! address DNS returns, right before it connects, and every redirect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused, or `None` if it is a public unicast address.
pub(crate) fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => v4_reason(v4),
            None => v6_reason(v6),
        },
    }
}

/// The IPv4 host an IPv6 address reaches: IPv4-mapped (`::ffff:a.b.c.d`), SIIT-translated
/// (`::ffff:0:a.b.c.d`), IPv4-compatible (`::a.b.c.d`) and NAT64 (`64:ff9b::a.b.c.d`, which a
/// VPC's DNS64 hands out, and the local-use `64:ff9b:1::/48`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    // `::` and `::1` are IPv6's own unspecified and loopback addresses, judged as such.
    let compatible = s[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified();
    let translated = s[..6] == [0, 0, 0, 0, 0xffff, 0];
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..3] == [0x64, 0xff9b, 1];
    (compatible || translated || nat64).then(|| v4_from(s[6], s[7]))
}

fn v4_from(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
}

/// Tunnel addresses that carry an IPv4 address the packets are routed to: 6to4
/// (`2002:AABB:CCDD::/48` → `AA.BB.CC.DD`) and Teredo (`2001:0::/32`, client address inverted
/// in the last 32 bits). A tunnel to a private or loopback IPv4 address is refused like it.
fn tunnel_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if s[0] == 0x2002 && v4_reason(v4_from(s[1], s[2])).is_some() {
        Some("6to4 address wrapping a non-public IPv4 address (2002::/16)")
    } else if s[..2] == [0x2001, 0] && v4_reason(v4_from(!s[6], !s[7])).is_some() {
        Some("Teredo address wrapping a non-public IPv4 address (2001::/32)")
    } else {
        None
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_unspecified() {
        Some("unspecified address")
    } else if ip.is_loopback() {
        Some("loopback address")
    } else if ip.is_link_local() {
        // 169.254.0.0/16 holds the EC2/ECS/Lambda metadata endpoints.
        Some("link-local address (metadata endpoint range)")
    } else if ip.is_private() {
        Some("private address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared address space (100.64.0.0/10)")
    } else if a == 0 {
        Some("this-network address (0.0.0.0/8)")
    } else if matches!(
        (a, b, c),
        (192, 0, 0 | 2) | (192, 88, 99) | (198, 51, 100) | (203, 0, 113)
    ) || (a == 198 && b & 0xfe == 18)
    {
        // Never a public service; a host may still number its own interfaces from them.
        Some("reserved address (IETF, documentation or benchmarking range)")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("broadcast, multicast or reserved address")
    } else {
        None
    }
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let first = s[0];
    if let Some(reason) = tunnel_reason(ip) {
        Some(reason)
    } else if ip.is_unspecified() {
        Some("unspecified address")
    } else if ip.is_loopback() {
        Some("loopback address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local address")
    } else if first & 0xfe00 == 0xfc00 {
        // fd00:ec2::254 is the IPv6 metadata endpoint; all of fc00::/7 is private.
        Some("unique local (private) address")
    } else if first & 0xffc0 == 0xfec0 {
        Some("site-local address (deprecated, fec0::/10)")
    } else if s[..2] == [0x2001, 0xdb8] || (first == 0x3fff && s[1] & 0xf000 == 0) {
        Some("documentation address (2001:db8::/32, 3fff::/20)")
    } else if s[..4] == [0x100, 0, 0, 0]
        || s[..3] == [0x2001, 2, 0]
        || (s[0] == 0x2001 && matches!(s[1] & 0xfff0, 0x10 | 0x20))
    {
        Some("reserved address (discard-only, benchmarking or ORCHID range)")
    } else if ip.is_multicast() {
        Some("multicast address")
    } else {
        None
    }
}

/// A URL host the guard refuses without asking DNS. Its text completes a sentence about the
/// field or hop that named the host (the config adds what setting allows it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedHost {
    /// `localhost` or a `*.localhost` name, which always resolves to loopback.
    #[error("host {0} is loopback")]
    Localhost(String),
    /// An IP literal in a forbidden range.
    #[error("{ip} is a {reason}")]
    Address {
        /// The address.
        ip: IpAddr,
        /// Its range, as `forbidden_reason` words it.
        reason: &'static str,
    },
}

/// Checks a URL host that is an IP literal (`http://10.0.0.1/`, `http://[::1]/`); names are
/// checked after DNS resolution by the consumer. `localhost` is refused here too, since it
/// always resolves to loopback.
pub fn check_literal_host(host: &url::Host<&str>) -> Result<(), RefusedHost> {
    let ip = match host {
        url::Host::Ipv4(v4) => IpAddr::V4(*v4),
        url::Host::Ipv6(v6) => IpAddr::V6(*v6),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                return Err(RefusedHost::Localhost(name));
            }
            return Ok(());
        }
    };
    match forbidden_reason(ip) {
        Some(reason) => Err(RefusedHost::Address { ip, reason }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> Option<&'static str> {
        forbidden_reason(s.parse().unwrap())
    }

    #[test]
    fn refuses_metadata_loopback_private_and_unspecified() {
        for bad in [
            "169.254.169.254",
            "127.0.0.1",
            "127.8.9.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "224.0.0.1",
            "::127.0.0.1",
            "::a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::10.0.0.1",
            "192.0.2.2",
            "198.18.0.1",
            "203.0.113.9",
            // Issue #13: documentation, 6to4 and Teredo around private IPv4, site-local, the rest.
            "2001:db8::1",
            "2001:db8:ffff::",
            "3fff::1",
            "2002:a00:1::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2002:c0a8:101::1",
            "fec0::1",
            "feff::1",
            "2001:0:4136:e378:8000:63bf:f5ff:fffe",
            "100::1",
            "2001:2::1",
            "2001:10::1",
            "2001:20::1",
            "::ffff:0:10.0.0.1",
            "64:ff9b:1::a00:1",
            "192.88.99.1",
        ] {
            assert!(reason(bad).is_some(), "{bad} should be refused");
        }
    }

    #[test]
    fn allows_public_addresses() {
        for good in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "172.32.0.1",
            "100.128.0.1",
            "64:ff9b::808:808",
            "198.20.0.1",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
            "2001:db9::1",
            "2001:4860:4860::8888",
        ] {
            assert_eq!(reason(good), None, "{good} should be allowed");
        }
    }

    #[test]
    fn literal_hosts_and_localhost_names() {
        let url = url::Url::parse("http://169.254.169.254/latest/meta-data").unwrap();
        assert!(check_literal_host(&url.host().unwrap())
            .unwrap_err()
            .to_string()
            .contains("link-local"));
        let url = url::Url::parse("http://api.localhost:8080/").unwrap();
        assert!(check_literal_host(&url.host().unwrap()).is_err());
        let url = url::Url::parse("https://api.example.com/").unwrap();
        assert!(check_literal_host(&url.host().unwrap()).is_ok());
    }
}
