//! One task per WebSocket connection: authenticate (if the upgrade carried no token), send
//! `welcome`, then loop: read -> limits -> router -> deliveries; drain the bounded outbound queue
//! in batches; ping; enforce idle timeout and token expiry.
//!
//! **Slow consumers.** Writes and reads are polled together (`poll_io`), never awaited one at
//! a time, so a client that stops reading cannot stall its own task: kills, pings, idle and
//! expiry still run. What it does not take is bounded twice: by time (a write pending for
//! `write_timeout_ms`) and by bytes queued and not yet flushed (`max_queued_bytes`, counted in
//! `Signaling::send`); either drops it as a slow consumer (4008), which frees its queue.
//!
//! **Token expiry.** Every connection (camera or viewer) lives until its signaling token
//! expires. Before then the client sends `auth {token}` with a fresh token for the same subject
//! (from `POST /api/relay/ticket`), which moves the deadline; otherwise the relay sends
//! `error {code: token_expired}` and closes with code 4002. So a device deleted in vc-control
//! (which then refuses it tickets) loses its connection within one ticket TTL at most, and
//! sooner through the presence reporter's `unknown_devices`; a viewer whose access was revoked
//! cannot open sessions past its ticket's TTL. `connect` also checks expiry itself, so no
//! session is opened on an expired token even in the instant before the timer fires.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use shared::signaling::{ClientMessage, ErrorCode, ServerMessage};
use shared::ticket::{Role, SignalingClaims};

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use uuid::Uuid;

use super::router::{CloseReason, ConnState, Delivery};
use super::server::{Admission, ConnHandle, Outbox, Signaling};

/// What a connection runs over: a message stream and sink in tungstenite's terms, so the
/// WebSocket (`WebSocketStream`) and QUIC (`super::quic::Frames`) transports share this task,
/// its limits and timers, and the router; neither routing nor limits know the transport.
pub(crate) trait Transport:
    Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin + Send
{
}

impl<T> Transport for T where
    T: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin + Send
{
}

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

/// The connection's one wall clock, unix milliseconds (tokens expire in unix seconds).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// True once a token expiring at `exp` (unix seconds) is no longer valid at `now_ms`
/// (the same rule as token verification: valid while `now < exp`).
fn expired(exp: u64, now_ms: u64) -> bool {
    now_ms / 1000 >= exp
}

/// Time left until [`expired`] turns true; capped so an absurd expiry cannot overflow a timer.
fn until_expiry(exp: u64, now_ms: u64) -> Duration {
    const CAP_MS: u64 = 365 * 86_400_000;
    Duration::from_millis(exp.saturating_mul(1000).saturating_sub(now_ms).min(CAP_MS))
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

/// `token_expired` for a `connect` on an expired token; None lets the router handle `msg`.
/// (The expiry timer closes the connection, but a `connect` read in the same instant must not
/// open a session.)
fn refuse_expired(msg: &ClientMessage, exp: u64, now_ms: u64) -> Option<ServerMessage> {
    match msg {
        ClientMessage::Connect { device_id } if expired(exp, now_ms) => Some(error_msg(
            ErrorCode::TokenExpired,
            "token expired: send auth {token} with a fresh token, then connect again",
            Some(device_id.to_string()),
        )),
        _ => None,
    }
}

/// Sends one message and a close frame directly (not through the queue), bounded in time.
async fn close_with<T: Transport>(ws: &mut T, first: Option<ServerMessage>, reason: CloseReason) {
    let work = async {
        if let Some(msg) = first {
            if let Ok(text) = serde_json::to_string(&msg) {
                ws.feed(Message::text(text)).await?;
            }
        }
        // `WebSocketStream::close` is exactly this send; as a message it works on any transport.
        ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(reason.code()),
            reason: reason.as_str().into(),
        })))
        .await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), work).await;
}

