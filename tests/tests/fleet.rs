//! A small fleet (issue 9): two vc-control instances on one Postgres (as behind a load
//! balancer) and two clustered vc-relay nodes on a private NATS. Every step goes through a
//! different instance than the one before, so nothing may depend on per-process state:
//! JWTs, activation long-polls, presence, tickets, cross-node signaling, a camera moving
//! between nodes, a node killed. And a real vc-camera failing over from a killed node to
//! another through a load balancer, with video seen again.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::json;
use shared::signaling::{ClientMessage, ErrorCode, ServerMessage};
use uuid::Uuid;
use vc_tests::balancer::Balancer;
use vc_tests::signaling_client::{recv, send, Ws, STEP};
use vc_tests::stack::{start_relay, Control, Db};
use vc_tests::viewer::viewer_until_online;
use vc_tests::{fresh_postgres_url, Nats, Running};

const SECRET: &str = "fleet-test-ticket-secret-at-least-32-bytes";
const JWT_SECRET: &str = "fleet-test-jwt-secret-shared-by-every-instance";

async fn node(name: &str, nats: &Nats, control: &Control) -> Result<Running> {
    let nats_url = nats.url();
    start_relay(
        SECRET,
        &control.base,
        &[
            ("VC_CLUSTER__NODE_ID", name),
            ("VC_CLUSTER__NATS_URL", nats_url.as_str()),
            ("VC_SIGNALING__PRESENCE_LEASE_SECS", "3"),
        ],
    )
    .await
}

async fn join(relay: &Running, token: &str) -> Result<Ws> {
    let url = format!("ws://{}/ws?token={token}", relay.addr("signaling"));
    let (mut ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url)).await??;
    match recv(&mut ws).await? {
        ServerMessage::Welcome { .. } => Ok(ws),
        other => bail!("expected welcome, got {other:?}"),
    }
}

/// `connect` until a session opens (the directory entry may still be on its way).
async fn open_session(viewer: &mut Ws, device: Uuid) -> Result<Uuid> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        send(viewer, &ClientMessage::Connect { device_id: device }).await?;
        match recv(viewer).await? {
            ServerMessage::Session { session_id, .. } => return Ok(session_id),
            ServerMessage::Error { code, .. }
                if matches!(code, ErrorCode::CameraOffline | ErrorCode::Unavailable)
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => bail!("expected a session, got {other:?}"),
        }
    }
}

/// offer viewer -> camera, answer back.
async fn offer_answer(viewer: &mut Ws, camera: &mut Ws, session_id: Uuid) -> Result<()> {
    let sdp = format!("v=0 offer {session_id}");
    send(
        viewer,
        &ClientMessage::Offer {
            session_id,
            sdp: sdp.clone(),
        },
    )
    .await?;
    match recv(camera).await? {
        ServerMessage::Offer {
            session_id: s,
            sdp: got,
        } if s == session_id && got == sdp => {}
        other => bail!("camera expected the offer, got {other:?}"),
    }
    send(
        camera,
        &ClientMessage::Answer {
            session_id,
            sdp: "v=0 answer".into(),
        },
    )
    .await?;
    match recv(viewer).await? {
        ServerMessage::Answer { session_id: s, .. } if s == session_id => Ok(()),
        other => bail!("viewer expected the answer, got {other:?}"),
    }
}

async fn status(c: &Control, jwt: &str, dev: Uuid) -> Result<String> {
    Ok(c.listed(jwt, dev).await?["status"]
        .as_str()
        .context("status")?
        .to_owned())
}

