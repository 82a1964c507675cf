//! Starting and stopping the TURN service: binds UDP (one SO_REUSEPORT socket per worker) and
//! TCP on the same port, spawns the workers, and drains on shutdown.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::ticket::TicketKey;
use tokio::sync::watch;

use super::auth::Authenticator;
use super::ports::PortPool;
use super::server::Shared;
use super::{tcp, udp, TurnConfig};
use crate::Error;

/// TURN over streams accepted elsewhere (the single-port TLS listener routes here).
#[derive(Debug, Clone)]
pub(crate) struct TurnStreams {
    shared: Arc<Shared>,
    pool: Arc<PortPool>,
    pub(crate) admit: tcp::Admit,
}

impl TurnStreams {
    /// Runs one connection accepted at `opened` (its first-message deadline runs from there).
    pub(crate) async fn run<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        stream: S,
        peer: SocketAddr,
        opened: tokio::time::Instant,
        admitted: tcp::Admitted,
    ) {
        let limits = self.admit.limits;
        tcp::run_admitted(
            stream,
            peer,
            self.shared.clone(),
            self.pool.clone(),
            limits,
            opened,
            admitted,
        )
        .await;
    }
}

/// A running TURN service.
#[derive(Debug)]
pub struct TurnService {
    pub udp_addr: SocketAddr,
    pub tcp_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    pool: Arc<PortPool>,
    limits: tcp::TcpLimits,
    proxy: Arc<crate::proxy::ProxyPolicy>,
    stop: Arc<AtomicBool>,
    draining: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

/// The IP relay sockets bind to: configured, the listen IP, or (listen on the unspecified
/// address) the address of the default route's interface.
fn relay_ip(cfg: &TurnConfig, listen: SocketAddr) -> Result<IpAddr, Error> {
    if !cfg.relay_address.is_empty() {
        return cfg
            .relay_address
            .parse()
            .map_err(|_| Error::Config(format!("turn.relay_address {:?}", cfg.relay_address)));
    }
    if !listen.ip().is_unspecified() {
        return Ok(listen.ip());
    }
    // connect() on UDP sends nothing; it only picks the outgoing interface.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")?;
    probe.connect("192.0.2.1:9")?;
    let ip = probe.local_addr()?.ip();
    tracing::warn!(%ip, "turn.relay_address not set: relaying from the default route's address");
    Ok(ip)
}

impl TurnService {
    /// Binds and starts the service. `ticket` enables TURN REST credentials.
    pub fn start(cfg: &TurnConfig, ticket: Option<TicketKey>) -> Result<Self, Error> {
        let listen: SocketAddr = cfg
            .listen
            .parse()
            .map_err(|_| Error::Config(format!("turn.listen {:?}", cfg.listen)))?;
        if cfg.min_port == 0 || cfg.min_port > cfg.max_port {
            return Err(Error::Config("turn: need 0 < min_port <= max_port".into()));
        }
        let mut nonce_secret = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce_secret)
            .map_err(|_| Error::Config("no system randomness".into()))?;
        let rest = if cfg.rest_auth { ticket } else { None };
        if rest.is_none() && cfg.users.is_empty() {
            return Err(Error::Config(
                "turn: no credentials (set the ticket secret or turn.users)".into(),
            ));
        }
        let auth = Authenticator::new(
            &cfg.realm,
            &cfg.users,
            rest,
            &nonce_secret,
            cfg.nonce_lifetime,
        )?;
        let relay_ip = relay_ip(cfg, listen)?;
        let mut shared = Shared::new(cfg, auth)?;
        // Peers may not be the relay itself (its admin, signaling and relay ports).
        shared.policy.own.push(relay_ip);
        let shared = Arc::new(shared);
        super::stats::Stats::register_all();
        // Exported so that alerts can say "near the limit" without knowing the config.
        metrics::gauge!("vc_relay_turn_allocations_max").set(f64::from(cfg.max_allocations));
        let pool = Arc::new(PortPool::new(
            relay_ip,
            cfg.min_port,
            cfg.max_port,
            cfg.socket_buffer,
            Duration::from_secs(u64::from(cfg.reservation_lifetime)),
        ));
        let threads = if cfg.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.threads
        };
        let (sockets, tcp) = bind_all(listen, threads, cfg.socket_buffer, cfg.tcp)?;
        let udp_addr = sockets[0].local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for (i, sock) in sockets.into_iter().enumerate() {
            let (shared, pool, stop) = (shared.clone(), pool.clone(), stop.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("turn-udp-{i}"))
                    .spawn(move || {
                        if let Err(e) = udp::run_worker(sock, shared, pool, stop, i == 0) {
                            tracing::error!(error = %e, "turn udp worker failed");
                        }
                    })?,
            );
        }
        let (draining, draining_rx) = watch::channel(false);
        let proxy = Arc::new(
            crate::proxy::ProxyPolicy::parse(
                &cfg.proxy_protocol_from,
                cfg.proxy_protocol_max_bytes,
                std::time::Duration::from_secs(cfg.tcp_first_message_timeout.max(1)),
            )
            .map_err(|e| Error::Config(format!("turn.proxy_protocol_from: {e}")))?,
        );
        let tcp_addr = match tcp {
            Some(l) => {
                let addr = l.local_addr()?;
                l.set_nonblocking(true)?;
                let l = tokio::net::TcpListener::from_std(l)?;
                tokio::spawn(tcp::serve(
                    l,
                    shared.clone(),
                    pool.clone(),
                    tcp::TcpLimits::from_config(cfg),
                    draining_rx,
                    None,
                    proxy.clone(),
                ));
                Some(addr)
            }
            None => None,
        };
        Ok(Self {
            udp_addr,
            tcp_addr,
            shared,
            pool,
            limits: tcp::TcpLimits::from_config(cfg),
            proxy,
            stop,
            draining,
            workers,
        })
    }

    /// Active allocations across all shards.
    pub fn active_allocations(&self) -> u32 {
        self.shared.quotas.active()
    }

    /// Serves TURN over TLS (`turns:`) on `listen` with `acceptor`: the TCP connection code,
    /// limits and drain, over TLS. Returns the bound address.
    pub async fn serve_tls(
        &self,
        listen: &str,
        acceptor: tokio_rustls::TlsAcceptor,
    ) -> Result<SocketAddr, Error> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        self.serve_tls_on(listener, acceptor);
        Ok(addr)
    }

    /// Serves TURN on streams another listener accepted (single-port mode): `admit` holds that
    /// listener's caps, shared by all its TURN connections.
    pub(crate) fn streams(&self) -> TurnStreams {
        TurnStreams {
            shared: self.shared.clone(),
            pool: self.pool.clone(),
            admit: tcp::Admit::new(self.limits),
        }
    }

    /// [`Self::serve_tls`] on a listener the caller bound.
    pub fn serve_tls_on(
        &self,
        listener: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
    ) {
        tokio::spawn(tcp::serve(
            listener,
            self.shared.clone(),
            self.pool.clone(),
            self.limits,
            self.draining.subscribe(),
            Some(acceptor),
            self.proxy.clone(),
        ));
    }

    /// Stops taking allocations and TCP connections, lets existing allocations run until they
    /// are gone or `grace` has passed, then stops the workers.
    pub async fn drain(self, grace: Duration) {
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = self.draining.send(true);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.active_allocations() > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
    }
}

/// Binds `threads` UDP sockets and the TCP listener on one port. With port 0 the port is the
/// one the first UDP socket got; if TCP cannot have it, another port is tried.
fn bind_all(
    listen: SocketAddr,
    threads: usize,
    buffer: usize,
    with_tcp: bool,
) -> Result<(Vec<std::net::UdpSocket>, Option<TcpListener>), Error> {
    let mut last_err = None;
    for _ in 0..20 {
        let first = udp::bind_reuseport(listen, buffer)?;
        let addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..threads {
            sockets.push(udp::bind_reuseport(addr, buffer)?);
        }
        if !with_tcp {
            return Ok((sockets, None));
        }
        match bind_tcp(addr) {
            Ok(l) => return Ok((sockets, Some(l))),
            Err(e) if listen.port() == 0 => last_err = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last_err.map_or_else(|| Error::Config("turn: no port".into()), Error::from))
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}
