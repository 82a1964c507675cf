//! Presence at fleet scale, on vc-control + Postgres (issue 9): `--nodes` simulated relay nodes
//! report `--cameras` cameras exactly as vc-relay does (signed change-only reports of at most
//! 200 events, one in flight per node, an empty heartbeat every second), then hold them idle,
//! then churn. Reports what each phase costs the database (device rows and lease rows written
//! per second, from `pg_stat_user_tables`) and report / device-list latency.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! target/release/presence_load --cameras 100000 --nodes 10 --seconds 20 --churn 200
//! ```
//! The devices are inserted with SQL (activating 100k cameras through the API would take
//! minutes and is not what is measured); everything presence does goes through the real API.
//!
//! `--relays N` replaces the simulated nodes by N real vc-relay processes clustered over NATS
//! (`--nats`, default nats://127.0.0.1:4222) and `--cameras` real camera WebSockets from this
//! process, spread round robin over the relays and opened all at once: how long until
//! vc-control shows every camera online, what holding them idle for `--seconds` costs
//! Postgres and each relay (rows written/s, RSS per camera), and how long until a clean
//! disconnect of half of them shows.
//!
//! ```sh
//! target/release/presence_load --relays 2 --cameras 10000 --seconds 60
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use hdrhistogram::Histogram;
use shared::api::{PresenceEvent, PresenceReport};
use shared::ticket::{unix_now, Role, TicketKey};
use shared::Secret;
use tokio::process::Command;
use tokio::sync::Mutex;
use uuid::Uuid;
use vc_benches::{start_server, user};

const SECRET: &str = "presence-load-ticket-secret-at-least-32-bytes";
const CHUNK: usize = 200;
const STATS_FLUSH: Duration = Duration::from_secs(11);

/// WAL bytes written so far (immediate, unlike the statistics).
async fn wal(url: &str) -> Result<u64> {
    let v = psql(
        url,
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint",
    )
    .await?;
    Ok(v.parse()?)
}

struct Opts {
    cameras: usize,
    nodes: usize,
    seconds: u64,
    churn: usize,
    pg: String,
    relays: usize,
    nats: String,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        cameras: 100_000,
        nodes: 10,
        seconds: 20,
        churn: 200,
        relays: 0,
        nats: "nats://127.0.0.1:4222".into(),
        pg: std::env::var("VC_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().context("missing value");
        match a.as_str() {
            "--cameras" => o.cameras = val()?.parse()?,
            "--nodes" => o.nodes = val()?.parse()?,
            "--seconds" => o.seconds = val()?.parse()?,
            "--churn" => o.churn = val()?.parse()?,
            "--pg" => o.pg = val()?,
            "--relays" => o.relays = val()?.parse()?,
            "--nats" => o.nats = val()?,
            other => bail!("unknown argument {other}; usage: presence_load [--cameras N] [--nodes N] [--seconds N] [--churn cameras/s] [--pg URL] [--relays N [--nats URL]]"),
        }
    }
    ensure!(
        o.nodes > 0 && o.cameras >= o.nodes,
        "need cameras >= nodes > 0"
    );
    Ok(o)
}

