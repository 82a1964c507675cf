//! WebSocket signaling between cameras and viewers (issue 5). Protocol: `docs/signaling.md`.
//!
//! * [`router`]: the sans-IO core (sessions, routing, access control, limits).
//! * [`server`] and [`connection`]: the thin tokio-tungstenite driver (upgrade + auth, one task
//!   per connection with a bounded outbound queue, liveness, size and rate limits).
//! * [`quic`]: the second transport of the same connection task: length-prefixed JSON frames
//!   on one QUIC bidirectional stream (issue 10).
//! * [`presence`]: batched, signed presence reports to vc-control.

pub mod connection;
pub mod metrics;
pub mod presence;
pub mod quic;
pub mod revocations;
pub mod router;
pub mod server;
pub(crate) mod websocket;

use serde::{Deserialize, Serialize};

pub use server::{Signaling, SignalingHandle, SignalingTls};

/// Signaling listener settings and limits (env `VC_SIGNALING__<FIELD>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SignalingConfig {
    /// WebSocket listen address; clients connect to `ws://<addr>/ws`.
    pub listen: String,
    /// TURN URIs put into `welcome.ice_servers`. Empty: derived from the TURN listener's port and
    /// the host name the client used to reach this relay (`Host` header).
    pub turn_uris: Vec<String>,
    /// Lifetime of the TURN REST credentials handed out in `welcome`, seconds.
    pub ice_credential_ttl_secs: u64,
    /// Base URL of vc-control for presence reports (`POST <url>/api/internal/presence`).
    /// Empty disables presence reporting.
    pub control_url: String,
    /// PEM certificate(s) trusted for an `https://` `control_url` (a private CA); empty: the
    /// system's roots.
    pub control_ca_file: String,
    /// Most presence events are sent within this many milliseconds of the change.
    pub presence_batch_ms: u64,
    /// With no change to report for this long, an empty report renews the node's lease and
    /// learns of deleted devices (whose connections it closes), milliseconds.
    pub presence_heartbeat_ms: u64,
    /// How long one report keeps the node's cameras online in vc-control, seconds: a node that
    /// dies takes its cameras offline after at most this (keep it a few heartbeats long).
    pub presence_lease_secs: u64,
    /// Events per presence report at most (a report must fit vc-control's `max_body_bytes`:
    /// ~120 bytes an event).
    pub presence_max_events: usize,
    /// Maximum simultaneous WebSocket connections, upgrades in progress included (further
    /// upgrades get HTTP 503).
    pub max_connections: usize,
    /// Maximum simultaneous connections (upgrades in progress included) from one source IP;
    /// further TCP connections from it are closed at once, unread. Raise it for load tests that
    /// connect thousands of clients from one address.
    pub max_connections_per_ip: usize,
    /// A TCP connection must complete the WebSocket upgrade (HTTP request in, 101 out) within
    /// this many milliseconds, or it is closed (slowloris).
    pub handshake_timeout_ms: u64,
    /// Concurrent viewer sessions one camera serves.
    pub max_sessions_per_camera: usize,
    /// Concurrent sessions one viewer connection may hold.
    pub max_sessions_per_viewer: usize,
    /// Largest accepted message, bytes: larger -> `too_large` and close.
    pub max_message_bytes: usize,
    /// Sustained messages per second per connection: more -> `rate_limited` (message dropped).
    pub rate_per_sec: u32,
    /// Burst allowance of the per-connection rate limit, messages.
    pub rate_burst: u32,
    /// Seconds to present a token in a first `auth` message after an upgrade without
    /// `?token=` (the upgrade itself is bounded by `handshake_timeout_ms`).
    pub auth_timeout_secs: u64,
    /// WebSocket ping interval, seconds.
    pub ping_interval_secs: u64,
    /// A connection from which nothing arrived for this long is dropped, seconds.
    pub idle_timeout_secs: u64,
    /// Per-connection outbound queue, messages. A connection whose queue is full when a message
    /// for it arrives is dropped as a slow consumer.
    pub outbound_queue: usize,
    /// Per-connection outbound bytes queued and not yet flushed to the socket: a message that
    /// would exceed it drops the connection as a slow consumer (at least `max_message_bytes`
    /// + 1 KiB is used).
    pub max_queued_bytes: usize,
    /// A write to a client's socket (a flush) that makes no complete progress for this many
    /// milliseconds drops the connection as a slow consumer (a client that stopped reading).
    pub write_timeout_ms: u64,
    /// Read buffer per connection, bytes (memory per idle connection matters at 10k+).
    pub read_buffer_bytes: usize,
    /// CIDRs of trusted L4 balancers whose connections to the signaling and single-port
    /// listeners must start with a PROXY v2 header (`relay/src/proxy.rs`); empty: off.
    pub proxy_protocol_from: Vec<String>,
    /// Largest PROXY v2 header accepted, bytes.
    pub proxy_protocol_max_bytes: usize,
}

impl SignalingConfig {
    /// The PROXY protocol policy of the signaling and single-port listeners; the header must
    /// arrive within `handshake_timeout_ms`.
    pub fn proxy_policy(&self) -> Result<crate::proxy::ProxyPolicy, String> {
        crate::proxy::ProxyPolicy::parse(
            &self.proxy_protocol_from,
            self.proxy_protocol_max_bytes,
            std::time::Duration::from_millis(self.handshake_timeout_ms),
        )
    }
}

impl Default for SignalingConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8443".into(),
            turn_uris: Vec::new(),
            ice_credential_ttl_secs: 3600,
            control_url: "http://127.0.0.1:8000".into(),
            control_ca_file: String::new(),
            presence_batch_ms: 50,
            presence_heartbeat_ms: 1000,
            presence_lease_secs: 15,
            presence_max_events: 200,
            max_connections: 100_000,
            max_connections_per_ip: 64,
            handshake_timeout_ms: 5_000,
            max_sessions_per_camera: 8,
            max_sessions_per_viewer: 16,
            max_message_bytes: 64 * 1024,
            rate_per_sec: 50,
            rate_burst: 200,
            auth_timeout_secs: 5,
            ping_interval_secs: 20,
            idle_timeout_secs: 60,
            outbound_queue: 256,
            max_queued_bytes: 1024 * 1024,
            write_timeout_ms: 10_000,
            read_buffer_bytes: 4096,
            proxy_protocol_from: Vec::new(),
            proxy_protocol_max_bytes: 512,
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (10k+ connections need more than the
/// usual 1024 descriptors). Returns the new soft limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass by valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    // rlim_t is u64 on Linux but not everywhere.
    #[allow(clippy::unnecessary_cast)]
    Ok(lim.rlim_cur as u64)
}

#[cfg(test)]
mod tests;
