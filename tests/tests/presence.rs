//! Presence at fleet scale (issue 9): node leases, change-only reports and their ordering.
//!
//! * `report_ordering_and_leases_*`: signed reports straight to vc-control (SQLite and
//!   Postgres): a camera that moved nodes stays online whatever order the reports arrive in,
//!   a lapsed or released lease takes a node's cameras offline, a restarted node's old epoch is
//!   refused, a deleted device is named in the next ack.
//! * `thousands_of_cameras_stay_right`: a real vc-control (Postgres) and vc-relay, 5,000 camera
//!   WebSockets from one load client held for 30 s, longer than every periodic timer in the
//!   path (heartbeat, lease, ping, idle), with both processes' RSS sampled, half closed
//!   cleanly, then the relay killed and a new one started.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;
use shared::api::{PresenceAck, PresenceEvent, PresenceReport};
use shared::ticket::{unix_now, Role, TicketKey};
use shared::Secret;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;
use vc_tests::stack::{metric, start_relay, Control, Db};

const SECRET: &str = "presence-test-ticket-secret-at-least-32-bytes";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Posts a signed presence report; returns the status and the parsed body.
async fn report(c: &Control, r: &PresenceReport) -> Result<(StatusCode, Value)> {
    let body = serde_json::to_vec(r)?;
    let sig = TicketKey::new(&Secret::new(SECRET)).sign_internal(&body);
    let res = c
        .http
        .post(format!("{}/api/internal/presence", c.base))
        .header("x-vc-signature", sig)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = res.status();
    let v: Value = res.json().await.unwrap_or(Value::Null);
    Ok((status, v))
}

fn rep(node: &str, epoch: u64, lease_ms: u64, events: Vec<PresenceEvent>) -> PresenceReport {
    PresenceReport {
        sent_at: unix_now(),
        node_id: node.into(),
        epoch,
        lease_ms,
        leaving: false,
        revoked_since_ms: 0,
        events,
    }
}

fn ev(device: Uuid, online: bool, at_ms: u64, conn: u64) -> PresenceEvent {
    PresenceEvent {
        device_id: device,
        online,
        at_ms,
        conn,
    }
}

async fn status(c: &Control, jwt: &str, dev: Uuid) -> Result<String> {
    Ok(c.listed(jwt, dev).await?["status"]
        .as_str()
        .context("status")?
        .to_owned())
}

