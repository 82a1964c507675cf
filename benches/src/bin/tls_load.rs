//! TLS and QUIC benchmark (issue 10). Two parts, each against real processes on loopback:
//!
//! 1. **idle** camera links: a fresh release `vc-relay` per transport and rep (TLS with a
//!    certificate generated for the run by rcgen), then N camera connections over plain WS, WSS
//!    and QUIC (quinn, ALPN `vc-signal/1`, length-prefixed frames, `auth` first), one transport
//!    after another (the box's fd limit does not hold 3 x 10k at once). Opening runs with
//!    `--concurrency` handshakes in flight (a connection counts once its `welcome` arrived);
//!    then the links are held for `--hold` seconds, longer than every periodic timer (WebSocket
//!    and QUIC-frame pings every 20 s, the 60 s idle timeout, the client's 15 s QUIC
//!    keep-alive, quinn's 30 s idle timeout), answering pings as a camera does. Reports the
//!    relay's RSS per connection, its idle CPU over the hold, handshakes/s and relay CPU per
//!    handshake, and how many links were dropped by the end. Client TLS session resumption is
//!    off: every handshake is a full one, as a fleet's first connect would be.
//! 2. **turn**: coturn's `turnutils_uclient -t -S` (TURN over TLS) against coturn's
//!    `turnserver` (TLS listener, config mirroring `../shared/turn-bench/run-coturn.sh`) and
//!    against vc-relay's `turn.tls_listen`, interleaved, same arguments, one `turnutils_peer`
//!    echo. Reports relayed packets per server CPU-second (`/proc/<pid>/stat` utime+stime
//!    around each run), loss and the ratio.
//!
//! Every figure is the median of `--reps` runs. Speed is reported, never asserted.
//!
//! ```sh
//! cargo build --release --locked -p relay -p vc-benches --bins
//! target/release/tls_load                       # both parts, 10,000 links, 3 reps
//! target/release/tls_load --parts turn --reps 1 --variants a,b
//! ```

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures_util::StreamExt;
use shared::signaling::{ClientMessage, ServerMessage};
use shared::ticket::{unix_now, Role, TicketKey};
use shared::Secret;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;
use vc_benches::{cpu_secs, median, rss_kib, SelfSigned};

const SECRET: &str = "tls-load-secret-at-least-32-bytes-long";
/// The largest frame the QUIC client accepts (a welcome is far smaller).
const MAX_FRAME: usize = 1 << 20;

struct Args {
    relay: PathBuf,
    idle: bool,
    turn: bool,
    n: usize,
    transports: Vec<Transport>,
    hold_secs: u64,
    concurrency: usize,
    reps: usize,
    quic_endpoints: usize,
    variants: Vec<String>,
}

fn usage() -> &'static str {
    "tls_load [--parts idle,turn] [--n 10000] [--transports ws,wss,quic[,single]] [--hold 70] \
     [--concurrency 64] [--reps 3] [--quic-endpoints 16] [--variants a,b,bs,p] [--relay PATH]"
}

fn args() -> Result<Args> {
    let exe = std::env::current_exe()?;
    let mut a = Args {
        relay: exe.with_file_name("vc-relay"),
        idle: true,
        turn: true,
        n: 10_000,
        transports: vec![Transport::Ws, Transport::Wss, Transport::Quic],
        hold_secs: 70,
        concurrency: 64,
        reps: 3,
        quic_endpoints: 16,
        variants: ["a", "b", "bs", "p"].map(String::from).to_vec(),
    };
    let list = |v: &str| -> Vec<String> {
        v.split(',')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "-h" || k == "--help" {
            println!("{}", usage());
            std::process::exit(0);
        }
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--relay" => a.relay = PathBuf::from(v),
            "--parts" => {
                let p = list(&v);
                a.idle = p.iter().any(|x| x == "idle");
                a.turn = p.iter().any(|x| x == "turn");
                ensure!(
                    p.iter().all(|x| x == "idle" || x == "turn"),
                    "--parts: idle, turn"
                );
            }
            "--n" => a.n = v.parse()?,
            "--transports" => {
                a.transports = list(&v)
                    .iter()
                    .map(|t| Transport::parse(t))
                    .collect::<Result<_>>()?
            }
            "--hold" => a.hold_secs = v.parse()?,
            "--concurrency" => a.concurrency = v.parse::<usize>()?.max(1),
            "--reps" => a.reps = v.parse::<usize>()?.max(1),
            "--quic-endpoints" => a.quic_endpoints = v.parse::<usize>()?.max(1),
            "--variants" => {
                a.variants = list(&v);
                for x in &a.variants {
                    variant(x)?;
                }
            }
            _ => bail!("unknown argument {k}\n{}", usage()),
        }
    }
    ensure!(
        a.relay.exists(),
        "{} missing: cargo build --release -p relay",
        a.relay.display()
    );
    Ok(a)
}

