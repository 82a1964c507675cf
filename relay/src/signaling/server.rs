//! The signaling listener: accepts TCP, upgrades `/ws` to WebSocket (checking a `?token=` on
//! the upgrade itself: a bad one is answered with HTTP 401), and hands each connection to
//! [`crate::signaling::connection`]. Also owns the table of live connections (id -> outbound
//! queue) through which the router's deliveries reach their targets.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::task::AtomicWaker;

use dashmap::DashMap;
use shared::api::PresenceEvent;
use shared::signaling::{IceServer, ServerMessage};
use shared::ticket::{unix_now, SignalingClaims, TicketKey};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::metrics::SignalingMetrics;
use super::router::{CloseReason, ConnId, Delivery, Router, RouterLimits};
use super::SignalingConfig;

/// A connection's outbound queue, written by any task and drained by the connection's own.
///
/// Not a channel: a tokio channel allocates its first block of slots when it is made, about a
/// kilobyte per idle camera; this allocates nothing until a message is queued and gives its
/// buffer back once drained. Bounded by messages (`outbound_queue`) and by bytes queued and not
/// yet flushed (`max_queued_bytes`, counted in [`Signaling::send`]).
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: Mutex<OutboxQueue>,
    waker: AtomicWaker,
    /// Bytes queued and not yet flushed to the socket.
    pub(crate) queued_bytes: AtomicUsize,
    pub(crate) kill: Kill,
}

#[derive(Debug, Default)]
struct OutboxQueue {
    msgs: VecDeque<Utf8Bytes>,
    closed: bool,
}

/// Why [`Outbox::push`] did not queue a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    Full,
    Closed,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `text` unless `max` messages are already waiting or the connection is over.
    pub(crate) fn push(&self, text: Utf8Bytes, max: usize) -> Result<(), PushError> {
        {
            let mut q = self.lock();
            if q.closed {
                return Err(PushError::Closed);
            }
            if q.msgs.len() >= max {
                return Err(PushError::Full);
            }
            q.msgs.push_back(text);
        }
        self.waker.wake();
        Ok(())
    }

    /// The next message to write; None once closed. The waker is registered under the lock,
    /// so a push after an empty look always wakes this task.
    pub(crate) fn poll_pop(&self, cx: &mut std::task::Context<'_>) -> Poll<Option<Utf8Bytes>> {
        let mut q = self.lock();
        if let Some(m) = q.msgs.pop_front() {
            if q.msgs.is_empty() && q.msgs.capacity() > 0 {
                q.msgs = VecDeque::new();
            }
            return Poll::Ready(Some(m));
        }
        if q.closed {
            return Poll::Ready(None);
        }
        self.waker.register(cx.waker());
        Poll::Pending
    }

    /// Refuses further messages and drops queued ones (the connection is over).
    pub(crate) fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        q.msgs = VecDeque::new();
    }
}

/// Lets any task make a connection close itself with a reason.
#[derive(Debug, Default)]
pub(crate) struct Kill {
    notify: Notify,
    reason: AtomicU8,
}

/// Every reason, by index: one missing here would close with `REASONS[0]`'s code instead.
const REASONS: [CloseReason; 9] = [
    CloseReason::Replaced,
    CloseReason::DeviceUnknown,
    CloseReason::TokenExpired,
    CloseReason::SlowConsumer,
    CloseReason::TooLarge,
    CloseReason::Idle,
    CloseReason::Unauthorized,
    CloseReason::Shutdown,
    CloseReason::Revoked,
];

