//! Crashes lose nothing and heal by themselves (issues 9 and 11): vc-control killed with
//! SIGKILL mid-flight and started again on the same database and port, while vc-relay keeps
//! running. Committed data survives; presence changes that happened while vc-control was down
//! are delivered once it is back (the relay retries with backoff, nobody restarts it).
//! And a kill in the middle of concurrent onboarding/activation traffic leaves every answered
//! request in place and no row half written (the database is checked with its own client).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use shared::signaling::ServerMessage;
use vc_tests::control::USER_PASSWORD;
use vc_tests::signaling_client::{recv, Ws, STEP};
use vc_tests::stack::{start_relay, Control, Db};

const SECRET: &str = "durability-test-ticket-secret-at-least-32-bytes";
const JWT_SECRET: &str = "durability-test-jwt-secret-kept-across-restarts";

async fn join(relay: &vc_tests::Running, token: &str) -> Result<Ws> {
    let url = format!("ws://{}/ws?token={token}", relay.addr("signaling"));
    let (mut ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url)).await??;
    match recv(&mut ws).await? {
        ServerMessage::Welcome { .. } => Ok(ws),
        other => bail!("expected welcome, got {other:?}"),
    }
}

async fn wait_for(c: &Control, jwt: &str, want: &[(uuid::Uuid, &str)]) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let mut ok = true;
        for (dev, status) in want {
            if c.listed(jwt, *dev).await?["status"] != *status {
                ok = false;
            }
        }
        if ok {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("not {want:?} after 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn durability(db: Db) -> Result<()> {
    let env = [("VC_JWT_SECRET", JWT_SECRET)];
    let mut first = Control::start(db, SECRET, &env).await?;
    let port = first.base.rsplit(':').next().context("port")?.to_owned();
    let relay = start_relay(SECRET, &first.base, &[]).await?;
    let jwt = first.user("crash@example.com").await?;
    let (cam1, secret1) = first.camera(&jwt, "CRASH-1").await?;
    let (cam2, secret2) = first.camera(&jwt, "CRASH-2").await?;
    let t1 = first.camera_ticket(cam1, &secret1).await?;
    let t2 = first.camera_ticket(cam2, &secret2).await?;
    let mut ws1 = join(&relay, &t1.signaling.token).await?;
    wait_for(&first, &jwt, &[(cam1, "online"), (cam2, "offline")]).await?;

    // vc-control dies; meanwhile camera 1 leaves and camera 2 arrives.
    first.running.child.kill().await?;
    let _ = ws1.close(None).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), ws1.next()).await {}
    let _ws2 = join(&relay, &t2.signaling.token).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Back on the same database and port: the account, the cameras and their secrets are
    // there, and the relay's pending changes arrive without restarting anything.
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("VC_JWT_SECRET", JWT_SECRET),
        ("VC_LISTEN", listen.as_str()),
    ];
    let second = Control::start_on(&first.db_url, SECRET, &env).await?;
    let took = wait_for(&second, &jwt, &[(cam1, "offline"), (cam2, "online")]).await?;
    eprintln!("presence healed {took:?} after vc-control came back");
    let (s, v) = second
        .call(
            reqwest::Method::POST,
            "/api/login",
            None,
            Some(serde_json::json!({"email": "crash@example.com", "password": "password123"})),
        )
        .await?;
    anyhow::ensure!(s.is_success(), "login after the crash: {s} {v}");
    second.camera_ticket(cam1, &secret1).await?;
    Ok(())
}

#[tokio::test]
async fn sqlite_survives_kill_9() -> Result<()> {
    durability(Db::Sqlite).await
}

#[tokio::test]
async fn postgres_survives_kill_9() -> Result<()> {
    durability(Db::Postgres).await
}

/// Postgres ends every vc-control connection (a database restart or failover does this): the
/// next requests are served, none gets a 500 from a dead pooled connection. vc-control pings a
/// connection that sat idle before using it (`db::PING_IF_IDLE_FOR`), instead of on every
/// query as sqlx does by default, which cost one database round trip per query.
#[tokio::test]
async fn postgres_connections_cut_by_the_server_are_replaced_before_use() -> Result<()> {
    let c = Control::start(Db::Postgres, SECRET, &[]).await?;
    let jwt = c.user("cut-connections@example.com").await?;
    // A few requests at once so the pool holds several connections.
    let list = || c.get("/api/camera/devices", Some(&jwt));
    let (a, b, d) = tokio::join!(list(), list(), list());
    for r in [a, b, d] {
        let (status, body) = r?;
        ensure!(status == StatusCode::OK, "before: {status} {body}");
    }
    let cut = c
        .sql(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await?;
    ensure!(cut.trim().parse::<u32>()? >= 1, "no connection cut: {cut}");
    // Past the idle threshold: every pooled connection is checked before it serves.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..5 {
        let (status, body) = list().await?;
        ensure!(
            status == StatusCode::OK,
            "request {i} after the cut: {status} {body}"
        );
    }
    Ok(())
}

