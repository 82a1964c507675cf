//! vc-relay's signaling plane end to end: real `vc-control` (SQLite) and `vc-relay` on
//! ephemeral ports sharing a ticket secret, a user and activated cameras created through the
//! HTTP API, cameras and viewers on real WebSockets.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures_util::SinkExt;
use reqwest::{Method, StatusCode};
use serde_json::json;
use shared::signaling::{ClientMessage, ErrorCode, ServerMessage};
use shared::ticket::{unix_now, Role, TicketKey};
use shared::Secret;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use uuid::Uuid;
use vc_tests::signaling_client::{cand, closed, expect_error, recv, send, ws_connect, Ws, STEP};
use vc_tests::stack::{Control, Db};
use vc_tests::Running;

const SECRET: &str = "signaling-test-ticket-secret-at-least-32-bytes";

async fn start_relay(control_url: &str, extra: &[(&str, &str)]) -> Result<Running> {
    let mut env = vec![
        ("VC_SIGNALING__AUTH_TIMEOUT_SECS", "1"),
        ("VC_TURN__ALLOW_LOOPBACK_PEERS", "true"),
    ];
    env.extend_from_slice(extra);
    vc_tests::stack::start_relay(SECRET, control_url, &env).await
}

/// HTTP status of a refused upgrade.
async fn refused(url: &str) -> Result<StatusCode> {
    match tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url)).await? {
        Ok(_) => bail!("upgrade to {url} was accepted"),
        Err(WsError::Http(resp)) => Ok(StatusCode::from_u16(resp.status().as_u16())?),
        Err(e) => bail!("upgrade failed without an HTTP status: {e}"),
    }
}

/// Opens a session from `viewer` to `device`.
async fn open_session(viewer: &mut Ws, device: Uuid) -> Result<Uuid> {
    send(viewer, &ClientMessage::Connect { device_id: device }).await?;
    match recv(viewer).await? {
        ServerMessage::Session {
            session_id,
            device_id,
        } if device_id == device => Ok(session_id),
        other => bail!("expected session, got {other:?}"),
    }
}

async fn welcome(ws: &mut Ws) -> Result<(Role, Option<Uuid>, Vec<shared::signaling::IceServer>)> {
    match recv(ws).await? {
        ServerMessage::Welcome {
            role,
            device_id,
            ice_servers,
            ..
        } => Ok((role, device_id, ice_servers)),
        other => bail!("expected welcome, got {other:?}"),
    }
}

