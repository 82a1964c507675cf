//! TURN server (RFC 8656) over UDP and TCP.
//!
//! * [`server`]: the sans-IO state machine, one instance per shard (a UDP worker thread or a
//!   TCP connection): `handle_input(now, transport, via, from, bytes) -> Option<Transmit>`,
//!   `handle_timeout(now)`. It owns its allocations; nothing is locked per packet.
//! * [`allocation`]: allocations, permissions, channel bindings, the peer policy.
//! * [`auth`]: long-term credentials (static users and TURN REST tickets), stateless nonces.
//! * [`ports`]: the relay port range, bound for real by the drivers.
//! * [`udp`], [`tcp`]: the drivers (one SO_REUSEPORT socket and event loop per core; one
//!   task per TCP connection).

pub mod allocation;
pub mod auth;
pub mod limiter;
pub mod mmsg;
pub mod ports;
pub mod server;
pub mod service;
pub mod stats;
pub mod tcp;
pub mod udp;

use serde::{Deserialize, Serialize};

pub use server::{Now, Server, Transmit, Transport, Via};
pub use service::TurnService;

/// TURN listener settings and limits. Every limit is a named setting (`VC_TURN__<NAME>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TurnConfig {
    /// UDP and TCP listen address (same port for both). Port 0 picks a free port.
    pub listen: String,
    /// Whether to listen on TCP too (RFC 8489 stream framing).
    pub tcp: bool,
    /// TURN over TLS (`turns:`, RFC 8656) listen address, used only when `[tls]` is
    /// configured. Empty: off even with TLS.
    pub tls_listen: String,
    pub realm: String,
    /// IP the relay sockets bind to and that XOR-RELAYED-ADDRESS carries. Empty: the IP of
    /// `listen` (which then must not be the unspecified address).
    pub relay_address: String,
    /// IP announced in XOR-RELAYED-ADDRESS when the relay is behind a 1:1 NAT. Empty: the
    /// relay address.
    pub external_address: String,
    /// Relay port range (inclusive).
    pub min_port: u16,
    pub max_port: u16,
    /// Static users `name:password` (ops, benchmarks).
    pub users: Vec<String>,
    /// Accept TURN REST credentials signed with the ticket secret.
    pub rest_auth: bool,
    /// Seconds a NONCE stays valid (then 438 Stale Nonce).
    pub nonce_lifetime: u64,
    /// Allocation lifetime when the client asks for less or nothing, and the maximum.
    pub default_lifetime: u32,
    pub max_lifetime: u32,
    pub permission_lifetime: u32,
    pub channel_lifetime: u32,
    /// Seconds a port reserved by EVEN-PORT (R bit) is kept for its RESERVATION-TOKEN.
    pub reservation_lifetime: u32,
    /// Allocations per user (0: unlimited) and in total.
    pub user_quota: u32,
    pub max_allocations: u32,
    /// Permissions and channel bindings one allocation may hold.
    pub max_permissions: u32,
    pub max_channels: u32,
    /// Concurrent TCP control connections.
    pub max_tcp_connections: u32,
    /// TCP connections from one source IP (IPv6: per /64); 0: no cap.
    pub max_tcp_connections_per_ip: u32,
    /// Seconds a TCP connection gets to send its first valid STUN message.
    pub tcp_first_message_timeout: u64,
    /// Seconds a TCP connection without an allocation may stay silent.
    pub tcp_idle_timeout: u64,
    /// Unauthenticated answers (Binding responses, 401/438 challenges, errors to
    /// unauthenticated requests) per second to one source over UDP (IPv6: per /64); 0: no
    /// limit. Against reflection with spoofed sources.
    pub unauth_rate: u32,
    /// Burst of unauthenticated answers to one source.
    pub unauth_burst: u32,
    /// Cells per row of the fixed-size table behind `unauth_rate` (2 rows of 8 bytes each).
    pub unauth_table_size: usize,
    /// Per-allocation relayed bytes per second, each direction (0: no cap).
    pub bandwidth_limit: u64,
    /// Accept only RFC 8656's channel numbers 0x4000-0x4FFF (400 otherwise). Off by default:
    /// Chromium/libwebrtc and coturn's client still pick from RFC 5766's 0x4000-0x7FFF.
    pub strict_channel_numbers: bool,
    /// Allow peers on loopback addresses (tests, benchmarks on one host).
    pub allow_loopback_peers: bool,
    /// Peer addresses or CIDR blocks allowed although the policy would refuse them
    /// (e.g. `10.0.0.0/8` for a LAN deployment).
    pub allowed_peers: Vec<String>,
    /// UDP worker threads (0: one per CPU).
    pub threads: usize,
    /// SO_RCVBUF/SO_SNDBUF of the UDP sockets, bytes.
    pub socket_buffer: usize,
    /// SOFTWARE attribute in authenticated responses (empty: none). Never in unauthenticated
    /// answers, which are kept as small as possible.
    pub software: String,
    /// Trusted L4 load balancers (CIDRs, e.g. `10.0.0.0/8`) whose TCP and TLS connections
    /// must start with a PROXY protocol v2 header naming the real client (`crate::proxy`).
    /// Empty: off. Others are served as usual (their header is refused as non-STUN/TLS).
    pub proxy_protocol_from: Vec<String>,
    /// Largest PROXY v2 header accepted, bytes (address block and TLVs included); it must
    /// arrive within `tcp_first_message_timeout`.
    pub proxy_protocol_max_bytes: usize,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:3478".into(),
            tcp: true,
            tls_listen: "0.0.0.0:5349".into(),
            realm: "visionconnect".into(),
            relay_address: String::new(),
            external_address: String::new(),
            min_port: 49152,
            max_port: 65535,
            users: Vec::new(),
            rest_auth: true,
            nonce_lifetime: 600,
            default_lifetime: 600,
            max_lifetime: 3600,
            permission_lifetime: 300,
            channel_lifetime: 600,
            reservation_lifetime: 30,
            user_quota: 100,
            max_allocations: 50_000,
            max_permissions: 256,
            max_channels: 256,
            max_tcp_connections: 1024,
            max_tcp_connections_per_ip: 16,
            tcp_first_message_timeout: 5,
            tcp_idle_timeout: 30,
            unauth_rate: 10,
            unauth_burst: 20,
            unauth_table_size: 16_384,
            bandwidth_limit: 0,
            strict_channel_numbers: false,
            allow_loopback_peers: false,
            allowed_peers: Vec::new(),
            threads: 0,
            socket_buffer: 4 << 20,
            software: concat!("vc-relay ", env!("CARGO_PKG_VERSION")).into(),
            proxy_protocol_from: Vec::new(),
            proxy_protocol_max_bytes: 512,
        }
    }
}