/// A camera link transport.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    /// Plain WebSocket (a relay without `[tls]`: with it the signaling listener is `wss://`).
    Ws,
    /// WebSocket over TLS on the signaling listener.
    Wss,
    /// WebSocket over TLS on the single-port listener (`tls.single_port_listen`).
    Single,
    /// QUIC on `quic.listen`.
    Quic,
}

impl Transport {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ws" => Self::Ws,
            "wss" => Self::Wss,
            "single" => Self::Single,
            "quic" => Self::Quic,
            _ => bail!("unknown transport {s} (ws, wss, single, quic)"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Ws => "WS",
            Self::Wss => "WSS",
            Self::Single => "WSS, single port",
            Self::Quic => "QUIC",
        }
    }
}

/// The relay's settings for the idle part; TLS ones only for the TLS transports.
fn idle_env(cert: &SelfSigned, t: Transport) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("VC_TICKET_SECRET", SECRET),
        ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
        ("VC_DRAIN_SECS", "0"),
        ("VC_SIGNALING__LISTEN", "127.0.0.1:0"),
        ("VC_SIGNALING__CONTROL_URL", ""),
        // Every load connection comes from 127.0.0.1.
        ("VC_SIGNALING__MAX_CONNECTIONS_PER_IP", "1000000"),
        ("VC_TURN__LISTEN", "127.0.0.1:0"),
        ("VC_TURN__TLS_LISTEN", "127.0.0.1:0"),
        ("VC_QUIC__LISTEN", "127.0.0.1:0"),
        ("RUST_LOG", "warn"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec();
    if t != Transport::Ws {
        env.push(("VC_TLS__CERT_FILE".into(), cert.cert.display().to_string()));
        env.push(("VC_TLS__KEY_FILE".into(), cert.key.display().to_string()));
        env.push(("VC_TLS__SINGLE_PORT_LISTEN".into(), "127.0.0.1:0".into()));
    }
    env
}

/// What the clients connect to.
enum Target {
    Ws(String),
    Wss {
        addr: String,
        connector: tokio_rustls::TlsConnector,
    },
    Quic {
        addr: std::net::SocketAddr,
        endpoints: Vec<quinn::Endpoint>,
    },
}

/// An open camera link.
enum Link {
    Ws(Box<WebSocketStream<TcpStream>>),
    Wss(Box<WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>>),
    Quic {
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
}

/// The client TLS config: trusts the run's certificate, no session resumption.
fn client_tls(cert: &SelfSigned, tls13_only: bool, alpn: &[u8]) -> Result<rustls::ClientConfig> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let mut tls =
        shared::tls::client_config(Some(&cert.cert), versions).map_err(anyhow::Error::msg)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    Ok(tls)
}