#[tokio::test]
async fn signaling_end_to_end() -> Result<()> {
    let control = Control::start(Db::Sqlite, SECRET, &[]).await?;
    let relay = start_relay(&control.base, &[]).await?;
    let ws_base = format!("ws://{}/ws", relay.addr("signaling"));
    let key = TicketKey::new(&Secret::new(SECRET));

    let alice = control.user("alice@example.com").await?;
    let (dev, dev_secret) = control.camera(&alice, "CAM-A").await?;
    let (dev2, _) = control.camera(&alice, "CAM-A2").await?;
    ensure!(control.listed(&alice, dev).await?["status"] == "offline");

    // Camera connects with ?token= and gets a welcome with TURN credentials that verify.
    let ct = control.camera_ticket(dev, &dev_secret).await?;
    let mut cam = ws_connect(&format!("{ws_base}?token={}", ct.signaling.token)).await?;
    let (role, device_id, ice) = welcome(&mut cam).await?;
    ensure!(
        role == Role::Camera && device_id == Some(dev),
        "{role:?} {device_id:?}"
    );
    if let Some(turn) = relay.addrs.get("turn-udp") {
        let server = ice
            .first()
            .context("ice_servers empty although TURN listens")?;
        let port = turn.rsplit(':').next().unwrap_or_default();
        ensure!(
            server
                .urls
                .iter()
                .all(|u| u.starts_with("turn:") && u.contains(&format!(":{port}?transport="))),
            "{:?} vs TURN {turn}",
            server.urls
        );
    }
    // The camera's TURN username names its owner, the key of the relay's quota.
    let account = key
        .verify_signaling(&ct.signaling.token, unix_now())?
        .account
        .context("camera ticket without account")?;
    for s in &ice {
        key.verify_turn_credentials(&s.username, &s.credential, unix_now())?;
        ensure!(
            s.username.ends_with(&format!(":{dev}:{account}")),
            "{}",
            s.username
        );
    }

    // Presence: online in the device list within 2 s.
    let took = control.wait_status(&alice, dev, "online").await?;
    ensure!(took < Duration::from_secs(2), "online after {took:?}");
    ensure!(!control.listed(&alice, dev).await?["last_seen"].is_null());

    // Viewer authenticates with a first `auth` message.
    let vt = control.viewer_ticket(&alice, dev).await?;
    let mut v1 = ws_connect(&ws_base).await?;
    send(
        &mut v1,
        &ClientMessage::Auth {
            token: vt.signaling.token.clone(),
        },
    )
    .await?;
    let (role, _, ice) = welcome(&mut v1).await?;
    ensure!(role == Role::Viewer, "{role:?}");
    for s in &ice {
        key.verify_turn_credentials(&s.username, &s.credential, unix_now())?;
    }

    // offer -> camera, answer -> viewer, candidates both ways.
    let s1 = open_session(&mut v1, dev).await?;
    send(
        &mut v1,
        &ClientMessage::Offer {
            session_id: s1,
            sdp: "v=0 offer-1".into(),
        },
    )
    .await?;
    ensure!(
        recv(&mut cam).await?
            == ServerMessage::Offer {
                session_id: s1,
                sdp: "v=0 offer-1".into()
            }
    );
    send(
        &mut cam,
        &ClientMessage::Answer {
            session_id: s1,
            sdp: "v=0 answer-1".into(),
        },
    )
    .await?;
    ensure!(
        recv(&mut v1).await?
            == ServerMessage::Answer {
                session_id: s1,
                sdp: "v=0 answer-1".into()
            }
    );
    send(
        &mut v1,
        &ClientMessage::Candidate {
            session_id: s1,
            candidate: cand(1),
        },
    )
    .await?;
    ensure!(
        recv(&mut cam).await?
            == ServerMessage::Candidate {
                session_id: s1,
                candidate: cand(1)
            }
    );
    send(
        &mut cam,
        &ClientMessage::Candidate {
            session_id: s1,
            candidate: cand(2),
        },
    )
    .await?;
    ensure!(
        recv(&mut v1).await?
            == ServerMessage::Candidate {
                session_id: s1,
                candidate: cand(2)
            }
    );

    // A second viewer; messages reach only their own session's peer.
    let vt2 = control.viewer_ticket(&alice, dev).await?;
    let mut v2 = ws_connect(&format!("{ws_base}?token={}", vt2.signaling.token)).await?;
    welcome(&mut v2).await?;
    let s2 = open_session(&mut v2, dev).await?;
    ensure!(s2 != s1);
    send(
        &mut v2,
        &ClientMessage::Offer {
            session_id: s2,
            sdp: "offer-2".into(),
        },
    )
    .await?;
    ensure!(
        recv(&mut cam).await?
            == ServerMessage::Offer {
                session_id: s2,
                sdp: "offer-2".into()
            }
    );
    send(
        &mut cam,
        &ClientMessage::Answer {
            session_id: s2,
            sdp: "answer-2".into(),
        },
    )
    .await?;
    send(
        &mut cam,
        &ClientMessage::Candidate {
            session_id: s1,
            candidate: cand(3),
        },
    )
    .await?;
    ensure!(
        recv(&mut v2).await?
            == ServerMessage::Answer {
                session_id: s2,
                sdp: "answer-2".into()
            }
    );
    // v1's next message is its own candidate, not v2's answer.
    ensure!(
        recv(&mut v1).await?
            == ServerMessage::Candidate {
                session_id: s1,
                candidate: cand(3)
            }
    );
    // v2 cannot use v1's session.
    send(
        &mut v2,
        &ClientMessage::Offer {
            session_id: s1,
            sdp: "x".into(),
        },
    )
    .await?;
    expect_error(recv(&mut v2).await?, ErrorCode::UnknownSession)?;

    // camera_offline: alice's other camera is not connected.
    let vt_both = control.viewer_ticket(&alice, dev2).await?;
    let mut v3 = ws_connect(&format!("{ws_base}?token={}", vt_both.signaling.token)).await?;
    welcome(&mut v3).await?;
    send(&mut v3, &ClientMessage::Connect { device_id: dev2 }).await?;
    expect_error(recv(&mut v3).await?, ErrorCode::CameraOffline)?;
    // A token naming dev2 does not reach dev.
    send(&mut v3, &ClientMessage::Connect { device_id: dev }).await?;
    expect_error(recv(&mut v3).await?, ErrorCode::Forbidden)?;

    // Another user's camera: no ticket from control, and their own token does not reach it.
    let mallory = control.user("mallory@example.com").await?;
    let (s, _) = control
        .call(
            Method::POST,
            "/api/relay/ticket",
            Some(&mallory),
            Some(json!({"device_id": dev})),
        )
        .await?;
    ensure!(
        s == StatusCode::NOT_FOUND || s == StatusCode::FORBIDDEN,
        "mallory ticket {s}"
    );
    let (mdev, _) = control.camera(&mallory, "CAM-M").await?;
    let mt = control.viewer_ticket(&mallory, mdev).await?;
    let mut m = ws_connect(&format!("{ws_base}?token={}", mt.signaling.token)).await?;
    welcome(&mut m).await?;
    send(&mut m, &ClientMessage::Connect { device_id: dev }).await?;
    expect_error(recv(&mut m).await?, ErrorCode::Forbidden)?;
    send(
        &mut m,
        &ClientMessage::Candidate {
            session_id: s1,
            candidate: cand(9),
        },
    )
    .await?;
    expect_error(recv(&mut m).await?, ErrorCode::UnknownSession)?;

    // Invalid, forged, expired, other-secret tokens: HTTP 401 on the upgrade.
    let (expired, _) = key.mint_signaling(
        &dev.to_string(),
        Role::Camera,
        vec![dev],
        unix_now() - 700,
        600,
    );
    let other = TicketKey::new(&Secret::new("another-secret"));
    let (foreign, _) = other.mint_signaling("u", Role::Viewer, vec![dev], unix_now(), 600);
    let mut forged = vt.signaling.token.clone();
    forged.pop();
    forged.push(if vt.signaling.token.ends_with('A') {
        'B'
    } else {
        'A'
    });
    for (what, token) in [
        ("garbage", "not-a-token".to_owned()),
        ("expired", expired),
        ("foreign", foreign),
        ("forged", forged),
    ] {
        let s = refused(&format!("{ws_base}?token={token}")).await?;
        ensure!(s == StatusCode::UNAUTHORIZED, "{what}: {s}");
    }
    ensure!(
        refused(&format!("ws://{}/other", relay.addr("signaling"))).await? == StatusCode::NOT_FOUND
    );
    // A bad first-message token, and no token at all within the auth timeout: closed.
    let mut bad = ws_connect(&ws_base).await?;
    send(
        &mut bad,
        &ClientMessage::Auth {
            token: "nope".into(),
        },
    )
    .await?;
    expect_error(recv(&mut bad).await?, ErrorCode::Unauthorized)?;
    ensure!(closed(&mut bad).await?.0 == 4003);
    let mut silent = ws_connect(&ws_base).await?;
    expect_error(recv(&mut silent).await?, ErrorCode::Unauthorized)?;
    ensure!(closed(&mut silent).await?.0 == 4003);

    // Bad input on an open connection: bad_message, and the connection keeps working.
    for bad in [
        Message::text("{not json"),
        Message::text(r#"{"type":"teleport"}"#),
        Message::text(r#"{"type":"offer","session_id":"not-a-uuid","sdp":"x"}"#),
        Message::binary(vec![1u8, 2, 3]),
    ] {
        v1.send(bad.clone()).await?;
        expect_error(recv(&mut v1).await?, ErrorCode::BadMessage)
            .with_context(|| format!("{bad:?}"))?;
    }
    send(
        &mut v1,
        &ClientMessage::Candidate {
            session_id: s1,
            candidate: cand(4),
        },
    )
    .await?;
    ensure!(
        recv(&mut cam).await?
            == ServerMessage::Candidate {
                session_id: s1,
                candidate: cand(4)
            }
    );

    // Rate limit (50/s, burst 200): 300 at once -> the burst is answered, the excess dropped
    // with one `rate_limited` notice per run of drops (not one reply each); not closed.
    let flood = ClientMessage::Bye {
        session_id: Uuid::new_v4(),
        reason: None,
    };
    let text = serde_json::to_string(&flood)?;
    for _ in 0..300 {
        m.feed(Message::text(text.clone())).await?;
    }
    m.flush().await?;
    let (mut unknown, mut limited) = (0, 0);
    while let Ok(reply) = tokio::time::timeout(Duration::from_millis(700), recv(&mut m)).await {
        match reply? {
            ServerMessage::Error {
                code: ErrorCode::UnknownSession,
                ..
            } => unknown += 1,
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            } => limited += 1,
            other => bail!("flood: {other:?}"),
        }
    }
    ensure!(
        (200..=250).contains(&unknown) && (1..=10).contains(&limited),
        "unknown {unknown}, limited {limited}"
    );

    // Too large (> 64 KiB): too_large, then closed with 1009.
    let huge = ClientMessage::Offer {
        session_id: s1,
        sdp: "a".repeat(70 * 1024),
    };
    let mut big = ws_connect(&format!("{ws_base}?token={}", vt.signaling.token)).await?;
    welcome(&mut big).await?;
    let _ = send(&mut big, &huge).await;
    expect_error(recv(&mut big).await?, ErrorCode::TooLarge)?;
    ensure!(closed(&mut big).await?.0 == u16::from(CloseCode::Size));

    // Camera reconnect: the old connection is closed with a reason, viewers get bye.
    let ct2 = control.camera_ticket(dev, &dev_secret).await?;
    let mut cam2 = ws_connect(&format!("{ws_base}?token={}", ct2.signaling.token)).await?;
    welcome(&mut cam2).await?;
    let (code, reason) = closed(&mut cam).await?;
    ensure!(
        code == 4001 && reason.contains("replaced"),
        "{code} {reason}"
    );
    for (v, s) in [(&mut v1, s1), (&mut v2, s2)] {
        ensure!(
            recv(v).await?
                == ServerMessage::Bye {
                    session_id: s,
                    reason: Some("camera_reconnected".into())
                }
        );
    }
    let s1b = open_session(&mut v1, dev).await?;
    send(
        &mut v1,
        &ClientMessage::Offer {
            session_id: s1b,
            sdp: "again".into(),
        },
    )
    .await?;
    ensure!(
        recv(&mut cam2).await?
            == ServerMessage::Offer {
                session_id: s1b,
                sdp: "again".into()
            }
    );
    // Bye from the viewer reaches the camera.
    send(
        &mut v1,
        &ClientMessage::Bye {
            session_id: s1b,
            reason: Some("done".into()),
        },
    )
    .await?;
    ensure!(
        recv(&mut cam2).await?
            == ServerMessage::Bye {
                session_id: s1b,
                reason: Some("done".into())
            }
    );
    ensure!(control.listed(&alice, dev).await?["status"] == "online");

    // Camera drops: viewers' sessions end, presence offline within 2 s.
    let s2b = open_session(&mut v2, dev).await?;
    drop(cam2);
    ensure!(
        recv(&mut v2).await?
            == ServerMessage::Bye {
                session_id: s2b,
                reason: Some("camera_offline".into())
            }
    );
    let took = control.wait_status(&alice, dev, "offline").await?;
    ensure!(took < Duration::from_secs(2), "offline after {took:?}");

    // Metrics.
    let metrics = control
        .http
        .get(format!("http://{}/metrics", relay.addr("admin")))
        .send()
        .await?
        .text()
        .await?;
    for name in [
        "vc_relay_signaling_messages_routed_total",
        "vc_relay_signaling_errors_total",
        "vc_relay_signaling_connected_viewers",
    ] {
        ensure!(metrics.contains(name), "metrics lack {name}");
    }

    // A deleted device's open connection is closed within 2 s (the next presence ack names it).
    let ct3 = control.camera_ticket(dev, &dev_secret).await?;
    let mut cam3 = ws_connect(&format!("{ws_base}?token={}", ct3.signaling.token)).await?;
    welcome(&mut cam3).await?;
    control.wait_status(&alice, dev, "online").await?;
    let (s, v) = control
        .call(
            Method::DELETE,
            &format!("/api/camera/devices/{dev}"),
            Some(&alice),
            None,
        )
        .await?;
    ensure!(s.is_success(), "delete {s} {v}");
    let (code, _) = closed(&mut cam3).await?;
    ensure!(code == 4004, "deleted device closed with {code}");
    // Its camera ticket, still unexpired and correctly signed, no longer opens a connection.
    let status = refused(&format!("{ws_base}?token={}", ct3.signaling.token)).await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED,
        "revoked camera ticket got {status}"
    );

    relay.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn camera_token_expiry_and_refresh() -> Result<()> {
    // No control plane needed: tokens minted with the shared secret, presence disabled.
    let relay = start_relay("", &[]).await?;
    let ws_base = format!("ws://{}/ws", relay.addr("signaling"));
    let key = TicketKey::new(&Secret::new(SECRET));
    let dev = Uuid::new_v4();
    let now = unix_now();
    // Expires in 2 s; refreshed once with a token valid 2 s longer, then left to expire.
    let (t1, _) = key.mint_signaling(&dev.to_string(), Role::Camera, vec![dev], now, 2);
    let mut cam = ws_connect(&format!("{ws_base}?token={t1}")).await?;
    welcome(&mut cam).await?;
    // A refresh for another device is refused and changes nothing.
    let other = Uuid::new_v4();
    let (wrong, _) = key.mint_signaling(&other.to_string(), Role::Camera, vec![other], now, 600);
    send(&mut cam, &ClientMessage::Auth { token: wrong }).await?;
    expect_error(recv(&mut cam).await?, ErrorCode::Forbidden)?;
    let (t2, _) = key.mint_signaling(&dev.to_string(), Role::Camera, vec![dev], now, 4);
    send(&mut cam, &ClientMessage::Auth { token: t2 }).await?;
    let t0 = Instant::now();
    expect_error(recv(&mut cam).await?, ErrorCode::TokenExpired)?;
    let (code, _) = closed(&mut cam).await?;
    ensure!(code == 4002, "expired camera closed with {code}");
    ensure!(
        unix_now() >= now + 4,
        "closed before the refreshed expiry ({:?})",
        t0.elapsed()
    );
    relay.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn max_connections_refuses_with_503() -> Result<()> {
    let relay = start_relay("", &[("VC_SIGNALING__MAX_CONNECTIONS", "1")]).await?;
    let ws_base = format!("ws://{}/ws", relay.addr("signaling"));
    let key = TicketKey::new(&Secret::new(SECRET));
    let (t, _) = key.mint_signaling("u", Role::Viewer, vec![], unix_now(), 600);
    let mut first = ws_connect(&format!("{ws_base}?token={t}")).await?;
    welcome(&mut first).await?;
    ensure!(refused(&format!("{ws_base}?token={t}")).await? == StatusCode::SERVICE_UNAVAILABLE);
    drop(first);
    // The place is freed when the connection ends.
    let t0 = Instant::now();
    loop {
        match tokio::time::timeout(
            STEP,
            tokio_tungstenite::connect_async(format!("{ws_base}?token={t}")),
        )
        .await?
        {
            Ok((mut ws, _)) => {
                welcome(&mut ws).await?;
                break;
            }
            Err(_) if t0.elapsed() < STEP => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => bail!("slot not freed: {e}"),
        }
    }
    relay.terminate().await?;
    Ok(())
}