impl Kill {
    /// Asks the connection to close; true if this was the first reason given (the one used).
    pub(crate) fn fire(&self, reason: CloseReason) -> bool {
        let idx = REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        // 0 means "not fired": store index + 1; the first reason wins.
        let first = self
            .reason
            .compare_exchange(0, idx as u8 + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.notify.notify_one();
        first
    }

    pub(crate) async fn fired(&self) -> CloseReason {
        self.notify.notified().await;
        let idx = self.reason.load(Ordering::Acquire);
        REASONS
            .get(usize::from(idx).saturating_sub(1))
            .copied()
            .unwrap_or(CloseReason::Shutdown)
    }
}

/// Concurrent connections per source IP. Only connected sources have an entry: the count is
/// removed when it drops to zero, so a scan from many addresses leaves nothing behind. The lock
/// is taken once per accepted TCP connection and once when it closes, never per message.
#[derive(Debug)]
pub(crate) struct PerIp {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `ip`, or None when it already has `max`.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            if *n == 0 {
                counts.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(IpSlot {
            per_ip: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One connection's share of its source's count; released on drop.
#[derive(Debug)]
pub(crate) struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.per_ip.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// What admitted a connection (its global and per-IP slots), held for its whole life.
#[derive(Debug)]
pub(crate) struct Admission {
    _global: OwnedSemaphorePermit,
    _ip: IpSlot,
}

/// A live connection as seen from other tasks.
pub(crate) struct ConnHandle {
    /// Its queue, byte count and kill switch: one allocation per connection.
    pub(crate) outbox: Arc<Outbox>,
    /// A viewer's subject (user id), so a revocation can find its connections.
    pub(crate) viewer_of: Option<Arc<str>>,
}

/// The signaling plane: router, live connections, config, metrics. Shared by all tasks.
pub struct Signaling {
    pub(crate) config: SignalingConfig,
    pub(crate) router: Router,
    pub(crate) key: TicketKey,
    pub(crate) conns: DashMap<ConnId, ConnHandle>,
    pub(crate) metrics: SignalingMetrics,
    pub(crate) ws_config: WebSocketConfig,
    presence: Option<mpsc::UnboundedSender<PresenceEvent>>,
    /// Clustered: the bounded queue to the NATS driver (`crate::cluster`).
    cluster: Option<crate::cluster::ClusterLink>,
    turn_port: Option<u16>,
    /// Set when `[tls]` is configured: the listener speaks `wss://` only.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The TURN-over-TLS port advertised as `turns:` when `turn_uris` is empty.
    turns_port: Option<u16>,
    next_id: AtomicU64,
    limit: Arc<Semaphore>,
    /// This node's name in presence reports and the cluster (`[cluster] node_id`).
    pub(crate) node_id: String,
    /// This process's incarnation in presence reports: unix ms at start.
    pub(crate) epoch_ms: u64,
    per_ip: Arc<PerIp>,
    /// Trusted balancers (`proxy_protocol_from`) whose connections carry a PROXY v2 header.
    pub(crate) proxy: crate::proxy::ProxyPolicy,
    /// `max_queued_bytes`, but never below one largest message (it must fit in the queue).
    max_queued_bytes: usize,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// TLS of the signaling plane (`[tls]` configured).
pub struct SignalingTls {
    /// Handshakes of the `wss://` listener.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// TURN-over-TLS port for `turns:` in `welcome.ice_servers` (None: not listening).
    pub turns_port: Option<u16>,
}

/// Returned by [`Signaling::start`]: stops the plane.
pub struct SignalingHandle {
    pub signaling: Arc<Signaling>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SignalingHandle {
    /// Stops accepting, closes every connection with "relay shutting down" (close code 1001),
    /// waits up to `grace` for the connections to finish.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        while !self.signaling.conns.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut tasks = self.tasks.into_iter();
        if let Some(accept) = tasks.next() {
            accept.abort();
        }
        // The presence reporter sends the last offline events, then ends by itself.
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(3), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Signaling {
    /// Starts the signaling plane on `listener`: the accept loop and (when `control_url` is set)
    /// the presence reporter. `turn_port` is the TURN listener's port, used for `ice_servers`
    /// when `turn_uris` is not configured.
    pub fn start(
        config: SignalingConfig,
        key: TicketKey,
        listener: TcpListener,
        turn_port: Option<u16>,
    ) -> SignalingHandle {
        let node_id = crate::cluster::ClusterConfig::default().node_id;
        Self::start_clustered(config, key, listener, turn_port, None, node_id, None)
    }

    /// [`Self::start`] as one node of a cluster: `cluster` links the router to the NATS driver,
    /// which the caller starts next ([`crate::cluster::spawn`]). With `tls`, every connection
    /// is a TLS handshake first (`wss://`).
    pub fn start_clustered(
        config: SignalingConfig,
        key: TicketKey,
        listener: TcpListener,
        turn_port: Option<u16>,
        cluster: Option<crate::cluster::ClusterLink>,
        node_id: String,
        tls: Option<SignalingTls>,
    ) -> SignalingHandle {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (presence_tx, presence_rx) = if config.control_url.is_empty() {
            (None, None)
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        };
        let limits = RouterLimits {
            max_sessions_per_camera: config.max_sessions_per_camera,
            max_sessions_per_viewer: config.max_sessions_per_viewer,
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(config.read_buffer_bytes.max(256))
            .write_buffer_size(16 * 1024)
            .max_write_buffer_size(4 * 1024 * 1024)
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes));
        let signaling = Arc::new(Signaling {
            router: match &cluster {
                Some(link) => Router::clustered(key.clone(), limits, link.node.clone()),
                None => Router::new(key.clone(), limits),
            },
            cluster,
            key,
            conns: DashMap::new(),
            metrics: SignalingMetrics::new(),
            ws_config,
            presence: presence_tx,
            turn_port,
            turns_port: tls.as_ref().and_then(|t| t.turns_port),
            tls: tls.map(|t| t.acceptor),
            next_id: AtomicU64::new(1),
            limit: Arc::new(Semaphore::new(config.max_connections)),
            node_id,
            epoch_ms: super::presence::wall_ms(),
            per_ip: PerIp::new(config.max_connections_per_ip),
            // Validated at startup (`relay::run`); a bad list here means none is trusted.
            proxy: config.proxy_policy().unwrap_or_default(),
            max_queued_bytes: config.max_queued_bytes.max(config.max_message_bytes + 1024),
            shutdown: shutdown_rx,
            config,
        });
        let mut tasks = vec![tokio::spawn(accept_loop(signaling.clone(), listener))];
        if let Some(rx) = presence_rx {
            tasks.push(tokio::spawn(super::presence::run(signaling.clone(), rx)));
        }
        SignalingHandle {
            signaling,
            shutdown: shutdown_tx,
            tasks,
        }
    }

    /// Applies a revocation from vc-control: older tickets are refused from now on, and the
    /// matching connections closed (a revoked user's or share's viewer connections all close;
    /// the viewer app reconnects with a fresh ticket, which no longer names what it lost).
    pub(crate) fn revoke(&self, rev: &shared::api::Revocation, out: &mut Vec<Delivery>) {
        self.router.revocations().insert(rev, unix_now());
        match (&rev.subject, rev.device_id) {
            (None, Some(device)) => self.router.close_device(device, out),
            (Some(user), _) => {
                for conn in self.conns.iter() {
                    if conn.viewer_of.as_deref() == Some(user.as_str()) {
                        conn.outbox.kill.fire(CloseReason::Revoked);
                    }
                }
            }
            (None, None) => {}
        }
    }

    /// `handshake_timeout_ms`: how long accepting a connection (TLS and upgrade) may take.
    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.config.handshake_timeout_ms.max(1))
    }

    /// A per-IP slot for a signaling connection accepted by another listener (single-port
    /// mode), or None (counted) when `ip` is at `max_connections_per_ip`.
    pub(crate) fn admit_ip(&self, ip: IpAddr) -> Option<IpSlot> {
        let slot = self.per_ip.try_acquire(ip);
        if slot.is_none() {
            self.metrics.rejected_per_ip.increment(1);
        }
        slot
    }

    /// Both slots (per-IP and global) for a connection of another transport (QUIC), which has
    /// no upgrade callback to refuse in; None (counted) when either limit is reached.
    pub(crate) fn admit(&self, ip: IpAddr) -> Option<Admission> {
        let ip_slot = self.admit_ip(ip)?;
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            self.metrics.rejected_max_connections.increment(1);
            return None;
        };
        Some(Admission {
            _global: permit,
            _ip: ip_slot,
        })
    }

    /// The router (read-only views: counts, routes).
    pub fn router(&self) -> &Router {
        &self.router
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Carries out the router's deliveries, draining `out`.
    pub(crate) fn deliver(&self, out: &mut Vec<Delivery>) {
        for d in out.drain(..) {
            match d {
                Delivery::Send { to, msg } => self.send(to, &msg),
                Delivery::Close { conn, reason } => {
                    if let Some(h) = self.conns.get(&conn) {
                        h.outbox.kill.fire(reason);
                    }
                }
                Delivery::Forward { .. } => {
                    if let Some(link) = &self.cluster {
                        link.push(d);
                    }
                }
                Delivery::Connect { viewer, device } => {
                    let queued = self
                        .cluster
                        .as_ref()
                        .is_some_and(|l| l.push(Delivery::Connect { viewer, device }));
                    if !queued {
                        // Never leave a viewer waiting for an answer that will not come.
                        self.send(
                            viewer,
                            &ServerMessage::Error {
                                code: shared::signaling::ErrorCode::Unavailable,
                                message: "cross-node routing is overloaded; retry".into(),
                                reference: Some(device.to_string()),
                            },
                        );
                    }
                }
                Delivery::Presence {
                    device_id,
                    online,
                    at_ms,
                    conn,
                } => {
                    if let Some(link) = &self.cluster {
                        link.push(Delivery::Presence {
                            device_id,
                            online,
                            at_ms,
                            conn,
                        });
                    }
                    if let Some(tx) = &self.presence {
                        let _ = tx.send(PresenceEvent {
                            device_id,
                            online,
                            at_ms,
                            conn,
                        });
                    }
                }
            }
        }
    }

    /// Queues `msg` for connection `to`; a connection whose queue is full is dropped.
    pub(crate) fn send(&self, to: ConnId, msg: &ServerMessage) {
        self.metrics.sent(msg);
        let Ok(text) = serde_json::to_string(msg) else {
            return;
        };
        if let Some(h) = self.conns.get(&to) {
            // Bytes, not only messages: 256 queued 64 KiB offers are 16 MiB, 256 candidates 50 KiB.
            let len = text.len();
            let outbox = &h.outbox;
            if outbox.queued_bytes.fetch_add(len, Ordering::Relaxed) + len > self.max_queued_bytes {
                outbox.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                self.slow_consumer(&outbox.kill);
                return;
            }
            match outbox.push(text.into(), self.config.outbound_queue.max(1)) {
                Ok(()) => {}
                Err(PushError::Full) => {
                    outbox.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                    self.slow_consumer(&outbox.kill);
                }
                Err(PushError::Closed) => {
                    outbox.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                }
            }
        }
    }

    /// Drops a connection whose queue is full, counting it once (later messages for it that
    /// find the queue full too are not more slow consumers).
    fn slow_consumer(&self, kill: &Kill) {
        if kill.fire(CloseReason::SlowConsumer) {
            self.metrics.slow_consumers_dropped.increment(1);
        }
    }

    /// Updates the gauges from the router's counts.
    pub(crate) fn update_gauges(&self) {
        self.metrics.cameras.set(self.router.cameras() as f64);
        self.metrics.viewers.set(self.router.viewers() as f64);
        self.metrics.sessions.set(self.router.sessions() as f64);
        self.metrics.connections.set(self.conns.len() as f64);
    }

    /// `ice_servers` for a `welcome`: fresh TURN REST credentials for `subject`, naming its
    /// `account` when the ticket had one, so the TURN quota counts per account (a camera's
    /// subject is its device id). They expire with the token (`token_exp`, unix seconds)
    /// at the latest: a credential never outlives the ticket it was minted from.
    pub(crate) fn ice_servers(
        &self,
        subject: &str,
        account: Option<&str>,
        host: &str,
        token_exp: u64,
    ) -> Vec<IceServer> {
        let urls = if !self.config.turn_uris.is_empty() {
            self.config.turn_uris.clone()
        } else if let Some(port) = self.turn_port {
            let mut urls = vec![
                format!("turn:{host}:{port}?transport=udp"),
                format!("turn:{host}:{port}?transport=tcp"),
            ];
            // TURN over TLS gets through proxies and firewalls that only pass TLS.
            if let Some(tls) = self.turns_port {
                urls.push(format!("turns:{host}:{tls}?transport=tcp"));
            }
            urls
        } else {
            return Vec::new();
        };
        let now = unix_now();
        let ttl = ice_ttl(self.config.ice_credential_ttl_secs, token_exp, now);
        let (username, credential) = match account {
            Some(account) => self
                .key
                .turn_credentials_for_account(subject, account, now, ttl),
            None => self.key.turn_credentials(subject, now, ttl),
        };
        vec![IceServer {
            urls,
            username,
            credential,
        }]
    }
}

/// Lifetime of `welcome` TURN credentials minted at `now`: `configured`, cut to end with the
/// token that authenticated the connection (expiry `token_exp`).
fn ice_ttl(configured: u64, token_exp: u64, now: u64) -> u64 {
    configured.min(token_exp.saturating_sub(now))
}

async fn accept_loop(sig: Arc<Signaling>, listener: TcpListener) {
    let mut shutdown = sig.shutdown.clone();
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, peer)) if sig.proxy.trusts(peer.ip()) => {
                    tokio::spawn(proxied(sig.clone(), stream, peer));
                }
                Ok((stream, peer)) => match sig.per_ip.try_acquire(peer.ip()) {
                    Some(slot) => {
                        tokio::spawn(upgrade(sig.clone(), stream, peer, slot));
                    }
                    None => {
                        // Closed unread: answering would let a flooding source hold tasks.
                        sig.metrics.rejected_per_ip.increment(1);
                        tracing::debug!(%peer, "signaling connection over max_connections_per_ip");
                        drop(stream);
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "signaling accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// A connection from a trusted balancer: its PROXY v2 header (required) names the client,
/// whose address then takes the per-IP slot and stands in the logs. Others never get here,
/// so a header from them is garbage before the TLS handshake or the HTTP request.
async fn proxied(sig: Arc<Signaling>, mut stream: TcpStream, balancer: SocketAddr) {
    let peer = match crate::proxy::read_header(&mut stream, balancer, &sig.proxy).await {
        Ok(peer) => peer,
        Err(e) => {
            sig.metrics.rejected_proxy_header.increment(1);
            tracing::debug!(%balancer, error = %e, "signaling PROXY header refused");
            return;
        }
    };
    match sig.per_ip.try_acquire(peer.ip()) {
        Some(slot) => upgrade(sig, stream, peer, slot).await,
        None => {
            sig.metrics.rejected_per_ip.increment(1);
            tracing::debug!(%peer, %balancer, "signaling connection over max_connections_per_ip");
        }
    }
}

/// What the upgrade request said.
#[derive(Default)]
struct Upgrade {
    claims: Option<SignalingClaims>,
    host: Option<String>,
}

fn reject(status: StatusCode, body: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(body.to_owned()));
    *resp.status_mut() = status;
    resp
}

/// The `token` query parameter of a request target.
fn token_param(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .filter(|t| !t.is_empty())
}

/// The host part (no port) of a `Host` header value.
fn host_only(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port -> keep the brackets, as URIs need them.
        return rest.find(']').map(|i| &host[..i + 2]).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

/// The local IP of `stream` as a URI host (IPv6 in brackets).
pub(crate) fn local_host(stream: &TcpStream) -> Option<String> {
    stream.local_addr().ok().map(|a| match a {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    })
}

async fn upgrade(sig: Arc<Signaling>, stream: TcpStream, peer: SocketAddr, ip_slot: IpSlot) {
    let _ = stream.set_nodelay(true);
    let local_ip = local_host(&stream);
    // One deadline for the whole upgrade (TLS handshake included), not per read: a client
    // trickling bytes is cut too.
    let deadline = tokio::time::Instant::now() + sig.handshake_timeout();
    let stream = match &sig.tls {
        None => crate::tls::Stream::Plain(stream),
        Some(tls) => match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
            Ok(Ok(tls)) => crate::tls::Stream::tls(tls),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "signaling TLS handshake failed");
                return;
            }
            Err(_) => {
                sig.metrics.rejected_handshake_timeout.increment(1);
                tracing::debug!(%peer, "TLS handshake not completed within handshake_timeout_ms");
                return;
            }
        },
    };
    upgrade_stream(sig, stream, peer, ip_slot, local_ip, deadline).await;
}

/// The WebSocket upgrade on an accepted (and, with TLS, handshaken) stream, to finish by
/// `deadline`; then the connection runs.
// The handshake callback's error type is tungstenite's `ErrorResponse`.
#[allow(clippy::result_large_err)]
pub(crate) async fn upgrade_stream(
    sig: Arc<Signaling>,
    stream: crate::tls::Stream,
    peer: SocketAddr,
    ip_slot: IpSlot,
    local_ip: Option<String>,
    deadline: tokio::time::Instant,
) {
    let permit = sig.limit.clone().try_acquire_owned().ok();
    let mut up = Upgrade::default();
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != "/ws" {
            return Err(reject(StatusCode::NOT_FOUND, "signaling lives at /ws\n"));
        }
        if permit.is_none() {
            sig.metrics.rejected_max_connections.increment(1);
            return Err(reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections\n",
            ));
        }
        up.host = req
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .map(|h| host_only(h).to_owned());
        if let Some(token) = token_param(req.uri().query()) {
            match sig.router.authenticate(token, unix_now()) {
                Ok(claims) => up.claims = Some(claims),
                Err(e) => {
                    sig.metrics.unauthorized_upgrades.increment(1);
                    tracing::debug!(%peer, error = %e, "signaling upgrade refused");
                    return Err(reject(
                        StatusCode::UNAUTHORIZED,
                        &format!("invalid signaling token: {e}\n"),
                    ));
                }
            }
        }
        Ok(resp)
    };
    let accepted = tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(sig.ws_config)),
    )
    .await;
    let ws = match accepted {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "signaling handshake failed");
            return;
        }
        Err(_) => {
            sig.metrics.rejected_handshake_timeout.increment(1);
            tracing::debug!(%peer, "signaling upgrade not completed within handshake_timeout_ms");
            return;
        }
    };
    let Some(permit) = permit else { return };
    let admission = Admission {
        _global: permit,
        _ip: ip_slot,
    };
    let host = up.host.or(local_ip).unwrap_or_else(|| "127.0.0.1".into());
    // The handshake's buffers go with its stream; the connection keeps only the lean framing.
    let ws = super::websocket::LeanWebSocket::new(ws.into_inner(), sig.config.max_message_bytes);
    // A task of its own: the handshake's state is freed now, not kept for the connection's life.
    tokio::spawn(super::connection::run(sig, ws, up.claims, host, admission));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_credentials_end_with_the_token() {
        // A 10-minute ticket used 2 minutes after issue: 8 minutes left, not the hour.
        assert_eq!(ice_ttl(3600, 1_600, 1_120), 480);
        assert_eq!(
            ice_ttl(300, 1_600, 1_000),
            300,
            "a shorter setting still wins"
        );
        assert_eq!(ice_ttl(3600, 1_000, 1_000), 0);
        assert_eq!(
            ice_ttl(3600, 900, 1_000),
            0,
            "never past the token, even late"
        );
    }

    #[test]
    fn token_from_query() {
        assert_eq!(token_param(Some("token=abc")), Some("abc"));
        assert_eq!(token_param(Some("x=1&token=a.b.c")), Some("a.b.c"));
        assert_eq!(token_param(Some("token=")), None);
        assert_eq!(token_param(Some("x=1")), None);
        assert_eq!(token_param(None), None);
    }

    #[test]
    fn host_header() {
        assert_eq!(host_only("relay.example:8443"), "relay.example");
        assert_eq!(host_only("relay.example"), "relay.example");
        assert_eq!(host_only("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_only("[::1]:8443"), "[::1]");
        assert_eq!(host_only("[::1]"), "[::1]");
    }

    #[test]
    fn per_ip_caps_each_source_and_forgets_idle_ones() {
        let per_ip = PerIp::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let a1 = per_ip.try_acquire(a).expect("first from a");
        let a2 = per_ip.try_acquire(a).expect("second from a");
        assert!(
            per_ip.try_acquire(a).is_none(),
            "third from a is over the cap"
        );
        // Other sources are not affected by a's count.
        let b1 = per_ip.try_acquire(b).expect("first from b");
        assert_eq!(per_ip.sources(), 2);
        // A closed connection frees its slot.
        drop(a1);
        let a3 = per_ip.try_acquire(a).expect("a has a free slot again");
        // Sources with no connection keep no state.
        drop((a2, a3, b1));
        assert_eq!(per_ip.sources(), 0);
        // A cap of 0 refuses everyone without leaving an entry behind.
        let none = PerIp::new(0);
        assert!(none.try_acquire(a).is_none());
        assert_eq!(none.sources(), 0);
    }

    #[test]
    fn kill_keeps_first_reason() {
        let k = Kill::default();
        assert!(k.fire(CloseReason::Replaced));
        assert!(
            !k.fire(CloseReason::SlowConsumer),
            "only the first reason counts"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(k.fired()), CloseReason::Replaced);
        // Each reason closes with itself (a revoked viewer once closed as `replaced`, 4001).
        for reason in REASONS {
            let k = Kill::default();
            k.fire(reason);
            assert_eq!(rt.block_on(k.fired()), reason);
        }
        assert!(REASONS.contains(&CloseReason::Revoked));
    }
}
