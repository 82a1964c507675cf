//! Soak of vc-relay (issue 11): starts the release `vc-relay` (next to this binary, or
//! `--relay PATH`) on loopback and, for `--secs` (default 600), drives at once:
//!
//! - **TURN allocation churn** over UDP at `--turn-rate` cycles/s from `--turn-workers` sources
//!   (127.0.1.x): Allocate (401 challenge, then with long-term credentials minted as TURN REST
//!   credentials from the ticket key), CreatePermission, Refresh, Refresh lifetime 0 (delete);
//! - **an unauthenticated flood** of `--flood-rate` datagrams/s from `--flood-sources` sockets on
//!   127.2.x.y, five kinds in turn: Allocate without credentials, Allocate with a made-up user,
//!   MAC and nonce (the relay answers 438 before looking at the user), garbage, and Allocates
//!   with a *real* nonce (each source first asks for one: Allocate without credentials -> 401)
//!   signed for a valid TURN REST username with a wrong password, or for an unknown (expired)
//!   user, which reach MESSAGE-INTEGRITY verification. Every source reads back what the relay
//!   answers, counted per kind and error code; the total must stay within the relay's
//!   per-source budget for unauthenticated answers;
//! - **signaling churn**: `--cameras-per-sec` cameras connect with valid tokens, a viewer
//!   connects to each (Connect -> Session), both hold `--hold-ms` and leave.
//!
//! Every 10 s it prints the relay's RSS, open fds and CPU; after the churn stops and a short
//! settle it reads `/metrics` and prints the RSS slope after warm-up (least squares over the
//! samples after the first minute or first third), fds before and after, and the allocation and
//! signaling gauges. Exits non-zero if fds grew by more than `--fd-margin`, a gauge is not 0,
//! the allocation counters do not add up, no churn succeeded, the flood got more answers than
//! the per-source budget allows, or the real-nonce Allocates were not refused as bad credentials.
//!
//! ```sh
//! cargo build --release -p relay -p vc-benches --bins
//! target/release/soak            # 10 minutes; --secs 120 for a short run
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures_util::{SinkExt, StreamExt};
use relay::stun::address::decode_xor;
use relay::stun::integrity::long_term_key;
use relay::stun::{attr, errors, Class, Message, MessageBuilder, Method};
use relay::turn::auth::hmac_sha1;
use shared::signaling::{ClientMessage, ServerMessage};
use shared::ticket::{unix_now, Role, TicketKey};
use shared::Secret;
use tokio::net::{TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;
use vc_benches::{cpu_secs, metric, open_fds, rss_kib, start_relay};

const SECRET: &str = "soak-ticket-secret-at-least-32-bytes-long";
const REALM: &str = "vc.test";
const SAMPLE: Duration = Duration::from_secs(10);
/// The relay's budget of unauthenticated answers per source (set explicitly, so the check on
/// what the flood reads back does not depend on the relay's defaults).
const UNAUTH_RATE: u64 = 10;
const UNAUTH_BURST: u64 = 20;
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Args {
    relay: PathBuf,
    secs: u64,
    turn_rate: f64,
    turn_workers: usize,
    flood_rate: u64,
    flood_sources: usize,
    cameras_per_sec: f64,
    hold_ms: u64,
    settle_secs: u64,
    fd_margin: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        relay: std::env::current_exe()?.with_file_name("vc-relay"),
        secs: 600,
        turn_rate: 20.0,
        turn_workers: 8,
        flood_rate: 4000,
        flood_sources: 128,
        cameras_per_sec: 10.0,
        hold_ms: 2000,
        settle_secs: 5,
        fd_margin: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--relay" => a.relay = PathBuf::from(v),
            "--secs" => a.secs = v.parse()?,
            "--turn-rate" => a.turn_rate = v.parse()?,
            "--turn-workers" => a.turn_workers = v.parse()?,
            "--flood-rate" => a.flood_rate = v.parse()?,
            "--flood-sources" => a.flood_sources = v.parse()?,
            "--cameras-per-sec" => a.cameras_per_sec = v.parse()?,
            "--hold-ms" => a.hold_ms = v.parse()?,
            "--settle-secs" => a.settle_secs = v.parse()?,
            "--fd-margin" => a.fd_margin = v.parse()?,
            _ => bail!("unknown argument {k}"),
        }
    }
    ensure!(
        a.turn_workers > 0 && a.turn_workers < 250,
        "1..250 TURN workers"
    );
    ensure!(
        a.turn_rate > 0.0 && a.cameras_per_sec > 0.0,
        "rates must be > 0"
    );
    Ok(a)
}

