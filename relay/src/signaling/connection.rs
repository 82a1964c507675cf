//! One task per WebSocket connection: authenticate (if the upgrade carried no token), send
//! `welcome`, then loop: read -> limits -> router -> deliveries; drain the bounded outbound queue
//! in batches; ping; enforce idle timeout and (cameras) token expiry.
//!
//! **Token expiry.** A camera's connection lives until its signaling token expires. Before then
//! the camera sends `auth {token}` with a fresh token for the same device (from
//! `POST /api/relay/ticket`), which moves the deadline; otherwise the relay sends
//! `error {code: unauthorized}` and closes with code 4002. So a device deleted in vc-control
//! (which then refuses it tickets) loses its connection within one ticket TTL at most, and
//! sooner through the presence reporter's `unknown_devices`. Viewer tokens are checked when used
//! (upgrade, `connect`); an open viewer connection is not cut at expiry.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use shared::signaling::{ClientMessage, ErrorCode, ServerMessage};
use shared::ticket::{unix_now, Role, SignalingClaims};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use super::router::{CloseReason, ConnState, Delivery};
use super::server::{ConnHandle, Kill, Outbound, Signaling};

type Ws = WebSocketStream<TcpStream>;

/// Token bucket: `rate` tokens per second, at most `burst`. Time is passed in.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn error_msg(
    code: ErrorCode,
    message: impl Into<String>,
    reference: Option<String>,
) -> ServerMessage {
    ServerMessage::Error {
        code,
        message: message.into(),
        reference,
    }
}

/// Sends one message and a close frame directly (not through the queue), bounded in time.
async fn close_with(ws: &mut Ws, first: Option<ServerMessage>, reason: CloseReason) {
    let work = async {
        if let Some(msg) = first {
            if let Ok(text) = serde_json::to_string(&msg) {
                ws.feed(Message::text(text)).await?;
            }
        }
        ws.close(Some(CloseFrame {
            code: CloseCode::from(reason.code()),
            reason: reason.as_str().into(),
        }))
        .await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), work).await;
}

/// Waits for the first-message `auth {token}`.
async fn first_message_auth(sig: &Signaling, ws: &mut Ws) -> Option<SignalingClaims> {
    let wait = Duration::from_secs(sig.config.auth_timeout_secs.max(1));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let next = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(_) => return None,
            Err(_) => {
                let msg = error_msg(
                    ErrorCode::Unauthorized,
                    "no token within the auth timeout",
                    None,
                );
                close_with(ws, Some(msg), CloseReason::Unauthorized).await;
                return None;
            }
        };
        let text = match next {
            Message::Text(t) => t,
            Message::Ping(_) | Message::Pong(_) => continue,
            _ => return None,
        };
        let failure = match serde_json::from_str::<ClientMessage>(&text) {
            Ok(ClientMessage::Auth { token }) => {
                match sig.router.authenticate(&token, unix_now()) {
                    Ok(claims) => return Some(claims),
                    Err(e) => format!("invalid signaling token: {e}"),
                }
            }
            _ => "authenticate first: send auth {token} or connect with ?token=".to_owned(),
        };
        sig.metrics.error(ErrorCode::Unauthorized);
        let msg = error_msg(ErrorCode::Unauthorized, failure, Some("auth".into()));
        close_with(ws, Some(msg), CloseReason::Unauthorized).await;
        return None;
    }
}

/// The `type` of a JSON message that failed to parse, for `error.ref`.
fn message_type(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    Some(v.get("type")?.as_str()?.chars().take(32).collect())
}

/// Runs an upgraded connection to completion.
pub(crate) async fn run(
    sig: Arc<Signaling>,
    mut ws: Ws,
    claims: Option<SignalingClaims>,
    host: String,
    _permit: OwnedSemaphorePermit,
) {
    let claims = match claims {
        Some(c) => c,
        None => match first_message_auth(&sig, &mut ws).await {
            Some(c) => c,
            None => return,
        },
    };
    let id = sig.next_conn_id();
    // Kept for the ICE credentials: the TURN quota counts by the owning account.
    let account = claims.account.clone();
    let mut state = ConnState::new(id, claims);
    let (tx, mut rx) = mpsc::channel(sig.config.outbound_queue.max(1));
    let kill = Arc::new(Kill::default());
    sig.conns.insert(
        id,
        ConnHandle {
            tx,
            kill: kill.clone(),
        },
    );
    let welcome = ServerMessage::Welcome {
        role: state.role(),
        device_id: state.device(),
        connection_id: match state.role() {
            Role::Viewer => Some(Uuid::from_u64_pair(0, id)),
            Role::Camera => None,
        },
        ice_servers: sig.ice_servers(state.subject(), account.as_deref(), &host),
    };
    let mut out = Vec::new();
    // Welcome first, then whatever joining causes (presence, byes to a replaced camera's viewers).
    sig.send(id, &welcome);
    sig.router.connected(unix_ms(), &state, &mut out);
    sig.deliver(&mut out);
    sig.update_gauges();

    let reason = drive(&sig, &mut ws, &mut state, &mut rx, &kill, &mut out).await;
    if let Some((reason, msg)) = reason {
        close_with(&mut ws, msg, reason).await;
    }

    sig.conns.remove(&id);
    sig.router.disconnected(unix_ms(), &state, &mut out);
    sig.deliver(&mut out);
    sig.update_gauges();
}

