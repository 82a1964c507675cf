//! Two vc-relay nodes routing signaling across a private NATS (issue 9, README "Cluster"):
//! real processes on loopback, tokens minted with the shared ticket secret.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use shared::signaling::{ClientMessage, ErrorCode, ServerMessage};
use shared::ticket::{unix_now, Role, TicketKey};
use shared::Secret;
use uuid::Uuid;
use vc_tests::signaling_client::{cand, recv, send, Ws, STEP};
use vc_tests::{start, Nats, Running};

const SECRET: &str = "cluster-test-ticket-secret-at-least-32-bytes";

async fn start_node(node: &str, nats: &str) -> Result<Running> {
    start(
        "vc-relay",
        &[],
        &[
            ("VC_TICKET_SECRET", SECRET),
            ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
            ("VC_SIGNALING__LISTEN", "127.0.0.1:0"),
            ("VC_SIGNALING__CONTROL_URL", ""),
            ("VC_TURN__LISTEN", "127.0.0.1:0"),
            ("VC_CLUSTER__NODE_ID", node),
            ("VC_CLUSTER__NATS_URL", nats),
            ("VC_CLUSTER__RECONNECT_MAX_DELAY_MS", "200"),
            ("RUST_LOG", "warn"),
        ],
    )
    .await
}

fn token(role: Role, sub: &str, devices: Vec<Uuid>) -> String {
    TicketKey::new(&Secret::new(SECRET))
        .mint_signaling(sub, role, devices, unix_now(), 600)
        .0
}

/// A connection that got its `welcome`.
async fn join(relay: &Running, token: &str) -> Result<Ws> {
    let url = format!("ws://{}/ws?token={token}", relay.addr("signaling"));
    let (mut ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url)).await??;
    match recv(&mut ws).await? {
        ServerMessage::Welcome { .. } => Ok(ws),
        other => bail!("expected welcome, got {other:?}"),
    }
}

/// `connect` until a session opens (the directory entry may still be on its way), up to `within`.
async fn open_session(viewer: &mut Ws, device: Uuid, within: Duration) -> Result<Uuid> {
    let deadline = Instant::now() + within;
    loop {
        send(viewer, &ClientMessage::Connect { device_id: device }).await?;
        match recv(viewer).await? {
            ServerMessage::Session { session_id, .. } => return Ok(session_id),
            ServerMessage::Error { code, message, .. }
                if matches!(code, ErrorCode::CameraOffline | ErrorCode::Unavailable)
                    && Instant::now() < deadline =>
            {
                eprintln!("connect not yet: {code:?} {message}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => bail!("expected a session, got {other:?}"),
        }
    }
}

/// offer viewer -> camera, answer and a candidate back, a candidate forward.
async fn exchange(viewer: &mut Ws, camera: &mut Ws, session_id: Uuid) -> Result<()> {
    let offer = ClientMessage::Offer {
        session_id,
        sdp: "v=0 offer".into(),
    };
    send(viewer, &offer).await?;
    match recv(camera).await? {
        ServerMessage::Offer { session_id: s, sdp } if s == session_id && sdp == "v=0 offer" => {}
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
        ServerMessage::Answer { session_id: s, sdp } if s == session_id && sdp == "v=0 answer" => {}
        other => bail!("viewer expected the answer, got {other:?}"),
    }
    send(
        camera,
        &ClientMessage::Candidate {
            session_id,
            candidate: cand(1),
        },
    )
    .await?;
    match recv(viewer).await? {
        ServerMessage::Candidate { candidate, .. } if candidate == cand(1) => {}
        other => bail!("viewer expected a candidate, got {other:?}"),
    }
    send(
        viewer,
        &ClientMessage::Candidate {
            session_id,
            candidate: cand(2),
        },
    )
    .await?;
    match recv(camera).await? {
        ServerMessage::Candidate { candidate, .. } if candidate == cand(2) => {}
        other => bail!("camera expected a candidate, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn cross_node_routing_survives_a_nats_restart() -> Result<()> {
    let mut nats = Nats::start().await?;
    let a = start_node("node-a", &nats.url()).await?;
    let b = start_node("node-b", &nats.url()).await?;
    let dev = Uuid::new_v4();
    let other = Uuid::new_v4();
    let mut camera = join(&a, &token(Role::Camera, &dev.to_string(), vec![dev])).await?;
    let mut viewer = join(&b, &token(Role::Viewer, "user-1", vec![dev])).await?;

    // Camera on A, viewer on B: connect + offer/answer/candidates routed both ways.
    let s1 = open_session(&mut viewer, dev, Duration::from_secs(10)).await?;
    exchange(&mut viewer, &mut camera, s1).await?;
    send(
        &mut viewer,
        &ClientMessage::Bye {
            session_id: s1,
            reason: Some("done".into()),
        },
    )
    .await?;
    match recv(&mut camera).await? {
        ServerMessage::Bye { session_id, reason } if session_id == s1 => {
            assert_eq!(reason.as_deref(), Some("done"))
        }
        other => bail!("camera expected bye, got {other:?}"),
    }
    // The camera ends a second session: the bye reaches the viewer across nodes.
    let s2 = open_session(&mut viewer, dev, STEP).await?;
    send(
        &mut camera,
        &ClientMessage::Bye {
            session_id: s2,
            reason: None,
        },
    )
    .await?;
    match recv(&mut viewer).await? {
        ServerMessage::Bye { session_id, .. } if session_id == s2 => {}
        other => bail!("viewer expected bye, got {other:?}"),
    }
    // A viewer whose token names another device is refused on its own node.
    let mut stranger = join(&b, &token(Role::Viewer, "user-2", vec![other])).await?;
    send(&mut stranger, &ClientMessage::Connect { device_id: dev }).await?;
    match recv(&mut stranger).await? {
        ServerMessage::Error {
            code: ErrorCode::Forbidden,
            ..
        } => {}
        other => bail!("expected forbidden, got {other:?}"),
    }

    // NATS dies: cross-node connect fails fast with `unavailable`, local routing goes on.
    nats.kill().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    send(&mut viewer, &ClientMessage::Connect { device_id: dev }).await?;
    match recv(&mut viewer).await? {
        ServerMessage::Error {
            code: ErrorCode::Unavailable,
            ..
        } => {}
        other => bail!("expected unavailable during the outage, got {other:?}"),
    }
    eprintln!(
        "cross-node connect refused after {:?} during the outage",
        t.elapsed()
    );
    let mut local = join(&a, &token(Role::Viewer, "user-3", vec![dev])).await?;
    let s3 = open_session(&mut local, dev, STEP).await?;
    exchange(&mut local, &mut camera, s3).await?;

    // NATS is back: the relays reconnect by themselves and cross-node routing recovers.
    nats.restart().await?;
    let s4 = open_session(&mut viewer, dev, Duration::from_secs(20)).await?;
    exchange(&mut viewer, &mut camera, s4).await?;
    Ok(())
}
