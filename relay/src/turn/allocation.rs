//! Allocations (RFC 8656 §6), permissions (§9), channel bindings (§12) and the peer policy.
//!
//! Permissions and channels are kept in small vectors: an allocation has a handful of peers,
//! and a linear scan over a few entries beats hashing on the per-packet path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::stun::turn::ChannelNumber;

/// A client's allocation: one relayed transport address.
#[derive(Debug)]
pub struct Allocation {
    pub relay: SocketAddr,
    /// Address announced to the client (external address, or `relay`).
    pub announced: SocketAddr,
    pub expires: Instant,
    pub username: Box<str>,
    /// The long-term key the allocation was created with; later requests must use it.
    pub key: [u8; 16],
    /// Transaction id of the Allocate, to answer retransmissions (RFC 8656 §7.2).
    pub allocate_tid: [u8; 12],
    pub reservation: Option<u64>,
    pub permissions: Vec<Permission>,
    pub channels: Vec<ChannelBinding>,
    pub to_peer: TokenBucket,
    pub to_client: TokenBucket,
}

/// Permission for one peer IP (RFC 8656 §9; the port does not matter).
#[derive(Debug, Clone, Copy)]
pub struct Permission {
    pub ip: IpAddr,
    pub expires: Instant,
}

/// A channel bound to one peer transport address (RFC 8656 §12).
#[derive(Debug, Clone, Copy)]
pub struct ChannelBinding {
    pub number: ChannelNumber,
    pub peer: SocketAddr,
    pub expires: Instant,
}

impl Allocation {
    /// Whether `ip` has an unexpired permission.
    pub fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions
            .iter()
            .any(|p| p.ip == ip && p.expires > now)
    }

    /// Installs or refreshes the permission for `ip`. False when the limit is reached.
    pub fn permit(&mut self, ip: IpAddr, until: Instant, max: usize) -> bool {
        if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
            p.expires = until;
            return true;
        }
        if self.permissions.len() >= max {
            return false;
        }
        self.permissions.push(Permission { ip, expires: until });
        true
    }

    /// The live channel bound to `number`.
    pub fn channel(&self, number: ChannelNumber, now: Instant) -> Option<&ChannelBinding> {
        self.channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
    }

    /// The live channel bound to `peer`.
    pub fn channel_to(&self, peer: SocketAddr, now: Instant) -> Option<&ChannelBinding> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
    }

    /// Drops expired permissions and channels.
    pub fn prune(&mut self, now: Instant) {
        self.permissions.retain(|p| p.expires > now);
        self.channels.retain(|c| c.expires > now);
    }
}

/// Outcome of a ChannelBind on an allocation.
#[derive(Debug, PartialEq, Eq)]
pub enum BindOutcome {
    Bound,
    /// Number bound to another peer, or peer bound to another number (400).
    Conflict,
    /// Too many channels.
    Full,
}

impl Allocation {
    /// Binds or refreshes `number` <-> `peer` (RFC 8656 §11.2 rules).
    pub fn bind(
        &mut self,
        number: ChannelNumber,
        peer: SocketAddr,
        until: Instant,
        now: Instant,
        max: usize,
    ) -> BindOutcome {
        // An expired binding still blocks rebinding its number to another peer for 5 minutes
        // in the RFC; here expired bindings are simply gone once pruned, and live ones rule.
        for c in &mut self.channels {
            if c.expires <= now {
                continue;
            }
            match (c.number == number, c.peer == peer) {
                (true, true) => {
                    c.expires = until;
                    return BindOutcome::Bound;
                }
                (true, false) | (false, true) => return BindOutcome::Conflict,
                (false, false) => {}
            }
        }
        self.channels.retain(|c| c.expires > now);
        if self.channels.len() >= max {
            return BindOutcome::Full;
        }
        self.channels.push(ChannelBinding {
            number,
            peer,
            expires: until,
        });
        BindOutcome::Bound
    }
}