/// The connection's main loop. Returns why the relay closes it (None: the peer went away).
async fn drive(
    sig: &Signaling,
    ws: &mut Ws,
    state: &mut ConnState,
    rx: &mut mpsc::Receiver<Outbound>,
    kill: &Kill,
    out: &mut Vec<Delivery>,
) -> Option<(CloseReason, Option<ServerMessage>)> {
    let cfg = &sig.config;
    let mut shutdown = sig.shutdown.clone();
    if *shutdown.borrow() {
        return Some((CloseReason::Shutdown, None));
    }
    let mut bucket = TokenBucket::new(cfg.rate_per_sec, cfg.rate_burst, Instant::now());
    let ping_every = Duration::from_secs(cfg.ping_interval_secs.max(1));
    let idle_after = Duration::from_secs(cfg.idle_timeout_secs.max(1));
    // Check liveness at least every third of the idle timeout so the drop is timely.
    let tick = ping_every
        .min(idle_after / 3)
        .max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rx = Instant::now();
    let mut last_ping = Instant::now();
    let is_camera = state.role() == Role::Camera;
    let expiry_at = |exp: u64| {
        // Capped: an absurd expiry must not overflow the timer.
        tokio::time::Instant::now()
            + Duration::from_secs(exp.saturating_sub(unix_now()).min(365 * 86_400))
    };
    let mut expiry_secs = state.expires_at();
    let expiry = tokio::time::sleep_until(expiry_at(expiry_secs));
    let mut expiry: Pin<&mut tokio::time::Sleep> = std::pin::pin!(expiry);

    loop {
        tokio::select! {
            biased;
            reason = kill.fired() => return Some((reason, None)),
            _ = shutdown.changed() => return Some((CloseReason::Shutdown, None)),
            item = rx.recv() => {
                let Some(Outbound::Text(text)) = item else { return None };
                if ws.feed(Message::Text(text)).await.is_err() {
                    return None;
                }
                // Batch what is already queued into one flush (one syscall).
                for _ in 0..64 {
                    match rx.try_recv() {
                        Ok(Outbound::Text(text)) => {
                            if ws.feed(Message::Text(text)).await.is_err() {
                                return None;
                            }
                        }
                        Err(_) => break,
                    }
                }
                if ws.flush().await.is_err() {
                    return None;
                }
            }
            msg = ws.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(WsError::Capacity(_))) => {
                        sig.metrics.error(ErrorCode::TooLarge);
                        let e = error_msg(
                            ErrorCode::TooLarge,
                            format!("messages are limited to {} bytes", cfg.max_message_bytes),
                            None,
                        );
                        return Some((CloseReason::TooLarge, Some(e)));
                    }
                    Some(Err(_)) | None => return None,
                };
                last_rx = Instant::now();
                let text = match msg {
                    Message::Text(t) => t,
                    Message::Binary(_) => {
                        let e = error_msg(ErrorCode::BadMessage, "binary frames are not supported", None);
                        sig.send(state.id(), &e);
                        continue;
                    }
                    Message::Close(_) => return None,
                    _ => continue,
                };
                if !bucket.take(last_rx) {
                    let e = error_msg(
                        ErrorCode::RateLimited,
                        format!("more than {}/s (burst {}); message dropped", cfg.rate_per_sec, cfg.rate_burst),
                        message_type(&text),
                    );
                    sig.send(state.id(), &e);
                    continue;
                }
                match serde_json::from_str::<ClientMessage>(&text) {
                    Ok(m) => {
                        sig.router.message(unix_ms(), state, m, out);
                        sig.deliver(out);
                        if is_camera && state.expires_at() != expiry_secs {
                            expiry_secs = state.expires_at();
                            expiry.as_mut().reset(expiry_at(expiry_secs));
                        }
                    }
                    Err(e) => {
                        let mut detail = e.to_string();
                        detail.truncate(200);
                        let e = error_msg(ErrorCode::BadMessage, detail, message_type(&text));
                        sig.send(state.id(), &e);
                    }
                }
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                if now.duration_since(last_rx) >= idle_after {
                    return Some((CloseReason::Idle, None));
                }
                if now.duration_since(last_ping) >= ping_every {
                    last_ping = now;
                    if ws.send(Message::Ping(Default::default())).await.is_err() {
                        return None;
                    }
                }
            }
            _ = expiry.as_mut(), if is_camera => {
                if state.expires_at() <= unix_now() {
                    let e = error_msg(
                        ErrorCode::Unauthorized,
                        "token expired: send auth {token} with a fresh token before expiry",
                        Some("auth".into()),
                    );
                    return Some((CloseReason::TokenExpired, Some(e)));
                }
                expiry.as_mut().reset(expiry_at(state.expires_at()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50, 200, t0);
        for _ in 0..200 {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0));
        // 100 ms later: 5 more.
        let t1 = t0 + Duration::from_millis(100);
        for _ in 0..5 {
            assert!(b.take(t1));
        }
        assert!(!b.take(t1));
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..200 {
            assert!(b.take(t2));
        }
        assert!(!b.take(t2));
    }

    #[test]
    fn message_type_of_bad_messages() {
        assert_eq!(message_type(r#"{"type":"nope"}"#).as_deref(), Some("nope"));
        assert_eq!(message_type("not json"), None);
        assert_eq!(message_type(r#"{"type":5}"#), None);
    }
}