async fn wait_status(
    c: &Control,
    jwt: &str,
    dev: Uuid,
    want: &str,
    within: Duration,
) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        if status(c, jwt, dev).await? == want {
            return Ok(t0.elapsed());
        }
        ensure!(t0.elapsed() < within, "{dev} not {want} after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_controls_two_relays_one_fleet() -> Result<()> {
    let nats = Nats::start().await?;
    let db = fresh_postgres_url().await?;
    let env = [
        ("VC_JWT_SECRET", JWT_SECRET),
        ("VC_LOGIN_MAX_FAILURES", "4"),
    ];
    let ctl_a = Control::start_on(&db, SECRET, &env).await?;
    let ctl_b = Control::start_on(&db, SECRET, &env).await?;
    let relay_a = node("node-a", &nats, &ctl_a).await?;
    let relay_b = node("node-b", &nats, &ctl_b).await?;

    // A JWT from one instance works on the other.
    let jwt = ctl_a.user("family@example.com").await?;
    ensure!(ctl_b.devices(&jwt).await?.is_empty());

    // Failed logins count across instances: 2 on A and 2 on B exhaust a limit of 4.
    let wrong = json!({"email": "family@example.com", "password": "not-the-password"});
    for c in [&ctl_a, &ctl_b, &ctl_a, &ctl_b] {
        let (s, v) = c
            .call(Method::POST, "/api/login", None, Some(wrong.clone()))
            .await?;
        ensure!(s == StatusCode::UNAUTHORIZED, "wrong password {s} {v}");
    }
    let right = json!({"email": "family@example.com", "password": "password123"});
    let (s, v) = ctl_a
        .call(Method::POST, "/api/login", None, Some(right))
        .await?;
    ensure!(
        s == StatusCode::TOO_MANY_REQUESTS,
        "limit not shared across instances: {s} {v}"
    );

    // Onboard on A, long-poll on B, activate on A: B's long-poll answers.
    let (s, ob) = ctl_a
        .call(
            Method::POST,
            "/api/camera/onboard",
            Some(&jwt),
            Some(
                json!({"camera_model": "CP_PLUS_WIFI_V2", "wifi_ssid": "HomeNet",
                        "wifi_password": "wifi-pass-123", "device_name": "Porch"}),
            ),
        )
        .await?;
    ensure!(s == StatusCode::CREATED, "onboard {s} {ob}");
    let token = ob["device_token"]
        .as_str()
        .context("device_token")?
        .to_owned();
    let poll = {
        let (http, base, jwt, token) = (
            ctl_b.http.clone(),
            ctl_b.base.clone(),
            jwt.clone(),
            token.clone(),
        );
        tokio::spawn(async move {
            let t0 = Instant::now();
            let r = vc_tests::api_call(
                &http,
                &base,
                Method::GET,
                &format!("/api/camera/check-status/{token}?wait=20"),
                Some(&jwt),
                None,
            )
            .await;
            (r, t0.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, act) = ctl_a
        .call(
            Method::POST,
            "/api/camera/activate",
            None,
            Some(json!({"device_token": token, "device_uid": "PORCH-1",
                        "camera_model": "CP_PLUS_WIFI_V2"})),
        )
        .await?;
    ensure!(s == StatusCode::OK, "activate {s} {act}");
    let (polled, waited) = poll.await?;
    let (s, v) = polled?;
    ensure!(s == StatusCode::OK && v["activated"] == true, "{s} {v}");
    eprintln!("long-poll on B answered {waited:?} after it started (activation on A)");
    let dev = Uuid::parse_str(act["device_id"].as_str().context("device_id")?)?;
    let dev_secret = act["device_secret"].as_str().context("secret")?.to_owned();

    // The camera gets its ticket from B and lands on relay A; B's list shows it online.
    let ct = ctl_b.camera_ticket(dev, &dev_secret).await?;
    let mut cam_a = join(&relay_a, &ct.signaling.token).await?;
    let took = wait_status(&ctl_b, &jwt, dev, "online", Duration::from_secs(2)).await?;
    eprintln!("online on B {took:?} after connecting to relay A");

    // The viewer gets its ticket from A and lands on relay B: signaling crosses NATS.
    let vt = ctl_a.viewer_ticket(&jwt, dev).await?;
    let mut viewer = join(&relay_b, &vt.signaling.token).await?;
    let s1 = open_session(&mut viewer, dev).await?;
    offer_answer(&mut viewer, &mut cam_a, s1).await?;

    // The camera moves to relay B (new connection first, then the old one drops): it must
    // end online although A's offline is reported after B's online.
    let ct = ctl_a.camera_ticket(dev, &dev_secret).await?;
    let mut cam_b = join(&relay_b, &ct.signaling.token).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(cam_a);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for c in [&ctl_a, &ctl_b] {
        ensure!(
            status(c, &jwt, dev).await? == "online",
            "moved camera shown offline"
        );
    }
    // A viewer on node A now reaches it on node B.
    let vt = ctl_b.viewer_ticket(&jwt, dev).await?;
    let mut viewer_a = join(&relay_a, &vt.signaling.token).await?;
    let s2 = open_session(&mut viewer_a, dev).await?;
    offer_answer(&mut viewer_a, &mut cam_b, s2).await?;

    // Node B is killed: its lease lapses and the camera shows offline on both instances.
    let mut relay_b = relay_b;
    relay_b.child.kill().await?;
    let took = wait_status(&ctl_a, &jwt, dev, "offline", Duration::from_secs(6)).await?;
    eprintln!("offline {took:?} after node B was killed (lease 3 s)");
    ensure!(status(&ctl_b, &jwt, dev).await? == "offline");
    // Node A keeps serving: a cross-node connect to the dead node's camera is refused
    // cleanly, not hung.
    send(&mut viewer_a, &ClientMessage::Connect { device_id: dev }).await?;
    match recv(&mut viewer_a).await? {
        ServerMessage::Error {
            code: ErrorCode::CameraOffline | ErrorCode::Unavailable,
            ..
        } => {}
        ServerMessage::Bye { .. } => {}
        other => bail!("expected the camera offline, got {other:?}"),
    }
    relay_a.terminate().await?;
    Ok(())
}

/// Runs `vc-camera onboard` with the QR payload the control plane produced.
async fn camera_onboard(payload: &str, state: &str) -> Result<()> {
    let mut cmd = tokio::process::Command::new(vc_tests::binary("vc-camera"));
    cmd.args(["onboard", "--qr-payload", payload, "--state", state])
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("VC_") {
            cmd.env_remove(k);
        }
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("vc-camera onboard hung")??;
    ensure!(
        out.status.success(),
        "onboard failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A real vc-camera behind a load balancer in front of two clustered relays: relay A is
/// killed (SIGKILL) under it; the camera reconnects by itself through the balancer to B, the
/// viewer's dead cross-node session ends with `bye`, and a viewer sees the live video again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_fails_over_to_another_node_and_video_resumes() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(150), failover())
        .await
        .context("failover test deadline")?
}

async fn failover() -> Result<()> {
    let nats = Nats::start().await?;
    let nats_url = nats.url();
    let control_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let control_url = format!("http://127.0.0.1:{control_port}");
    let relay = |name: &'static str| {
        let (control_url, nats_url) = (control_url.clone(), nats_url.clone());
        async move {
            start_relay(
                SECRET,
                &control_url,
                &[
                    ("VC_CLUSTER__NODE_ID", name),
                    ("VC_CLUSTER__NATS_URL", nats_url.as_str()),
                    ("VC_SIGNALING__PRESENCE_LEASE_SECS", "3"),
                    ("VC_TURN__ALLOW_LOOPBACK_PEERS", "true"),
                ],
            )
            .await
        }
    };
    let relay_a = relay("node-a").await?;
    let relay_b = relay("node-b").await?;
    let lb = Balancer::start(vec![
        relay_a.addr("signaling").to_owned(),
        relay_b.addr("signaling").to_owned(),
    ])
    .await?;
    let turn_uris = serde_json::to_string(&[
        format!("turn:{}?transport=udp", relay_a.addr("turn-udp")),
        format!("turn:{}?transport=udp", relay_b.addr("turn-udp")),
    ])?;
    let signaling_url = format!("ws://{}/ws", lb.addr);
    let listen = format!("127.0.0.1:{control_port}");
    let control = Control::start(
        Db::Sqlite,
        SECRET,
        &[
            ("VC_LISTEN", listen.as_str()),
            ("VC_SERVER_URL", control_url.as_str()),
            ("VC_RELAY__SIGNALING_URL", signaling_url.as_str()),
            ("VC_RELAY__TURN_URIS", turn_uris.as_str()),
        ],
    )
    .await?;
    let jwt = control.user("failover@example.com").await?;
    let ob = control.onboard(&jwt, "Garage").await?;
    let dev = Uuid::parse_str(ob["device_id"].as_str().context("device_id")?)?;
    let payload = match &ob["qr_payload"] {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("camera.json").display().to_string();
    camera_onboard(&payload, &state).await?;
    let _camera =
        vc_tests::start("vc-camera", &["run", "--state", &state, "--fps", "20"], &[]).await?;

    // The camera's connection went through the balancer to node A (first in turn).
    wait_status(&control, &jwt, dev, "online", Duration::from_secs(15)).await?;
    let ticket = || control.viewer_ticket(&jwt, dev);
    let mut viewer = viewer_until_online(ticket, dev, Duration::from_secs(15)).await?;
    viewer.frames(10).await?;

    // Node A dies under the camera.
    let mut relay_a = relay_a;
    relay_a.child.kill().await?;
    let t0 = Instant::now();
    // The viewer's session ends (the camera reappears on B, which ends the dead session).
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(ev) = viewer.events.recv().await {
            if matches!(ev, ServerMessage::Bye { .. } | ServerMessage::Error { .. }) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    ensure!(ended, "the viewer's session on the dead node never ended");
    eprintln!(
        "viewer's session ended {:?} after node A was killed",
        t0.elapsed()
    );
    wait_status(&control, &jwt, dev, "online", Duration::from_secs(15)).await?;
    eprintln!(
        "camera online again {:?} after node A was killed",
        t0.elapsed()
    );
    viewer.close().await;

    // A viewer sees live video again, through node B.
    let mut again = viewer_until_online(ticket, dev, Duration::from_secs(30)).await?;
    let frames = again.frames(10).await?;
    eprintln!(
        "video again {:?} after node A was killed (frame counters {:?}..)",
        t0.elapsed(),
        frames.first()
    );
    again.close().await;
    drop(relay_b);
    Ok(())
}