/// A byte-rate limiter (0 = unlimited); refills continuously, bursts up to one second.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Takes `n` bytes if available.
    pub fn take(&mut self, n: usize, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last);
        if elapsed >= Duration::from_millis(1) {
            let add = (self.rate as u128 * elapsed.as_micros() / 1_000_000) as u64;
            self.tokens = (self.tokens + add).min(self.rate);
            self.last = now;
        }
        let n = n as u64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// An IP network from the allow-list (`10.0.0.0/8`, `fd00::/8`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Option<Self> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr: ip, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Which peers the relay may talk to: by default only globally reachable unicast addresses
/// (IANA's IPv4 and IPv6 special-purpose registries), so the relay cannot be used to reach the
/// operator's internal network (SSRF), and never the relay's own addresses (its admin and
/// signaling ports, or loops through its own relay ports).
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    pub allow_loopback: bool,
    pub allowed: Vec<IpNet>,
    /// The relay's own IPs (listen, relay, external address).
    pub own: Vec<IpAddr>,
}

impl PeerPolicy {
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.allowed.iter().any(|n| n.contains(ip)) {
            return true;
        }
        // The IPv4 address an IPv6 form reaches (NAT64, 6to4, Teredo, IPv4-compatible) is
        // judged as IPv4: `64:ff9b::a00:1` is 10.0.0.1 behind the operator's NAT64.
        let targets = embedded_v4(ip);
        let mut checked = [ip, ip, ip];
        let mut n = 1;
        for t in targets.into_iter().flatten() {
            checked[n] = IpAddr::V4(t);
            n += 1;
        }
        checked[..n].iter().all(|&t| self.allows_one(t))
    }

    fn allows_one(&self, ip: IpAddr) -> bool {
        if n_contains(&self.allowed, ip) {
            return true;
        }
        if ip.is_loopback() {
            // Loopback peers are a test/benchmark opt-in; the relay's own loopback address
            // is what those tests talk to.
            return self.allow_loopback;
        }
        if self.own.iter().any(|o| o.to_canonical() == ip) {
            return false;
        }
        !restricted(ip)
    }
}

fn n_contains(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

/// IPv4 addresses embedded in an IPv6 address that traffic to it ends up at: IPv4-mapped
/// and IPv4-compatible (`::a.b.c.d`), NAT64 well-known and local-use prefixes (RFC 6052,
/// RFC 8215), 6to4 (RFC 3056), and Teredo (RFC 4380: the server, and the client's NAT
/// address stored bit-inverted).
pub fn embedded_v4(ip: IpAddr) -> [Option<Ipv4Addr>; 2] {
    let IpAddr::V6(v6) = ip else {
        return [None, None];
    };
    let b = u128::from(v6);
    let low = Ipv4Addr::from(b as u32);
    let s = v6.segments();
    if b >> 32 == 0xFFFF || (b >> 32 == 0 && b > 1) {
        // ::ffff:a.b.c.d, ::a.b.c.d (:: and ::1 are themselves).
        [Some(low), None]
    } else if b >> 32 == 0x0064_ff9b_0000_0000_0000_0000 || s[..3] == [0x64, 0xff9b, 1] {
        [Some(low), None]
    } else if s[0] == 0x2002 {
        [Some(Ipv4Addr::from((b >> 80) as u32)), None]
    } else if s[0] == 0x2001 && s[1] == 0 {
        [
            Some(Ipv4Addr::from(!(b as u32))),
            Some(Ipv4Addr::from((b >> 64) as u32)),
        ]
    } else {
        [None, None]
    }
}

/// Not globally reachable (IANA IPv4 special-purpose registry, plus multicast and
/// the reserved 240.0.0.0/4).
fn restricted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => restricted_v4(v4),
        IpAddr::V6(v6) => restricted_v6(v6),
    }
}