impl Target {
    fn new(
        relay: &vc_benches::RelayProcess,
        t: Transport,
        cert: &SelfSigned,
        quic_endpoints: usize,
    ) -> Result<Self> {
        Ok(match t {
            Transport::Ws => Target::Ws(format!("ws://{}/ws", relay.addr("signaling")?)),
            Transport::Wss | Transport::Single => {
                let listener = if t == Transport::Wss {
                    "signaling"
                } else {
                    "single-port"
                };
                let tls = client_tls(cert, false, b"http/1.1")?;
                Target::Wss {
                    addr: relay.addr(listener)?.to_owned(),
                    connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
                }
            }
            Transport::Quic => {
                let tls = client_tls(cert, true, b"vc-signal/1")?;
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
                let mut config = quinn::ClientConfig::new(Arc::new(crypto));
                // What vc-camera runs with (`--keepalive-secs` 15, under 30 s NAT timeouts).
                let mut transport = quinn::TransportConfig::default();
                transport.keep_alive_interval(Some(Duration::from_secs(15)));
                transport.max_idle_timeout(Some(Duration::from_secs(60).try_into()?));
                config.transport_config(Arc::new(transport));
                let mut endpoints = Vec::new();
                for _ in 0..quic_endpoints {
                    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
                    ep.set_default_client_config(config.clone());
                    endpoints.push(ep);
                }
                Target::Quic {
                    addr: relay.addr("quic")?.parse()?,
                    endpoints,
                }
            }
        })
    }

    /// Opens link number `i` with `token` and waits for its `welcome`.
    async fn connect(&self, i: usize, token: &str) -> Result<Link> {
        match self {
            Target::Ws(url) => {
                let addr = url
                    .strip_prefix("ws://")
                    .and_then(|r| r.split('/').next())
                    .context("ws URL")?;
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let (mut ws, _) =
                    tokio_tungstenite::client_async(format!("{url}?token={token}"), tcp).await?;
                ws_welcome(&mut ws).await?;
                Ok(Link::Ws(Box::new(ws)))
            }
            Target::Wss { addr, connector } => {
                let tcp = TcpStream::connect(addr.as_str()).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                let tls = connector.connect(name, tcp).await?;
                let url = format!("wss://localhost/ws?token={token}");
                let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await?;
                ws_welcome(&mut ws).await?;
                Ok(Link::Wss(Box::new(ws)))
            }
            Target::Quic { addr, endpoints } => {
                let conn = endpoints[i % endpoints.len()]
                    .connect(*addr, "localhost")?
                    .await?;
                let (mut send, mut recv) = conn.open_bi().await?;
                let auth = serde_json::to_vec(&ClientMessage::Auth {
                    token: token.to_owned(),
                })?;
                write_frame(&mut send, &auth).await?;
                loop {
                    let f = read_frame(&mut recv).await?;
                    if f.is_empty() {
                        write_frame(&mut send, &[]).await?;
                        continue;
                    }
                    match serde_json::from_slice::<ServerMessage>(&f)? {
                        ServerMessage::Welcome { .. } => break,
                        other => bail!("expected welcome, got {other:?}"),
                    }
                }
                Ok(Link::Quic { conn, send, recv })
            }
        }
    }
}

async fn ws_welcome<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Result<()> {
    loop {
        match ws.next().await.context("closed before welcome")?? {
            Message::Text(t) => match serde_json::from_str::<ServerMessage>(&t)? {
                ServerMessage::Welcome { .. } => return Ok(()),
                other => bail!("expected welcome, got {other:?}"),
            },
            Message::Close(f) => bail!("closed: {f:?}"),
            _ => continue,
        }
    }
}

async fn write_frame(send: &mut quinn::SendStream, body: &[u8]) -> Result<()> {
    let len = u32::try_from(body.len())?.to_be_bytes();
    send.write_all(&len).await?;
    send.write_all(body).await?;
    Ok(())
}

async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    ensure!(len <= MAX_FRAME, "frame of {len} bytes");
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(body)
}