/// Waits for the first-message `auth {token}`.
async fn first_message_auth<T: Transport>(sig: &Signaling, ws: &mut T) -> Option<SignalingClaims> {
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
                match sig.router.authenticate(&token, unix_ms() / 1000) {
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
pub(crate) async fn run<T: Transport>(
    sig: Arc<Signaling>,
    mut ws: T,
    claims: Option<SignalingClaims>,
    host: String,
    _admission: Admission,
) {
    let claims = match claims {
        Some(c) => c,
        // Boxed, like the close below: these run once, and inline they would size the
        // future that every idle connection keeps for its whole life.
        None => match Box::pin(first_message_auth(&sig, &mut ws)).await {
            Some(c) => c,
            None => return,
        },
    };
    let id = sig.next_conn_id();
    // Kept for the ICE credentials: the TURN quota counts by the owning account.
    let account = claims.account.clone();
    let mut state = ConnState::new(id, claims);
    let outbox = Arc::new(Outbox::default());
    sig.conns.insert(
        id,
        ConnHandle {
            outbox: outbox.clone(),
            viewer_of: (state.role() == Role::Viewer).then(|| Arc::from(state.subject())),
        },
    );
    let welcome = ServerMessage::Welcome {
        role: state.role(),
        device_id: state.device(),
        connection_id: match state.role() {
            Role::Viewer => Some(Uuid::from_u64_pair(0, id)),
            Role::Camera => None,
        },
        ice_servers: sig.ice_servers(
            state.subject(),
            account.as_deref(),
            &host,
            state.expires_at(),
        ),
    };
    drop((account, host));
    let mut out = Vec::new();
    // Welcome first, then whatever joining causes (presence, byes to a replaced camera's viewers).
    sig.send(id, &welcome);
    drop(welcome);
    sig.router.connected(unix_ms(), &state, &mut out);
    sig.deliver(&mut out);
    sig.update_gauges();

    let reason = drive(&sig, &mut ws, &mut state, &outbox, &mut out).await;
    if let Some((reason, msg)) = reason {
        Box::pin(close_with(&mut ws, msg, reason)).await;
    }

    sig.conns.remove(&id);
    outbox.close();
    sig.router.disconnected(unix_ms(), &state, &mut out);
    sig.deliver(&mut out);
    sig.update_gauges();
}

/// Messages fed to the socket before one flush (one syscall for a burst).
const WRITE_BATCH: usize = 64;

/// The write side of a connection, driven by [`poll_io`] beside the reads.
#[derive(Debug, Default)]
struct Writer {
    /// Bytes of queued messages fed to the socket since the last completed flush.
    unflushed: usize,
    /// Bytes whose flush completed, not yet taken off the connection's queued-bytes count.
    flushed: usize,
    /// Something was fed and needs a flush.
    dirty: bool,
    /// A ping is due; it goes out ahead of queued messages.
    ping: bool,
    /// The socket stopped taking bytes: a write is pending and its deadline runs.
    blocked: bool,
}

/// What [`poll_io`] has for the connection loop.
enum Io {
    Read(Option<Result<Message, WsError>>),
    /// The write side changed ([`Writer::flushed`] or [`Writer::blocked`]).
    Wrote,
    /// Writing failed or the outbound queue closed: the connection is over.
    Gone,
}

/// Polls the connection's writes and reads together, so a write the peer does not take never
/// stops reads, kills, pings or timers from being handled (the write deadline runs meanwhile).
/// Only moves data: limits and deadlines are the caller's.
fn poll_io<T: Transport>(
    ws: &mut T,
    outbox: &Outbox,
    w: &mut Writer,
    cx: &mut Context<'_>,
) -> Poll<Io> {
    let mut ws = Pin::new(ws);
    let was_blocked = w.blocked;
    let mut fed = 0;
    // Feed while the socket takes bytes (tungstenite's `ready`: its buffer was written out).
    loop {
        match ws.as_mut().poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(Io::Gone),
            Poll::Pending => {
                w.blocked = true;
                break;
            }
        }
        let msg = if w.ping {
            w.ping = false;
            Message::Ping(Default::default())
        } else if fed < WRITE_BATCH {
            match outbox.poll_pop(cx) {
                Poll::Ready(Some(text)) => {
                    fed += 1;
                    w.unflushed += text.len();
                    Message::Text(text)
                }
                Poll::Ready(None) => return Poll::Ready(Io::Gone),
                Poll::Pending => break,
            }
        } else {
            break;
        };
        if ws.as_mut().start_send(msg).is_err() {
            return Poll::Ready(Io::Gone);
        }
        w.dirty = true;
    }
    if w.dirty {
        match ws.as_mut().poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                w.dirty = false;
                w.blocked = false;
                w.flushed += std::mem::take(&mut w.unflushed);
            }
            Poll::Ready(Err(_)) => return Poll::Ready(Io::Gone),
            Poll::Pending => w.blocked = true,
        }
    }
    if let Poll::Ready(m) = ws.as_mut().poll_next(cx) {
        return Poll::Ready(Io::Read(m));
    }
    if w.flushed > 0 || w.blocked != was_blocked {
        return Poll::Ready(Io::Wrote);
    }
    Poll::Pending
}

