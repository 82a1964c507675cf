//! The sans-IO TURN state machine (RFC 8656).
//!
//! One [`Server`] per shard: a UDP worker (its clients are steered to it by SO_REUSEPORT's
//! 4-tuple hash, and it owns the relay sockets of its allocations) or one TCP connection.
//! The 5-tuple of an allocation is therefore (client address, this shard's listener,
//! transport), and allocations are keyed by the client address alone. Every input produces at
//! most one transmit, borrowed from the input (relayed data) or from an internal scratch buffer
//! (responses, ChannelData and Data indications to the client): no allocation per packet.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::allocation::{Allocation, BindOutcome, IpNet, PeerPolicy, TokenBucket};
use super::auth::{hmac_sha1, AuthError, Authenticator};
use super::limiter::SourceLimiter;
use super::ports::{PortRequest, RelayPorts};
use super::stats::Stats;
use super::TurnConfig;
use crate::stun::errors::ErrorCode;
use crate::stun::{
    address, attr, channel_data, turn as tattr, ChannelData, Class, Message, MessageBuilder, Method,
};

/// The time of an input: monotonic for lifetimes, unix seconds for tickets and nonces.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub unix: u64,
}

impl Now {
    /// The current time (for drivers; the core never reads the clock).
    pub fn system() -> Self {
        Self {
            instant: Instant::now(),
            unix: shared::ticket::unix_now(),
        }
    }
}

/// Transport between client and server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Where a datagram came in or must go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The client-facing listener (UDP socket or TCP connection).
    Listener,
    /// The relay socket bound to this address.
    Relay(SocketAddr),
}

/// A datagram to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit<'a> {
    pub via: Via,
    pub dst: SocketAddr,
    pub payload: &'a [u8],
}

/// Limits and policy derived from [`TurnConfig`], shared by all shards.
#[derive(Debug)]
pub struct Shared {
    pub auth: Authenticator,
    pub policy: PeerPolicy,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
    pub max_permissions: usize,
    pub max_channels: usize,
    pub bandwidth_limit: u64,
    pub strict_channel_numbers: bool,
    /// Address put in XOR-RELAYED-ADDRESS instead of the bound one (1:1 NAT).
    pub external_ip: Option<IpAddr>,
    pub software: Vec<u8>,
    pub quotas: Quotas,
    /// Budget of unauthenticated answers per source (UDP only: TCP sources are not spoofed).
    pub unauth: SourceLimiter,
    /// Set on SIGTERM: new allocations are refused, existing ones keep running.
    pub draining: AtomicBool,
}

impl Shared {
    pub fn new(cfg: &TurnConfig, auth: Authenticator) -> Result<Self, crate::Error> {
        let mut allowed = Vec::new();
        for a in &cfg.allowed_peers {
            allowed.push(IpNet::parse(a).ok_or_else(|| {
                crate::Error::Config(format!("turn.allowed_peers: {a:?} is not an IP or CIDR"))
            })?);
        }
        let external_ip = if cfg.external_address.is_empty() {
            None
        } else {
            Some(cfg.external_address.parse().map_err(|_| {
                crate::Error::Config(format!("turn.external_address {:?}", cfg.external_address))
            })?)
        };
        if cfg.default_lifetime == 0 || cfg.max_lifetime < cfg.default_lifetime {
            return Err(crate::Error::Config(
                "turn: need 0 < default_lifetime <= max_lifetime".into(),
            ));
        }
        Ok(Self {
            auth,
            policy: PeerPolicy {
                allow_loopback: cfg.allow_loopback_peers,
                allowed,
                own: own_ips(cfg),
            },
            default_lifetime: secs(cfg.default_lifetime),
            max_lifetime: secs(cfg.max_lifetime),
            permission_lifetime: secs(cfg.permission_lifetime),
            channel_lifetime: secs(cfg.channel_lifetime),
            max_permissions: cfg.max_permissions as usize,
            max_channels: cfg.max_channels as usize,
            bandwidth_limit: cfg.bandwidth_limit,
            strict_channel_numbers: cfg.strict_channel_numbers,
            external_ip,
            software: cfg.software.as_bytes().to_vec(),
            quotas: Quotas::new(cfg.user_quota, cfg.max_allocations),
            unauth: SourceLimiter::new(
                cfg.unauth_rate,
                cfg.unauth_burst,
                cfg.unauth_table_size,
                Instant::now(),
            ),
            draining: AtomicBool::new(false),
        })
    }
}