/// `(network, prefix)` blocks refused for IPv4.
const DENY_V4: &[(u32, u8)] = &[
    (0x0000_0000, 8),  // 0.0.0.0/8 "this network"
    (0x0A00_0000, 8),  // 10.0.0.0/8 private
    (0x6440_0000, 10), // 100.64.0.0/10 shared (CGNAT)
    (0x7F00_0000, 8),  // 127.0.0.0/8 loopback
    (0xA9FE_0000, 16), // 169.254.0.0/16 link-local
    (0xAC10_0000, 12), // 172.16.0.0/12 private
    (0xC000_0000, 24), // 192.0.0.0/24 IETF protocol assignments (DS-Lite, NAT64 discovery)
    (0xC000_0200, 24), // 192.0.2.0/24 TEST-NET-1
    (0xC058_6300, 24), // 192.88.99.0/24 6to4 relay anycast (deprecated)
    (0xC0A8_0000, 16), // 192.168.0.0/16 private
    (0xC612_0000, 15), // 198.18.0.0/15 benchmarking
    (0xC633_6400, 24), // 198.51.100.0/24 TEST-NET-2
    (0xCB00_7100, 24), // 203.0.113.0/24 TEST-NET-3
    (0xE000_0000, 4),  // 224.0.0.0/4 multicast
    (0xF000_0000, 4),  // 240.0.0.0/4 reserved, and 255.255.255.255 broadcast
];

/// `(network, prefix)` blocks refused for IPv6, checked after [`embedded_v4`]; everything
/// outside 2000::/3 (global unicast) is refused as well.
const DENY_V6: &[(u128, u8)] = &[
    (0x2001_0000 << 96, 23), // 2001::/23 IETF protocol assignments
    (0x2001_0db8 << 96, 32), // 2001:db8::/32 documentation
    (0x3fff << 112, 20),     // 3fff::/20 documentation (RFC 9637)
];

/// Globally reachable blocks inside 2001::/23 (IANA): PCP and TURN anycast, AMT, AS112,
/// ORCHIDv2. Teredo (2001::/32) is judged by its IPv4 addresses.
const ALLOW_V6: &[(u128, u8)] = &[
    (0x2001_0000 << 96, 32),                    // Teredo
    ((0x2001_0001 << 96) | 1, 128),             // 2001:1::1 PCP anycast
    ((0x2001_0001 << 96) | 2, 128),             // 2001:1::2 TURN anycast
    ((0x2001_0001 << 96) | 3, 128),             // 2001:1::3 DNS-SD SRP anycast
    (0x2001_0003 << 96, 32),                    // 2001:3::/32 AMT
    ((0x2001_0004 << 96) | (0x0112 << 80), 48), // 2001:4:112::/48 AS112-v6
    (0x2001_0020 << 96, 28),                    // 2001:20::/28 ORCHIDv2
    (0x2001_0030 << 96, 28),                    // 2001:30::/28 DRIP
];

fn in_block(addr: u128, bits: u32, (net, prefix): (u128, u8)) -> bool {
    let shift = bits - u32::from(prefix);
    let mask = u128::MAX.checked_shl(shift).unwrap_or(0) & (u128::MAX >> (128 - bits));
    addr & mask == net & mask
}

fn restricted_v4(ip: Ipv4Addr) -> bool {
    let a = u128::from(u32::from(ip));
    DENY_V4
        .iter()
        .any(|&(n, p)| in_block(a, 32, (u128::from(n), p)))
}

