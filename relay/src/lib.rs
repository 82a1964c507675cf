//! `vc-relay`: the media relay (TURN, RFC 8489/8656) and the signaling plane (WebSocket)
//! of VisionConnect. Protocol logic is sans-IO (`stun`, `turn::server`, `signaling::router`);
//! thin tokio drivers do the IO.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod error;
pub mod proxy;
pub mod signaling;
pub mod stun;
pub mod tls;
pub mod turn;

pub use config::RelayConfig;
pub use error::Error;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

/// Listeners the caller bound before starting the relay (so tests can bind port 0 and read the
/// address back). TURN binds its own UDP/TCP sockets from `config.turn.listen` (port 0 works).
pub struct Listeners {
    /// Admin HTTP listener (`/metrics`, `/healthz`).
    pub admin: TcpListener,
    /// Signaling WebSocket listener.
    pub signaling: TcpListener,
}

impl Listeners {
    /// Binds both TCP listeners on the configured addresses.
    pub async fn bind(config: &RelayConfig) -> Result<Self, Error> {
        let (admin, _) = admin::bind(&config.admin_listen).await?;
        let signaling = TcpListener::bind(&config.signaling.listen).await?;
        Ok(Self { admin, signaling })
    }
}

/// A started relay: every service running, addresses known. Stop it with [`Relay::shutdown`].
pub struct Relay {
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    /// Bound signaling address.
    pub signaling_addr: SocketAddr,
    /// Bound TURN UDP address.
    pub turn_udp_addr: SocketAddr,
    /// Bound TURN TCP address, when TURN over TCP is enabled.
    pub turn_tcp_addr: Option<SocketAddr>,
    /// Bound TURN-over-TLS address, when `[tls]` is configured and `turn.tls_listen` is set.
    pub turn_tls_addr: Option<SocketAddr>,
    /// Bound single-port (WSS + TURN over TLS) address, when `tls.single_port_listen` is set.
    pub single_port_addr: Option<SocketAddr>,
    /// Bound QUIC signaling address (UDP), when `[tls]` is configured and `quic.listen` is set.
    pub quic_addr: Option<SocketAddr>,
    /// True when this node routes across NATS (`[cluster] nats_url` set).
    pub clustered: bool,
    drain: Duration,
    admin_task: tokio::task::JoinHandle<()>,
    /// Reloads the TLS certificate (SIGHUP, mtime), when TLS is on.
    tls_task: Option<tokio::task::JoinHandle<()>>,
    single_port_task: Option<tokio::task::JoinHandle<()>>,
    quic_task: Option<tokio::task::JoinHandle<()>>,
    signaling: signaling::SignalingHandle,
    turn: turn::TurnService,
}