/// What the load did, for the report.
#[derive(Default)]
struct Counts {
    turn_cycles: AtomicU64,
    turn_failures: AtomicU64,
    turn_retransmits: AtomicU64,
    flood_sent: AtomicU64,
    /// Per flood kind: datagrams sent.
    flood_kind_sent: [AtomicU64; FLOOD_KINDS],
    /// Per flood kind and answer (`ANSWERS`): what the flood read back.
    flood_answers: [[AtomicU64; ANSWERS.len()]; FLOOD_KINDS],
    /// Answers to the flood's nonce requests (before the flood starts).
    flood_nonce_answers: AtomicU64,
    /// From the first nonce request to the readers' end: the window the budget applies to.
    flood_window_ms: AtomicU64,
    sig_sessions: AtomicU64,
    sig_failures: AtomicU64,
}

/// The flood's kinds, in the order they take turns (index = kind, also tagged in the
/// transaction id so an answer can be counted against its request).
const FLOOD_KIND_NAMES: [&str; FLOOD_KINDS] = [
    "Allocate, no credentials",
    "Allocate, made-up user, MAC and nonce",
    "64 bytes of garbage",
    "Allocate, REST user, wrong password, real nonce",
    "Allocate, unknown user, real nonce",
];
const FLOOD_KINDS: usize = 5;
const GARBAGE: usize = 2;
const WRONG_PASSWORD: usize = 3;
const UNKNOWN_USER: usize = 4;
/// Error codes the flood's answers are counted by; the last slot is anything else.
const ANSWERS: [Option<u16>; 5] = [Some(400), Some(401), Some(438), Some(420), None];

/// Transaction ids: unique per process, no RNG needed.
fn tid() -> [u8; 12] {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&n.to_be_bytes());
    t[8..].copy_from_slice(&std::process::id().to_be_bytes());
    t
}

/// Long-term credentials a request is signed with: username, the relay's nonce, key.
struct Creds<'a> {
    user: &'a str,
    nonce: &'a [u8],
    key: &'a [u8; 16],
}

/// A request of `method` with `attrs` written by `build`, signed with `creds` if any, with
/// FINGERPRINT. The one place requests are signed: the churn and the flood both use it.
fn request_bytes(
    method: Method,
    t: &[u8; 12],
    creds: Option<Creds<'_>>,
    build: impl FnOnce(&mut MessageBuilder<'_>),
) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, Class::Request, method, t);
    build(&mut b);
    if let Some(c) = creds {
        b.attr(attr::USERNAME, c.user.as_bytes());
        b.attr(attr::REALM, REALM.as_bytes());
        b.attr(attr::NONCE, c.nonce);
        b.integrity(hmac_sha1(c.key));
    }
    b.fingerprint();
    buf
}

/// Sends `req` from `sock` (retransmitting up to 3 times, 1 s apart, each counted in
/// `retransmits`) and returns the answer to it.
async fn exchange(
    sock: &UdpSocket,
    server: SocketAddr,
    req: &[u8],
    tid: &[u8; 12],
    retransmits: &AtomicU64,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 1500];
    for attempt in 0..4 {
        if attempt > 0 {
            retransmits.fetch_add(1, Ordering::Relaxed);
        }
        sock.send_to(req, server).await?;
        let until = Instant::now() + Duration::from_secs(1);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(r) = tokio::time::timeout(left, sock.recv_from(&mut buf)).await else {
                break;
            };
            let (n, _) = r?;
            if Message::parse(&buf[..n]).is_ok_and(|m| m.transaction_id() == tid) {
                return Ok(buf[..n].to_vec());
            }
        }
    }
    bail!("no answer after 4 sends")
}

fn error_code(m: &Message<'_>) -> Option<u16> {
    m.attribute(attr::ERROR_CODE)
        .and_then(errors::decode_error_code)
}

/// One TURN client over UDP with long-term credentials.
struct TurnUdp {
    sock: UdpSocket,
    server: SocketAddr,
    user: String,
    key: [u8; 16],
    nonce: Vec<u8>,
    counts: Arc<Counts>,
}