/// The relay's own IPs named in the config (the drivers add the relay IP they derive).
fn own_ips(cfg: &TurnConfig) -> Vec<IpAddr> {
    let listen = cfg.listen.parse::<SocketAddr>().ok().map(|a| a.ip());
    [
        listen,
        cfg.relay_address.parse().ok(),
        cfg.external_address.parse().ok(),
    ]
    .into_iter()
    .flatten()
    .filter(|ip: &IpAddr| !ip.is_unspecified())
    .collect()
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

/// Allocation counts across shards: touched only when allocations come and go.
#[derive(Debug)]
pub struct Quotas {
    user_limit: u32,
    total_limit: u32,
    total: AtomicU32,
    per_user: DashMap<Box<str>, u32>,
}

/// Why a quota refused an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaError {
    /// The user's quota (486).
    User,
    /// The server-wide limit (508).
    Total,
}

impl Quotas {
    pub fn new(user_limit: u32, total_limit: u32) -> Self {
        Self {
            user_limit,
            total_limit,
            total: AtomicU32::new(0),
            per_user: DashMap::new(),
        }
    }

    /// Active allocations in the process.
    pub fn active(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }

    /// The quota key of a username: the owning account of a REST ticket that names one
    /// (camera and viewer tickets from vc-control), else the ticket's subject, else the
    /// whole name (see [`shared::ticket::turn_quota_key`]), so one account's cameras share
    /// one quota however many device ids it has.
    fn key(username: &str) -> &str {
        shared::ticket::turn_quota_key(username)
    }

    pub fn acquire(&self, username: &str) -> Result<(), QuotaError> {
        let prev = self.total.fetch_add(1, Ordering::AcqRel);
        if prev >= self.total_limit {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(QuotaError::Total);
        }
        let mut n = self.per_user.entry(Self::key(username).into()).or_insert(0);
        if self.user_limit != 0 && *n >= self.user_limit {
            drop(n);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(QuotaError::User);
        }
        *n += 1;
        Ok(())
    }

    pub fn release(&self, username: &str) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        let key = Self::key(username);
        self.per_user.remove_if_mut(key, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

/// Comprehension-required attributes this server understands (RFC 8489 §14: others get 420).
const KNOWN: &[u16] = &[
    attr::MAPPED_ADDRESS,
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::ERROR_CODE,
    attr::UNKNOWN_ATTRIBUTES,
    attr::CHANNEL_NUMBER,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::REALM,
    attr::NONCE,
    attr::XOR_RELAYED_ADDRESS,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::EVEN_PORT,
    attr::REQUESTED_TRANSPORT,
    attr::DONT_FRAGMENT,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::PASSWORD_ALGORITHM,
    attr::XOR_MAPPED_ADDRESS,
    attr::RESERVATION_TOKEN,
];

/// Largest payload relayed (a DATA attribute length is 16 bits).
const MAX_DATA: usize = 65_000;

/// How often [`Server::handle_timeout`] reaps expired state.
pub const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// The TURN state machine of one shard.
pub struct Server<P: RelayPorts> {
    shared: Arc<Shared>,
    transport: Transport,
    ports: P,
    allocations: HashMap<SocketAddr, Allocation>,
    /// Relay (bound) address -> client address.
    by_relay: HashMap<SocketAddr, SocketAddr>,
    out: Vec<u8>,
    stats: Stats,
    next_reap: Option<Instant>,
    /// Time of the input being handled.
    now: Instant,
}

impl<P: RelayPorts> std::fmt::Debug for Server<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("transport", &self.transport)
            .field("allocations", &self.allocations.len())
            .finish()
    }
}