impl Relay {
    /// Starts admin, TURN and signaling on `listeners` (what `vc-relay` runs).
    pub async fn start(config: RelayConfig, listeners: Listeners) -> Result<Self, Error> {
        let metrics = admin::install_recorder();
        let admin_addr = listeners.admin.local_addr()?;
        let signaling_addr = listeners.signaling.local_addr()?;
        let admin_task = tokio::spawn(admin::serve(listeners.admin, metrics));
        let ticket_key = shared::ticket::TicketKey::new(&config.resolve_ticket_secret()?);
        // A configured certificate that cannot be loaded stops startup: no silent plaintext.
        let tls = config.load_tls()?;
        let tls_task = match &tls {
            Some(cert) => {
                let check = Duration::from_secs(config.tls.reload_check_secs);
                Some(tokio::spawn(cert.clone().watch(check)?))
            }
            None => None,
        };
        let turn = turn::TurnService::start(&config.turn, Some(ticket_key.clone()))?;
        config
            .signaling
            .proxy_policy()
            .map_err(|e| Error::Config(format!("signaling.proxy_protocol_from: {e}")))?;
        if let Err(e) = signaling::raise_fd_limit() {
            tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE");
        }
        // The TURN port advertised in `welcome.ice_servers` when `signaling.turn_uris` is empty.
        let turn_port = Some(turn.udp_addr.port());
        let turn_tls_addr = match &tls {
            Some(cert) if !config.turn.tls_listen.is_empty() => Some(
                turn.serve_tls(&config.turn.tls_listen, cert.acceptor(&[tls::ALPN_TURN]))
                    .await?,
            ),
            _ => None,
        };
        let (link, queue) =
            cluster::link(&config.cluster).map_or((None, None), |(l, q)| (Some(l), Some(q)));
        let signaling = signaling::Signaling::start_clustered(
            config.signaling.clone(),
            ticket_key,
            listeners.signaling,
            turn_port,
            link,
            config.cluster.node_id.clone(),
            tls.as_ref().map(|c| signaling::SignalingTls {
                acceptor: c.acceptor(&[tls::ALPN_HTTP1]),
                turns_port: turn_tls_addr.map(|a| a.port()),
            }),
        );
        let mut single_port_addr = None;
        let mut single_port_task = None;
        if let Some(cert) = tls
            .as_ref()
            .filter(|_| !config.tls.single_port_listen.is_empty())
        {
            let listener = TcpListener::bind(&config.tls.single_port_listen).await?;
            single_port_addr = Some(listener.local_addr()?);
            single_port_task = Some(tokio::spawn(tls::serve_single_port(
                listener,
                cert.acceptor(tls::SINGLE_PORT_ALPN),
                signaling.signaling.clone(),
                turn.streams(),
            )));
        }
        let mut quic_addr = None;
        let mut quic_task = None;
        if let Some(cert) = tls.as_ref().filter(|_| !config.quic.listen.is_empty()) {
            // The same resolver as every TLS listener, so a reload reaches QUIC handshakes too.
            let endpoint = signaling::quic::endpoint(
                &config.quic.listen,
                cert.server_config(&[signaling::quic::ALPN]),
                config.signaling.max_message_bytes,
            )?;
            quic_addr = Some(endpoint.local_addr()?);
            quic_task = Some(tokio::spawn(signaling::quic::serve(
                signaling.signaling.clone(),
                endpoint,
            )));
        }
        // With `[cluster] nats_url` set, the NATS driver runs beside the WebSocket driver.
        let clustered = queue.is_some();
        if let Some(queue) = queue {
            cluster::spawn(config.cluster.clone(), signaling.signaling.clone(), queue).await?;
        }
        Ok(Self {
            admin_addr,
            signaling_addr,
            turn_udp_addr: turn.udp_addr,
            turn_tcp_addr: turn.tcp_addr,
            turn_tls_addr,
            single_port_addr,
            quic_addr,
            clustered,
            drain: Duration::from_secs(config.drain_secs),
            admin_task,
            tls_task,
            single_port_task,
            quic_task,
            signaling,
            turn,
        })
    }

    /// Drains signaling (at most 5 s) and TURN (`drain_secs`), then stops the admin listener.
    pub async fn shutdown(self) {
        if let Some(t) = self.single_port_task {
            t.abort();
        }
        // Not aborted: it closes the endpoint itself when signaling shuts down, and each
        // connection task closes with "relay shutting down" like a WebSocket one.
        drop(self.quic_task);
        self.signaling
            .shutdown(self.drain.min(Duration::from_secs(5)))
            .await;
        self.turn.drain(self.drain).await;
        self.admin_task.abort();
        if let Some(t) = self.tls_task {
            t.abort();
        }
    }
}

/// Runs the relay on `listeners` until `shutdown` completes, then drains and returns
/// (in-process entry point, like mini-redis's `server::run`).
pub async fn run(
    config: RelayConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let relay = Relay::start(config, listeners).await?;
    shutdown.await;
    tracing::info!("shutting down");
    relay.shutdown().await;
    Ok(())
}