async fn psql(url: &str, sql: &str) -> Result<String> {
    let out = Command::new("psql")
        .arg(url)
        .arg("-tAc")
        .arg(sql)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Rows inserted + updated so far in `table` (Postgres statistics: an idle backend flushes
/// its counts within 10 s, so callers wait [`STATS_FLUSH`] before reading).
async fn writes(url: &str, table: &str) -> Result<u64> {
    let v = psql(
        url,
        &format!("SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relname = '{table}'"),
    )
    .await?;
    Ok(v.parse().unwrap_or(0))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One simulated relay node.
struct Node {
    name: String,
    epoch: u64,
    conn: u64,
    cameras: Vec<Uuid>,
}

struct Driver {
    http: reqwest::Client,
    url: String,
    key: TicketKey,
    latency: Mutex<Histogram<u64>>,
}

impl Driver {
    async fn post(&self, node: &Node, events: Vec<PresenceEvent>) -> Result<()> {
        let report = PresenceReport {
            sent_at: unix_now(),
            node_id: node.name.clone(),
            epoch: node.epoch,
            lease_ms: 15_000,
            leaving: false,
            revoked_since_ms: 0,
            events,
        };
        let body = serde_json::to_vec(&report)?;
        let sig = self.key.sign_internal(&body);
        let t0 = Instant::now();
        let res = self
            .http
            .post(&self.url)
            .header("x-vc-signature", sig)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = res.status();
        ensure!(
            status.is_success(),
            "report: {status} {}",
            res.text().await?
        );
        let us = t0.elapsed().as_micros() as u64;
        let _ = self.latency.lock().await.record(us.max(1));
        Ok(())
    }
}

fn events(node: &mut Node, devices: &[Uuid], online: bool) -> Vec<PresenceEvent> {
    let at_ms = now_ms();
    devices
        .iter()
        .map(|d| {
            node.conn += 1;
            PresenceEvent {
                device_id: *d,
                online,
                at_ms,
                conn: node.conn,
            }
        })
        .collect()
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn list_latency(http: &reqwest::Client, base: &str, jwt: &str, n: usize) -> Result<String> {
    let mut h = Histogram::<u64>::new(3)?;
    for _ in 0..n {
        let t0 = Instant::now();
        let res = http
            .get(format!("{base}/api/camera/devices"))
            .bearer_auth(jwt)
            .send()
            .await?;
        ensure!(res.status().is_success());
        let _ = res.bytes().await?;
        h.record(t0.elapsed().as_micros().max(1) as u64)?;
    }
    Ok(format!(
        "p50 {:.1} ms, p99 {:.1} ms",
        pct(&h, 0.5),
        pct(&h, 0.99)
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = parse_args()?;
    let server = start_server(
        "postgres",
        &o.pg,
        &[
            ("VC_TICKET_SECRET", SECRET),
            ("VC_DB_MAX_CONNECTIONS", "16"),
        ],
    )
    .await?;
    let http = shared::tls::http_client_builder(None)
        .map_err(anyhow::Error::msg)?
        .pool_max_idle_per_host(o.nodes * 2)
        .build()?;
    // A probe account with 100 of the cameras (its device list is timed); the rest belong to
    // one bulk account inserted directly.
    let jwt = user(&http, &server.base, "probe@example.com").await?;
    let db = &server.db_url;
    let t0 = Instant::now();
    psql(
        db,
        &format!(
            "INSERT INTO users (id, email, password_hash, created_at) \
             VALUES ('bulk-owner', 'bulk@example.com', 'x', 0); \
             INSERT INTO devices (id, owner_id, device_name, camera_model, status, token_hash, \
                 token_expires_at, device_uid, created_at, activated_at) \
             SELECT gen_random_uuid()::text, \
                 CASE WHEN i <= 100 THEN (SELECT id FROM users WHERE email = 'probe@example.com') \
                      ELSE 'bulk-owner' END, \
                 'cam ' || i, 'CP_PLUS_WIFI_V2', 'offline', md5(i::text), 0, 'UID-' || i, i, i \
             FROM generate_series(1, {}) AS i",
            o.cameras
        ),
    )
    .await?;
    let ids = psql(db, "SELECT id FROM devices ORDER BY created_at").await?;
    let all: Vec<Uuid> = ids.lines().map(Uuid::parse_str).collect::<Result<_, _>>()?;
    ensure!(all.len() == o.cameras, "inserted {}", all.len());
    eprintln!("{} devices inserted in {:?}", all.len(), t0.elapsed());

    if o.relays > 0 {
        return real_relays(&o, &server, &all).await;
    }

    let driver = Arc::new(Driver {
        http: http.clone(),
        url: format!("{}/api/internal/presence", server.base),
        key: TicketKey::new(&Secret::new(SECRET)),
        latency: Mutex::new(Histogram::new(3)?),
    });
    let per = o.cameras.div_ceil(o.nodes);
    let nodes: Vec<Node> = all
        .chunks(per)
        .enumerate()
        .map(|(i, c)| Node {
            name: format!("sim-node-{i}"),
            epoch: now_ms(),
            conn: 0,
            cameras: c.to_vec(),
        })
        .collect();
    println!(
        "presence_load: {} cameras on {} nodes, Postgres, vc-control {}",
        o.cameras,
        nodes.len(),
        server.base
    );
    println!("| phase | seconds | reports | device rows written/s | lease rows written/s | WAL KiB/s | report p50 / p99 ms | devices list (100) |");
    println!("|---|---|---|---|---|---|---|---|");

    // Phase 1: every camera connects (each node reports its cameras online in chunks).
    let mut nodes = nodes;
    let (d0, l0) = (
        writes(db, "devices").await?,
        writes(db, "node_leases").await?,
    );
    let w0 = wal(db).await?;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for mut node in nodes.drain(..) {
        let driver = driver.clone();
        tasks.push(tokio::spawn(async move {
            let cams = node.cameras.clone();
            let mut n = 0usize;
            for chunk in cams.chunks(CHUNK) {
                let ev = events(&mut node, chunk, true);
                driver.post(&node, ev).await?;
                n += 1;
            }
            Ok::<_, anyhow::Error>((node, n))
        }));
    }
    let mut reports = 0;
    for t in tasks {
        let (node, n) = t.await??;
        reports += n;
        nodes.push(node);
    }
    let secs = t0.elapsed().as_secs_f64();
    let w1 = wal(db).await?;
    tokio::time::sleep(STATS_FLUSH).await;
    let (d1, l1) = (
        writes(db, "devices").await?,
        writes(db, "node_leases").await?,
    );
    let online: u64 = psql(db, "SELECT COUNT(*) FROM devices WHERE status = 'online'")
        .await?
        .parse()?;
    ensure!(online as usize == o.cameras, "{online} online");
    let lat = std::mem::replace(&mut *driver.latency.lock().await, Histogram::new(3)?);
    println!(
        "| all connect | {secs:.1} | {reports} | {:.0} | {:.0} | {:.0} | {:.1} / {:.1} | {} |",
        (d1 - d0) as f64 / secs,
        (l1 - l0) as f64 / secs,
        (w1 - w0) as f64 / secs / 1024.0,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        list_latency(&http, &server.base, &jwt, 50).await?
    );

    // Phase 2: idle. Heartbeats only, one per node per second.
    let run_heartbeats = |nodes: Vec<Node>, seconds: u64, churn: usize| {
        let driver = driver.clone();
        async move {
            let per_node = churn.div_ceil(nodes.len().max(1));
            let mut tasks = Vec::new();
            for mut node in nodes {
                let driver = driver.clone();
                tasks.push(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    let mut n = 0usize;
                    let mut next = 0usize;
                    let until = Instant::now() + Duration::from_secs(seconds);
                    while Instant::now() < until {
                        tick.tick().await;
                        // Churn: per_node cameras drop and come back within the second.
                        let flap: Vec<Uuid> = (0..per_node)
                            .map(|i| node.cameras[(next + i) % node.cameras.len()])
                            .collect();
                        next += per_node;
                        if flap.is_empty() {
                            driver.post(&node, Vec::new()).await?;
                            n += 1;
                        }
                        for chunk in flap.chunks(CHUNK) {
                            let off = events(&mut node, chunk, false);
                            driver.post(&node, off).await?;
                            let on = events(&mut node, chunk, true);
                            driver.post(&node, on).await?;
                            n += 2;
                        }
                    }
                    Ok::<_, anyhow::Error>((node, n))
                }));
            }
            let mut out = Vec::new();
            let mut reports = 0;
            for t in tasks {
                let (node, n) = t.await??;
                reports += n;
                out.push(node);
            }
            Ok::<_, anyhow::Error>((out, reports))
        }
    };
    for (name, churn) in [("idle (heartbeats only)", 0usize), ("churn", o.churn)] {
        let (d0, l0) = (
            writes(db, "devices").await?,
            writes(db, "node_leases").await?,
        );
        let w0 = wal(db).await?;
        let t0 = Instant::now();
        let (back, reports) = run_heartbeats(nodes, o.seconds, churn).await?;
        nodes = back;
        let secs = t0.elapsed().as_secs_f64();
        let w1 = wal(db).await?;
        tokio::time::sleep(STATS_FLUSH).await;
        let (d1, l1) = (
            writes(db, "devices").await?,
            writes(db, "node_leases").await?,
        );
        let lat = std::mem::replace(&mut *driver.latency.lock().await, Histogram::new(3)?);
        let label = if churn > 0 {
            format!("{name} ({churn} cameras/s flap)")
        } else {
            name.to_owned()
        };
        println!(
            "| {label} | {secs:.1} | {reports} | {:.0} | {:.1} | {:.0} | {:.1} / {:.1} | {} |",
            (d1 - d0) as f64 / secs,
            (l1 - l0) as f64 / secs,
            (w1 - w0) as f64 / secs / 1024.0,
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            list_latency(&http, &server.base, &jwt, 50).await?
        );
    }
    let online: u64 = psql(db, "SELECT COUNT(*) FROM devices WHERE status = 'online'")
        .await?
        .parse()?;
    ensure!(online as usize == o.cameras, "{online} online at the end");
    println!(
        "(the periodic full re-report this replaces wrote {} device rows/s for {} cameras: all of them every 30 s)",
        o.cameras / 30,
        o.cameras
    );
    Ok(())
}

/// Cameras vc-control shows online now: the devices list's own rule (`status` online and the
/// lease of the node and epoch that reported it alive; `control::presence::derived_columns`).
async fn shown_online(db: &str) -> Result<u64> {
    Ok(psql(
        db,
        "SELECT COUNT(*) FROM devices d JOIN node_leases l ON l.node_id = d.presence_node \
         WHERE d.status = 'online' AND l.epoch = d.presence_epoch \
           AND l.expires_at_ms > (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    )
    .await?
    .parse()?)
}

/// Polls until `want(shown online)`; how long it took.
async fn until_shown(db: &str, within: Duration, want: impl Fn(u64) -> bool) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let n = shown_online(db).await?;
        if want(n) {
            return Ok(t0.elapsed());
        }
        ensure!(
            t0.elapsed() < within,
            "after {:?} vc-control shows {n} online",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One camera WebSocket held open (reading, so pings are answered) until `close` turns true,
/// then closed cleanly.
async fn hold_camera(
    url: String,
    token: String,
    ready: tokio::sync::mpsc::UnboundedSender<Result<()>>,
    mut close: tokio::sync::watch::Receiver<bool>,
    handshake: tokio::sync::OwnedSemaphorePermit,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let opened = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?token={token}")).await?;
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("welcome") => Ok(ws),
            other => bail!("expected welcome, got {other:?}"),
        }
    };
    let opened = tokio::time::timeout(Duration::from_secs(60), opened).await;
    drop(handshake);
    let mut ws = match opened {
        Ok(Ok(ws)) => {
            let _ = ready.send(Ok(()));
            ws
        }
        Ok(Err(e)) => return drop(ready.send(Err(e))),
        Err(_) => return drop(ready.send(Err(anyhow::anyhow!("connect timed out")))),
    };
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(_)) => {}
                _ => return drop(ready.send(Err(anyhow::anyhow!("relay closed a held camera")))),
            },
            _ = close.wait_for(|c| *c) => break,
        }
    }
    let _ = ws.send(Message::Close(None)).await;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
}

