//! Which addresses a hook may reach (DESIGN.md section 11): loopback, link-local, unspecified and
//! cloud metadata addresses are refused unless the controller's allow-list (`--hook-allow-cidr`)
//! names them. A hook URL comes from a Canary, which anyone allowed to write one controls; without
//! these rules it would be a way to make the controller's network identity read a cloud's
//! credentials or a node-local admin port.
//!
//! The rules look at every address a host resolves to, not the first: a name with one public and
//! one loopback address is refused, because the connection may use either. IPv4-mapped IPv6
//! addresses (`::ffff:127.0.0.1`) are judged as the IPv4 address they carry. This module resolves
//! and judges; it never connects.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// Host names of metadata services, refused by name before any lookup.
const METADATA_NAMES: &[&str] = &["metadata.google.internal"];

/// Cloud metadata addresses: AWS, GCP and Azure (169.254.169.254), AWS over IPv6 (fd00:ec2::254),
/// Alibaba Cloud (100.100.100.200).
const METADATA_ADDRESSES: &[IpAddr] = &[
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
];

/// Why an address is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restricted {
    /// A cloud metadata service (by address or by name).
    Metadata,
    /// 127.0.0.0/8 or ::1: the controller's own pod.
    Loopback,
    /// 169.254.0.0/16 or fe80::/10: node-local services.
    LinkLocal,
    /// 0.0.0.0/8 or ::, which Linux connects to the local host.
    Unspecified,
}

impl Restricted {
    fn words(self) -> &'static str {
        match self {
            Restricted::Metadata => "a cloud metadata address",
            Restricted::Loopback => "a loopback address",
            Restricted::LinkLocal => "a link-local address",
            Restricted::Unspecified => "an unspecified address",
        }
    }
}

/// The CIDRs `--hook-allow-cidr` permits despite the rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList(Vec<IpNet>);

impl AllowList {
    pub fn new(cidrs: Vec<IpNet>) -> Self {
        Self(cidrs)
    }

    fn permits(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// A hook target the rules refuse. Its text says why and which flag would permit it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefusedTarget {
    #[error(
        "refused before connecting: {}, {} (start the controller with --hook-allow-cidr {} to \
         permit it)",
        naming(host, *ip), why.words(), single(*ip)
    )]
    Address {
        host: String,
        ip: IpAddr,
        why: Restricted,
    },
    #[error(
        "refused before connecting: {host} is a cloud metadata host name (no --hook-allow-cidr \
         permits it)"
    )]
    MetadataName { host: String },
    #[error("refused before connecting: {host} does not resolve: {reason}")]
    Unresolved { host: String, reason: String },
    #[error("refused: {url} is not an http(s) URL with a host")]
    NotHttp { url: String },
}

/// `10.0.0.1`, or `hooks.example resolves to 10.0.0.1`.
fn naming(host: &str, ip: IpAddr) -> String {
    if host.trim_start_matches('[').trim_end_matches(']') == ip.to_string() {
        ip.to_string()
    } else {
        format!("{host} resolves to {ip}")
    }
}

