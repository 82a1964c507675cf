//! Load driver for vc-relay's signaling plane (issue 5). Starts a `vc-relay` (the binary next to
//! this one, or `--relay PATH`) on loopback, then:
//!
//! 1. **idle**: opens N camera connections (each its own device) and holds them, reporting the
//!    relay's RSS (from `/proc/<pid>/status`) and CPU (from `/proc/<pid>/stat`) at each N;
//! 2. **pairs**: M viewer<->camera pairs, the viewer sending `offer`/`candidate` with ~200-byte
//!    payloads and the camera answering each with `answer`/`candidate` (one round trip = two
//!    routed messages), closed loop (`--window` in flight per viewer) and open loop at fixed
//!    offered rates of routed messages/s. Reports routed msgs/s, routed msgs per relay
//!    CPU-second and HDR round-trip percentiles (open loop measures from the scheduled send time,
//!    so queueing is not hidden).
//!
//! `--baseline ../shared/signaling-baseline` runs the Node.js `ws` reference router through
//! both phases too, in the same command, with the same driver (a small adapter speaks its
//! protocol: `?role=&id=` instead of a token, `connected` instead of `session`).
//!
//! ```sh
//! cargo build --release -p relay -p vc-benches --bins
//! target/release/signaling_load --idle 1000,5000,10000 --pairs 100,1000 \
//!     --rates 20000,50000,100000 --secs 5
//! ```

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use shared::signaling::{ClientMessage, IceCandidate, ServerMessage};
use shared::ticket::{unix_now, Role, TicketKey};
use shared::Secret;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

const SECRET: &str = "signaling-load-secret-at-least-32-bytes";
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Args {
    relay: PathBuf,
    idle: Vec<usize>,
    pairs: Vec<usize>,
    rates: Vec<u64>,
    secs: u64,
    window: usize,
    /// `--cluster nats://...`: pairs run twice on two clustered relays, both ends on one node
    /// and then camera on node A with viewer on node B (routed over NATS).
    cluster: Option<String>,
    /// `--baseline DIR`: the Node.js `ws` reference router (`../shared/signaling-baseline`),
    /// copied to a temporary directory and run beside vc-relay in the same command.
    baseline: Option<PathBuf>,
}

fn parse_list<T: std::str::FromStr>(s: &str) -> Result<Vec<T>> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().map_err(|_| anyhow::anyhow!("bad number {x}")))
        .collect()
}

fn args() -> Result<Args> {
    let exe = std::env::current_exe()?;
    let mut a = Args {
        relay: exe.with_file_name("vc-relay"),
        idle: vec![1000, 5000, 10000],
        pairs: vec![100, 1000],
        rates: vec![20_000, 50_000, 100_000],
        secs: 5,
        window: 4,
        cluster: None,
        baseline: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--relay" => a.relay = PathBuf::from(v),
            "--idle" => a.idle = parse_list(&v)?,
            "--pairs" => a.pairs = parse_list(&v)?,
            "--rates" => a.rates = parse_list(&v)?,
            "--secs" => a.secs = v.parse()?,
            "--window" => a.window = v.parse()?,
            "--cluster" => a.cluster = Some(v),
            "--baseline" => a.baseline = Some(PathBuf::from(v)),
            _ => bail!("unknown argument {k}"),
        }
    }
    Ok(a)
}

/// Which router a [`Relay`] is: vc-relay, or the Node.js reference (its own small protocol).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    VcRelay,
    NodeBaseline,
}

/// The server under test.
struct Relay {
    child: Child,
    pid: u32,
    url: String,
    proto: Proto,
    /// The baseline's copy (removed on drop).
    _dir: Option<tempfile::TempDir>,
}

impl Relay {
    /// Starts one; `cluster` = `(node id, NATS URL)` makes it a cluster node.
    async fn start(path: &std::path::Path, cluster: Option<(&str, &str)>) -> Result<Self> {
        let mut env = vec![
            ("VC_TICKET_SECRET", SECRET),
            ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
            ("VC_SIGNALING__LISTEN", "127.0.0.1:0"),
            ("VC_SIGNALING__CONTROL_URL", ""),
            ("VC_SIGNALING__RATE_PER_SEC", "1000000"),
            ("VC_SIGNALING__RATE_BURST", "1000000"),
            ("VC_SIGNALING__OUTBOUND_QUEUE", "4096"),
            // Every load connection comes from 127.0.0.1.
            ("VC_SIGNALING__MAX_CONNECTIONS_PER_IP", "1000000"),
            ("VC_TURN__LISTEN", "127.0.0.1:0"),
            ("RUST_LOG", "warn"),
        ];
        if let Some((node, nats)) = cluster {
            env.push(("VC_CLUSTER__NODE_ID", node));
            env.push(("VC_CLUSTER__NATS_URL", nats));
        }
        let p = vc_benches::start_relay(path, &env).await?;
        let url = format!("ws://{}/ws", p.addr("signaling")?);
        Ok(Self {
            child: p.child,
            pid: p.pid,
            url,
            proto: Proto::VcRelay,
            _dir: None,
        })
    }

