//! Crashes lose nothing and heal by themselves (issues 9 and 11): vc-control killed with
//! SIGKILL mid-flight and started again on the same database and port, while vc-relay keeps
//! running. Committed data survives; presence changes that happened while vc-control was down
//! are delivered once it is back (the relay retries with backoff, nobody restarts it).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use shared::signaling::ServerMessage;
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
