//! The QUIC camera link (issue 10): vc-relay with `[tls]` (an rcgen certificate) also listens
//! on QUIC (`listening quic`), ALPN `vc-signal/1`; a client speaks the signaling JSON as
//! u32-big-endian-length-prefixed frames on one bidirectional stream, under the same token,
//! size limit and auth timeout as WebSocket, and routes to WebSocket viewers.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use quinn::{RecvStream, SendStream};
use shared::signaling::{ClientMessage, ErrorCode, ServerMessage};
use shared::ticket::{unix_now, Role, TicketKey};
use shared::Secret;
use tokio_rustls::rustls::pki_types::CertificateDer;
use uuid::Uuid;
use vc_tests::certs::TestCert;
use vc_tests::signaling_client::{cand, expect_error, recv, send, wss_connect, STEP};
use vc_tests::stack::start_relay;
use vc_tests::Running;

const SECRET: &str = "quic-test-ticket-secret-at-least-32-bytes";

async fn quic_relay(dir: &std::path::Path, extra: &[(&str, &str)]) -> Result<(Running, TestCert)> {
    let cert = TestCert::generate()?;
    let (c, k) = cert.write(dir)?;
    let (c, k) = (c.display().to_string(), k.display().to_string());
    let mut env = vec![
        ("VC_TLS__CERT_FILE", c.as_str()),
        ("VC_TLS__KEY_FILE", k.as_str()),
    ];
    env.extend_from_slice(extra);
    Ok((start_relay(SECRET, "", &env).await?, cert))
}

fn camera_token(key: &TicketKey, dev: Uuid) -> String {
    key.mint_signaling(&dev.to_string(), Role::Camera, vec![dev], unix_now(), 600)
        .0
}

/// A QUIC connection to `addr` trusting only `trust`, ALPN `vc-signal/1`, server name localhost.
async fn quic_connect(addr: &str, trust: &[u8]) -> Result<quinn::Connection> {
    use tokio_rustls::rustls::{crypto::ring, version, ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(trust.to_vec()))?;
    let mut tls = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"vc-signal/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let addr: SocketAddr = addr.parse()?;
    let conn = tokio::time::timeout(STEP, endpoint.connect(addr, "localhost")?)
        .await
        .context("QUIC handshake timed out")??;
    Ok(conn)
}

async fn write_frame(send: &mut SendStream, msg: &ClientMessage) -> Result<()> {
    let body = serde_json::to_vec(msg)?;
    send.write_all(&(body.len() as u32).to_be_bytes()).await?;
    send.write_all(&body).await?;
    Ok(())
}

/// The next message, pings (empty frames) skipped; None when the relay finished the stream.
async fn read_frame(recv: &mut RecvStream) -> Result<Option<ServerMessage>> {
    loop {
        let mut len = [0u8; 4];
        let got = tokio::time::timeout(STEP, recv.read_exact(&mut len))
            .await
            .context("no frame within 5 s")?;
        match got {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(e) => bail!("stream broken: {e}"),
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        if body.is_empty() {
            continue;
        }
        tokio::time::timeout(STEP, recv.read_exact(&mut body))
            .await
            .context("frame body timed out")??;
        return Ok(Some(serde_json::from_slice(&body)?));
    }
}

async fn next(recv: &mut RecvStream) -> Result<ServerMessage> {
    read_frame(recv).await?.context("stream finished")
}

/// A camera on QUIC and a viewer on WebSocket: welcome, then connect/offer/answer/candidate/bye
/// both ways, routed by the one router whatever the transport.
#[tokio::test]
async fn quic_camera_and_websocket_viewer_exchange_signaling() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (relay, cert) = quic_relay(dir.path(), &[]).await?;
    let key = TicketKey::new(&Secret::new(SECRET));
    let dev = Uuid::new_v4();

    let conn = quic_connect(relay.addr("quic"), &cert.der).await?;
    let (mut cs, mut cr) = conn.open_bi().await?;
    write_frame(
        &mut cs,
        &ClientMessage::Auth {
            token: camera_token(&key, dev),
        },
    )
    .await?;
    match next(&mut cr).await? {
        ServerMessage::Welcome {
            role: Role::Camera,
            device_id,
            ..
        } => ensure!(device_id == Some(dev), "welcome for {device_id:?}"),
        other => bail!("expected welcome, got {other:?}"),
    }

    let (vt, _) = key.mint_signaling("viewer", Role::Viewer, vec![dev], unix_now(), 600);
    let mut viewer = wss_connect(
        relay.addr("signaling"),
        &format!("/ws?token={vt}"),
        &cert.der,
    )
    .await?
    .0;
    ensure!(matches!(
        recv(&mut viewer).await?,
        ServerMessage::Welcome { .. }
    ));
    send(&mut viewer, &ClientMessage::Connect { device_id: dev }).await?;
    let sid = match recv(&mut viewer).await? {
        ServerMessage::Session { session_id, .. } => session_id,
        other => bail!("expected session, got {other:?}"),
    };
    send(
        &mut viewer,
        &ClientMessage::Offer {
            session_id: sid,
            sdp: "v=0 offer".into(),
        },
    )
    .await?;
    ensure!(
        next(&mut cr).await?
            == ServerMessage::Offer {
                session_id: sid,
                sdp: "v=0 offer".into()
            }
    );
    write_frame(
        &mut cs,
        &ClientMessage::Answer {
            session_id: sid,
            sdp: "v=0 answer".into(),
        },
    )
    .await?;
    ensure!(
        recv(&mut viewer).await?
            == ServerMessage::Answer {
                session_id: sid,
                sdp: "v=0 answer".into()
            }
    );
    write_frame(
        &mut cs,
        &ClientMessage::Candidate {
            session_id: sid,
            candidate: cand(1),
        },
    )
    .await?;
    ensure!(
        recv(&mut viewer).await?
            == ServerMessage::Candidate {
                session_id: sid,
                candidate: cand(1)
            }
    );
    send(
        &mut viewer,
        &ClientMessage::Candidate {
            session_id: sid,
            candidate: cand(2),
        },
    )
    .await?;
    ensure!(
        next(&mut cr).await?
            == ServerMessage::Candidate {
                session_id: sid,
                candidate: cand(2)
            }
    );
    send(
        &mut viewer,
        &ClientMessage::Bye {
            session_id: sid,
            reason: None,
        },
    )
    .await?;
    match next(&mut cr).await? {
        ServerMessage::Bye { session_id, .. } => ensure!(session_id == sid),
        other => bail!("expected bye, got {other:?}"),
    }
    Ok(())
}