    /// Starts the Node.js reference router from a copy of `src` (the kit is read-only).
    async fn start_baseline(src: &std::path::Path) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.display()))
            .arg(dir.path())
            .status()?
            .success();
        ensure_ok(ok, "copy the baseline kit")?;
        let ok = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent"])
            .current_dir(dir.path())
            .status()?
            .success();
        ensure_ok(ok, "npm ci in the baseline kit")?;
        let mut child = Command::new("node")
            .arg("server.js")
            .current_dir(dir.path())
            .env("PORT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawn node server.js")?;
        let pid = child.id().context("pid")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut url = None;
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("listening ") {
                url = rest.split_whitespace().next().map(str::to_owned);
                break;
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            pid,
            url: url.context("baseline printed no listening line")?,
            proto: Proto::NodeBaseline,
            _dir: Some(dir),
        })
    }

    /// Connects a camera for `dev` and waits for the server's welcome.
    async fn connect_camera(&self, key: &TicketKey, dev: Uuid) -> Result<Ws> {
        match self.proto {
            Proto::VcRelay => {
                let tok = token(key, Role::Camera, &dev.to_string(), vec![dev]);
                connect(&self.url, &tok).await
            }
            Proto::NodeBaseline => {
                let url = format!("{}?role=camera&id={dev}", self.url);
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
                loop {
                    match ws.next().await.context("closed")?? {
                        Message::Text(t) if t.contains("welcome") => return Ok(ws),
                        Message::Text(t) => bail!("expected welcome, got {t}"),
                        _ => continue,
                    }
                }
            }
        }
    }

    /// Connects a viewer allowed to watch `dev` and waits for the server's welcome.
    async fn connect_viewer(&self, key: &TicketKey, dev: Uuid) -> Result<Ws> {
        match self.proto {
            Proto::VcRelay => {
                connect(&self.url, &token(key, Role::Viewer, "load", vec![dev])).await
            }
            Proto::NodeBaseline => {
                let url = format!("{}?role=viewer&id=viewer-{dev}", self.url);
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
                loop {
                    match ws.next().await.context("closed")?? {
                        Message::Text(t) if t.contains("welcome") => return Ok(ws),
                        Message::Text(t) => bail!("expected welcome, got {t}"),
                        _ => continue,
                    }
                }
            }
        }
    }

    /// Resident set size, KiB.
    fn rss_kib(&self) -> u64 {
        vc_benches::rss_kib(self.pid)
    }

    /// User + system CPU time, seconds.
    fn cpu_secs(&self) -> f64 {
        vc_benches::cpu_secs(self.pid)
    }
}

fn token(key: &TicketKey, role: Role, sub: &str, devices: Vec<Uuid>) -> String {
    key.mint_signaling(sub, role, devices, unix_now(), 3600).0
}

async fn connect(url: &str, token: &str) -> Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?token={token}")).await?;
    match next_msg(&mut ws).await? {
        ServerMessage::Welcome { .. } => Ok(ws),
        other => bail!("expected welcome, got {other:?}"),
    }
}

async fn next_msg(ws: &mut Ws) -> Result<ServerMessage> {
    loop {
        match ws.next().await.context("closed")?? {
            Message::Text(t) => return Ok(serde_json::from_str(&t)?),
            Message::Close(f) => bail!("closed: {f:?}"),
            _ => continue,
        }
    }
}

fn ensure_ok(ok: bool, what: &str) -> Result<()> {
    if !ok {
        bail!("{what} failed");
    }
    Ok(())
}

/// The idle phase against vc-relay, then (with `--baseline`) against the Node.js router.
async fn idle(args: &Args, key: &TicketKey) -> Result<()> {
    let relay = Relay::start(&args.relay, None).await?;
    idle_on(relay, "vc-relay", args, key).await?;
    if let Some(dir) = &args.baseline {
        let node = Relay::start_baseline(dir).await?;
        idle_on(node, "Node.js ws baseline", args, key).await?;
    }
    Ok(())
}