async fn report_ordering_and_leases(db: Db) -> Result<()> {
    let c = Control::start(db, SECRET, &[]).await?;
    let jwt = c.user("owner@example.com").await?;
    let (dev, _) = c.camera(&jwt, "CAM-MOVER").await?;
    let (dev2, _) = c.camera(&jwt, "CAM-OTHER").await?;
    let t = now_ms();

    // The camera moves from node A to node B; A notices its old connection dropped only after
    // B's online is in. It must end online.
    let (s, v) = report(&c, &rep("node-a", 1, 60_000, vec![ev(dev, true, t, 7)])).await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    ensure!(status(&c, &jwt, dev).await? == "online");
    report(
        &c,
        &rep("node-b", 1, 60_000, vec![ev(dev, true, t + 500, 3)]),
    )
    .await?;
    let (s, _) = report(
        &c,
        &rep("node-a", 1, 60_000, vec![ev(dev, false, t + 900, 7)]),
    )
    .await?;
    ensure!(s == StatusCode::OK);
    ensure!(
        status(&c, &jwt, dev).await? == "online",
        "A's late offline overrode B's online"
    );
    // A late online from A's older connection changes nothing either.
    report(
        &c,
        &rep("node-a", 1, 60_000, vec![ev(dev, true, t + 100, 7)]),
    )
    .await?;
    // B's own offline does apply.
    report(
        &c,
        &rep("node-b", 1, 60_000, vec![ev(dev, false, t + 1000, 3)]),
    )
    .await?;
    ensure!(status(&c, &jwt, dev).await? == "offline");

    // Same node, connections coalesced in one report: the latest connection's offline applies
    // to the older connection that is stored.
    report(
        &c,
        &rep("node-b", 1, 60_000, vec![ev(dev, true, t + 1100, 4)]),
    )
    .await?;
    report(
        &c,
        &rep("node-b", 1, 60_000, vec![ev(dev, false, t + 1200, 9)]),
    )
    .await?;
    ensure!(status(&c, &jwt, dev).await? == "offline");

    // A lease that lapses takes the node's cameras offline without any report; last_seen is
    // when the lease was last renewed.
    report(
        &c,
        &rep("node-c", 1, 1_000, vec![ev(dev2, true, now_ms(), 1)]),
    )
    .await?;
    ensure!(status(&c, &jwt, dev2).await? == "online");
    let lapsed = Instant::now();
    loop {
        if status(&c, &jwt, dev2).await? == "offline" {
            break;
        }
        ensure!(
            lapsed.elapsed() < Duration::from_secs(4),
            "lease did not lapse"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(c.listed(&jwt, dev2).await?["last_seen"].is_string());
    // A heartbeat of the same epoch brings them back (the node was only unreachable).
    report(&c, &rep("node-c", 1, 60_000, vec![])).await?;
    ensure!(status(&c, &jwt, dev2).await? == "online");

    // The node restarts (epoch 2): its old cameras are offline until they report again, and
    // a late report of epoch 1 is refused without effect.
    report(&c, &rep("node-c", 2, 60_000, vec![])).await?;
    ensure!(status(&c, &jwt, dev2).await? == "offline");
    let (s, v) = report(
        &c,
        &rep("node-c", 1, 60_000, vec![ev(dev2, true, now_ms(), 5)]),
    )
    .await?;
    ensure!(
        s == StatusCode::CONFLICT && v["error"]["code"] == "stale_epoch",
        "{s} {v}"
    );
    ensure!(status(&c, &jwt, dev2).await? == "offline");
    report(
        &c,
        &rep("node-c", 2, 60_000, vec![ev(dev2, true, now_ms(), 1)]),
    )
    .await?;
    ensure!(status(&c, &jwt, dev2).await? == "online");

    // A clean shutdown releases the lease: offline at once.
    let mut leaving = rep("node-c", 2, 60_000, vec![]);
    leaving.leaving = true;
    report(&c, &leaving).await?;
    ensure!(status(&c, &jwt, dev2).await? == "offline");

    // A deleted device is named in the next ack of every node, from its cursor on.
    let (s, v) = report(&c, &rep("node-d", 1, 60_000, vec![])).await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    let ack: PresenceAck = serde_json::from_value(v)?;
    ensure!(ack.revocations.is_empty(), "{ack:?}");
    let (s, _) = c
        .call(
            reqwest::Method::DELETE,
            &format!("/api/camera/devices/{dev2}"),
            Some(&jwt),
            None,
        )
        .await?;
    ensure!(s == StatusCode::NO_CONTENT);
    let mut next = rep("node-d", 1, 60_000, vec![]);
    next.revoked_since_ms = ack.cursor_ms;
    let (_, v) = report(&c, &next).await?;
    let ack: PresenceAck = serde_json::from_value(v)?;
    ensure!(
        ack.revocations.len() == 1
            && ack.revocations[0].device_id == Some(dev2)
            && ack.revocations[0].subject.is_none(),
        "{ack:?}"
    );

    // Malformed node ids are refused with a clear code.
    let (s, v) = report(&c, &rep("", 1, 60_000, vec![])).await?;
    ensure!(
        s == StatusCode::UNPROCESSABLE_ENTITY && v["error"]["code"] == "bad_node_id",
        "{s} {v}"
    );
    Ok(())
}

#[tokio::test]
async fn report_ordering_and_leases_sqlite() -> Result<()> {
    report_ordering_and_leases(Db::Sqlite).await
}

#[tokio::test]
async fn report_ordering_and_leases_postgres() -> Result<()> {
    report_ordering_and_leases(Db::Postgres).await
}

/// One value from Postgres at `url`, by psql.
async fn psql(url: &str, sql: &str) -> Result<String> {
    let out = tokio::process::Command::new("psql")
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

/// One camera connection held by the load client: it reads (so pings are answered) until told
/// to close cleanly.
struct HeldCamera {
    device: Uuid,
    close: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn hold_camera(ws_base: &str, key: &TicketKey, device: Uuid) -> Result<HeldCamera> {
    let (token, _) = key.mint_signaling(
        &device.to_string(),
        Role::Camera,
        vec![device],
        unix_now(),
        3600,
    );
    let url = format!("{ws_base}?token={token}");
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .context("connect timed out")??;
    match tokio::time::timeout(Duration::from_secs(20), ws.next()).await? {
        Some(Ok(Message::Text(t))) if t.contains("welcome") => {}
        other => bail!("expected welcome, got {other:?}"),
    }
    let (close, mut closing) = oneshot::channel();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                m = ws.next() => match m {
                    Some(Ok(_)) => continue,
                    _ => return,
                },
                _ = &mut closing => {
                    let _ = ws.send(Message::Close(None)).await;
                    // Read until the relay's close answer ends the stream.
                    while let Ok(Some(Ok(_))) =
                        tokio::time::timeout(Duration::from_secs(5), ws.next()).await
                    {}
                    return;
                }
            }
        }
    });
    Ok(HeldCamera {
        device,
        close,
        task,
    })
}

