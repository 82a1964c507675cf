//! The TCP driver: RFC 8489 stream framing (STUN messages and ChannelData padded to 4 bytes,
//! RFC 8656 §12.5). Each connection is its own [`Server`] shard on a tokio task that also
//! polls the relay sockets of its allocation. [`connection`] works over any
//! `AsyncRead + AsyncWrite` stream (TURN over TLS reuses it).
//!
//! Idle sockets must not lock clients out (no credentials are needed to open one): a
//! connection gets `tcp_first_message_timeout` to send a valid STUN message, is closed after
//! `tcp_idle_timeout` of silence while it holds no allocation, one source IP may hold
//! `max_tcp_connections_per_ip`, and a connection holds no buffer until bytes arrive (the
//! read buffer grows to the largest frame seen and is freed again while idle without an
//! allocation; the peer buffer exists while a relay socket does). Peer packets are received
//! straight into the connection's buffer: no copy, no allocation per packet.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::limiter::source_key;
use super::ports::{PortPool, SocketPorts};
use super::server::{Now, Server, Shared, Transport, Via};
use super::TurnConfig;
use crate::stun::channel_data::frame_len;
use crate::stun::Message;

/// Largest frame: a STUN header plus a 16-bit length.
const MAX_FRAME: usize = 20 + 65_535 + 3;
/// First read buffer once bytes arrive (grown when a frame needs more).
const BUF_INIT: usize = 4096;
/// Largest UDP payload a relay socket can receive.
const PEER_BUF: usize = 65_536;

/// Connection limits of the TCP listener (from [`TurnConfig`]).
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    pub max_connections: usize,
    /// Per source IP (IPv6: /64); 0: no cap.
    pub per_ip: u32,
    /// For the first valid STUN message; zero: none.
    pub first_message: Duration,
    /// Of silence without an allocation; zero: none.
    pub idle: Duration,
}

impl TcpLimits {
    pub fn from_config(cfg: &TurnConfig) -> Self {
        Self {
            max_connections: cfg.max_tcp_connections as usize,
            per_ip: cfg.max_tcp_connections_per_ip,
            first_message: Duration::from_secs(cfg.tcp_first_message_timeout),
            idle: Duration::from_secs(cfg.tcp_idle_timeout),
        }
    }
}

/// Open connections per source key; entries exist only while connections do.
#[derive(Debug, Default)]
pub struct PerIp {
    counts: Mutex<HashMap<u128, u32>>,
}

/// One counted connection; gives its slot back when dropped.
#[derive(Debug)]
pub struct IpSlot {
    table: Arc<PerIp>,
    key: u128,
}

impl PerIp {
    /// A slot for `ip` unless it already holds `max` (0: no cap).
    pub fn acquire(table: &Arc<Self>, ip: IpAddr, max: u32) -> Option<IpSlot> {
        let key = source_key(ip);
        let mut counts = table.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(key).or_insert(0);
        if max != 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: table.clone(),
            key,
        })
    }

    pub fn len(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Admission of stream (TCP/TLS) TURN connections: the total and per-IP caps of one listener.
#[derive(Debug, Clone)]
pub struct Admit {
    limit: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    pub limits: TcpLimits,
}

/// What admitted a connection; its slots are given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    _slot: IpSlot,
}

impl Admit {
    pub fn new(limits: TcpLimits) -> Self {
        Self {
            limit: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_ip: Arc::new(PerIp::default()),
            limits,
        }
    }

    /// Slots for one more connection from `ip`, or None (counted) when over a cap.
    pub fn admit(&self, ip: IpAddr) -> Option<Admitted> {
        let Some(slot) = PerIp::acquire(&self.per_ip, ip, self.limits.per_ip) else {
            metrics::counter!("vc_relay_turn_tcp_rejected_total", "reason" => "per_ip")
                .increment(1);
            return None;
        };
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            metrics::counter!("vc_relay_turn_tcp_rejected_total", "reason" => "total").increment(1);
            return None;
        };
        Some(Admitted {
            _permit: permit,
            _slot: slot,
        })
    }
}