impl Link {
    /// Holds the link as an idle camera does (answering the relay's pings) until `stop`.
    /// True when stopped by us, false when the relay closed it or it failed first.
    async fn hold(self, mut stop: watch::Receiver<bool>) -> bool {
        match self {
            Link::Ws(ws) => hold_ws(*ws, stop).await,
            Link::Wss(ws) => hold_ws(*ws, stop).await,
            Link::Quic {
                conn,
                mut send,
                mut recv,
            } => {
                let stopped = loop {
                    tokio::select! {
                        f = read_frame(&mut recv) => match f {
                            // The relay's ping: answer with the empty frame (the pong).
                            Ok(f) if f.is_empty() => {
                                if write_frame(&mut send, &[]).await.is_err() {
                                    break false;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => break false,
                        },
                        () = stopped(&mut stop) => break true,
                    }
                };
                conn.close(0u32.into(), b"bench done");
                stopped
            }
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn hold_ws<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    mut stop: watch::Receiver<bool>,
) -> bool {
    loop {
        tokio::select! {
            // tungstenite answers pings itself while the stream is polled.
            m = ws.next() => match m {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return false,
                Some(Ok(_)) => {}
            },
            () = stopped(&mut stop) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                return true;
            }
        }
    }
}

/// One transport's run.
struct IdleRun {
    established: usize,
    failed: usize,
    first_error: Option<String>,
    open_secs: f64,
    handshakes_per_s: f64,
    cpu_ms_per_handshake: f64,
    rss_base_kib: u64,
    rss_kib: u64,
    kib_per_conn: f64,
    idle_cpu_pct: f64,
    still_open: usize,
    relay_cameras: f64,
}

async fn idle_run(
    args: &Args,
    key: &TicketKey,
    cert: &SelfSigned,
    t: Transport,
) -> Result<IdleRun> {
    let env = idle_env(cert, t);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut relay = vc_benches::start_relay(&args.relay, &env).await?;
    let pid = relay.pid;
    let metrics_url = format!("http://{}/metrics", relay.addr("admin")?);
    let target = Arc::new(Target::new(&relay, t, cert, args.quic_endpoints)?);
    // Tokens are minted before the clock starts: handshakes, not JWT signing, are timed.
    let tokens: Vec<String> = (0..args.n)
        .map(|_| {
            let dev = Uuid::new_v4();
            key.mint_signaling(&dev.to_string(), Role::Camera, vec![dev], unix_now(), 7200)
                .0
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_base_kib = rss_kib(pid);

    let (stop_tx, stop_rx) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let (res_tx, mut res_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let mut held = tokio::task::JoinSet::new();
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    for (i, token) in tokens.into_iter().enumerate() {
        let permit = sem.clone().acquire_owned().await?;
        let (target, open, res_tx, stop) = (
            target.clone(),
            open.clone(),
            res_tx.clone(),
            stop_rx.clone(),
        );
        held.spawn(async move {
            let link =
                tokio::time::timeout(Duration::from_secs(30), target.connect(i, &token)).await;
            drop(permit);
            let link = match link {
                Ok(Ok(link)) => link,
                Ok(Err(e)) => {
                    let _ = res_tx.send(Err(format!("{e:#}")));
                    return;
                }
                Err(_) => {
                    let _ = res_tx.send(Err("no welcome within 30 s".into()));
                    return;
                }
            };
            open.fetch_add(1, Ordering::SeqCst);
            let _ = res_tx.send(Ok(()));
            if !link.hold(stop).await {
                // Closed by the relay or failed before the end of the hold: a dropped link.
                open.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }
    drop(res_tx);
    let (mut established, mut failed, mut first_error) = (0, 0, None);
    // Each task reports once, then keeps its sender while it holds the link: count, do not
    // wait for the channel to close.
    for _ in 0..args.n {
        let r = res_rx.recv().await.context("a connection task vanished")?;
        match r {
            Ok(()) => established += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let open_secs = t0.elapsed().as_secs_f64();
    let open_cpu = cpu_secs(pid) - cpu0;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu1 = cpu_secs(pid);
    let h0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let idle_cpu_pct = (cpu_secs(pid) - cpu1) / h0.elapsed().as_secs_f64() * 100.0;
    let rss = rss_kib(pid);
    let still_open = open.load(Ordering::SeqCst);
    let http = shared::tls::http_client_builder(None)
        .map_err(anyhow::Error::msg)?
        .build()?;
    let relay_cameras = match http.get(&metrics_url).send().await {
        Ok(r) => vc_benches::metric(
            &r.text().await.unwrap_or_default(),
            "vc_relay_signaling_connected_cameras",
        )
        .unwrap_or(f64::NAN),
        Err(_) => f64::NAN,
    };

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while held.join_next().await.is_some() {}
    })
    .await;
    held.abort_all();
    if let Target::Quic { endpoints, .. } = &*target {
        let idle = futures_util::future::join_all(endpoints.iter().map(|ep| ep.wait_idle()));
        let _ = tokio::time::timeout(Duration::from_secs(3), idle).await;
    }
    let _ = relay.child.kill().await;
    Ok(IdleRun {
        established,
        failed,
        first_error,
        open_secs,
        handshakes_per_s: established as f64 / open_secs.max(1e-9),
        cpu_ms_per_handshake: open_cpu * 1000.0 / established.max(1) as f64,
        rss_base_kib,
        rss_kib: rss,
        kib_per_conn: rss.saturating_sub(rss_base_kib) as f64 / established.max(1) as f64,
        idle_cpu_pct,
        still_open,
        relay_cameras,
    })
}

/// `(median, "a, b, c")` of one figure over the reps, with `dp` decimals.
fn med(runs: &[&IdleRun], f: impl Fn(&IdleRun) -> f64, dp: usize) -> String {
    let v: Vec<f64> = runs.iter().map(|r| f(r)).collect();
    let each: Vec<String> = v.iter().map(|x| format!("{x:.dp$}")).collect();
    if v.len() == 1 {
        format!("{:.dp$}", median(&v))
    } else {
        format!("**{:.dp$}** ({})", median(&v), each.join(", "))
    }
}

async fn idle_part(args: &Args, cert: &SelfSigned) -> Result<()> {
    let key = TicketKey::new(&Secret::new(SECRET));
    let mut runs: Vec<(Transport, IdleRun)> = Vec::new();
    // Interleaved (rep 1: every transport, rep 2: ...), so a drift of the box hits all alike.
    for rep in 1..=args.reps {
        for &t in &args.transports {
            eprintln!(
                "idle rep {rep}/{}: {} x {} (load average {})",
                args.reps,
                args.n,
                t.name(),
                vc_benches::load_average()
            );
            let r = idle_run(args, &key, cert, t).await?;
            eprintln!(
                "  open {} (failed {}{}) in {:.1} s = {:.0}/s, {:.2} relay CPU-ms each; RSS {} -> {} KiB = {:.2} KiB/conn; idle CPU {:.2} %; still open {} (relay counts {} cameras)",
                r.established,
                r.failed,
                r.first_error.as_deref().map(|e| format!(", first: {e}")).unwrap_or_default(),
                r.open_secs,
                r.handshakes_per_s,
                r.cpu_ms_per_handshake,
                r.rss_base_kib,
                r.rss_kib,
                r.kib_per_conn,
                r.idle_cpu_pct,
                r.still_open,
                r.relay_cameras
            );
            runs.push((t, r));
        }
    }
    println!(
        "\n## Idle camera links: {} per transport, {} in flight while opening, held {} s\n",
        args.n, args.concurrency, args.hold_secs
    );
    println!("{}, a fresh vc-relay per run.\n", runs_phrase(args.reps));
    println!("| transport | established / failed | dropped by the end of the hold | relay RSS empty -> held, MiB | relay RSS per link, KiB | idle relay CPU, % of a core | handshakes/s | relay CPU-ms per handshake |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &t in &args.transports {
        let rs: Vec<&IdleRun> = runs
            .iter()
            .filter(|(x, _)| *x == t)
            .map(|(_, r)| r)
            .collect();
        let sum = |f: &dyn Fn(&IdleRun) -> usize| rs.iter().map(|r| f(r)).sum::<usize>();
        println!(
            "| {} | {} / {} | {} | {:.1} -> {:.1} | {} | {} | {} | {} |",
            t.name(),
            sum(&|r| r.established),
            sum(&|r| r.failed),
            sum(&|r| r.established - r.still_open),
            median(
                &rs.iter()
                    .map(|r| r.rss_base_kib as f64 / 1024.0)
                    .collect::<Vec<_>>()
            ),
            median(
                &rs.iter()
                    .map(|r| r.rss_kib as f64 / 1024.0)
                    .collect::<Vec<_>>()
            ),
            med(&rs, |r| r.kib_per_conn, 2),
            med(&rs, |r| r.idle_cpu_pct, 2),
            med(&rs, |r| r.handshakes_per_s, 0),
            med(&rs, |r| r.cpu_ms_per_handshake, 2),
        );
    }
    println!("\n(established, failed and dropped are totals over the runs.)");
    Ok(())
}

/// A `turnutils_uclient` load shape, named as in `../shared/turn-bench/load.sh`:
/// `(sessions, messages per session, bytes, -z ms, Send indications)`.
fn variant(name: &str) -> Result<(u32, u32, u32, u32, bool)> {
    Ok(match name {
        "a" => (1, 10_000, 120, 0, false),
        "b" => (50, 2000, 1000, 0, false),
        "c" => (200, 500, 1000, 0, false),
        "as" => (1, 10_000, 120, 0, true),
        "bs" => (50, 2000, 1000, 0, true),
        "cs" => (200, 500, 1000, 0, true),
        "p" => (200, 500, 1000, 20, false),
        "ps" => (200, 500, 1000, 20, true),
        _ => bail!("unknown variant {name} (a b c as bs cs p ps)"),
    })
}

/// A TURN server under test.
struct TurnServer {
    label: &'static str,
    child: Child,
    pid: u32,
    tls_port: u16,
}

async fn wait_tcp(port: u16, child: &mut Child, what: &str) -> Result<()> {
    for _ in 0..100 {
        if let Some(st) = child.try_wait()? {
            bail!("{what} exited: {st}");
        }
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{what} did not listen on 127.0.0.1:{port}")
}

/// coturn with the kit's config (`run-coturn.sh -A lt`), TLS instead of `no-tls`.
async fn start_coturn(dir: &std::path::Path, cert: &SelfSigned) -> Result<TurnServer> {
    let (port, tls_port) = (vc_benches::free_port()?, vc_benches::free_port()?);
    let d = dir.display();
    let conf = format!(
        "listening-ip=127.0.0.1\nlistening-port={port}\ntls-listening-port={tls_port}\n\
         relay-ip=127.0.0.1\nmin-port=49152\nmax-port=57343\nrealm=vc.test\n\
         lt-cred-mech\nuser=bench:bench\ncert={}\npkey={}\n\
         no-dtls\nno-cli\nallow-loopback-peers\nno-multicast-peers\n\
         userdb={d}/turndb\npidfile={d}/turnserver.pid\nlog-file={d}/turnserver.log\n\
         simple-log\nno-stdout-log\n",
        cert.cert.display(),
        cert.key.display()
    );
    let path = dir.join("turnserver.conf");
    std::fs::write(&path, conf)?;
    let mut child = Command::new("turnserver")
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("spawn turnserver (bash .ci/setup installs coturn)")?;
    let pid = child.id().context("pid")?;
    wait_tcp(tls_port, &mut child, "turnserver").await?;
    Ok(TurnServer {
        label: "coturn",
        child,
        pid,
        tls_port,
    })
}

/// vc-relay with TURN over TLS and the kit's TURN settings.
async fn start_vc_turn(path: &std::path::Path, cert: &SelfSigned) -> Result<TurnServer> {
    let (c, k) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    let env = [
        ("VC_TICKET_SECRET", SECRET),
        ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
        ("VC_DRAIN_SECS", "0"),
        ("VC_SIGNALING__LISTEN", "127.0.0.1:0"),
        ("VC_SIGNALING__CONTROL_URL", ""),
        ("VC_QUIC__LISTEN", "127.0.0.1:0"),
        ("VC_TLS__CERT_FILE", c.as_str()),
        ("VC_TLS__KEY_FILE", k.as_str()),
        ("VC_TURN__LISTEN", "127.0.0.1:0"),
        ("VC_TURN__TLS_LISTEN", "127.0.0.1:0"),
        ("VC_TURN__REALM", "vc.test"),
        ("VC_TURN__USERS", "[\"bench:bench\"]"),
        ("VC_TURN__ALLOW_LOOPBACK_PEERS", "true"),
        ("VC_TURN__USER_QUOTA", "0"),
        ("VC_TURN__MIN_PORT", "57344"),
        ("VC_TURN__MAX_PORT", "65535"),
        // uclient opens every session's TLS connection from one address (200 in variant p).
        ("VC_TURN__MAX_TCP_CONNECTIONS_PER_IP", "0"),
        ("VC_TURN__MAX_TCP_CONNECTIONS", "10000"),
        ("RUST_LOG", "warn"),
    ];
    let relay = vc_benches::start_relay(path, &env).await?;
    let tls_port = relay
        .addr("turn-tls")?
        .rsplit(':')
        .next()
        .context("port")?
        .parse()?;
    Ok(TurnServer {
        label: "vc-relay",
        child: relay.child,
        pid: relay.pid,
        tls_port,
    })
}

/// One uclient run's figures.
struct UcRun {
    sent: u64,
    received: u64,
    lost: u64,
    cpu_s: f64,
    /// UDP datagrams the kernel dropped on full receive buffers during the run (whole box,
    /// `/proc/net/snmp` RcvbufErrors): where flat-out loss happens.
    rcvbuf_drops: u64,
}

impl UcRun {
    fn relayed_per_cpu_s(&self) -> f64 {
        // Each echoed message was relayed twice (client -> peer, peer -> client).
        2.0 * self.received as f64 / self.cpu_s.max(1e-9)
    }

    fn loss_pct(&self) -> f64 {
        100.0 * self.lost as f64 / self.sent.max(1) as f64
    }
}

async fn uclient(v: &str, server: &TurnServer, peer_port: u16) -> Result<UcRun> {
    let (sessions, msgs, len, z, send) = variant(v)?;
    let r = Uuid::new_v4().into_bytes();
    // A random 127.x source as the kit picks (`-L`).
    let cli = format!("127.{}.{}.{}", 64 + r[0] % 128, r[1], 1 + r[2] % 254);
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(["-t", "-S", "-e", "127.0.0.1", "-r", &peer_port.to_string()])
        .args(["-n", &msgs.to_string(), "-l", &len.to_string()])
        .args(["-m", &sessions.to_string(), "-z", &z.to_string(), "-c"])
        .args(["-p", &server.tls_port.to_string(), "-L", &cli])
        .args(["-u", "bench", "-w", "bench"]);
    if send {
        cmd.arg("-s");
    }
    cmd.arg("127.0.0.1").stdin(Stdio::null()).kill_on_drop(true);
    let cpu0 = cpu_secs(server.pid);
    let drops0 = udp_rcvbuf_errors();
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .context("uclient ran over 120 s")??;
    let cpu_s = cpu_secs(server.pid) - cpu0;
    let rcvbuf_drops = udp_rcvbuf_errors().saturating_sub(drops0);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let num = |s: &str| -> u64 {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    };
    let (mut sent, mut received, mut lost) = (0, 0, None);
    for line in text.lines() {
        if let (Some(a), Some(b)) = (line.find("tot_send_msgs="), line.find("tot_recv_msgs=")) {
            sent = num(&line[a + 14..]);
            received = num(&line[b + 14..]);
        }
        if let Some(a) = line.find("Total lost packets ") {
            lost = Some(num(&line[a + 19..]));
        }
    }
    if sent == 0 {
        let tail: Vec<&str> = text.lines().rev().take(10).collect();
        bail!(
            "uclient {v} against {} sent nothing: {tail:#?}",
            server.label
        );
    }
    Ok(UcRun {
        sent,
        received,
        lost: lost.unwrap_or(sent.saturating_sub(received)),
        cpu_s,
        rcvbuf_drops,
    })
}

/// `Udp: ... RcvbufErrors` of `/proc/net/snmp` (0 if unreadable).
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn turn_part(args: &Args, cert: &SelfSigned, dir: &std::path::Path) -> Result<()> {
    let peer_port = vc_benches::free_udp_port_pair()?;
    let _peer = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("spawn turnutils_peer (bash .ci/setup installs coturn)")?;
    for _ in 0..100 {
        if std::net::UdpSocket::bind(("127.0.0.1", peer_port)).is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut servers = vec![
        start_coturn(dir, cert).await?,
        start_vc_turn(&args.relay, cert).await?,
    ];
    let mut runs: Vec<(String, &'static str, UcRun)> = Vec::new();
    for rep in 1..=args.reps {
        for v in &args.variants {
            for s in &servers {
                eprintln!(
                    "turn rep {rep}/{}: variant {v} on {} (load average {})",
                    args.reps,
                    s.label,
                    vc_benches::load_average()
                );
                let r = uclient(v, s, peer_port).await?;
                eprintln!(
                    "  sent {} received {} lost {} ({:.2} %), server CPU {:.2} s: {:.0} relayed pkts per CPU-s; UDP receive-buffer drops {}",
                    r.sent,
                    r.received,
                    r.lost,
                    r.loss_pct(),
                    r.cpu_s,
                    r.relayed_per_cpu_s(),
                    r.rcvbuf_drops
                );
                runs.push((v.clone(), s.label, r));
            }
        }
    }
    for s in &mut servers {
        let _ = s.child.kill().await;
    }
    println!("\n## TURN over TLS: vc-relay vs coturn (`turnutils_uclient -t -S`)\n");
    println!("{}, interleaved, one echo peer.\n", runs_phrase(args.reps));
    println!("| variant | load | coturn relayed pkts / server CPU-s | vc-relay relayed pkts / server CPU-s | ratio | coturn loss % | vc-relay loss % | UDP receive-buffer drops, coturn / vc-relay |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for v in &args.variants {
        let (sessions, msgs, len, z, send) = variant(v)?;
        let pick = |label: &str, f: &dyn Fn(&UcRun) -> f64| -> Vec<f64> {
            runs.iter()
                .filter(|(x, l, _)| x == v && *l == label)
                .map(|(_, _, r)| f(r))
                .collect()
        };
        let show = |xs: &[f64], dp: usize| -> String {
            let each: Vec<String> = xs.iter().map(|x| format!("{x:.dp$}")).collect();
            if xs.len() == 1 {
                format!("{:.dp$}", median(xs))
            } else {
                format!("**{:.dp$}** ({})", median(xs), each.join(", "))
            }
        };
        let (cp, vp) = (
            pick("coturn", &UcRun::relayed_per_cpu_s),
            pick("vc-relay", &UcRun::relayed_per_cpu_s),
        );
        println!(
            "| {v} | {} {sessions}x{msgs}x{len}B{} | {} | {} | {:.2} | {} | {} | {:.0} / {:.0} |",
            if send { "send" } else { "ch" },
            if z > 0 {
                format!(" z={z}")
            } else {
                String::new()
            },
            show(&cp, 0),
            show(&vp, 0),
            median(&vp) / median(&cp),
            show(&pick("coturn", &UcRun::loss_pct), 2),
            show(&pick("vc-relay", &UcRun::loss_pct), 2),
            median(&pick("coturn", &|r| r.rcvbuf_drops as f64)),
            median(&pick("vc-relay", &|r| r.rcvbuf_drops as f64)),
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    vc_benches::raise_fd_limit();
    let dir = tempfile::tempdir()?;
    let cert = vc_benches::self_signed_cert(dir.path())?;
    println!("# TLS and QUIC (issue 10)\n");
    println!(
        "- started {} UTC, load average {}, {} cores",
        utc_now(),
        vc_benches::load_average(),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!("- reps: {}; relay: {}", args.reps, args.relay.display());
    if args.idle {
        idle_part(&args, &cert).await?;
    }
    if args.turn {
        turn_part(&args, &cert, dir.path()).await?;
    }
    println!(
        "\n- finished {} UTC, load average {}",
        utc_now(),
        vc_benches::load_average()
    );
    Ok(())
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS` (from `date -u`, no date crate here).
fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// How the tables' figures were made: "One run" or "Medians of N runs (each run in brackets)".
fn runs_phrase(reps: usize) -> String {
    if reps == 1 {
        "One run".to_owned()
    } else {
        format!("Medians of {reps} runs (each run in brackets)")
    }
}