fn single(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

/// The rule an address falls under, if any (before the allow-list).
pub fn restriction(ip: IpAddr) -> Option<Restricted> {
    let ip = canonical(ip);
    if METADATA_ADDRESSES.contains(&ip) {
        return Some(Restricted::Metadata);
    }
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some(Restricted::Loopback)
            } else if v4.is_link_local() {
                Some(Restricted::LinkLocal)
            } else if v4.octets()[0] == 0 {
                Some(Restricted::Unspecified)
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() {
                Some(Restricted::Loopback)
            } else if v6.is_unicast_link_local() {
                Some(Restricted::LinkLocal)
            } else if v6.is_unspecified() {
                Some(Restricted::Unspecified)
            } else {
                None
            }
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Judges one resolved address of `host`.
pub fn vet_ip(host: &str, ip: IpAddr, allow: &AllowList) -> Result<(), RefusedTarget> {
    match restriction(ip) {
        Some(why) if !allow.permits(canonical(ip)) && !allow.permits(ip) => {
            Err(RefusedTarget::Address {
                host: host.to_owned(),
                ip,
                why,
            })
        }
        Some(_) | None => Ok(()),
    }
}

/// Judges a host name before it is looked up.
pub fn vet_name(host: &str) -> Result<(), RefusedTarget> {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    if METADATA_NAMES.contains(&name.as_str()) {
        return Err(RefusedTarget::MetadataName {
            host: host.to_owned(),
        });
    }
    Ok(())
}

/// Resolves `host` and judges every address it resolves to. IP literals are judged without a
/// lookup. Returns the addresses, all permitted.
pub async fn resolve(
    host: &str,
    port: u16,
    allow: &AllowList,
) -> Result<Vec<SocketAddr>, RefusedTarget> {
    // `[::1]` in a URL is the literal ::1.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        vet_ip(host, ip, allow)?;
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    vet_name(host)?;
    let found: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|error| RefusedTarget::Unresolved {
            host: host.to_owned(),
            reason: error.to_string(),
        })?
        .collect();
    if found.is_empty() {
        return Err(RefusedTarget::Unresolved {
            host: host.to_owned(),
            reason: "no addresses".into(),
        });
    }
    for address in &found {
        vet_ip(host, address.ip(), allow)?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn allow(cidrs: &[&str]) -> AllowList {
        AllowList::new(cidrs.iter().map(|c| c.parse().unwrap()).collect())
    }

    #[test]
    fn loopback_link_local_unspecified_and_metadata_addresses_are_restricted() {
        for (address, expected) in [
            ("127.0.0.1", Restricted::Loopback),
            ("127.255.0.9", Restricted::Loopback),
            ("::1", Restricted::Loopback),
            ("169.254.1.1", Restricted::LinkLocal),
            ("fe80::1", Restricted::LinkLocal),
            ("febf::1", Restricted::LinkLocal),
            ("0.0.0.0", Restricted::Unspecified),
            ("0.1.2.3", Restricted::Unspecified),
            ("::", Restricted::Unspecified),
            ("169.254.169.254", Restricted::Metadata),
            ("fd00:ec2::254", Restricted::Metadata),
            ("100.100.100.200", Restricted::Metadata),
        ] {
            assert_eq!(restriction(ip(address)), Some(expected), "{address}");
        }
    }

    #[test]
    fn ordinary_addresses_are_not_restricted() {
        for address in [
            "10.0.0.1",
            "192.168.1.10",
            "8.8.8.8",
            "100.100.100.201",
            "169.255.0.1",
            "fd00:ec2::253",
            "2001:db8::1",
            "fec0::1",
        ] {
            assert_eq!(restriction(ip(address)), None, "{address}");
        }
    }

    #[test]
    fn ipv4_mapped_ipv6_addresses_are_judged_as_their_ipv4_address() {
        assert_eq!(
            restriction(ip("::ffff:127.0.0.1")),
            Some(Restricted::Loopback)
        );
        assert_eq!(
            restriction(ip("::ffff:169.254.169.254")),
            Some(Restricted::Metadata)
        );
        assert_eq!(restriction(ip("::ffff:10.1.2.3")), None);
    }

    #[test]
    fn the_allow_list_permits_a_restricted_address_inside_it_and_nothing_else() {
        let list = allow(&["127.0.0.1/32"]);
        assert!(vet_ip("h", ip("127.0.0.1"), &list).is_ok());
        assert!(vet_ip("h", ip("::ffff:127.0.0.1"), &list).is_ok());
        assert!(vet_ip("h", ip("127.0.0.2"), &list).is_err());
        assert!(vet_ip("h", ip("169.254.169.254"), &list).is_err());
        assert!(vet_ip("h", ip("10.0.0.1"), &AllowList::default()).is_ok());
    }

    #[test]
    fn a_refusal_names_the_address_the_rule_and_the_flag_that_would_permit_it() {
        let refused = vet_ip("169.254.169.254", ip("169.254.169.254"), &allow(&[])).unwrap_err();
        let text = refused.to_string();
        assert_eq!(
            text,
            "refused before connecting: 169.254.169.254, a cloud metadata address (start the \
             controller with --hook-allow-cidr 169.254.169.254/32 to permit it)"
        );
        assert!(
            text.contains("--hook-allow-cidr 169.254.169.254/32"),
            "{text}"
        );
        let refused = vet_ip("h", ip("::1"), &allow(&[])).unwrap_err();
        let text = refused.to_string();
        assert!(
            text.contains("h resolves to ::1, a loopback address"),
            "{text}"
        );
        assert!(text.contains("--hook-allow-cidr ::1/128"), "{text}");
    }

    #[test]
    fn metadata_host_names_are_refused_whatever_their_case_or_trailing_dot() {
        for host in [
            "metadata.google.internal",
            "METADATA.google.internal.",
            "Metadata.Google.Internal",
        ] {
            assert!(
                matches!(vet_name(host), Err(RefusedTarget::MetadataName { .. })),
                "{host}"
            );
        }
        assert!(vet_name("hooks.shop.svc").is_ok());
    }

    #[tokio::test]
    async fn resolving_judges_ip_literals_without_a_lookup() {
        let refused = resolve("169.254.169.254", 80, &allow(&[])).await;
        assert!(matches!(
            refused,
            Err(RefusedTarget::Address {
                why: Restricted::Metadata,
                ..
            })
        ));
        let refused = resolve("[::1]", 80, &allow(&[])).await;
        assert!(matches!(
            refused,
            Err(RefusedTarget::Address {
                why: Restricted::Loopback,
                ..
            })
        ));
        let permitted = resolve("127.0.0.1", 8080, &allow(&["127.0.0.0/8"]))
            .await
            .unwrap();
        assert_eq!(permitted, vec!["127.0.0.1:8080".parse().unwrap()]);
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused() {
        // `localhost` resolves from /etc/hosts, with no network.
        let refused = resolve("localhost", 80, &allow(&[])).await;
        assert!(
            matches!(refused, Err(RefusedTarget::Address { ref host, .. }) if host == "localhost"),
            "{refused:?}"
        );
    }
}