/// Accepts connections until `draining` turns true. With `tls`, each connection is a TLS
/// handshake first (TURN over TLS), which counts inside the first-message deadline.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    pool: Arc<PortPool>,
    limits: TcpLimits,
    mut draining: watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    proxy: Arc<crate::proxy::ProxyPolicy>,
) {
    let admit = Arc::new(Admit::new(limits));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = draining.wait_for(|d| *d) => break,
        };
        let Ok((mut stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let pool = pool.clone();
        let tls = tls.clone();
        let trusted = proxy.trusts(peer.ip());
        // Untrusted sources are admitted here, before a task exists for them.
        let early = if trusted {
            None
        } else {
            // Over a limit: the connection is closed at once.
            let Some(admitted) = admit.admit(peer.ip()) else {
                continue;
            };
            Some(admitted)
        };
        let (admit, proxy) = (admit.clone(), proxy.clone());
        tokio::spawn(async move {
            let opened = Instant::now();
            // From a trusted balancer: the PROXY v2 header names the client, whose address is
            // then the one admitted, mapped, counted and logged.
            let (peer, admitted) = match early {
                Some(a) => (peer, a),
                None => match crate::proxy::read_header(&mut stream, peer, &proxy).await {
                    Ok(client) => match admit.admit(client.ip()) {
                        Some(a) => (client, a),
                        None => return,
                    },
                    Err(e) => {
                        tracing::debug!(balancer = %peer, error = %e, "PROXY header refused");
                        metrics::counter!("vc_relay_turn_tcp_rejected_total", "reason" => "proxy_header")
                            .increment(1);
                        return;
                    }
                },
            };
            match tls {
                None => run_admitted(stream, peer, shared, pool, limits, opened, admitted).await,
                Some(acceptor) => {
                    if let Some(tls) = tls_handshake(&acceptor, stream, &limits).await {
                        run_admitted(tls, peer, shared, pool, limits, opened, admitted).await;
                    }
                }
            }
        });
    }
}

/// Runs an admitted connection accepted at `opened` to its end (gauge and slots included).
pub(crate) async fn run_admitted<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    pool: Arc<PortPool>,
    limits: TcpLimits,
    opened: Instant,
    admitted: Admitted,
) {
    metrics::gauge!("vc_relay_turn_tcp_connections_active").increment(1.0);
    let _ = connection_since(stream, peer, shared, pool, limits, opened).await;
    metrics::gauge!("vc_relay_turn_tcp_connections_active").decrement(1.0);
    drop(admitted);
}

/// The server side of a TLS handshake within the first-message deadline (a client that opens
/// TCP and never finishes its ClientHello is cut like one that never sends STUN).
pub(crate) async fn tls_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: S,
    limits: &TcpLimits,
) -> Option<tokio_rustls::server::TlsStream<S>> {
    let handshake = acceptor.accept(stream);
    let done = if limits.first_message.is_zero() {
        Ok(handshake.await)
    } else {
        tokio::time::timeout(limits.first_message, handshake).await
    };
    match done {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TURN TLS handshake failed");
            metrics::counter!("vc_relay_turn_tcp_rejected_total", "reason" => "tls_handshake")
                .increment(1);
            None
        }
        Err(_) => {
            timed_out("tls_handshake");
            None
        }
    }
}

struct Relay {
    addr: SocketAddr,
    socket: UdpSocket,
}

/// Why a connection was closed by the server (for metrics).
fn timed_out(reason: &'static str) {
    metrics::counter!("vc_relay_turn_tcp_timeouts_total", "reason" => reason).increment(1);
}

/// Serves one client connection (TCP, or TLS over it) until it closes, breaks the framing
/// or times out.
pub async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    client: SocketAddr,
    shared: Arc<Shared>,
    pool: Arc<PortPool>,
    limits: TcpLimits,
) -> std::io::Result<()> {
    connection_since(stream, client, shared, pool, limits, Instant::now()).await
}