async fn idle_on(relay: Relay, name: &str, args: &Args, key: &TicketKey) -> Result<()> {
    let relay = Arc::new(relay);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = relay.rss_kib();
    println!("\n## {name}: idle camera connections (RSS at start: {base} KiB)\n");
    println!("| connections | relay RSS MiB | above empty, KiB/conn | relay CPU while idle (5 s) | open time s |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    let mut held: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    for &n in &args.idle {
        let t0 = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(256));
        let mut opening = Vec::new();
        for _ in held.len()..n {
            let permit = sem.clone().acquire_owned().await?;
            let dev = Uuid::new_v4();
            let relay = relay.clone();
            let key = key.clone();
            let stop = stop.clone();
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            held.push(tokio::spawn(async move {
                let ws = relay.connect_camera(&key, dev).await;
                drop(permit);
                let mut ws = match ws {
                    Ok(ws) => {
                        let _ = ready_tx.send(Ok(()));
                        ws
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Hold: answer pings (tungstenite does) until told to stop.
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                        Ok(Some(Ok(_))) | Err(_) => {}
                        _ => return,
                    }
                }
            }));
            opening.push(ready_rx);
        }
        for r in opening {
            r.await??;
        }
        let open_secs = t0.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu0 = relay.cpu_secs();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let cpu = (relay.cpu_secs() - cpu0) / 5.0 * 100.0;
        let rss = relay.rss_kib();
        println!(
            "| {n} | {:.1} | {:.2} | {cpu:.1} % | {open_secs:.1} |",
            rss as f64 / 1024.0,
            (rss.saturating_sub(base)) as f64 / n as f64
        );
    }
    stop.store(true, Ordering::Relaxed);
    for h in held {
        let _ = h.await;
    }
    drop(relay);
    Ok(())
}

/// A ~200-byte SDP fragment carrying a sequence number.
fn sdp(seq: u64) -> String {
    format!(
        "v=0\r\no=- {seq} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijklmn\r\na=fingerprint:sha-256 AB:CD:EF\r\n"
    )
}

fn candidate(seq: u64) -> IceCandidate {
    IceCandidate {
        candidate: format!(
            "candidate:{seq} 1 udp 2122260223 192.168.1.50 54321 typ host generation 0 ufrag abcd network-id 1 network-cost 10 foundation {seq}"
        ),
        sdp_mid: Some("0".into()),
        sdp_mline_index: Some(0),
        username_fragment: Some("abcd".into()),
    }
}