async fn real_relays(o: &Opts, server: &vc_benches::Server, all: &[Uuid]) -> Result<()> {
    vc_benches::raise_fd_limit();
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("exe dir")?.join("vc-relay");
    let db = &server.db_url;
    let tag = std::process::id();
    let mut relays = Vec::new();
    for i in 0..o.relays {
        let node = format!("presence-bench-{tag}-{i}");
        let env = [
            ("VC_TICKET_SECRET", SECRET),
            ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
            ("VC_SIGNALING__LISTEN", "127.0.0.1:0"),
            ("VC_SIGNALING__CONTROL_URL", server.base.as_str()),
            // Every load connection comes from 127.0.0.1.
            ("VC_SIGNALING__MAX_CONNECTIONS_PER_IP", "1000000"),
            ("VC_SIGNALING__MAX_CONNECTIONS", "1000000"),
            ("VC_TURN__LISTEN", "127.0.0.1:0"),
            ("VC_CLUSTER__NODE_ID", node.as_str()),
            ("VC_CLUSTER__NATS_URL", o.nats.as_str()),
            // Shorter than the hold, so a directory refresh of every camera happens in it.
            ("VC_CLUSTER__DIRECTORY_REFRESH_SECS", "20"),
            ("VC_DRAIN_SECS", "0"),
            ("RUST_LOG", "warn"),
        ];
        relays.push(vc_benches::start_relay(&bin, &env).await?);
    }
    let urls: Vec<String> = relays
        .iter()
        .map(|r| Ok(format!("ws://{}/ws", r.addr("signaling")?)))
        .collect::<Result<_>>()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0: Vec<u64> = relays.iter().map(|r| vc_benches::rss_kib(r.pid)).collect();
    let key = TicketKey::new(&Secret::new(SECRET));
    let n = all.len();
    println!(
        "presence_load: {n} camera WebSockets over {} real vc-relay nodes (NATS {}), vc-control on Postgres {}",
        relays.len(),
        o.nats,
        server.base
    );

    // All at once (up to 1,000 handshakes in flight), round robin over the nodes.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let (close_half, close_half_rx) = tokio::sync::watch::channel(false);
    let (close_rest, close_rest_rx) = tokio::sync::watch::channel(false);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(1000));
    let (d0, l0) = (
        writes(db, "devices").await?,
        writes(db, "node_leases").await?,
    );
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, dev) in all.iter().enumerate() {
        let (token, _) =
            key.mint_signaling(&dev.to_string(), Role::Camera, vec![*dev], unix_now(), 3600);
        let url = urls[i % urls.len()].clone();
        let close = if i % 2 == 0 {
            &close_half_rx
        } else {
            &close_rest_rx
        }
        .clone();
        let ready = ready_tx.clone();
        let permit = handshakes.clone().acquire_owned();
        tasks.push(tokio::spawn(async move {
            let Ok(permit) = permit.await else { return };
            hold_camera(url, token, ready, close, permit).await
        }));
    }
    drop(ready_tx);
    for _ in 0..n {
        ready_rx.recv().await.context("a camera task ended")??;
    }
    let connected = t0.elapsed();
    let lag = until_shown(db, Duration::from_secs(60), |s| s as usize == n).await?;
    let all_online = t0.elapsed();
    tokio::time::sleep(STATS_FLUSH).await;
    let (d1, l1) = (
        writes(db, "devices").await?,
        writes(db, "node_leases").await?,
    );
    println!("\n| step | result |\n|---|---|");
    println!(
        "| {n} cameras connect at once | all welcomed in {:.2} s; vc-control shows all online {:.2} s after the first connect, {:.2} s after the last; {} device rows, {} lease rows written |",
        connected.as_secs_f64(),
        all_online.as_secs_f64(),
        lag.as_secs_f64(),
        d1 - d0,
        l1 - l0
    );

    // Idle: nothing changes; what does holding them cost?
    let w0 = wal(db).await?;
    let rss_a: Vec<u64> = relays.iter().map(|r| vc_benches::rss_kib(r.pid)).collect();
    let cpu_a: Vec<f64> = relays.iter().map(|r| vc_benches::cpu_secs(r.pid)).collect();
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(o.seconds) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        while let Ok(r) = ready_rx.try_recv() {
            r?;
        }
        ensure!(
            shown_online(db).await? as usize == n,
            "a camera dropped out during the idle hold"
        );
    }
    let idle = t1.elapsed().as_secs_f64();
    let w1 = wal(db).await?;
    tokio::time::sleep(STATS_FLUSH).await;
    let (d2, l2) = (
        writes(db, "devices").await?,
        writes(db, "node_leases").await?,
    );
    let rss_b: Vec<u64> = relays.iter().map(|r| vc_benches::rss_kib(r.pid)).collect();
    let cpu_b: Vec<f64> = relays.iter().map(|r| vc_benches::cpu_secs(r.pid)).collect();
    println!(
        "| idle hold {idle:.0} s, all still online | device rows written {:.2}/s, lease rows {:.2}/s, WAL {:.1} KiB/s |",
        (d2 - d1) as f64 / idle,
        (l2 - l1) as f64 / idle,
        (w1 - w0) as f64 / idle / 1024.0,
    );
    let per = n.div_ceil(relays.len());
    for i in 0..relays.len() {
        println!(
            "| node {i}: {per} cameras | RSS {} -> {} KiB ({:.2} KiB per camera above empty), {} KiB at the end of the hold; CPU {:.2} % of a core while idle |",
            rss0[i],
            rss_a[i],
            rss_a[i].saturating_sub(rss0[i]) as f64 / per as f64,
            rss_b[i],
            (cpu_b[i] - cpu_a[i]) / idle * 100.0,
        );
    }

    // Half leave cleanly.
    close_half.send(true)?;
    let half = n - n.div_ceil(2);
    let took = until_shown(db, Duration::from_secs(60), |s| s as usize == half).await?;
    println!(
        "| {} cameras close cleanly | vc-control shows {half} online {:.2} s after the closes began |",
        n.div_ceil(2),
        took.as_secs_f64()
    );
    close_rest.send(true)?;
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
