//! vc-relay's signaling plane under abuse (issue 11): expired viewer tokens, clients that stop
//! reading, connection floods and slowloris upgrades. The real `vc-relay` binary, no control
//! plane (tokens minted with the shared ticket secret, presence disabled).

use anyhow::{ensure, Result};
use shared::signaling::{ClientMessage, ErrorCode, ServerMessage};
use shared::ticket::{unix_now, Role, TicketKey};
use shared::Secret;
use uuid::Uuid;
use vc_tests::signaling_client::{closed, expect_error, recv, send, ws_connect, Ws};
use vc_tests::{start, Running};

const SECRET: &str = "abuse-signaling-test-ticket-secret";

async fn start_relay(extra: &[(&str, &str)]) -> Result<Running> {
    let mut env = vec![
        ("VC_TICKET_SECRET", SECRET),
        ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
        ("VC_SIGNALING__LISTEN", "127.0.0.1:0"),
        ("VC_SIGNALING__CONTROL_URL", ""),
        ("VC_TURN__LISTEN", "127.0.0.1:0"),
        ("RUST_LOG", "warn"),
    ];
    env.extend_from_slice(extra);
    start("vc-relay", &[], &env).await
}

fn key() -> TicketKey {
    TicketKey::new(&Secret::new(SECRET))
}

/// A camera connected with a token valid for 10 minutes; returns its socket and device id.
async fn camera(ws_base: &str) -> Result<(Ws, Uuid)> {
    let dev = Uuid::new_v4();
    let (t, _) = key().mint_signaling(&dev.to_string(), Role::Camera, vec![dev], unix_now(), 600);
    let mut cam = ws_connect(&format!("{ws_base}?token={t}")).await?;
    ensure!(matches!(
        recv(&mut cam).await?,
        ServerMessage::Welcome { .. }
    ));
    Ok((cam, dev))
}

/// A viewer of `dev` whose token expires `ttl` seconds after `iat`.
async fn viewer(ws_base: &str, dev: Uuid, iat: u64, ttl: u64) -> Result<Ws> {
    let (t, _) = key().mint_signaling("viewer", Role::Viewer, vec![dev], iat, ttl);
    let mut v = ws_connect(&format!("{ws_base}?token={t}")).await?;
    ensure!(matches!(recv(&mut v).await?, ServerMessage::Welcome { .. }));
    Ok(v)
}

async fn open_session(v: &mut Ws, dev: Uuid) -> Result<Uuid> {
    send(v, &ClientMessage::Connect { device_id: dev }).await?;
    match recv(v).await? {
        ServerMessage::Session { session_id, .. } => Ok(session_id),
        other => anyhow::bail!("expected session, got {other:?}"),
    }
}

/// A viewer connection opened with a short ticket is closed at its expiry (`token_expired`,
/// 4002) and the camera learns its session ended; one refreshed with `auth` lives until the new
/// expiry and can still open sessions after its first token expired. (Before issue 11 viewer
/// connections were never cut, so `closed` timed out.)
#[tokio::test]
async fn viewer_connections_end_at_token_expiry_unless_refreshed() -> Result<()> {
    let relay = start_relay(&[]).await?;
    let ws_base = format!("ws://{}/ws", relay.addr("signaling"));
    let (mut cam, dev) = camera(&ws_base).await?;
    let now = unix_now();
    let mut stale = viewer(&ws_base, dev, now, 2).await?;
    let mut fresh = viewer(&ws_base, dev, now, 2).await?;
    let stale_session = open_session(&mut stale, dev).await?;
    let (t2, _) = key().mint_signaling("viewer", Role::Viewer, vec![dev], now, 4);
    send(&mut fresh, &ClientMessage::Auth { token: t2 }).await?;

    // The unrefreshed viewer: token_expired, then 4002, and the camera gets the bye.
    expect_error(recv(&mut stale).await?, ErrorCode::TokenExpired)?;
    let (code, _) = closed(&mut stale).await?;
    ensure!(code == 4002, "expired viewer closed with {code}");
    ensure!(unix_now() >= now + 2, "closed before its expiry");
    match recv(&mut cam).await? {
        ServerMessage::Bye { session_id, .. } if session_id == stale_session => {}
        other => anyhow::bail!("camera expected bye for the expired viewer, got {other:?}"),
    }

    // The refreshed viewer outlives its first token and opens a session on the second.
    ensure!(
        unix_now() < now + 4,
        "test too slow to check the refreshed window"
    );
    open_session(&mut fresh, dev).await?;
    expect_error(recv(&mut fresh).await?, ErrorCode::TokenExpired)?;
    let (code, _) = closed(&mut fresh).await?;
    ensure!(code == 4002, "refreshed viewer closed with {code}");
    ensure!(unix_now() >= now + 4, "closed before the refreshed expiry");
    relay.terminate().await?;
    Ok(())
}
