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

/// Which peers the relay may talk to: by default only public unicast addresses, so the relay
/// cannot be used to reach the operator's internal network.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    pub allow_loopback: bool,
    pub allowed: Vec<IpNet>,
}

impl PeerPolicy {
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.allowed.iter().any(|n| n.contains(ip)) {
            return true;
        }
        if ip.is_loopback() {
            return self.allow_loopback;
        }
        !restricted(ip)
    }
}

/// Loopback, private, link-local, multicast, unspecified, broadcast, shared (CGNAT) and
/// "this network" addresses.
fn restricted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => restricted_v4(v4),
        IpAddr::V6(v6) => restricted_v6(v6),
    }
}

fn restricted_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xC0) == 64)
        || o[0] >= 240
}

fn restricted_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xFE00) == 0xFC00
        || (s[0] & 0xFFC0) == 0xFE80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_defaults_refuse_internal() {
        let p = PeerPolicy::default();
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!p.allows(bad.parse().unwrap()), "{bad}");
        }
        for good in ["8.8.8.8", "2001:4860::8888", "203.0.113.9"] {
            assert!(p.allows(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn policy_overrides() {
        let p = PeerPolicy {
            allow_loopback: true,
            allowed: vec![IpNet::parse("10.0.0.0/8").unwrap()],
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
