//! `vc-camera run`: keep a relay ticket, hold the signaling link (QUIC or WebSocket,
//! [`crate::link`]), and answer every viewer offer. Any failure (relay restart, network loss, rejected ticket) leads to a
//! reconnect with exponential backoff and jitter; the ticket is refreshed in place with an
//! `auth` message before it expires, so the camera never needs a restart.
//!
//! Status lines on stdout (one per event, for operators and tests):
//! `online <device_id>`, `offline <reason>`, `viewer <session_id> <state>`,
//! `ticket refreshed`, `link quic|ws <url>`, `quic rebound <local addr>`.
//!
//! SIGUSR1 moves an open QUIC link to a new UDP socket (a new local port, as a NAT rebinding
//! or network change would): the connection migrates, nothing reconnects. Operators can use it
//! to check migration through their NAT; the integration tests use it to prove it.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use shared::api::{TicketRequest, TicketResponse};
use shared::signaling::{ClientMessage, ErrorCode, IceServer, ServerMessage};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;

use crate::backoff::Backoff;
use crate::link::{Link, LinkSink, QuicOptions, Transport};
use crate::peer::{Camera, PeerEvent, PeerSession};

/// Most viewer sessions one camera serves at once (the relay enforces its own limit too).
pub const MAX_SESSIONS: usize = 8;

/// Errors while talking to the control plane or the relay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The control plane refused the ticket request (e.g. the device was deleted).
    #[error("ticket rejected with HTTP {status}: {body}")]
    TicketRejected { status: u16, body: String },
    /// A network or protocol failure; retried.
    #[error("{0}")]
    Transient(String),
}