/// Every listed device's status, over all users.
async fn statuses(c: &Control, jwts: &[String]) -> Result<Vec<(Uuid, String)>> {
    let lists = futures_util::future::try_join_all(jwts.iter().map(|jwt| c.devices(jwt))).await?;
    let mut out = Vec::new();
    for d in lists.into_iter().flatten() {
        let id = Uuid::parse_str(d["id"].as_str().context("id")?)?;
        out.push((id, d["status"].as_str().context("status")?.to_owned()));
    }
    Ok(out)
}

/// Waits (up to `within` plus a margin for the polling itself) until `want` says yes for
/// every device; returns how long it took.
async fn wait_all(
    c: &Control,
    jwts: &[String],
    within: Duration,
    want: impl Fn(Uuid, &str) -> bool,
) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let all = statuses(c, jwts).await?;
        let wrong: Vec<_> = all.iter().filter(|(id, s)| !want(*id, s)).collect();
        if wrong.is_empty() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > within {
            bail!(
                "after {:?}, {} devices still wrong, e.g. {:?}",
                t0.elapsed(),
                wrong.len(),
                &wrong[..wrong.len().min(3)]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const USERS: usize = 50;
const CAMERAS_PER_USER: usize = 100;
const HOLD: Duration = Duration::from_secs(30);

/// Resident set size of process `pid`, KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

#[tokio::test]
async fn thousands_of_cameras_stay_right() -> Result<()> {
    let c = Control::start(
        Db::Postgres,
        SECRET,
        &[
            ("VC_MAX_CAMERAS_PER_ACCOUNT", "1000"),
            ("VC_REGISTER_MAX_PER_CLIENT", "1000"),
        ],
    )
    .await?;
    // Every periodic timer in the path is short, and the hold below outlasts each of them:
    // heartbeat 1 s, lease 3 s, ping 2 s, idle timeout 6 s.
    let relay_env = [
        ("VC_SIGNALING__PRESENCE_HEARTBEAT_MS", "1000"),
        ("VC_SIGNALING__PRESENCE_LEASE_SECS", "3"),
        ("VC_SIGNALING__PING_INTERVAL_SECS", "2"),
        ("VC_SIGNALING__IDLE_TIMEOUT_SECS", "6"),
        ("VC_SIGNALING__MAX_CONNECTIONS_PER_IP", "100000"),
    ];
    let relay = start_relay(SECRET, &c.base, &relay_env).await?;
    let ws_base = format!("ws://{}/ws", relay.addr("signaling"));
    let key = TicketKey::new(&Secret::new(SECRET));

    // The fleet: USERS accounts (through the API) with CAMERAS_PER_USER activated cameras
    // each (inserted with SQL: activating 5,000 cameras through the API is not what is tested).
    let t0 = Instant::now();
    let mut jwts = Vec::new();
    for u in 0..USERS {
        jwts.push(c.user(&format!("fleet{u}@example.com")).await?);
    }
    psql(
        &c.db_url,
        &format!(
            "INSERT INTO devices (id, owner_id, device_name, camera_model, status, token_hash, \
                 token_expires_at, device_uid, created_at, activated_at) \
             SELECT gen_random_uuid()::text, u.id, 'cam ' || g, 'CP_PLUS_WIFI_V2', 'offline', \
                 md5(u.id || g), 0, 'UID-' || u.id || '-' || g, g, g \
             FROM users u, generate_series(1, {CAMERAS_PER_USER}) AS g"
        ),
    )
    .await?;
    let devices: Vec<Uuid> = psql(&c.db_url, "SELECT id FROM devices")
        .await?
        .lines()
        .map(Uuid::parse_str)
        .collect::<Result<_, _>>()?;
    let n = devices.len();
    ensure!(n == USERS * CAMERAS_PER_USER, "{n} devices");
    eprintln!("{n} cameras activated in {:?}", t0.elapsed());

    // All connect; all show online within 2 s of the last one connecting.
    let t0 = Instant::now();
    let mut held: Vec<HeldCamera> = futures_util::stream::iter(devices.iter().copied())
        .map(|d| {
            let (ws_base, key) = (&ws_base, &key);
            async move { hold_camera(ws_base, key, d).await }
        })
        .buffer_unordered(200)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    eprintln!("{n} cameras connected in {:?}", t0.elapsed());
    // A burst of 5,000 connects is reported in 25 reports, one in flight at a time (ordering):
    // the aim for a burst is 5 s (issue 9); a single camera's 2 s is tested in signaling.rs.
    let took = wait_all(&c, &jwts, Duration::from_secs(5), |_, s| s == "online").await?;
    eprintln!("all online {took:?} after the last connected");

    // Hold for longer than every timer: nothing changes, no device row is written, and the
    // relay's and vc-control's memory stays flat (sampled every 5 s).
    let hold_from = now_ms();
    let pids = [
        relay.child.id().context("relay pid")?,
        c.running.child.id().context("control pid")?,
    ];
    let mut samples: Vec<[u64; 2]> = Vec::new();
    let hold_end = Instant::now() + HOLD;
    while Instant::now() < hold_end {
        samples.push([rss_kib(pids[0])?, rss_kib(pids[1])?]);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    samples.push([rss_kib(pids[0])?, rss_kib(pids[1])?]);
    eprintln!("RSS KiB [relay, control] every 5 s over the hold: {samples:?}");
    for (i, name) in ["vc-relay", "vc-control"].iter().enumerate() {
        // After the first sample (warm-up), growth is noise: at most 10 % + 4 MiB.
        let first = samples[1][i];
        let last = samples.last().expect("samples")[i];
        ensure!(
            last <= first + first / 10 + 4096,
            "{name} RSS grew from {first} KiB to {last} KiB while idle"
        );
    }
    wait_all(&c, &jwts, Duration::ZERO, |_, s| s == "online").await?;
    let written = psql(
        &c.db_url,
        &format!("SELECT COUNT(*) FROM devices WHERE presence_at_ms >= {hold_from}"),
    )
    .await?;
    ensure!(written == "0", "{written} device rows rewritten while idle");
    let metrics = c
        .http
        .get(format!("http://{}/metrics", relay.addr("admin")))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        metric(&metrics, "vc_relay_signaling_connected_cameras") == Some(n as f64),
        "relay lost cameras while idle"
    );
    ensure!(
        metric(&metrics, "vc_relay_signaling_presence_failures_total").unwrap_or(0.0) == 0.0,
        "presence reports failed"
    );
    // Presence lag is exported: at least one report per 200 changes, none slow on average.
    let lag_count =
        metric(&metrics, "vc_relay_signaling_presence_lag_seconds_count").unwrap_or(0.0);
    let lag_sum = metric(&metrics, "vc_relay_signaling_presence_lag_seconds_sum").unwrap_or(0.0);
    ensure!(
        lag_count >= (n / 200) as f64 && lag_sum / lag_count < 5.0,
        "presence lag: {lag_count} reports, {lag_sum} s in all"
    );

    // Half disconnect cleanly: offline within 2 s, the rest stay online.
    let leaving: Vec<HeldCamera> = held.drain(..n / 2).collect();
    let gone: HashSet<Uuid> = leaving.iter().map(|h| h.device).collect();
    let t0 = Instant::now();
    for h in leaving {
        let _ = h.close.send(());
        let _ = h.task.await;
    }
    let took = wait_all(&c, &jwts, Duration::from_secs(2), |id, s| {
        (s == "offline") == gone.contains(&id)
    })
    .await?;
    eprintln!(
        "{} offline {took:?} after the last close ({:?} closing)",
        gone.len(),
        t0.elapsed()
    );

    // The relay dies (kill -9): its lease lapses and its cameras go offline (lease 3 s).
    let mut relay = relay;
    relay.child.kill().await?;
    let took = wait_all(&c, &jwts, Duration::from_secs(5), |_, s| s == "offline").await?;
    eprintln!("all offline {took:?} after the relay was killed");
    drop(held);

    // A new relay process (new epoch) on the same control: cameras that connect to it are
    // online again.
    let relay = start_relay(SECRET, &c.base, &relay_env).await?;
    let ws_base = format!("ws://{}/ws", relay.addr("signaling"));
    let back: Vec<Uuid> = devices.iter().copied().take(500).collect();
    let _held: Vec<HeldCamera> = futures_util::stream::iter(back.iter().copied())
        .map(|d| {
            let (ws_base, key) = (&ws_base, &key);
            async move { hold_camera(ws_base, key, d).await }
        })
        .buffer_unordered(200)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let back: HashSet<Uuid> = back.into_iter().collect();
    wait_all(&c, &jwts, Duration::from_secs(2), |id, s| {
        (s == "online") == back.contains(&id)
    })
    .await?;
    Ok(())
}