/// Camera side: answers every offer with an answer and every candidate with a candidate,
/// batching replies into one flush per burst of ready messages.
async fn echo_camera(mut ws: Ws, stop: Arc<AtomicBool>) {
    let reply = |m: ServerMessage| -> Option<String> {
        let c = match m {
            ServerMessage::Offer { session_id, sdp } => ClientMessage::Answer { session_id, sdp },
            ServerMessage::Candidate {
                session_id,
                candidate,
            } => ClientMessage::Candidate {
                session_id,
                candidate,
            },
            _ => return None,
        };
        serde_json::to_string(&c).ok()
    };
    while !stop.load(Ordering::Relaxed) {
        let first = match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Err(_) => continue,
            _ => return,
        };
        let mut batch = vec![first];
        while batch.len() < 64 {
            match ws.next().now_or_never() {
                Some(Some(Ok(m))) => batch.push(m),
                _ => break,
            }
        }
        for m in batch {
            if let Message::Text(t) = m {
                if let Some(r) = serde_json::from_str(&t).ok().and_then(reply) {
                    if ws.feed(Message::text(r)).await.is_err() {
                        return;
                    }
                }
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

struct Pair {
    viewer: Ws,
    session: Uuid,
}

/// `m` pairs: cameras on `cam_relay`, viewers on `viewer_relay` (the same or another node).
async fn setup_pairs(
    cam_relay: &Relay,
    viewer_relay: &Relay,
    key: &TicketKey,
    m: usize,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<Pair>> {
    let mut pairs = Vec::with_capacity(m);
    for _ in 0..m {
        let dev = Uuid::new_v4();
        let cam = cam_relay.connect_camera(key, dev).await?;
        tokio::spawn(echo_camera(cam, stop.clone()));
        let mut viewer = viewer_relay.connect_viewer(key, dev).await?;
        // Across nodes the directory entry may still be on its way: retry a little.
        let mut tries = 0;
        let session = loop {
            viewer
                .send(Message::text(serde_json::to_string(
                    &ClientMessage::Connect { device_id: dev },
                )?))
                .await?;
            let reply = loop {
                match viewer.next().await.context("closed")?? {
                    Message::Text(t) => break serde_json::from_str::<serde_json::Value>(&t)?,
                    Message::Close(f) => bail!("closed: {f:?}"),
                    _ => continue,
                }
            };
            // vc-relay answers `session`, the Node.js router `connected`; both name it.
            match reply["type"].as_str() {
                Some("session" | "connected") => {
                    break Uuid::parse_str(reply["session_id"].as_str().context("session_id")?)?
                }
                Some("error") if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => bail!("expected a session, got {reply}"),
            }
        };
        pairs.push(Pair { viewer, session });
    }
    Ok(pairs)
}

fn request(session_id: Uuid, seq: u64) -> String {
    let m = if seq.is_multiple_of(2) {
        ClientMessage::Offer {
            session_id,
            sdp: sdp(seq),
        }
    } else {
        ClientMessage::Candidate {
            session_id,
            candidate: candidate(seq),
        }
    };
    // Invariant: plain strings and uuids serialise.
    serde_json::to_string(&m).expect("serialise")
}

struct Totals {
    /// Round trips from the scheduled send time (open loop: the driver's lateness counts).
    hist: Mutex<Histogram<u64>>,
    /// The same round trips from the moment the request was handed to the socket: what the
    /// router and the network add, without the driver's own timer lateness (tokio's timer
    /// has 1 ms resolution, so a scheduled send goes out up to ~1 ms late).
    from_send: Mutex<Histogram<u64>>,
    done: AtomicU64,
}

/// One viewer: sends requests (closed loop with `window` in flight, or open loop at `per_sec`),
/// measures round trips until `deadline`, then drains outstanding replies (up to 2 s).
async fn run_viewer(
    pair: Pair,
    window: usize,
    per_sec: Option<f64>,
    deadline: Instant,
    totals: Arc<Totals>,
) {
    let (mut tx, mut rx) = pair.viewer.split();
    // (scheduled, handed to the socket) per request in flight.
    let sent: Arc<Mutex<VecDeque<(Instant, Instant)>>> = Arc::new(Mutex::new(VecDeque::new()));
    let inflight = Arc::new(tokio::sync::Semaphore::new(window));
    let session = pair.session;
    let sent_w = sent.clone();
    let inflight_w = inflight.clone();
    let sender = tokio::spawn(async move {
        let mut seq = 0u64;
        match per_sec {
            None => {
                while Instant::now() < deadline {
                    let Ok(p) = inflight_w.acquire().await else {
                        return;
                    };
                    p.forget();
                    let now = Instant::now();
                    sent_w.lock().map(|mut q| q.push_back((now, now))).ok();
                    if tx.send(Message::text(request(session, seq))).await.is_err() {
                        return;
                    }
                    seq += 1;
                }
            }
            Some(rate) => {
                let period = Duration::from_secs_f64(1.0 / rate);
                let start = Instant::now()
                    + Duration::from_secs_f64(rand_phase(session) * period.as_secs_f64());
                let mut next = start;
                while next < deadline {
                    tokio::time::sleep_until(next.into()).await;
                    // Send everything due (catch up after a late wake-up), one flush.
                    let now = Instant::now();
                    while next <= now && next < deadline {
                        let at = Instant::now();
                        sent_w.lock().map(|mut q| q.push_back((next, at))).ok();
                        if tx.feed(Message::text(request(session, seq))).await.is_err() {
                            return;
                        }
                        seq += 1;
                        next += period;
                    }
                    if tx.flush().await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let drain_until = deadline + Duration::from_secs(2);
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut local_from_send = local.clone();
    let mut done = 0u64;
    loop {
        let remaining = drain_until.saturating_duration_since(Instant::now());
        let m = match tokio::time::timeout(remaining, rx.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            _ => break,
        };
        let is_reply = m.contains("\"type\":\"answer\"") || m.contains("\"type\":\"candidate\"");
        if !is_reply {
            continue;
        }
        let t = sent.lock().ok().and_then(|mut q| q.pop_front());
        if let Some((t, at)) = t {
            let now = Instant::now();
            if now <= deadline + Duration::from_millis(2000) {
                let _ = local.record(now.duration_since(t).as_micros().max(1) as u64);
                let _ = local_from_send.record(now.duration_since(at).as_micros().max(1) as u64);
                done += 1;
            }
        }
        if per_sec.is_none() {
            inflight.add_permits(1);
        }
        if Instant::now() >= deadline
            && sent.lock().map(|q| q.is_empty()).unwrap_or(true)
            && sender.is_finished()
        {
            break;
        }
    }
    sender.abort();
    totals.done.fetch_add(done, Ordering::Relaxed);
    if let Ok(mut h) = totals.hist.lock() {
        let _ = h.add(&local);
    }
    if let Ok(mut h) = totals.from_send.lock() {
        let _ = h.add(&local_from_send);
    }
}

/// Spreads open-loop viewers' send phases over the period.
fn rand_phase(id: Uuid) -> f64 {
    (id.as_u128() % 1000) as f64 / 1000.0
}

async fn pairs(args: &Args, key: &TicketKey) -> Result<()> {
    println!("\n## viewer<->camera pairs (one round trip = 2 routed messages, ~200-byte payloads, {} s each)\n", args.secs);
    println!("| pairs | placement | mode | offered msgs/s | routed msgs/s | relay CPU | routed msgs per relay CPU-s | p50 ms | p99 ms | p99.9 ms | p50 from send ms | p99 from send ms |");
    println!("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut placements: Vec<&str> = if args.cluster.is_some() {
        vec!["same-node", "cross-node"]
    } else {
        vec!["single"]
    };
    // The reference router under the same load, in the same command.
    if args.baseline.is_some() {
        placements.push("Node.js baseline");
    }
    for &m in &args.pairs {
        let mut modes: Vec<Option<u64>> = vec![None];
        modes.extend(args.rates.iter().map(|r| Some(*r)));
        for mode in modes {
            for &placement in &placements {
                // Fresh relays per run: nothing left over from the previous one.
                let nats = args.cluster.as_deref();
                let (relay, other) = match (&args.baseline, placement) {
                    (Some(dir), "Node.js baseline") => (Relay::start_baseline(dir).await?, None),
                    _ => (
                        Relay::start(&args.relay, nats.map(|n| ("load-a", n))).await?,
                        match nats {
                            Some(n) => Some(Relay::start(&args.relay, Some(("load-b", n))).await?),
                            None => None,
                        },
                    ),
                };
                let viewer_relay = match (&other, placement) {
                    (Some(b), "cross-node") => b,
                    _ => &relay,
                };
                let stop = Arc::new(AtomicBool::new(false));
                let ps = setup_pairs(&relay, viewer_relay, key, m, &stop).await?;
                let totals = Arc::new(Totals {
                    hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
                    from_send: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
                    done: AtomicU64::new(0),
                });
                let t0 = Instant::now();
                let deadline = t0 + Duration::from_secs(args.secs);
                let cpu_all = || relay.cpu_secs() + other.as_ref().map_or(0.0, |b| b.cpu_secs());
                let cpu0 = cpu_all();
                let per_viewer = mode.map(|r| r as f64 / 2.0 / m as f64);
                let tasks: Vec<_> = ps
                    .into_iter()
                    .map(|p| {
                        tokio::spawn(run_viewer(
                            p,
                            args.window,
                            per_viewer,
                            deadline,
                            totals.clone(),
                        ))
                    })
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
                let cpu = cpu_all() - cpu0;
                let wall = args.secs as f64;
                let routed = totals.done.load(Ordering::Relaxed) as f64 * 2.0;
                let h = totals
                    .hist
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?;
                let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
                let hs = totals
                    .from_send
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?;
                let qs = |p: f64| hs.value_at_quantile(p) as f64 / 1000.0;
                println!(
                "| {m} | {placement} | {} | {} | {:.0} | {:.0} % | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                if mode.is_some() { "open" } else { "closed" },
                mode.map(|r| r.to_string())
                    .unwrap_or_else(|| format!("window {}", args.window)),
                routed / wall,
                cpu / wall * 100.0,
                routed / cpu.max(1e-9),
                q(0.5),
                q(0.99),
                q(0.999),
                qs(0.5),
                qs(0.99),
            );
                stop.store(true, Ordering::Relaxed);
                drop(relay.child);
                drop(other);
            }
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    vc_benches::raise_fd_limit();
    let args = args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let key = TicketKey::new(&Secret::new(SECRET));
        if !args.idle.is_empty() {
            idle(&args, &key).await?;
        }
        if !args.pairs.is_empty() {
            pairs(&args, &key).await?;
        }
        Ok(())
    })
}