/// [`connection`] for a connection accepted at `opened` (its first-message deadline runs
/// from there, so a TLS handshake before it does not extend it).
pub(crate) async fn connection_since<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    client: SocketAddr,
    shared: Arc<Shared>,
    pool: Arc<PortPool>,
    limits: TcpLimits,
    opened: Instant,
) -> std::io::Result<()> {
    let mut server = Server::new(shared, Transport::Tcp, SocketPorts::new(pool));
    let mut relays: Vec<Relay> = Vec::new();
    // No buffer until bytes arrive: an idle socket holds only this task.
    let mut rbuf: Vec<u8> = Vec::new();
    let mut probe = [0u8; 32];
    let mut pbuf: Vec<u8> = Vec::new();
    let mut filled = 0usize;
    let mut seen_valid = false;
    let mut last_rx = opened;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = next_deadline(&limits, seen_valid, opened, last_rx, &server);
        tokio::select! {
            read = async {
                if rbuf.is_empty() {
                    stream.read(&mut probe).await
                } else {
                    stream.read(&mut rbuf[filled..]).await
                }
            } => {
                let n = match read {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(n) => n,
                };
                if rbuf.is_empty() {
                    rbuf = vec![0u8; BUF_INIT];
                    rbuf[..n].copy_from_slice(&probe[..n]);
                }
                filled += n;
                last_rx = Instant::now();
                let mut start = 0;
                while filled - start >= 4 {
                    let Some(len) = frame_len(&rbuf[start..filled]) else {
                        // Neither STUN nor ChannelData: the stream is out of sync.
                        return Ok(());
                    };
                    if filled - start < len {
                        break;
                    }
                    let frame = &rbuf[start..start + len];
                    if !seen_valid {
                        // Until the first valid STUN message, nothing else counts (a
                        // connection cannot be held open with garbage or ChannelData).
                        if frame[0] & 0xC0 != 0 || Message::parse(frame).is_err() {
                            return Ok(());
                        }
                        seen_valid = true;
                    }
                    if let Some(t) = server.handle_input(Now::system(), Via::Listener, client, frame) {
                        match t.via {
                            Via::Listener => stream.write_all(t.payload).await?,
                            Via::Relay(addr) => {
                                if let Some(r) = relays.iter().find(|r| r.addr == addr) {
                                    let _ = r.socket.try_send_to(t.payload, t.dst);
                                }
                            }
                        }
                    }
                    sync_relays(&mut server, &mut relays, &mut pbuf);
                    start += len;
                }
                rbuf.copy_within(start..filled, 0);
                filled -= start;
                if filled == 0 && server.allocation_count() == 0 {
                    // Nothing in flight and nothing relayed: give the buffer back.
                    rbuf = Vec::new();
                } else if filled == rbuf.len() || frame_len(&rbuf[..filled]).is_some_and(|l| l > rbuf.len()) {
                    // A frame larger than the buffer: grow to it (at most one frame).
                    let need = frame_len(&rbuf[..filled]).unwrap_or(MAX_FRAME).min(MAX_FRAME);
                    rbuf.resize(need.max(rbuf.len()), 0);
                }
            }
            recv = std::future::poll_fn(|cx| poll_relays(cx, &relays, &mut pbuf)) => {
                let (relay, from, n) = recv;
                if let Some(t) = server.handle_input(Now::system(), Via::Relay(relay), from, &pbuf[..n]) {
                    if t.via == Via::Listener {
                        stream.write_all(t.payload).await?;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                timed_out(if seen_valid { "idle" } else { "first_message" });
                return Ok(());
            }
            _ = tick.tick() => {
                server.handle_timeout(std::time::Instant::now());
                sync_relays(&mut server, &mut relays, &mut pbuf);
                server.take_stats().flush();
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// When the connection is closed unless something happens: the first-message deadline, or
/// the idle deadline while it holds no allocation.
fn next_deadline(
    limits: &TcpLimits,
    seen_valid: bool,
    opened: Instant,
    last_rx: Instant,
    server: &Server<SocketPorts>,
) -> Option<Instant> {
    if !seen_valid && !limits.first_message.is_zero() {
        return Some(opened + limits.first_message);
    }
    if server.allocation_count() == 0 && !limits.idle.is_zero() {
        return Some(last_rx + limits.idle);
    }
    None
}

/// Receives one datagram from any relay socket into `buf`: (relay address, peer, length).
fn poll_relays(
    cx: &mut Context<'_>,
    relays: &[Relay],
    buf: &mut [u8],
) -> Poll<(SocketAddr, SocketAddr, usize)> {
    for r in relays {
        // ICMP errors (ConnectionRefused) surface as receive errors: skip them.
        for _ in 0..8 {
            let mut rb = ReadBuf::new(buf);
            match r.socket.poll_recv_from(cx, &mut rb) {
                Poll::Ready(Ok(from)) => return Poll::Ready((r.addr, from, rb.filled().len())),
                Poll::Ready(Err(_)) => continue,
                Poll::Pending => break,
            }
        }
    }
    Poll::Pending
}

/// Registers newly bound relay sockets and drops released ones; the peer buffer exists
/// while a relay socket does.
fn sync_relays(server: &mut Server<SocketPorts>, relays: &mut Vec<Relay>, pbuf: &mut Vec<u8>) {
    let ports = server.ports_mut();
    for addr in ports.closed.drain(..) {
        relays.retain(|r| r.addr != addr);
    }
    for sock in ports.opened.drain(..) {
        let Ok(addr) = sock.local_addr() else {
            continue;
        };
        let Ok(socket) = UdpSocket::from_std(sock) else {
            continue;
        };
        relays.push(Relay { addr, socket });
    }
    if relays.is_empty() {
        *pbuf = Vec::new();
    } else if pbuf.is_empty() {
        *pbuf = vec![0u8; PEER_BUF];
    }
}

/// Whether `shared` is refusing new allocations.
pub fn is_draining(shared: &Shared) -> bool {
    shared.draining.load(Ordering::Relaxed)
}