fn restricted_v6(ip: Ipv6Addr) -> bool {
    let a = u128::from(ip);
    if !in_block(a, 128, (0x2000 << 112, 3)) {
        // ::/8 (unspecified, loopback, mapped, compatible), 64:ff9b::/96 NAT64, 100::/64
        // discard, 5f00::/16 SRv6, fc00::/7 ULA, fe80::/10 link-local, fec0::/10 site-local,
        // ff00::/8 multicast, and unassigned space. NAT64 and mapped forms got here only
        // after their IPv4 address was allowed.
        let nat64 = in_block(a, 128, (0x0064_ff9b << 96, 96))
            || in_block(a, 128, ((0xffff_u128) << 32, 96));
        return !nat64;
    }
    if ALLOW_V6.iter().any(|&b| in_block(a, 128, b)) {
        return false;
    }
    DENY_V6.iter().any(|&b| in_block(a, 128, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every special-purpose block, at its first and last address, and its neighbours.
    #[test]
    fn policy_table() {
        let p = PeerPolicy::default();
        let denied = [
            // IPv4 (IANA special-purpose registry and more)
            "0.0.0.0",
            "0.255.255.255",
            "10.0.0.0",
            "10.255.255.255",
            "100.64.0.0",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.0.0",
            "169.254.255.255",
            "172.16.0.0",
            "172.31.255.255",
            "192.0.0.0",
            "192.0.0.255",
            "192.0.2.0",
            "192.0.2.255",
            "192.88.99.1",
            "192.168.0.0",
            "192.168.255.255",
            "198.18.0.0",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.255",
            "240.0.0.1",
            "255.255.255.255",
            // IPv6
            "::",
            "::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::10.0.0.1",
            "::8.8.8.8",
            "64:ff9b::10.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::169.254.169.254",
            "64:ff9b::192.168.1.1",
            "64:ff9b:1::8.8.8.8",
            "64:ff9b:1:ffff::1",
            "100::1",
            "100::ffff:ffff:ffff:ffff",
            "2001:2::1",
            "2001:10::1",
            "2001:db8::1",
            "2001:db8:ffff::1",
            "2001:1ff:ffff::1",
            "3fff::1",
            "3fff:fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "feff::1",
            "ff02::1",
            "ff0e::1",
            "4000::1",
            "1fff::1",
            // 6to4 of private IPv4: 2002:0a00:0001:: is 10.0.0.1, 2002:c0a8:0101:: 192.168.1.1
            "2002:a00:1::1",
            "2002:c0a8:101::1",
            "2002:7f00:1::1",
            // Teredo, client 10.0.0.1 obfuscated (f5ff:fffe), server public
            "2001:0:808:808:0:0:f5ff:fffe",
            // Teredo, client public (8.8.8.8 -> f7f7:f7f7), server 192.168.0.1
            "2001:0:c0a8:1:0:0:f7f7:f7f7",
        ];
        for bad in denied {
            assert!(!p.allows(bad.parse().unwrap()), "{bad} must be denied");
        }
        let allowed = [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.255",
            "192.0.3.0",
            "192.31.196.1",
            "192.52.193.1",
            "192.175.48.1",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2001:4860::8888",
            "2606:4700::1111",
            "2001:1::1",
            "2001:1::2",
            "2001:3::1",
            "2001:4:112::1",
            "2001:20::1",
            "2001:30::1",
            "2620:4f:8000::1",
            "2002:808:808::1",
            "2001:0:808:808:0:0:f7f7:f7f7",
        ];
        for good in allowed {
            assert!(p.allows(good.parse().unwrap()), "{good} must be allowed");
        }
    }

    #[test]
    fn policy_denies_own_addresses() {
        let p = PeerPolicy {
            own: vec!["8.8.4.4".parse().unwrap(), "2001:4860::1".parse().unwrap()],
            ..Default::default()
        };
        for bad in [
            "8.8.4.4",
            "::ffff:8.8.4.4",
            "64:ff9b::8.8.4.4",
            "2002:808:404::1",
            "2001:4860::1",
        ] {
            assert!(!p.allows(bad.parse().unwrap()), "{bad}");
        }
        assert!(p.allows("8.8.8.8".parse().unwrap()));
        // Loopback tests keep working: their relay is on 127.0.0.1.
        let p = PeerPolicy {
            allow_loopback: true,
            own: vec!["127.0.0.1".parse().unwrap()],
            ..Default::default()
        };
        assert!(p.allows("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn policy_overrides() {
        let p = PeerPolicy {
            allow_loopback: true,
            allowed: vec![IpNet::parse("10.0.0.0/8").unwrap()],
            own: Vec::new(),
        };
        assert!(p.allows("127.0.0.1".parse().unwrap()));
        assert!(p.allows("10.9.9.9".parse().unwrap()));
        assert!(!p.allows("192.168.0.1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(IpNet::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
    }

    #[test]
    fn token_bucket_caps_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        assert!(b.take(1000, t0));
        assert!(!b.take(1, t0));
        assert!(b.take(500, t0 + Duration::from_millis(500)));
        assert!(TokenBucket::new(0, t0).take(usize::MAX, t0));
    }
}