/// A frame over `max_message_bytes` gets `error {too_large}`, then the stream ends, and the
/// connection closes with 1009 (like the WebSocket close code).
#[tokio::test]
async fn oversized_frame_closes_the_stream_with_too_large() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (relay, cert) =
        quic_relay(dir.path(), &[("VC_SIGNALING__MAX_MESSAGE_BYTES", "1024")]).await?;
    let key = TicketKey::new(&Secret::new(SECRET));
    let conn = quic_connect(relay.addr("quic"), &cert.der).await?;
    let (mut cs, mut cr) = conn.open_bi().await?;
    let token = camera_token(&key, Uuid::new_v4());
    write_frame(&mut cs, &ClientMessage::Auth { token }).await?;
    ensure!(matches!(
        next(&mut cr).await?,
        ServerMessage::Welcome { .. }
    ));
    // Only the length: the relay refuses on the header, before any payload arrives.
    cs.write_all(&1025u32.to_be_bytes()).await?;
    expect_error(next(&mut cr).await?, ErrorCode::TooLarge)?;
    ensure!(read_frame(&mut cr).await?.is_none(), "stream not finished");
    expect_app_close(&conn, 1009).await
}

/// Waits for the relay to close `conn` with application error `code`.
async fn expect_app_close(conn: &quinn::Connection, code: u32) -> Result<()> {
    let err = tokio::time::timeout(STEP * 2, conn.closed())
        .await
        .context("connection not closed")?;
    match err {
        quinn::ConnectionError::ApplicationClosed(c) => {
            ensure!(
                c.error_code == quinn::VarInt::from_u32(code),
                "closed with {c:?}"
            );
            Ok(())
        }
        other => bail!("expected an application close {code}, got {other}"),
    }
}

/// A client that opens the connection and never authenticates is closed with 4003
/// (unauthorized) after `auth_timeout_secs`.
#[tokio::test]
async fn no_auth_within_the_auth_timeout_closes_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (relay, cert) = quic_relay(dir.path(), &[("VC_SIGNALING__AUTH_TIMEOUT_SECS", "1")]).await?;
    let conn = quic_connect(relay.addr("quic"), &cert.der).await?;
    let t0 = std::time::Instant::now();
    let (_cs, _cr) = conn.open_bi().await?;
    expect_app_close(&conn, 4003).await?;
    ensure!(
        t0.elapsed() >= std::time::Duration::from_millis(900),
        "closed before the auth timeout: {:?}",
        t0.elapsed()
    );
    Ok(())
}

/// A token signed with another secret gets `error {unauthorized}` and the stream ends.
#[tokio::test]
async fn bad_token_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (relay, cert) = quic_relay(dir.path(), &[]).await?;
    let other = TicketKey::new(&Secret::new("not-the-relay-secret"));
    let conn = quic_connect(relay.addr("quic"), &cert.der).await?;
    let (mut cs, mut cr) = conn.open_bi().await?;
    let token = camera_token(&other, Uuid::new_v4());
    write_frame(&mut cs, &ClientMessage::Auth { token }).await?;
    expect_error(next(&mut cr).await?, ErrorCode::Unauthorized)?;
    ensure!(read_frame(&mut cr).await?.is_none(), "stream not finished");
    expect_app_close(&conn, 4003).await
}