impl TurnUdp {
    /// An authenticated request (`attrs` first); on 401/438 takes the fresh nonce and retries
    /// once (the first request of a 5-tuple has no nonce yet, so it goes unsigned).
    async fn request(
        &mut self,
        method: Method,
        build: impl Fn(&mut MessageBuilder<'_>),
    ) -> Result<Vec<u8>> {
        for _ in 0..2 {
            let t = tid();
            let creds = (!self.nonce.is_empty()).then_some(Creds {
                user: &self.user,
                nonce: &self.nonce,
                key: &self.key,
            });
            let req = request_bytes(method, &t, creds, &build);
            let raw = exchange(
                &self.sock,
                self.server,
                &req,
                &t,
                &self.counts.turn_retransmits,
            )
            .await?;
            let m = Message::parse(&raw)?;
            match (m.class(), error_code(&m)) {
                (Class::Success, _) => return Ok(raw),
                (_, Some(401 | 438)) => {
                    self.nonce = m.attribute(attr::NONCE).context("no NONCE")?.to_vec();
                }
                (_, code) => bail!("{method:?} failed: {code:?}"),
            }
        }
        bail!("{method:?}: refused with the relay's nonce")
    }

    /// Allocate (the first send has no credentials: 401), CreatePermission, Refresh, Refresh 0.
    async fn cycle(&mut self) -> Result<()> {
        self.nonce.clear();
        let raw = self
            .request(Method::Allocate, |b| {
                b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            })
            .await?;
        let m = Message::parse(&raw)?;
        decode_xor(
            m.attribute(attr::XOR_RELAYED_ADDRESS)
                .context("no relayed address")?,
            m.transaction_id(),
            attr::XOR_RELAYED_ADDRESS,
        )?;
        let peer = SocketAddr::from(([127, 0, 0, 1], 9));
        self.request(Method::CreatePermission, |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .await?;
        self.request(Method::Refresh, |b| {
            b.attr(attr::LIFETIME, &600u32.to_be_bytes());
        })
        .await?;
        self.request(Method::Refresh, |b| {
            b.attr(attr::LIFETIME, &0u32.to_be_bytes());
        })
        .await?;
        Ok(())
    }
}

/// Worker `w`: one cycle every `period` from 127.0.1.(w+1), a fresh socket (5-tuple) per cycle.
async fn turn_worker(
    w: usize,
    server: SocketAddr,
    key: TicketKey,
    period: Duration,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, w as u8 + 1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let (user, pass) = key.turn_credentials(&format!("soak{w}"), unix_now(), 3600);
        let sock = match UdpSocket::bind((ip, 0)).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("bind {ip}: {e}");
                counts.turn_failures.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let mut c = TurnUdp {
            sock,
            server,
            key: long_term_key(user.as_bytes(), REALM.as_bytes(), pass.as_bytes()),
            user,
            nonce: Vec::new(),
            counts: counts.clone(),
        };
        match c.cycle().await {
            Ok(()) => counts.turn_cycles.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                eprintln!("turn worker {w}: {e:#}");
                counts.turn_failures.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// What one flood source reads back: every answer counted by the kind its transaction id is
/// tagged with and its error code; the nonce of any 401/438 becomes the source's nonce, so the
/// real-nonce kinds stay past the nonce check for the whole run (nonces expire).
async fn flood_reader(sock: Arc<UdpSocket>, nonce: Arc<Mutex<Vec<u8>>>, counts: Arc<Counts>) {
    let mut buf = vec![0u8; 1500];
    while let Ok((n, _)) = sock.recv_from(&mut buf).await {
        let Ok(m) = Message::parse(&buf[..n]) else {
            continue;
        };
        let kind = usize::from(m.transaction_id()[11]);
        if kind >= FLOOD_KINDS {
            continue;
        }
        let code = error_code(&m);
        let slot = ANSWERS
            .iter()
            .position(|a| a.is_some() && *a == code)
            .unwrap_or(ANSWERS.len() - 1);
        counts.flood_answers[kind][slot].fetch_add(1, Ordering::Relaxed);
        if let Some(fresh) = m.attribute(attr::NONCE) {
            // The lock is held for a copy; readers and the sender never wait on each other long.
            *nonce.lock().unwrap_or_else(|e| e.into_inner()) = fresh.to_vec();
        }
    }
}

/// Unauthenticated datagrams from `sources` sockets at `rate` per second, the kinds of
/// `FLOOD_KIND_NAMES` in turn. Each source first gets a real nonce (401 to an Allocate without
/// credentials); the answers are read back by `flood_reader`.
async fn flood(
    server: SocketAddr,
    key: TicketKey,
    secs: u64,
    sources: usize,
    rate: u64,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> Result<()> {
    let t0 = Instant::now();
    let mut socks = Vec::with_capacity(sources);
    let mut nonces = Vec::with_capacity(sources);
    let mut readers = tokio::task::JoinSet::new();
    let nonce_retransmits = AtomicU64::new(0);
    for i in 0..sources {
        let ip = Ipv4Addr::new(127, 2, (i / 250) as u8, (i % 250) as u8 + 1);
        let sock = Arc::new(UdpSocket::bind((ip, 0)).await?);
        let t = tid();
        let req = request_bytes(Method::Allocate, &t, None, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        let raw = exchange(&sock, server, &req, &t, &nonce_retransmits).await?;
        let m = Message::parse(&raw)?;
        ensure!(
            error_code(&m) == Some(401),
            "nonce request from {ip} not answered 401"
        );
        counts.flood_nonce_answers.fetch_add(1, Ordering::Relaxed);
        let nonce = Arc::new(Mutex::new(
            m.attribute(attr::NONCE)
                .context("401 without NONCE")?
                .to_vec(),
        ));
        readers.spawn(flood_reader(sock.clone(), nonce.clone(), counts.clone()));
        socks.push(sock);
        nonces.push(nonce);
    }
    // A valid TURN REST username (unexpired for the whole run) signed with the wrong password:
    // the relay derives the real key and the MAC check fails. "1:nobody" is a ticket that
    // expired in 1970: the relay finds no key for it.
    let (rest_user, _) = key.turn_credentials("soak-flood", unix_now(), secs + 3600);
    let rest_key = long_term_key(rest_user.as_bytes(), REALM.as_bytes(), b"wrong");
    let unknown_user = "1:nobody";
    let unknown_key = long_term_key(unknown_user.as_bytes(), REALM.as_bytes(), b"wrong");
    let forged_nonce = [b'0'; 32];
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut n = 0u64;
    let mut buf = Vec::new();
    let allocate = |b: &mut MessageBuilder<'_>| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    };
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for _ in 0..per_tick {
            let src = (n as usize) % socks.len();
            // Source-major order: consecutive datagrams go to different sources, and each
            // source sees every kind in turn.
            let kind = ((n as usize) / socks.len()) % FLOOD_KINDS;
            let mut t = tid();
            t[11] = kind as u8;
            let nonce = nonces[src]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let creds = |user, nonce, key| Some(Creds { user, nonce, key });
            buf = match kind {
                0 => request_bytes(Method::Allocate, &t, None, allocate),
                1 => request_bytes(
                    Method::Allocate,
                    &t,
                    creds(unknown_user, &forged_nonce, &unknown_key),
                    allocate,
                ),
                GARBAGE => {
                    buf.clear();
                    buf.extend((0..64u64).map(|i| (n.wrapping_mul(31).wrapping_add(i * 7)) as u8));
                    buf
                }
                WRONG_PASSWORD => request_bytes(
                    Method::Allocate,
                    &t,
                    creds(&rest_user, &nonce, &rest_key),
                    allocate,
                ),
                _ => request_bytes(
                    Method::Allocate,
                    &t,
                    creds(unknown_user, &nonce, &unknown_key),
                    allocate,
                ),
            };
            // Full buffers or ICMP errors are part of a flood; keep going.
            if socks[src].send_to(&buf, server).await.is_ok() {
                counts.flood_kind_sent[kind].fetch_add(1, Ordering::Relaxed);
            }
            n += 1;
        }
        counts.flood_sent.store(n, Ordering::Relaxed);
    }
    // Late answers still count; then the readers go.
    tokio::time::sleep(Duration::from_secs(1)).await;
    readers.abort_all();
    counts
        .flood_window_ms
        .store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
    Ok(())
}

async fn connect(url: &str, token: &str) -> Result<Ws> {
    let (mut ws, _) = match tokio_tungstenite::connect_async(format!("{url}?token={token}")).await {
        Ok(c) => c,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => bail!(
            "HTTP {}: {}",
            r.status(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default())
        ),
        Err(e) => return Err(e.into()),
    };
    match next_msg(&mut ws).await? {
        ServerMessage::Welcome { .. } => Ok(ws),
        other => bail!("expected welcome, got {other:?}"),
    }
}

async fn next_msg(ws: &mut Ws) -> Result<ServerMessage> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .context("no message within 5 s")?;
        match m.context("closed")?? {
            WsMessage::Text(t) => return Ok(serde_json::from_str(&t)?),
            WsMessage::Close(f) => bail!("closed: {f:?}"),
            _ => continue,
        }
    }
}

/// Closes `ws` and reads until the relay's close (2 s at most).
async fn leave(mut ws: Ws) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// One camera with one viewer: connect both, open a session, hold, leave.
async fn camera_visit(url: &str, key: &TicketKey, hold: Duration) -> Result<()> {
    let dev = Uuid::new_v4();
    let now = unix_now();
    let (cam_tok, _) = key.mint_signaling(&dev.to_string(), Role::Camera, vec![dev], now, 600);
    let mut cam = connect(url, &cam_tok).await?;
    let (viewer_tok, _) = key.mint_signaling("soak-viewer", Role::Viewer, vec![dev], now, 600);
    let mut viewer = connect(url, &viewer_tok).await?;
    viewer
        .send(WsMessage::text(serde_json::to_string(
            &ClientMessage::Connect { device_id: dev },
        )?))
        .await?;
    match next_msg(&mut viewer).await? {
        ServerMessage::Session { .. } => {}
        other => bail!("expected session, got {other:?}"),
    }
    // Hold both, reading whatever the relay sends (the camera hears of the session).
    let _ = tokio::time::timeout(hold, async {
        loop {
            tokio::select! {
                m = cam.next() => if !matches!(m, Some(Ok(_))) { break },
                m = viewer.next() => if !matches!(m, Some(Ok(_))) { break },
            }
        }
    })
    .await;
    leave(viewer).await;
    leave(cam).await;
    Ok(())
}

async fn signaling_churn(
    url: String,
    key: TicketKey,
    per_sec: f64,
    hold: Duration,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
    let mut visits = tokio::task::JoinSet::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let (url, key, counts) = (url.clone(), key.clone(), counts.clone());
        visits.spawn(async move {
            match camera_visit(&url, &key, hold).await {
                Ok(()) => counts.sig_sessions.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    eprintln!("signaling: {e:#}");
                    counts.sig_failures.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
        while visits.try_join_next().is_some() {}
    }
    while visits.join_next().await.is_some() {}
}

/// Least-squares slope of `(x, y)` points.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

async fn run(a: Args) -> Result<bool> {
    let relay = start_relay(
        &a.relay,
        &[
            ("VC_TICKET_SECRET", SECRET),
            ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
            ("VC_DRAIN_SECS", "0"),
            ("VC_SIGNALING__LISTEN", "127.0.0.1:0"),
            ("VC_SIGNALING__CONTROL_URL", ""),
            // Every signaling connection comes from 127.0.0.1.
            ("VC_SIGNALING__MAX_CONNECTIONS_PER_IP", "100000"),
            ("VC_TURN__LISTEN", "127.0.0.1:0"),
            ("VC_TURN__RELAY_ADDRESS", "127.0.0.1"),
            ("VC_TURN__REALM", REALM),
            ("VC_TURN__ALLOW_LOOPBACK_PEERS", "true"),
            ("VC_TURN__UNAUTH_RATE", &UNAUTH_RATE.to_string()),
            ("VC_TURN__UNAUTH_BURST", &UNAUTH_BURST.to_string()),
            ("RUST_LOG", "warn"),
        ],
    )
    .await?;
    let pid = relay.pid;
    let turn: SocketAddr = relay.addr("turn-udp")?.parse()?;
    let ws_url = format!("ws://{}/ws", relay.addr("signaling")?);
    let metrics_url = format!("http://{}/metrics", relay.addr("admin")?);
    let key = TicketKey::new(&Secret::new(SECRET));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fd_start = open_fds(pid);
    let rss_start = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut load = tokio::task::JoinSet::new();
    let period = Duration::from_secs_f64(a.turn_workers as f64 / a.turn_rate);
    for w in 0..a.turn_workers {
        load.spawn(turn_worker(
            w,
            turn,
            key.clone(),
            period,
            stop.clone(),
            counts.clone(),
        ));
    }
    let (s, c, k) = (stop.clone(), counts.clone(), key.clone());
    let (sources, rate, secs) = (a.flood_sources, a.flood_rate, a.secs);
    load.spawn(async move {
        if let Err(e) = flood(turn, k, secs, sources, rate, s, c).await {
            eprintln!("flood: {e:#}");
        }
    });
    load.spawn(signaling_churn(
        ws_url,
        key.clone(),
        a.cameras_per_sec,
        Duration::from_millis(a.hold_ms),
        stop.clone(),
        counts.clone(),
    ));

    println!(
        "soak: {} s; TURN {} cycles/s from {} sources, flood {} datagrams/s from {} sources, \
         {} cameras/s (+1 viewer each, held {} ms); relay pid {pid}, {rss_start} KiB, {fd_start} fds\n",
        a.secs, a.turn_rate, a.turn_workers, a.flood_rate, a.flood_sources, a.cameras_per_sec,
        a.hold_ms
    );
    println!("| t s | RSS KiB | open fds | relay CPU % | TURN cycles | TURN failures | flood sent | sessions | signaling failures |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let t0 = Instant::now();
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let mut cpu0 = cpu_secs(pid);
    let mut next = t0 + SAMPLE;
    let end = t0 + Duration::from_secs(a.secs);
    while next <= end {
        tokio::time::sleep_until(next.into()).await;
        let t = t0.elapsed().as_secs_f64();
        let rss = rss_kib(pid);
        let cpu = cpu_secs(pid);
        let ld = |c: &AtomicU64| c.load(Ordering::Relaxed);
        println!(
            "| {t:.0} | {rss} | {} | {:.1} | {} | {} | {} | {} | {} |",
            open_fds(pid),
            (cpu - cpu0) / SAMPLE.as_secs_f64() * 100.0,
            ld(&counts.turn_cycles),
            ld(&counts.turn_failures),
            ld(&counts.flood_sent),
            ld(&counts.sig_sessions),
            ld(&counts.sig_failures),
        );
        cpu0 = cpu;
        samples.push((t, rss as f64));
        next += SAMPLE;
    }
    tokio::time::sleep_until(end.into()).await;
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    // The allocations gauge is updated every second; closes need a moment to be noticed.
    tokio::time::sleep(Duration::from_secs(a.settle_secs)).await;

    let fd_end = open_fds(pid);
    let rss_end = rss_kib(pid);
    let http = shared::tls::http_client_builder(None)
        .map_err(anyhow::Error::msg)?
        .build()?;
    let text = http.get(&metrics_url).send().await?.text().await?;
    let m = |name: &str| metric(&text, name).unwrap_or(f64::NAN);
    let active = m("vc_relay_turn_allocations_active");
    let created = m("vc_relay_turn_allocations_created_total");
    let deleted = m("vc_relay_turn_allocations_deleted_total");
    let expired = m("vc_relay_turn_allocations_expired_total");
    let sig = m("vc_relay_signaling_connections");

    let warm = (a.secs as f64 / 3.0).min(60.0);
    let after: Vec<(f64, f64)> = samples
        .iter()
        .filter(|p| p.0 > warm)
        .map(|p| (p.0 / 60.0, p.1))
        .collect();
    let slope = slope(&after);
    let ld = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!("\n| result | value |\n| --- | ---: |");
    match slope {
        Some(s) => println!(
            "| RSS slope after {warm:.0} s warm-up ({} samples) | {s:+.1} KiB/min |",
            after.len()
        ),
        None => println!("| RSS slope | too few samples after {warm:.0} s warm-up |"),
    }
    println!("| RSS start / end (after settle) | {rss_start} / {rss_end} KiB |");
    println!("| open fds start / end (after settle) | {fd_start} / {fd_end} |");
    println!(
        "| TURN cycles ok / failed / retransmits | {} / {} / {} |",
        ld(&counts.turn_cycles),
        ld(&counts.turn_failures),
        ld(&counts.turn_retransmits)
    );
    println!("| flood datagrams sent | {} |", ld(&counts.flood_sent));
    println!(
        "| signaling sessions ok / failed | {} / {} |",
        ld(&counts.sig_sessions),
        ld(&counts.sig_failures)
    );
    println!(
        "| allocations created / deleted / expired (metrics) | {created} / {deleted} / {expired} |"
    );
    let flood_seen = [
        "vc_relay_turn_auth_failures_total",
        "vc_relay_turn_malformed_dropped_total",
        "vc_relay_turn_unauth_limited_dropped_total",
    ]
    .map(|n| metric(&text, n).map_or("-".to_owned(), |v| v.to_string()));
    println!(
        "| flood as the relay saw it: auth failures / malformed dropped / unauth rate-limited dropped (metrics) | {} |",
        flood_seen.join(" / ")
    );
    let auth_failures = m("vc_relay_turn_auth_failures_total");
    let window = ld(&counts.flood_window_ms) as f64 / 1000.0;
    let answered: u64 = counts.flood_answers.iter().flatten().map(ld).sum::<u64>()
        + ld(&counts.flood_nonce_answers);
    // Every unauthenticated answer to a source is charged to its budget: burst + rate per second.
    let budget = a.flood_sources as f64 * (UNAUTH_BURST as f64 + UNAUTH_RATE as f64 * window);
    println!(
        "| flood answers read back (incl. {} nonce requests) / per-source budget over {window:.0} s | {answered} / {budget:.0} |",
        ld(&counts.flood_nonce_answers)
    );
    println!("\n| flood kind | sent | answered 400 | 401 | 438 | 420 | other | not answered |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (k, name) in FLOOD_KIND_NAMES.iter().enumerate() {
        let sent = ld(&counts.flood_kind_sent[k]);
        let ans = counts.flood_answers[k].each_ref().map(ld);
        let total: u64 = ans.iter().sum();
        println!(
            "| {name} | {sent} | {} | {} | {} | {} | {} | {} |",
            ans[0],
            ans[1],
            ans[2],
            ans[3],
            ans[4],
            sent.saturating_sub(total)
        );
    }
    println!();
    println!("| `vc_relay_turn_allocations_active` at end | {active} |");
    println!("| `vc_relay_signaling_connections` at end | {sig} |");

    let mut ok = true;
    let mut check = |pass: bool, what: &str| {
        if !pass {
            println!("FAIL: {what}");
            ok = false;
        }
    };
    check(
        fd_end <= fd_start + a.fd_margin,
        "open fds grew by more than --fd-margin",
    );
    check(active == 0.0, "allocations active != 0 at the end");
    check(sig == 0.0, "signaling connections != 0 at the end");
    check(
        created == deleted + expired + active,
        "allocations created != deleted + expired + active",
    );
    check(ld(&counts.turn_cycles) > 0, "no TURN cycle succeeded");
    check(
        ld(&counts.sig_sessions) > 0,
        "no signaling session succeeded",
    );
    check(
        answered as f64 <= budget,
        "the flood got more answers than the per-source budget allows",
    );
    let real_nonce = [WRONG_PASSWORD, UNKNOWN_USER];
    let real_nonce_sent: u64 = real_nonce
        .iter()
        .map(|&k| ld(&counts.flood_kind_sent[k]))
        .sum();
    check(
        real_nonce.iter().all(|&k| {
            let ans = &counts.flood_answers[k];
            ld(&ans[1]) > 0 && ld(&ans[2]) == 0
        }),
        "real-nonce Allocates not answered 401 (or answered 438: the nonce was not taken)",
    );
    // Each real-nonce Allocate the relay received failed verification; loopback may drop a
    // few datagrams under load, so the count is at most what was sent.
    check(
        auth_failures > 0.0 && auth_failures <= real_nonce_sent as f64,
        "auth failures (metrics) not in 1..=real-nonce Allocates sent",
    );
    if ok {
        println!("\nsoak: ok");
    }
    drop(relay);
    Ok(ok)
}

fn main() -> Result<()> {
    vc_benches::raise_fd_limit();
    let a = args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if !rt.block_on(run(a))? {
        std::process::exit(1);
    }
    Ok(())
}