enum Reply<'k> {
    /// Success or error, signed with the key when there is one.
    Signed(Option<&'k [u8; 16]>),
}

impl<P: RelayPorts> Server<P> {
    pub fn new(shared: Arc<Shared>, transport: Transport, ports: P) -> Self {
        Self {
            shared,
            transport,
            ports,
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            out: Vec::with_capacity(2048),
            stats: Stats::default(),
            next_reap: None,
            now: Instant::now(),
        }
    }

    pub fn ports_mut(&mut self) -> &mut P {
        &mut self.ports
    }

    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// The client owning the relay address `relay`, if any.
    pub fn client_of(&self, relay: SocketAddr) -> Option<SocketAddr> {
        self.by_relay.get(&relay).copied()
    }

    /// Counters since the last call.
    pub fn take_stats(&mut self) -> Stats {
        std::mem::take(&mut self.stats)
    }

    /// When [`Self::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.allocations.is_empty() {
            None
        } else {
            self.next_reap
        }
    }

    /// Reaps expired allocations, permissions and channels.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_reap.is_some_and(|t| t > now) {
            return;
        }
        let ports = &mut self.ports;
        let by_relay = &mut self.by_relay;
        let quotas = &self.shared.quotas;
        let stats = &mut self.stats;
        self.allocations.retain(|_, a| {
            if a.expires <= now {
                ports.release(a.relay);
                by_relay.remove(&a.relay);
                quotas.release(&a.username);
                stats.allocations_expired += 1;
                false
            } else {
                a.prune(now);
                true
            }
        });
        self.next_reap = Some(now + REAP_INTERVAL);
    }

    /// Feeds one datagram (UDP) or frame (TCP) received `via` from `from`.
    pub fn handle_input<'a>(
        &'a mut self,
        now: Now,
        via: Via,
        from: SocketAddr,
        bytes: &'a [u8],
    ) -> Option<Transmit<'a>> {
        if self.next_reap.is_none() {
            self.next_reap = Some(now.instant + REAP_INTERVAL);
        }
        self.now = now.instant;
        match via {
            Via::Relay(relay) => self.peer_data(now, relay, from, bytes),
            Via::Listener => match bytes.first() {
                Some(&b) if channel_data::is_channel_data(b) => {
                    self.channel_data_from_client(now, from, bytes)
                }
                Some(_) => match Message::parse(bytes) {
                    Ok(msg) => match msg.class() {
                        Class::Request => self.request(now, from, &msg),
                        Class::Indication if msg.method() == Method::Send => {
                            self.send_indication(now, from, &msg)
                        }
                        _ => None,
                    },
                    Err(_) => {
                        self.stats.malformed += 1;
                        None
                    }
                },
                None => None,
            },
        }
    }

    fn channel_data_from_client<'a>(
        &'a mut self,
        now: Now,
        from: SocketAddr,
        bytes: &'a [u8],
    ) -> Option<Transmit<'a>> {
        let Some(cd) = ChannelData::parse(bytes) else {
            self.stats.malformed += 1;
            return None;
        };
        let alloc = self.allocations.get_mut(&from)?;
        if alloc.expires <= now.instant {
            return None;
        }
        let peer = alloc.channel(cd.channel, now.instant)?.peer;
        if !alloc.permitted(peer.ip(), now.instant) {
            self.stats.no_permission += 1;
            return None;
        }
        if !alloc.to_peer.take(cd.data.len(), now.instant) {
            self.stats.rate_limited += 1;
            return None;
        }
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += cd.data.len() as u64;
        Some(Transmit {
            via: Via::Relay(alloc.relay),
            dst: peer,
            payload: cd.data,
        })
    }

    fn send_indication<'a>(
        &'a mut self,
        now: Now,
        from: SocketAddr,
        msg: &Message<'a>,
    ) -> Option<Transmit<'a>> {
        let alloc = self.allocations.get_mut(&from)?;
        if alloc.expires <= now.instant {
            return None;
        }
        let tid = msg.transaction_id();
        let mut peer = None;
        let mut data = None;
        for a in msg.attributes() {
            match a.typ {
                attr::XOR_PEER_ADDRESS if peer.is_none() => {
                    peer = address::decode_xor(a.value, tid, a.typ).ok()
                }
                attr::DATA if data.is_none() => data = Some(a.value),
                t if attr::comprehension_required(t) && !KNOWN.contains(&t) => return None,
                _ => {}
            }
        }
        let (Some(peer), Some(data)) = (peer, data) else {
            self.stats.malformed += 1;
            return None;
        };
        if !alloc.permitted(peer.ip().to_canonical(), now.instant) {
            self.stats.no_permission += 1;
            return None;
        }
        if !alloc.to_peer.take(data.len(), now.instant) {
            self.stats.rate_limited += 1;
            return None;
        }
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += data.len() as u64;
        Some(Transmit {
            via: Via::Relay(alloc.relay),
            dst: peer,
            payload: data,
        })
    }

    fn peer_data<'a>(
        &'a mut self,
        now: Now,
        relay: SocketAddr,
        peer: SocketAddr,
        data: &'a [u8],
    ) -> Option<Transmit<'a>> {
        let client = *self.by_relay.get(&relay)?;
        let alloc = self.allocations.get_mut(&client)?;
        if alloc.expires <= now.instant || data.len() > MAX_DATA {
            return None;
        }
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        if !alloc.permitted(peer.ip(), now.instant) {
            self.stats.no_permission += 1;
            return None;
        }
        if !alloc.to_client.take(data.len(), now.instant) {
            self.stats.rate_limited += 1;
            return None;
        }
        self.out.clear();
        if let Some(ch) = alloc.channel_to(peer, now.instant) {
            self.out
                .extend_from_slice(&channel_data::header(ch.number, data.len()));
            self.out.extend_from_slice(data);
            if self.transport == Transport::Tcp {
                let pad = (4 - data.len() % 4) % 4;
                self.out.extend_from_slice(&[0u8; 3][..pad]);
            }
        } else {
            let tid: [u8; 12] = rand::random();
            let mut b = MessageBuilder::new(&mut self.out, Class::Indication, Method::Data, &tid);
            b.xor_address(attr::XOR_PEER_ADDRESS, peer);
            b.attr(attr::DATA, data);
        }
        self.stats.to_client_packets += 1;
        self.stats.to_client_bytes += data.len() as u64;
        Some(Transmit {
            via: Via::Listener,
            dst: client,
            payload: &self.out,
        })
    }

    /// Writes a response into the scratch buffer: `body`, SOFTWARE, MESSAGE-INTEGRITY (when
    /// the request authenticated), FINGERPRINT.
    fn reply(
        &mut self,
        to: SocketAddr,
        req: &Message<'_>,
        class: Class,
        signed: Reply<'_>,
        body: impl FnOnce(&mut MessageBuilder<'_>),
    ) -> Option<Transmit<'_>> {
        let Reply::Signed(key) = signed;
        if key.is_none()
            && self.transport == Transport::Udp
            && !self.shared.unauth.allow(to.ip(), self.now)
        {
            // Unauthenticated answers to one source are rate-limited (reflection).
            self.stats.unauth_limited += 1;
            return None;
        }
        let mut b = MessageBuilder::new(&mut self.out, class, req.method(), req.transaction_id());
        body(&mut b);
        if let Some(key) = key {
            if !self.shared.software.is_empty() {
                b.attr(attr::SOFTWARE, &self.shared.software);
            }
            b.integrity(hmac_sha1(key));
            b.fingerprint();
        } else if req.has_fingerprint() {
            // Unauthenticated answers stay minimal: FINGERPRINT only when the client uses it
            // (ICE-style demultiplexing), no SOFTWARE.
            b.fingerprint();
        }
        Some(Transmit {
            via: Via::Listener,
            dst: to,
            payload: &self.out,
        })
    }

    fn error(
        &mut self,
        to: SocketAddr,
        req: &Message<'_>,
        code: ErrorCode,
        key: Option<&[u8; 16]>,
    ) -> Option<Transmit<'_>> {
        self.reply(to, req, Class::Error, Reply::Signed(key), |b| {
            if key.is_some() {
                b.error_code(code);
            } else {
                b.error_code_bare(code);
            }
        })
    }

    /// 401 or 438 with REALM and a fresh NONCE.
    fn challenge(
        &mut self,
        now: Now,
        to: SocketAddr,
        req: &Message<'_>,
        code: ErrorCode,
    ) -> Option<Transmit<'_>> {
        let shared = self.shared.clone();
        let nonce = shared.auth.nonce(now.unix);
        self.reply(to, req, Class::Error, Reply::Signed(None), |b| {
            b.error_code_bare(code);
            b.attr(attr::REALM, shared.auth.realm().as_bytes());
            b.attr(attr::NONCE, &nonce);
        })
    }

    fn request(&mut self, now: Now, from: SocketAddr, msg: &Message<'_>) -> Option<Transmit<'_>> {
        let mut unknown = [0u16; 16];
        let mut n = 0;
        for a in msg.attributes() {
            if attr::comprehension_required(a.typ) && !KNOWN.contains(&a.typ) && n < unknown.len() {
                unknown[n] = a.typ;
                n += 1;
            }
        }
        if n > 0 {
            self.stats.malformed += 1;
            return self.reply(from, msg, Class::Error, Reply::Signed(None), |b| {
                b.error_code_bare(ErrorCode::UNKNOWN_ATTRIBUTE);
                b.unknown_attributes(&unknown[..n]);
            });
        }
        if msg.method() == Method::Binding {
            return self.reply(from, msg, Class::Success, Reply::Signed(None), |b| {
                b.xor_address(attr::XOR_MAPPED_ADDRESS, from);
            });
        }
        if !matches!(
            msg.method(),
            Method::Allocate | Method::Refresh | Method::CreatePermission | Method::ChannelBind
        ) {
            return self.error(from, msg, ErrorCode::BAD_REQUEST, None);
        }
        let shared = self.shared.clone();
        let cached = self
            .allocations
            .get(&from)
            .map(|a| (a.username.as_bytes(), a.key));
        let creds = match shared.auth.check(msg, now.unix, cached) {
            Ok(c) => c,
            Err(e) => {
                if msg.method() == Method::Allocate {
                    self.stats.failed_auth += 1;
                }
                return match e {
                    AuthError::Challenge => self.challenge(now, from, msg, ErrorCode::UNAUTHORIZED),
                    AuthError::StaleNonce => self.challenge(now, from, msg, ErrorCode::STALE_NONCE),
                    AuthError::Incomplete => {
                        self.stats.auth_failures += 1;
                        self.error(from, msg, ErrorCode::BAD_REQUEST, None)
                    }
                    _ => {
                        self.stats.auth_failures += 1;
                        self.challenge(now, from, msg, ErrorCode::UNAUTHORIZED)
                    }
                };
            }
        };
        let key = creds.key;
        if let Some(a) = self.allocations.get(&from) {
            if a.username.as_bytes() != creds.username {
                return self.error(from, msg, ErrorCode::WRONG_CREDENTIALS, Some(&key));
            }
        }
        match msg.method() {
            Method::Allocate => self.allocate(now, from, msg, creds.username, key),
            Method::Refresh => self.refresh(now, from, msg, key),
            Method::CreatePermission => self.create_permission(now, from, msg, key),
            _ => self.channel_bind(now, from, msg, key),
        }
    }

    fn allocate(
        &mut self,
        now: Now,
        from: SocketAddr,
        msg: &Message<'_>,
        username: &[u8],
        key: [u8; 16],
    ) -> Option<Transmit<'_>> {
        if let Some(a) = self.allocations.get(&from) {
            if &a.allocate_tid == msg.transaction_id() {
                // A retransmitted Allocate: answer it again (RFC 8656 §7.2).
                let (relay, remaining, token) = (
                    a.announced,
                    a.expires.saturating_duration_since(now.instant).as_secs() as u32,
                    a.reservation,
                );
                return self.allocate_success(from, msg, relay, remaining, token, key);
            }
            self.stats.failed_other += 1;
            return self.error(from, msg, ErrorCode::ALLOCATION_MISMATCH, Some(&key));
        }
        let fail = |s: &mut Self, code: ErrorCode| {
            match code {
                ErrorCode::ALLOCATION_QUOTA_REACHED => s.stats.failed_quota += 1,
                ErrorCode::INSUFFICIENT_CAPACITY => s.stats.failed_capacity += 1,
                _ => s.stats.failed_other += 1,
            }
            code
        };
        let mut transport = None;
        let mut even = None;
        let mut token = None;
        let mut family = None;
        let mut lifetime = None;
        let mut bad = false;
        for a in msg.attributes() {
            match a.typ {
                attr::REQUESTED_TRANSPORT => {
                    transport = tattr::decode_requested_transport(a.value).ok();
                    bad |= transport.is_none();
                }
                attr::EVEN_PORT => {
                    even = tattr::decode_even_port(a.value).ok();
                    bad |= even.is_none();
                }
                attr::RESERVATION_TOKEN => {
                    token = tattr::decode_reservation_token(a.value).ok();
                    bad |= token.is_none();
                }
                attr::REQUESTED_ADDRESS_FAMILY => {
                    family = tattr::decode_address_family(a.value).ok();
                    bad |= family.is_none();
                }
                attr::LIFETIME => lifetime = tattr::decode_lifetime(a.value).ok(),
                _ => {}
            }
        }
        let code = if bad
            || transport.is_none()
            || (token.is_some() && (even.is_some() || family.is_some()))
        {
            Some(ErrorCode::BAD_REQUEST)
        } else if transport != Some(tattr::TRANSPORT_UDP) {
            Some(ErrorCode::UNSUPPORTED_TRANSPORT)
        } else if family.is_some_and(|f| f != 0x01) {
            Some(if family == Some(0x02) {
                ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED
            } else {
                ErrorCode::BAD_REQUEST
            })
        } else if self.shared.draining.load(Ordering::Relaxed) {
            Some(ErrorCode::INSUFFICIENT_CAPACITY)
        } else {
            None
        };
        if let Some(code) = code {
            let code = fail(self, code);
            return self.error(from, msg, code, Some(&key));
        }
        let username: Box<str> = String::from_utf8_lossy(username).into();
        if let Err(e) = self.shared.quotas.acquire(&username) {
            let code = fail(
                self,
                match e {
                    QuotaError::User => ErrorCode::ALLOCATION_QUOTA_REACHED,
                    QuotaError::Total => ErrorCode::INSUFFICIENT_CAPACITY,
                },
            );
            return self.error(from, msg, code, Some(&key));
        }
        let req = match (token, even) {
            (Some(t), _) => PortRequest::Reserved(t),
            (None, Some(r)) => PortRequest::Even { reserve_next: r },
            (None, None) => PortRequest::Any,
        };
        let Some(port) = self.ports.acquire(req, now.instant) else {
            self.shared.quotas.release(&username);
            let code = fail(self, ErrorCode::INSUFFICIENT_CAPACITY);
            return self.error(from, msg, code, Some(&key));
        };
        let life = lifetime
            .map(|l| secs(l).clamp(self.shared.default_lifetime, self.shared.max_lifetime))
            .unwrap_or(self.shared.default_lifetime);
        let announced = match self.shared.external_ip {
            Some(ip) => SocketAddr::new(ip, port.addr.port()),
            None => port.addr,
        };
        let rate = self.shared.bandwidth_limit;
        self.allocations.insert(
            from,
            Allocation {
                relay: port.addr,
                announced,
                expires: now.instant + life,
                username,
                key,
                allocate_tid: *msg.transaction_id(),
                reservation: port.reservation,
                permissions: Vec::new(),
                channels: Vec::new(),
                to_peer: TokenBucket::new(rate, now.instant),
                to_client: TokenBucket::new(rate, now.instant),
            },
        );
        self.by_relay.insert(port.addr, from);
        self.stats.allocations_created += 1;
        self.allocate_success(
            from,
            msg,
            announced,
            life.as_secs() as u32,
            port.reservation,
            key,
        )
    }

    fn allocate_success(
        &mut self,
        from: SocketAddr,
        msg: &Message<'_>,
        relay: SocketAddr,
        lifetime: u32,
        token: Option<u64>,
        key: [u8; 16],
    ) -> Option<Transmit<'_>> {
        self.reply(from, msg, Class::Success, Reply::Signed(Some(&key)), |b| {
            b.xor_address(attr::XOR_RELAYED_ADDRESS, relay);
            b.lifetime(lifetime);
            if let Some(t) = token {
                b.reservation_token(t);
            }
            b.xor_address(attr::XOR_MAPPED_ADDRESS, from);
        })
    }

    fn delete(&mut self, client: SocketAddr) {
        if let Some(a) = self.allocations.remove(&client) {
            self.by_relay.remove(&a.relay);
            self.ports.release(a.relay);
            self.shared.quotas.release(&a.username);
            self.stats.allocations_deleted += 1;
        }
    }

    fn refresh(
        &mut self,
        now: Now,
        from: SocketAddr,
        msg: &Message<'_>,
        key: [u8; 16],
    ) -> Option<Transmit<'_>> {
        if !self.allocations.contains_key(&from) {
            return self.error(from, msg, ErrorCode::ALLOCATION_MISMATCH, Some(&key));
        }
        let requested = match msg.attribute(attr::LIFETIME).map(tattr::decode_lifetime) {
            Some(Ok(l)) => Some(l),
            Some(Err(_)) => return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&key)),
            None => None,
        };
        let granted = match requested {
            Some(0) => {
                self.delete(from);
                0
            }
            Some(l) => {
                let life = secs(l).min(self.shared.max_lifetime);
                if let Some(a) = self.allocations.get_mut(&from) {
                    a.expires = now.instant + life;
                }
                life.as_secs() as u32
            }
            None => {
                let life = self.shared.default_lifetime;
                if let Some(a) = self.allocations.get_mut(&from) {
                    a.expires = now.instant + life;
                }
                life.as_secs() as u32
            }
        };
        self.reply(from, msg, Class::Success, Reply::Signed(Some(&key)), |b| {
            b.lifetime(granted);
        })
    }

    /// Checks a peer address against the allocation's family and the peer policy.
    fn check_peer(&self, relay: SocketAddr, peer: SocketAddr) -> Result<(), ErrorCode> {
        let ip = peer.ip().to_canonical();
        if ip.is_ipv4() != relay.is_ipv4() {
            return Err(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH);
        }
        if !self.shared.policy.allows(ip) {
            return Err(ErrorCode::FORBIDDEN);
        }
        Ok(())
    }

    fn create_permission(
        &mut self,
        now: Now,
        from: SocketAddr,
        msg: &Message<'_>,
        key: [u8; 16],
    ) -> Option<Transmit<'_>> {
        let Some(relay) = self.allocations.get(&from).map(|a| a.relay) else {
            return self.error(from, msg, ErrorCode::ALLOCATION_MISMATCH, Some(&key));
        };
        let tid = msg.transaction_id();
        let mut count = 0;
        for a in msg.attributes().filter(|a| a.typ == attr::XOR_PEER_ADDRESS) {
            let Ok(peer) = address::decode_xor(a.value, tid, a.typ) else {
                return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&key));
            };
            if let Err(code) = self.check_peer(relay, peer) {
                return self.error(from, msg, code, Some(&key));
            }
            count += 1;
        }
        if count == 0 {
            return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&key));
        }
        let until = now.instant + self.shared.permission_lifetime;
        let max = self.shared.max_permissions;
        let mut full = false;
        if let Some(alloc) = self.allocations.get_mut(&from) {
            for a in msg.attributes().filter(|a| a.typ == attr::XOR_PEER_ADDRESS) {
                if let Ok(peer) = address::decode_xor(a.value, tid, a.typ) {
                    full |= !alloc.permit(peer.ip().to_canonical(), until, max);
                }
            }
        }
        if full {
            return self.error(from, msg, ErrorCode::INSUFFICIENT_CAPACITY, Some(&key));
        }
        self.reply(from, msg, Class::Success, Reply::Signed(Some(&key)), |_| {})
    }

    fn channel_bind(
        &mut self,
        now: Now,
        from: SocketAddr,
        msg: &Message<'_>,
        key: [u8; 16],
    ) -> Option<Transmit<'_>> {
        let Some(relay) = self.allocations.get(&from).map(|a| a.relay) else {
            return self.error(from, msg, ErrorCode::ALLOCATION_MISMATCH, Some(&key));
        };
        let number = match msg
            .attribute(attr::CHANNEL_NUMBER)
            .map(tattr::decode_channel_number)
        {
            Some(Ok(Some(n))) if n.is_rfc8656() || !self.shared.strict_channel_numbers => n,
            _ => return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&key)),
        };
        let peer = match msg
            .attribute(attr::XOR_PEER_ADDRESS)
            .map(|v| address::decode_xor(v, msg.transaction_id(), attr::XOR_PEER_ADDRESS))
        {
            Some(Ok(p)) => SocketAddr::new(p.ip().to_canonical(), p.port()),
            _ => return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&key)),
        };
        if let Err(code) = self.check_peer(relay, peer) {
            return self.error(from, msg, code, Some(&key));
        }
        let (max_ch, max_perm) = (self.shared.max_channels, self.shared.max_permissions);
        let ch_until = now.instant + self.shared.channel_lifetime;
        let perm_until = now.instant + self.shared.permission_lifetime;
        let outcome = match self.allocations.get_mut(&from) {
            Some(alloc) => match alloc.bind(number, peer, ch_until, now.instant, max_ch) {
                BindOutcome::Bound if !alloc.permit(peer.ip(), perm_until, max_perm) => {
                    BindOutcome::Full
                }
                o => o,
            },
            None => BindOutcome::Conflict,
        };
        match outcome {
            BindOutcome::Bound => {
                self.reply(from, msg, Class::Success, Reply::Signed(Some(&key)), |_| {})
            }
            BindOutcome::Conflict => self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&key)),
            BindOutcome::Full => {
                self.error(from, msg, ErrorCode::INSUFFICIENT_CAPACITY, Some(&key))
            }
        }
    }
}

impl<P: RelayPorts> Drop for Server<P> {
    /// A shard going away (TCP connection closed) gives its ports and quota back.
    fn drop(&mut self) {
        let clients: Vec<SocketAddr> = self.allocations.keys().copied().collect();
        for c in clients {
            self.delete(c);
        }
    }
}

#[cfg(test)]
mod tests;