/// The WebSocket rate limit applies per QUIC connection too: past the burst, `rate_limited`.
#[tokio::test]
async fn rate_limit_applies_over_quic() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let env = [
        ("VC_SIGNALING__RATE_PER_SEC", "1"),
        ("VC_SIGNALING__RATE_BURST", "3"),
    ];
    let (relay, cert) = quic_relay(dir.path(), &env).await?;
    let key = TicketKey::new(&Secret::new(SECRET));
    let conn = quic_connect(relay.addr("quic"), &cert.der).await?;
    let (mut cs, mut cr) = conn.open_bi().await?;
    let token = camera_token(&key, Uuid::new_v4());
    // `auth` is not counted (it is read before the connection loop); the burst is 3.
    write_frame(&mut cs, &ClientMessage::Auth { token }).await?;
    ensure!(matches!(
        next(&mut cr).await?,
        ServerMessage::Welcome { .. }
    ));
    let stray = ClientMessage::Candidate {
        session_id: Uuid::new_v4(),
        candidate: cand(1),
    };
    for _ in 0..4 {
        write_frame(&mut cs, &stray).await?;
    }
    for _ in 0..3 {
        expect_error(next(&mut cr).await?, ErrorCode::UnknownSession)?;
    }
    expect_error(next(&mut cr).await?, ErrorCode::RateLimited)
}

/// Idle timeout: a client answering the relay's pings (empty frames) with empty frames stays
/// past `idle_timeout_secs`; a silent one is closed with 4000 (idle).
#[tokio::test]
async fn pongs_keep_a_connection_alive_and_silence_hits_the_idle_timeout() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let env = [
        ("VC_SIGNALING__IDLE_TIMEOUT_SECS", "3"),
        ("VC_SIGNALING__PING_INTERVAL_SECS", "1"),
    ];
    let (relay, cert) = quic_relay(dir.path(), &env).await?;
    let key = TicketKey::new(&Secret::new(SECRET));
    let mut streams = Vec::new();
    for _ in 0..2 {
        let conn = quic_connect(relay.addr("quic"), &cert.der).await?;
        let (mut cs, mut cr) = conn.open_bi().await?;
        let token = camera_token(&key, Uuid::new_v4());
        write_frame(&mut cs, &ClientMessage::Auth { token }).await?;
        ensure!(matches!(
            next(&mut cr).await?,
            ServerMessage::Welcome { .. }
        ));
        streams.push((conn, cs, cr));
    }
    let (silent, _keep_s, _keep_r) = streams.pop().context("two connections")?;
    let (alive, mut cs, mut cr) = streams.pop().context("two connections")?;
    let answer = async {
        let mut pings = 0;
        loop {
            let mut len = [0u8; 4];
            cr.read_exact(&mut len).await?;
            ensure!(len == [0; 4], "expected only pings, got a frame of {len:?}");
            pings += 1;
            cs.write_all(&[0; 4]).await?;
            if pings == 5 {
                return Ok::<_, anyhow::Error>(());
            }
        }
    };
    // Five pings at 1 s: well past the 3 s idle timeout.
    tokio::time::timeout(STEP * 2, answer)
        .await
        .context("pings stopped")??;
    ensure!(
        alive.close_reason().is_none(),
        "answering connection closed: {:?}",
        alive.close_reason()
    );
    expect_app_close(&silent, 4000).await
}

/// A camera link is one stream: the relay lets a client open one bidirectional stream and
/// no unidirectional ones, and offers no datagrams, so a client cannot make it keep state
/// for many streams (quinn's default would be 100 of each, megabyte windows).
#[tokio::test]
async fn a_client_gets_one_stream_and_no_datagrams() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (relay, cert) = quic_relay(dir.path(), &[]).await?;
    let key = TicketKey::new(&Secret::new(SECRET));
    let conn = quic_connect(relay.addr("quic"), &cert.der).await?;
    let (mut cs, mut cr) = conn.open_bi().await?;
    write_frame(
        &mut cs,
        &ClientMessage::Auth {
            token: camera_token(&key, Uuid::new_v4()),
        },
    )
    .await?;
    ensure!(
        matches!(next(&mut cr).await?, ServerMessage::Welcome { .. }),
        "no welcome"
    );
    // Opening waits for stream credit that never comes.
    let second = tokio::time::timeout(std::time::Duration::from_millis(500), conn.open_bi()).await;
    ensure!(second.is_err(), "a second bidirectional stream was opened");
    let uni = tokio::time::timeout(std::time::Duration::from_millis(500), conn.open_uni()).await;
    ensure!(uni.is_err(), "a unidirectional stream was opened");
    ensure!(
        conn.max_datagram_size().is_none(),
        "the relay offers datagrams"
    );
    Ok(())
}