/// What the load client was told (2xx answers) and what it sent without hearing back.
#[derive(Default)]
struct Ledger {
    /// Registered (201) accounts.
    users: Vec<String>,
    /// Onboarded (201) claims: device id -> owner email.
    claims: HashMap<uuid::Uuid, String>,
    /// Every secret a 2xx activation returned, per device, oldest first.
    secrets: HashMap<uuid::Uuid, Vec<String>>,
    /// Per account, onboard requests sent that got no answer (one may have committed).
    claims_in_flight: HashMap<String, usize>,
    /// Devices with an activation sent that got no answer (its secret may have replaced
    /// the last one we know, and we never learnt it).
    activations_in_flight: HashSet<uuid::Uuid>,
}

/// One load task: accounts, each with cameras onboarded, activated, retried with the proven
/// secret (a new secret replaces the old), listed and ticketed, until vc-control dies.
async fn flows(c: Arc<Control>, ledger: Arc<Mutex<Ledger>>, task: usize) {
    for n in 0.. {
        let email = format!("load-{task}-{n}@example.com");
        let creds = json!({"email": email, "password": USER_PASSWORD});
        match c.post("/api/register", None, creds.clone()).await {
            Ok((s, _)) if s == StatusCode::CREATED => {
                ledger.lock().unwrap().users.push(email.clone())
            }
            _ => return,
        }
        let jwt = match c.post("/api/login", None, creds).await {
            Ok((s, v)) if s.is_success() => {
                v["access_token"].as_str().unwrap_or_default().to_owned()
            }
            _ => return,
        };
        for cam in 0..4 {
            let uid = format!("LOAD-{task}-{n}-{cam}");
            *ledger
                .lock()
                .unwrap()
                .claims_in_flight
                .entry(email.clone())
                .or_default() += 1;
            let ob = match c.onboard(&jwt, &uid).await {
                Ok(ob) => ob,
                Err(_) => return,
            };
            let Ok(dev) = serde_json::from_value::<uuid::Uuid>(ob["device_id"].clone()) else {
                return;
            };
            {
                let mut l = ledger.lock().unwrap();
                *l.claims_in_flight.entry(email.clone()).or_default() -= 1;
                l.claims.insert(dev, email.clone());
            }
            let token = ob["device_token"].as_str().unwrap_or_default().to_owned();
            let mut presented: Option<String> = None;
            for _attempt in 0..2 {
                ledger.lock().unwrap().activations_in_flight.insert(dev);
                let mut body = json!({"device_token": token, "device_uid": uid,
                                      "camera_model": "CP_PLUS_WIFI_V2"});
                if let Some(s) = &presented {
                    body["device_secret"] = json!(s);
                }
                let secret = match c.post("/api/camera/activate", None, body).await {
                    Ok((s, v)) if s == StatusCode::OK => {
                        v["device_secret"].as_str().unwrap_or_default().to_owned()
                    }
                    _ => return,
                };
                {
                    let mut l = ledger.lock().unwrap();
                    l.activations_in_flight.remove(&dev);
                    l.secrets.entry(dev).or_default().push(secret.clone());
                }
                presented = Some(secret);
            }
            if c.devices(&jwt).await.is_err() {
                return;
            }
            if c.camera_ticket(dev, presented.as_deref().unwrap_or_default())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Whether the relay-ticket route accepts `secret` for `device` (200), refuses it (401), or
/// something else went wrong.
async fn secret_works(c: &Control, device: uuid::Uuid, secret: &str) -> Result<bool> {
    let (s, v) = c
        .post(
            "/api/relay/ticket",
            None,
            json!({"device_id": device, "device_secret": secret}),
        )
        .await?;
    match s {
        StatusCode::OK => Ok(true),
        StatusCode::UNAUTHORIZED => Ok(false),
        _ => bail!("ticket for {device}: {s} {v}"),
    }
}

/// Many concurrent onboarding/activation flows, vc-control SIGKILLed in the middle of them,
/// restarted on the same database: everything answered 2xx is there, no row is half
/// written, and each device has exactly one working secret, the last one it was given.
async fn kill_mid_traffic(db: Db) -> Result<()> {
    const TASKS: usize = 16;
    let env = [
        ("VC_RELAY__SIGNALING_URL", "ws://relay.test/ws"),
        ("VC_REGISTER_MAX_PER_CLIENT", "100000"),
    ];
    let first = Arc::new(Control::start(db, SECRET, &env).await?);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| tokio::spawn(flows(first.clone(), ledger.clone(), t)))
        .collect();
    // Kill once a good amount of traffic has been answered, whatever the machine's speed.
    let t0 = Instant::now();
    while ledger.lock().unwrap().secrets.len() < 60 && t0.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = first.running.child.id().context("pid")?;
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill -9 {pid}");
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(35), t).await??;
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    let in_flight_activations = ledger.activations_in_flight.len();
    eprintln!(
        "killed after {:?}: {} accounts, {} claims, {} activated devices answered; \
         {in_flight_activations} activations unanswered",
        t0.elapsed(),
        ledger.users.len(),
        ledger.claims.len(),
        ledger.secrets.len(),
    );
    anyhow::ensure!(
        !ledger.secrets.is_empty(),
        "no activation answered before the kill"
    );

    let second = Control::start_on(&first.db_url, SECRET, &env).await?;
    // No half-written rows: every device has an owner; pending means no camera, secret or
    // activation time, and anything activated has all three.
    let orphans = second
        .sql("SELECT count(*) FROM devices d LEFT JOIN users u ON u.id = d.owner_id WHERE u.id IS NULL")
        .await?;
    anyhow::ensure!(orphans == "0", "{orphans} devices without an owner");
    let torn = second
        .sql(
            "SELECT id, status FROM devices WHERE NOT (\
             (status = 'pending' AND device_uid IS NULL AND secret_hash IS NULL AND activated_at IS NULL) \
             OR (status IN ('offline', 'online') AND device_uid IS NOT NULL \
                 AND secret_hash IS NOT NULL AND activated_at IS NOT NULL))",
        )
        .await?;
    anyhow::ensure!(torn.is_empty(), "devices in inconsistent states: {torn}");
    let users: HashMap<String, String> = second
        .sql("SELECT email, id FROM users")
        .await?
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(e, i)| (e.to_owned(), i.to_owned()))
        .collect();
    let devices: HashMap<String, (String, String)> = second
        .sql("SELECT id, owner_id, status FROM devices")
        .await?
        .lines()
        .filter_map(|l| {
            let mut p = l.split('|');
            Some((
                p.next()?.to_owned(),
                (p.next()?.to_owned(), p.next()?.to_owned()),
            ))
        })
        .collect();

    // Every 2xx is there: accounts (and they log in), claims with their owner, activations.
    for email in &ledger.users {
        anyhow::ensure!(users.contains_key(email), "registered {email} is gone");
    }
    for (dev, email) in &ledger.claims {
        let (owner, status) = devices
            .get(&dev.to_string())
            .with_context(|| format!("claim {dev} of {email} is gone"))?;
        anyhow::ensure!(users.get(email) == Some(owner), "claim {dev} changed owner");
        if ledger.secrets.contains_key(dev) {
            anyhow::ensure!(status != "pending", "activated {dev} is pending again");
        }
    }
    // No claims beyond the answered ones and the ones still in flight.
    for (email, id) in &users {
        let stored = devices.values().filter(|(o, _)| o == id).count();
        let answered = ledger.claims.values().filter(|e| *e == email).count();
        let in_flight = ledger.claims_in_flight.get(email).copied().unwrap_or(0);
        anyhow::ensure!(
            answered <= stored && stored <= answered + in_flight,
            "{email}: {stored} claims stored, {answered} answered, {in_flight} in flight"
        );
    }
    let jwt = second.jwt(&ledger.users[0], USER_PASSWORD).await?;
    second.devices(&jwt).await?;

    // One secret per device: of the secrets it was given, only the last can work, and it
    // does unless an unanswered activation replaced it.
    for (dev, secrets) in &ledger.secrets {
        let (last, older) = secrets.split_last().context("no secret")?;
        for s in older {
            anyhow::ensure!(
                !secret_works(&second, *dev, s).await?,
                "{dev}: a superseded secret works"
            );
        }
        let works = secret_works(&second, *dev, last).await?;
        if !ledger.activations_in_flight.contains(dev) {
            anyhow::ensure!(
                works,
                "{dev}: the secret of its last 2xx activation does not work"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn sqlite_kill_9_mid_onboarding() -> Result<()> {
    kill_mid_traffic(Db::Sqlite).await
}

#[tokio::test]
async fn postgres_kill_9_mid_onboarding() -> Result<()> {
    kill_mid_traffic(Db::Postgres).await
}