/// The connection's main loop. Returns why the relay closes it (None: the peer went away).
async fn drive<T: Transport>(
    sig: &Signaling,
    ws: &mut T,
    state: &mut ConnState,
    outbox: &Outbox,
    out: &mut Vec<Delivery>,
) -> Option<(CloseReason, Option<ServerMessage>)> {
    let cfg = &sig.config;
    let mut shutdown = sig.shutdown.clone();
    if *shutdown.borrow() {
        return Some((CloseReason::Shutdown, None));
    }
    let mut bucket = TokenBucket::new(cfg.rate_per_sec, cfg.rate_burst, Instant::now());
    // In a run of rate-limited messages (the one notice was sent).
    let mut limited = false;
    let ping_every = Duration::from_secs(cfg.ping_interval_secs.max(1));
    let idle_after = Duration::from_secs(cfg.idle_timeout_secs.max(1));
    let write_timeout = Duration::from_millis(cfg.write_timeout_ms.max(1));
    // Check liveness at least every third of the idle timeout so the drop is timely.
    let tick = ping_every
        .min(idle_after / 3)
        .max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rx = Instant::now();
    let mut last_ping = Instant::now();
    let expiry_at = |exp: u64| tokio::time::Instant::now() + until_expiry(exp, unix_ms());
    let mut expiry_secs = state.expires_at();
    let expiry = tokio::time::sleep_until(expiry_at(expiry_secs));
    let mut expiry: Pin<&mut tokio::time::Sleep> = std::pin::pin!(expiry);
    let mut writer = Writer::default();
    // Armed only when a write blocks, so writes that complete at once never touch the timer.
    let write_deadline = tokio::time::sleep(Duration::ZERO);
    let mut write_deadline: Pin<&mut tokio::time::Sleep> = std::pin::pin!(write_deadline);
    let mut write_armed = false;

    loop {
        if writer.flushed > 0 {
            outbox
                .queued_bytes
                .fetch_sub(std::mem::take(&mut writer.flushed), Ordering::Relaxed);
        }
        if writer.blocked != write_armed {
            write_armed = writer.blocked;
            if write_armed {
                write_deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + write_timeout);
            }
        }
        tokio::select! {
            biased;
            reason = outbox.kill.fired() => return Some((reason, None)),
            _ = shutdown.changed() => return Some((CloseReason::Shutdown, None)),
            _ = write_deadline.as_mut(), if write_armed => {
                sig.metrics.write_timeouts.increment(1);
                tracing::info!(
                    conn = state.id(),
                    "signaling client took no data for write_timeout_ms; closing as slow consumer"
                );
                return Some((CloseReason::SlowConsumer, None));
            }
            io = std::future::poll_fn(|cx| poll_io(ws, outbox, &mut writer, cx)) => {
                let msg = match io {
                    Io::Wrote => continue,
                    Io::Gone => return None,
                    Io::Read(msg) => msg,
                };
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
                    Message::Text(t) => Some(t),
                    // Binary frames count against the rate like text: they are refused, not free.
                    Message::Binary(_) => None,
                    Message::Close(_) => return None,
                    _ => continue,
                };
                // The limit comes before any parsing or reply: a dropped message costs its
                // read, nothing more, and a flood gets one notice per run of drops, not one
                // reply per message (the reply would be the amplifier).
                if !bucket.take(last_rx) {
                    sig.metrics.messages_rate_limited.increment(1);
                    if !limited {
                        limited = true;
                        let e = error_msg(
                            ErrorCode::RateLimited,
                            format!(
                                "more than {}/s (burst {}); messages are dropped until the rate falls",
                                cfg.rate_per_sec, cfg.rate_burst
                            ),
                            None,
                        );
                        sig.send(state.id(), &e);
                    }
                    continue;
                }
                limited = false;
                let Some(text) = text else {
                    let e = error_msg(ErrorCode::BadMessage, "binary frames are not supported", None);
                    sig.send(state.id(), &e);
                    continue;
                };
                let now_ms = unix_ms();
                match serde_json::from_str::<ClientMessage>(&text) {
                    Ok(m) => {
                        if let Some(e) = refuse_expired(&m, state.expires_at(), now_ms) {
                            sig.send(state.id(), &e);
                            continue;
                        }
                        sig.router.message(now_ms, state, m, out);
                        sig.deliver(out);
                        if state.expires_at() != expiry_secs {
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
                    // Sent by poll_io when the socket takes bytes; never waited for here.
                    writer.ping = true;
                }
            }
            _ = expiry.as_mut() => {
                if expired(state.expires_at(), unix_ms()) {
                    let e = error_msg(
                        ErrorCode::TokenExpired,
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
    fn expiry_follows_token_validity() {
        // A token with exp = 100 is valid through 99.999 s and expired from 100.000 s.
        assert!(!expired(100, 99_999));
        assert!(expired(100, 100_000));
        assert_eq!(until_expiry(100, 99_250), Duration::from_millis(750));
        assert_eq!(until_expiry(100, 200_000), Duration::ZERO);
        // An absurd expiry is capped to a year instead of overflowing the timer.
        assert_eq!(
            until_expiry(u64::MAX, 0),
            Duration::from_millis(365 * 86_400_000)
        );
    }

    #[test]
    fn connect_on_expired_token_is_refused() {
        let device_id = Uuid::new_v4();
        let connect = ClientMessage::Connect { device_id };
        assert_eq!(refuse_expired(&connect, 100, 99_999), None);
        match refuse_expired(&connect, 100, 100_000) {
            Some(ServerMessage::Error {
                code: ErrorCode::TokenExpired,
                reference: Some(r),
                ..
            }) => assert_eq!(r, device_id.to_string()),
            other => panic!("{other:?}"),
        }
        // `auth` always reaches the router: it is how a client moves its expiry.
        let auth = ClientMessage::Auth { token: "t".into() };
        assert_eq!(refuse_expired(&auth, 100, 100_000), None);
    }

    #[test]
    fn message_type_of_bad_messages() {
        assert_eq!(message_type(r#"{"type":"nope"}"#).as_deref(), Some("nope"));
        assert_eq!(message_type("not json"), None);
        assert_eq!(message_type(r#"{"type":5}"#), None);
    }
}