/// Where and as whom the camera connects.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub server_url: String,
    pub device_id: Uuid,
    pub device_secret: String,
    /// Which signaling link to use.
    pub transport: Transport,
    /// Signaling keep-alive (WebSocket ping, QUIC PING) interval; keep it below the ~30 s
    /// after which many NATs forget an idle UDP mapping. The relay counts as dead after three
    /// silent intervals.
    pub keepalive: Duration,
    /// Certificates to trust (PEM) for vc-control over HTTPS and the relay's QUIC listener;
    /// default: system roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl RunConfig {
    fn quic_options(&self) -> QuicOptions {
        QuicOptions {
            ca_file: self.ca_file.clone(),
            keepalive: self.keepalive,
            idle_timeout: self.keepalive * 3,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Fetches a relay ticket for this camera.
pub async fn fetch_ticket(
    client: &reqwest::Client,
    config: &RunConfig,
) -> Result<TicketResponse, RunError> {
    let url = format!(
        "{}/api/relay/ticket",
        config.server_url.trim_end_matches('/')
    );
    let req = TicketRequest {
        device_id: config.device_id,
        device_secret: Some(config.device_secret.clone()),
    };
    let resp = client
        .post(url)
        .json(&req)
        .send()
        .await
        .map_err(|e| RunError::Transient(format!("ticket request: {e}")))?;
    let status = resp.status();
    if status.is_client_error() {
        let body = resp.text().await.unwrap_or_default();
        return Err(RunError::TicketRejected {
            status: status.as_u16(),
            body,
        });
    }
    if !status.is_success() {
        return Err(RunError::Transient(format!(
            "ticket request: HTTP {status}"
        )));
    }
    resp.json()
        .await
        .map_err(|e| RunError::Transient(format!("ticket response: {e}")))
}

/// How long until the ticket should be refreshed: three quarters of its remaining life
/// (signaling token `exp`, else the TURN credential TTL), at least one second.
pub fn refresh_delay(ticket: &TicketResponse, now_unix: u64) -> Duration {
    let remaining = token_expiry(&ticket.signaling.token)
        .map(|exp| exp.saturating_sub(now_unix))
        .unwrap_or(ticket.turn.ttl);
    Duration::from_millis(remaining.saturating_mul(750).max(1000))
}

/// The `exp` claim of a JWT, read without verifying (the camera has no key; it only
/// schedules its refresh from it).
pub fn token_expiry(token: &str) -> Option<u64> {
    let claims = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Fallback ICE servers from the ticket, used until the relay's `welcome` names its own.
fn ticket_ice_servers(ticket: &TicketResponse) -> Vec<IceServer> {
    vec![IceServer {
        urls: ticket.turn.uris.clone(),
        username: ticket.turn.username.clone(),
        credential: ticket.turn.credential.clone(),
    }]
}

/// Runs forever: ticket, connect, serve, and reconnect on any failure.
pub async fn run(camera: &Camera, config: &RunConfig) -> Result<std::convert::Infallible, String> {
    // Fails only on an unreadable CA file: a setup error, not one to retry.
    let client = shared::tls::http_client_builder(config.ca_file.as_deref())?
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let rebind = Arc::new(Notify::new());
    if let Ok(mut usr1) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
    {
        let rebind = rebind.clone();
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                rebind.notify_one();
            }
        });
    }
    loop {
        let reason = match fetch_ticket(&client, config).await {
            Ok(ticket) => {
                let mut conn = Connection::new(camera, &client, config, ticket, rebind.clone());
                let reason = conn.serve().await;
                if conn.welcomed {
                    backoff.reset();
                }
                conn.close_all().await;
                reason
            }
            Err(e) => e.to_string(),
        };
        let wait = backoff.next_delay();
        println!("offline {}", one_line(&reason));
        tracing::warn!(%reason, ?wait, "signaling down, reconnecting");
        tokio::time::sleep(wait).await;
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One signaling connection and the viewer sessions that live on it.
struct Connection<'a> {
    camera: &'a Camera,
    client: &'a reqwest::Client,
    config: &'a RunConfig,
    ticket: TicketResponse,
    ice_servers: Vec<IceServer>,
    sessions: HashMap<Uuid, PeerSession>,
    welcomed: bool,
    /// Notified on SIGUSR1: rebind the QUIC socket.
    rebind: Arc<Notify>,
}

type WsSink = LinkSink;

impl<'a> Connection<'a> {
    fn new(
        camera: &'a Camera,
        client: &'a reqwest::Client,
        config: &'a RunConfig,
        ticket: TicketResponse,
        rebind: Arc<Notify>,
    ) -> Self {
        Self {
            ice_servers: ticket_ice_servers(&ticket),
            camera,
            client,
            config,
            ticket,
            sessions: HashMap::new(),
            welcomed: false,
            rebind,
        }
    }

    /// Opens the link the config and the ticket call for: QUIC when wanted and offered (in
    /// `auto`, WebSocket when the QUIC handshake fails, e.g. UDP is blocked).
    async fn open(&self) -> Result<(Link, String), String> {
        let quic_url = self.ticket.signaling.quic_url.as_deref();
        let try_quic = match (self.config.transport, quic_url) {
            (Transport::Ws, _) => None,
            (Transport::Quic, None) => {
                return Err("--transport quic, but the ticket offers no quic_url".into())
            }
            (_, url) => url,
        };
        if let Some(url) = try_quic {
            // The first frame authenticates, exactly like the WebSocket `?token=`.
            match crate::link::quic(url, &self.config.quic_options()).await {
                Ok(mut link) => {
                    let auth = ClientMessage::Auth {
                        token: self.ticket.signaling.token.clone(),
                    };
                    send(&mut link.sink, &auth).await?;
                    return Ok((link, format!("quic {url}")));
                }
                Err(e) if self.config.transport == Transport::Auto => {
                    tracing::warn!(error = %e, "QUIC link failed, falling back to WebSocket");
                }
                Err(e) => return Err(e),
            }
        }
        let base = &self.ticket.signaling.url;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}token={}", self.ticket.signaling.token);
        let link = crate::link::websocket(
            &url,
            self.config.ca_file.as_deref(),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| format!("connect {base}: {e}"))?;
        Ok((link, format!("ws {base}")))
    }

    /// Serves until the connection fails; returns why.
    async fn serve(&mut self) -> String {
        let (link, name) = match self.open().await {
            Ok(l) => l,
            Err(e) => return e,
        };
        println!("link {name}");
        let Link {
            mut sink,
            mut stream,
            quic,
        } = link;
        let (events_tx, mut events) = mpsc::unbounded_channel::<PeerEvent>();
        let mut refresh_at = Instant::now() + refresh_delay(&self.ticket, unix_now());
        let keepalive_every = self.config.keepalive;
        let mut keepalive = tokio::time::interval(keepalive_every);
        let mut last_heard = Instant::now();
        let rebind = self.rebind.clone();
        loop {
            tokio::select! {
                msg = stream.next() => {
                    last_heard = Instant::now();
                    match msg {
                        None => return "connection closed".into(),
                        Some(Err(e)) => return format!("signaling: {e}"),
                        Some(Ok(Message::Text(text))) => {
                            match serde_json::from_str::<ServerMessage>(&text) {
                                Ok(m) => {
                                    if let Err(reason) = self.handle(m, &mut sink, &events_tx).await {
                                        return reason;
                                    }
                                }
                                Err(e) => tracing::warn!(error = %e, "unreadable signaling message"),
                            }
                        }
                        // Over QUIC the relay's ping is an empty frame, answered by one (WebSocket
                        // pongs are sent by tungstenite itself).
                        Some(Ok(Message::Ping(_))) if quic.is_some() => {
                            if let Err(e) = sink.send(Message::Pong(Vec::new().into())).await {
                                return format!("quic: {e}");
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            return match frame {
                                Some(f) => format!("closed by relay: {} {}", u16::from(f.code), f.reason),
                                None => "closed by relay".into(),
                            };
                        }
                        Some(Ok(_)) => {}
                    }
                }
                Some(ev) = events.recv() => {
                    if let Err(e) = self.peer_event(ev, &mut sink).await {
                        return e;
                    }
                }
                _ = tokio::time::sleep_until(refresh_at) => {
                    match fetch_ticket(self.client, self.config).await {
                        Ok(ticket) => {
                            let auth = ClientMessage::Auth { token: ticket.signaling.token.clone() };
                            if let Err(e) = send(&mut sink, &auth).await {
                                return e;
                            }
                            // Fresh TURN credentials for new sessions, same servers.
                            for s in &mut self.ice_servers {
                                s.username = ticket.turn.username.clone();
                                s.credential = ticket.turn.credential.clone();
                            }
                            refresh_at = Instant::now() + refresh_delay(&ticket, unix_now());
                            self.ticket = ticket;
                            println!("ticket refreshed");
                        }
                        Err(RunError::TicketRejected { status, body }) => {
                            return format!("ticket rejected with HTTP {status}: {body}");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "ticket refresh failed, retrying");
                            refresh_at = Instant::now() + Duration::from_secs(2);
                        }
                    }
                }
                _ = rebind.notified(), if quic.is_some() => {
                    if let Some(q) = &quic {
                        match q.rebind() {
                            Ok(addr) => println!("quic rebound {addr}"),
                            Err(e) => tracing::warn!(error = %e, "QUIC rebind failed"),
                        }
                    }
                }
                _ = keepalive.tick() => {
                    if last_heard.elapsed() > keepalive_every * 3 {
                        return format!("relay silent for {} s", (keepalive_every * 3).as_secs());
                    }
                    if let Err(e) = sink.send(Message::Ping(Vec::new().into())).await {
                        return format!("signaling: {e}");
                    }
                }
            }
        }
    }

    async fn handle(
        &mut self,
        msg: ServerMessage,
        sink: &mut WsSink,
        events: &mpsc::UnboundedSender<PeerEvent>,
    ) -> Result<(), String> {
        match msg {
            ServerMessage::Welcome {
                ice_servers,
                device_id,
                ..
            } => {
                if !ice_servers.is_empty() {
                    self.ice_servers = ice_servers;
                }
                if !self.welcomed {
                    self.welcomed = true;
                    println!("online {}", device_id.unwrap_or(self.config.device_id));
                }
            }
            ServerMessage::Offer { session_id, sdp } => {
                if let Some(existing) = self.sessions.get(&session_id) {
                    // Renegotiation of a running session.
                    match self
                        .camera
                        .apply_offer(existing.peer_connection(), sdp)
                        .await
                    {
                        Ok(answer) => {
                            send(
                                sink,
                                &ClientMessage::Answer {
                                    session_id,
                                    sdp: answer,
                                },
                            )
                            .await?
                        }
                        Err(e) => {
                            tracing::warn!(%session_id, error = %e, "renegotiation failed");
                            self.end_session(session_id, "bad_offer", sink).await?;
                        }
                    }
                    return Ok(());
                }
                if self.sessions.len() >= MAX_SESSIONS {
                    return send(
                        sink,
                        &ClientMessage::Bye {
                            session_id,
                            reason: Some("busy".into()),
                        },
                    )
                    .await;
                }
                match self
                    .camera
                    .answer(session_id, sdp, &self.ice_servers, events.clone())
                    .await
                {
                    Ok((session, answer)) => {
                        self.sessions.insert(session_id, session);
                        println!("viewer {session_id} offer");
                        send(
                            sink,
                            &ClientMessage::Answer {
                                session_id,
                                sdp: answer,
                            },
                        )
                        .await?;
                    }
                    Err(e) => {
                        tracing::warn!(%session_id, error = %e, "cannot answer offer");
                        send(
                            sink,
                            &ClientMessage::Bye {
                                session_id,
                                reason: Some("bad_offer".into()),
                            },
                        )
                        .await?;
                    }
                }
            }
            ServerMessage::Candidate {
                session_id,
                candidate,
            } => match self.sessions.get(&session_id) {
                Some(s) => {
                    if let Err(e) = s.add_candidate(candidate).await {
                        tracing::debug!(%session_id, error = %e, "remote candidate rejected");
                    }
                }
                None => tracing::debug!(%session_id, "candidate for unknown session"),
            },
            ServerMessage::Bye { session_id, reason } => {
                if let Some(s) = self.sessions.remove(&session_id) {
                    println!(
                        "viewer {session_id} closed {}",
                        reason.as_deref().unwrap_or("bye")
                    );
                    s.close().await;
                }
            }
            ServerMessage::Error {
                code,
                message,
                reference,
            } => {
                tracing::warn!(code = code.as_str(), %message, ?reference, "relay error");
                match code {
                    ErrorCode::Unauthorized | ErrorCode::Forbidden | ErrorCode::TokenExpired => {
                        return Err(format!("relay refused: {} {message}", code.as_str()));
                    }
                    ErrorCode::UnknownSession => {
                        if let Some(id) = reference.and_then(|r| r.parse::<Uuid>().ok()) {
                            if let Some(s) = self.sessions.remove(&id) {
                                s.close().await;
                            }
                        }
                    }
                    _ => {}
                }
            }
            ServerMessage::Session { .. } | ServerMessage::Answer { .. } => {
                tracing::debug!("ignoring viewer-only message");
            }
        }
        Ok(())
    }

    async fn peer_event(&mut self, ev: PeerEvent, sink: &mut WsSink) -> Result<(), String> {
        match ev {
            PeerEvent::Candidate {
                session_id,
                candidate,
            } => {
                if self.sessions.contains_key(&session_id) {
                    send(
                        sink,
                        &ClientMessage::Candidate {
                            session_id,
                            candidate,
                        },
                    )
                    .await?;
                }
            }
            PeerEvent::State { session_id, state } => {
                if !self.sessions.contains_key(&session_id) {
                    return Ok(());
                }
                match state {
                    RTCPeerConnectionState::Connected => println!("viewer {session_id} connected"),
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        self.end_session(session_id, "ice_failed", sink).await?;
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    async fn end_session(
        &mut self,
        session_id: Uuid,
        reason: &str,
        sink: &mut WsSink,
    ) -> Result<(), String> {
        if let Some(s) = self.sessions.remove(&session_id) {
            println!("viewer {session_id} closed {reason}");
            s.close().await;
            send(
                sink,
                &ClientMessage::Bye {
                    session_id,
                    reason: Some(reason.to_owned()),
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn close_all(&mut self) {
        for (id, s) in self.sessions.drain() {
            println!("viewer {id} closed signaling_lost");
            s.close().await;
        }
    }
}

async fn send(sink: &mut WsSink, msg: &ClientMessage) -> Result<(), String> {
    // Invariant: protocol messages are plain data and always serialise.
    let text = serde_json::to_string(msg).expect("signaling message serialises");
    sink.send(Message::text(text))
        .await
        .map_err(|e| format!("signaling send: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::api::{SignalingTicket, TurnTicket};

    fn ticket(token: String, ttl: u64) -> TicketResponse {
        TicketResponse {
            turn: TurnTicket {
                username: "u".into(),
                credential: "c".into(),
                ttl,
                uris: vec!["turn:127.0.0.1:3478".into()],
            },
            signaling: SignalingTicket {
                url: "ws://127.0.0.1:1/ws".into(),
                token,
                quic_url: None,
            },
        }
    }

    #[test]
    fn refresh_is_scheduled_from_the_token_expiry() {
        let key = shared::ticket::TicketKey::new(&shared::Secret::new("k".repeat(32)));
        let id = Uuid::new_v4();
        let (token, _) = key.mint_signaling(
            &id.to_string(),
            shared::ticket::Role::Camera,
            vec![id],
            1_000,
            400,
        );
        assert_eq!(token_expiry(&token), Some(1_400));
        // 400 s left -> refresh after 300 s.
        assert_eq!(
            refresh_delay(&ticket(token.clone(), 9_999), 1_000),
            Duration::from_secs(300)
        );
        // Already expired -> at once (1 s floor).
        assert_eq!(
            refresh_delay(&ticket(token, 9_999), 5_000),
            Duration::from_secs(1)
        );
        // Not a JWT -> the TURN TTL.
        assert_eq!(
            refresh_delay(&ticket("opaque".into(), 100), 0),
            Duration::from_secs(75)
        );
    }
}
