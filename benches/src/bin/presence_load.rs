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

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use hdrhistogram::Histogram;
use shared::api::{PresenceEvent, PresenceReport};
use shared::ticket::{unix_now, TicketKey};
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
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        cameras: 100_000,
        nodes: 10,
        seconds: 20,
        churn: 200,
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
            other => bail!("unknown argument {other}; usage: presence_load [--cameras N] [--nodes N] [--seconds N] [--churn cameras/s] [--pg URL]"),
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
    let http = reqwest::Client::builder()
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
