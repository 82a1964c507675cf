//! vc-relay's TURN server against coturn's own test client (`turnutils_uclient`, a client
//! nobody here wrote) and its echo peer (`turnutils_peer`): ChannelData and Send/Data
//! indications, 1 and 50 sessions, client-to-client, over UDP and TCP; TURN REST tickets
//! minted like vc-control's ticket endpoint; expired and tampered tickets refused (raw STUN).

use std::net::{SocketAddr, UdpSocket};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use relay::stun::{attr, errors, Class, Message, MessageBuilder, Method};
use relay::turn::auth::hmac_sha1;
use shared::ticket::TicketKey;
use tokio::process::{Child, Command};
use vc_tests::Running;

const SECRET: &str = "turn-test-secret-at-least-32-bytes";
const REALM: &str = "vc.test";

fn have_coturn() -> bool {
    std::process::Command::new("turnutils_uclient")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

async fn start_relay() -> Result<Running> {
    start_relay_with(&[]).await
}

/// [`start_relay`] with `extra` settings added.
async fn start_relay_with(extra: &[(&str, &str)]) -> Result<Running> {
    let mut env = vec![
        ("VC_TICKET_SECRET", SECRET),
        ("VC_TURN__LISTEN", "127.0.0.1:0"),
        ("VC_TURN__REALM", REALM),
        ("VC_TURN__USERS", "[\"bench:bench\"]"),
        ("VC_TURN__ALLOW_LOOPBACK_PEERS", "true"),
        ("VC_TURN__USER_QUOTA", "0"),
        ("VC_TURN__THREADS", "2"),
        ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
        ("VC_SIGNALING__LISTEN", "127.0.0.1:0"),
        // With [tls] set the relay also listens for QUIC: never on the fixed default
        // 0.0.0.0:4433, which another relay of a test running in parallel may hold.
        ("VC_QUIC__LISTEN", "127.0.0.1:0"),
        ("VC_DRAIN_SECS", "0"),
    ];
    env.extend_from_slice(extra);
    vc_tests::start("vc-relay", &[], &env).await
}

/// A free UDP port `p` with `p + 1` free too (turnutils_peer listens on both).
fn free_port_pair() -> Result<u16> {
    for _ in 0..100 {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        let p = s.local_addr()?.port();
        if p < 65535 && UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free port pair")
}

/// Starts `turnutils_peer` (UDP echo) and waits until it has bound its port.
async fn start_peer() -> Result<(Child, u16)> {
    let port = free_port_pair()?;
    let child = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("spawn turnutils_peer (apt-get install coturn)")?;
    for _ in 0..100 {
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            return Ok((child, port));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("turnutils_peer did not bind {port}")
}

/// uclient's closing report.
#[derive(Debug, Default)]
struct Report {
    sent: u64,
    received: u64,
    lost: Option<u64>,
}

fn parse_report(out: &str) -> Report {
    let mut r = Report::default();
    let num = |s: &str| -> u64 {
        s.chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    };
    for line in out.lines() {
        if let (Some(a), Some(b)) = (line.find("tot_send_msgs="), line.find("tot_recv_msgs=")) {
            r.sent = num(&line[a + 14..]);
            r.received = num(&line[b + 14..]);
        }
        if let Some(a) = line.find("Total lost packets ") {
            r.lost = Some(num(&line[a + 19..]));
        }
    }
    r
}

/// Runs uclient against the relay and checks that every message came back.
async fn uclient(relay: &Running, args: &[&str], sessions: u64, messages: u64) -> Result<Report> {
    uclient_on(relay, "turn-udp", args, sessions, messages).await
}

/// [`uclient`] against the relay's listener `listener` (`turn-udp`, `turn-tls`, ...).
async fn uclient_on(
    relay: &Running,
    listener: &str,
    args: &[&str],
    sessions: u64,
    messages: u64,
) -> Result<Report> {
    let addr: SocketAddr = relay.addr(listener).parse()?;
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(args)
        .args(["-n", &messages.to_string(), "-m", &sessions.to_string()])
        .args(["-l", "120", "-z", "5", "-c", "-p", &addr.port().to_string()])
        .arg(addr.ip().to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("uclient timed out")??;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let report = parse_report(&text);
    let tail: Vec<&str> = text.lines().rev().take(15).collect();
    anyhow::ensure!(out.status.success(), "uclient {args:?} failed: {tail:#?}");
    anyhow::ensure!(
        report.sent == sessions * messages
            && report.received == report.sent
            && report.lost == Some(0),
        "uclient {args:?}: not all echoed: {report:?}\n{tail:#?}"
    );
    Ok(report)
}

async fn with_peer(args: &[&str], sessions: u64, messages: u64) -> Result<()> {
    with_peer_on(&[], "turn-udp", args, sessions, messages).await
}

/// [`with_peer`] on a relay started with `extra` settings, uclient aimed at `listener`.
async fn with_peer_on(
    extra: &[(&str, &str)],
    listener: &str,
    args: &[&str],
    sessions: u64,
    messages: u64,
) -> Result<()> {
    if !have_coturn() {
        bail!("turnutils_uclient not installed (.ci/setup installs coturn)");
    }
    let relay = start_relay_with(extra).await?;
    let (_peer, port) = start_peer().await?;
    let port = port.to_string();
    let mut all = vec![
        "-e",
        "127.0.0.1",
        "-r",
        port.as_str(),
        "-u",
        "bench",
        "-w",
        "bench",
    ];
    all.extend_from_slice(args);
    uclient_on(&relay, listener, &all, sessions, messages).await?;
    relay.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn udp_channel_data_one_session() -> Result<()> {
    with_peer(&[], 1, 200).await
}

#[tokio::test]
async fn udp_channel_data_fifty_sessions() -> Result<()> {
    with_peer(&[], 50, 100).await
}

#[tokio::test]
async fn udp_send_indications_one_session() -> Result<()> {
    with_peer(&["-s"], 1, 200).await
}

#[tokio::test]
async fn udp_send_indications_fifty_sessions() -> Result<()> {
    with_peer(&["-s"], 50, 100).await
}

#[tokio::test]
async fn tcp_channel_data_and_send_indications() -> Result<()> {
    with_peer(&["-t"], 10, 100).await?;
    with_peer(&["-t", "-s"], 10, 100).await
}

#[tokio::test]
async fn tls_channel_data_and_send_indications() -> Result<()> {
    // TURN over TLS (`turns:`): uclient -S -t against turn.tls_listen, verifying the relay's
    // certificate against the generated one (-E), so a plaintext or wrong-cert answer fails.
    let dir = tempfile::tempdir()?;
    let cert = vc_tests::certs::TestCert::generate()?;
    let (c, k) = cert.write(dir.path())?;
    let (c, k) = (c.display().to_string(), k.display().to_string());
    let env = [
        ("VC_TLS__CERT_FILE", c.as_str()),
        ("VC_TLS__KEY_FILE", k.as_str()),
        ("VC_TURN__TLS_LISTEN", "127.0.0.1:0"),
        // Never the fixed QUIC default 0.0.0.0:4433 (test binaries run in parallel).
        ("VC_QUIC__LISTEN", "127.0.0.1:0"),
        // uclient -t opens two connections per session (20 here), over the default 16 per IP.
        // Over TLS a refused one is a failed handshake, and uclient gives up after a few
        // (it also retries its random TLS 1.0/1.1 contexts, which the 1.2 minimum refuses).
        ("VC_TURN__MAX_TCP_CONNECTIONS_PER_IP", "64"),
    ];
    with_peer_on(&env, "turn-tls", &["-t", "-S", "-E", &c], 10, 100).await?;
    with_peer_on(&env, "turn-tls", &["-t", "-S", "-E", &c, "-s"], 10, 100).await
}

#[tokio::test]
async fn tls_handshake_inside_first_message_deadline_and_plaintext_refused() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir()?;
    let cert = vc_tests::certs::TestCert::generate()?;
    let (c, k) = cert.write(dir.path())?;
    let (c, k) = (c.display().to_string(), k.display().to_string());
    let relay = start_relay_with(&[
        ("VC_TLS__CERT_FILE", c.as_str()),
        ("VC_TLS__KEY_FILE", k.as_str()),
        ("VC_TURN__TLS_LISTEN", "127.0.0.1:0"),
        ("VC_TURN__TCP_FIRST_MESSAGE_TIMEOUT", "1"),
    ])
    .await?;
    let addr = relay.addr("turn-tls").to_owned();
    let mut buf = [0u8; 64];
    // A ClientHello that never completes: cut at the first-message deadline.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await?;
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02]).await?;
    let t0 = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf))
        .await
        .context("stalled TLS handshake not closed")?
        .unwrap_or(0);
    anyhow::ensure!(
        n == 0 && t0.elapsed() < Duration::from_secs(3),
        "{n} bytes after {:?}",
        t0.elapsed()
    );
    // Plaintext STUN to the TLS port gets no STUN answer, only a TLS alert and a close.
    let mut req = Vec::new();
    let binding = MessageBuilder::new(&mut req, Class::Request, Method::Binding, &[7; 12]).finish();
    let mut plain = tokio::net::TcpStream::connect(&addr).await?;
    plain.write_all(binding).await?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut got))
        .await
        .context("plaintext connection not closed")??;
    anyhow::ensure!(
        Message::parse(&got).is_err(),
        "plaintext STUN answered on the TLS port"
    );
    relay.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn tls_per_ip_cap() -> Result<()> {
    use vc_tests::signaling_client::tls_connect;
    let dir = tempfile::tempdir()?;
    let cert = vc_tests::certs::TestCert::generate()?;
    let (c, k) = cert.write(dir.path())?;
    let (c, k) = (c.display().to_string(), k.display().to_string());
    let relay = start_relay_with(&[
        ("VC_TLS__CERT_FILE", c.as_str()),
        ("VC_TLS__KEY_FILE", k.as_str()),
        ("VC_TURN__TLS_LISTEN", "127.0.0.1:0"),
        ("VC_TURN__MAX_TCP_CONNECTIONS_PER_IP", "1"),
    ])
    .await?;
    let addr = relay.addr("turn-tls").to_owned();
    let held = tls_connect(&addr, &cert.der, &[b"stun.turn"]).await?;
    // The second connection from the same IP is closed before any TLS is spoken.
    anyhow::ensure!(
        tls_connect(&addr, &cert.der, &[b"stun.turn"])
            .await
            .is_err(),
        "second TLS connection admitted over max_tcp_connections_per_ip = 1"
    );
    // Closing the first frees the slot.
    drop(held);
    let t0 = std::time::Instant::now();
    while tls_connect(&addr, &cert.der, &[b"stun.turn"])
        .await
        .is_err()
    {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(3), "slot not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn single_port_routes_wss_and_turn_by_alpn_and_first_byte() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use vc_tests::signaling_client::{recv, tls_connect, wss_connect};
    if !have_coturn() {
        bail!("turnutils_uclient not installed (.ci/setup installs coturn)");
    }
    let dir = tempfile::tempdir()?;
    let cert = vc_tests::certs::TestCert::generate()?;
    let (c, k) = cert.write(dir.path())?;
    let (c, k) = (c.display().to_string(), k.display().to_string());
    let relay = start_relay_with(&[
        ("VC_TLS__CERT_FILE", c.as_str()),
        ("VC_TLS__KEY_FILE", k.as_str()),
        ("VC_TURN__TLS_LISTEN", "127.0.0.1:0"),
        ("VC_TLS__SINGLE_PORT_LISTEN", "127.0.0.1:0"),
        // See tls_channel_data_and_send_indications: 20 connections for 10 sessions.
        ("VC_TURN__MAX_TCP_CONNECTIONS_PER_IP", "64"),
    ])
    .await?;
    let addr = relay.addr("single-port").to_owned();
    let key = TicketKey::new(&shared::Secret::new(SECRET));
    let dev = uuid::Uuid::new_v4();
    let now = shared::ticket::unix_now();
    let (token, _) = key.mint_signaling(
        &dev.to_string(),
        shared::ticket::Role::Camera,
        vec![dev],
        now,
        600,
    );
    let query = format!("/ws?token={token}");
    let welcome = |m: shared::signaling::ServerMessage| match m {
        shared::signaling::ServerMessage::Welcome { .. } => Ok(()),
        other => Err(anyhow::anyhow!("expected welcome, got {other:?}")),
    };
    // WSS with ALPN http/1.1.
    let (mut ws, der) = wss_connect(&addr, &query, &cert.der).await?;
    anyhow::ensure!(der == cert.der);
    welcome(recv(&mut ws).await?)?;
    // WSS without ALPN: routed by the `G` of `GET`.
    let tls = tls_connect(&addr, &cert.der, &[]).await?;
    anyhow::ensure!(tls.get_ref().1.alpn_protocol().is_none());
    let (mut bare, _) = tokio_tungstenite::client_async(format!("wss://localhost{query}"), tls)
        .await
        .context("no-ALPN upgrade")?;
    welcome(recv(&mut bare).await?)?;
    // STUN without ALPN: routed by the zero bits of the STUN header; a Binding is answered.
    let mut tls = tls_connect(&addr, &cert.der, &[]).await?;
    let mut req = Vec::new();
    let binding = MessageBuilder::new(&mut req, Class::Request, Method::Binding, &[9; 12]).finish();
    tls.write_all(binding).await?;
    let mut head = [0u8; 20];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut head))
        .await
        .context("no Binding response")??;
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut resp = head.to_vec();
    resp.resize(20 + len, 0);
    tls.read_exact(&mut resp[20..]).await?;
    let msg = Message::parse(&resp)?;
    anyhow::ensure!(
        msg.class() == Class::Success && msg.method() == Method::Binding,
        "expected a Binding success"
    );
    // TURN with ALPN stun.turn (uclient offers it): relayed like the dedicated ports.
    let (_peer, port) = start_peer().await?;
    let port = port.to_string();
    let args = [
        "-e",
        "127.0.0.1",
        "-r",
        &port,
        "-u",
        "bench",
        "-w",
        "bench",
        "-t",
        "-S",
        "-E",
        &c,
    ];
    uclient_on(&relay, "single-port", &args, 10, 100).await?;
    relay.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn udp_client_to_client() -> Result<()> {
    if !have_coturn() {
        bail!("turnutils_uclient not installed (.ci/setup installs coturn)");
    }
    let relay = start_relay().await?;
    uclient(&relay, &["-y", "-u", "bench", "-w", "bench"], 50, 100).await?;
    relay.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn rest_credentials_from_ticket_secret_accepted() -> Result<()> {
    // uclient -W derives `<now + 24 h>:<user>` / base64(HMAC-SHA1(secret, username)): the
    // scheme of shared::ticket::TicketKey::turn_credentials, which vc-control's ticket
    // endpoint uses, keyed by the TURN secret derived from the ticket secret (coturn's
    // `static-auth-secret` would be the same value).
    let turn_secret = shared::ticket::turn_rest_secret(&shared::Secret::new(SECRET));
    if !have_coturn() {
        bail!("turnutils_uclient not installed (.ci/setup installs coturn)");
    }
    let relay = start_relay().await?;
    let (_peer, port) = start_peer().await?;
    let port = port.to_string();
    let args = [
        "-e",
        "127.0.0.1",
        "-r",
        port.as_str(),
        "-u",
        "camera-1",
        "-W",
        turn_secret.expose(),
    ];
    uclient(&relay, &args, 2, 100).await?;
    relay.terminate().await?;
    Ok(())
}

/// One request/response over a raw UDP socket.
async fn exchange(sock: &tokio::net::UdpSocket, to: SocketAddr, req: &[u8]) -> Result<Vec<u8>> {
    sock.send_to(req, to).await?;
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .context("no response")??;
    buf.truncate(n);
    Ok(buf)
}

fn allocate_request(tid: u8, creds: Option<(&str, &str, &[u8])>) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::Allocate, &[tid; 12]);
    b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    if let Some((user, pass, nonce)) = creds {
        let key = relay::stun::integrity::long_term_key(
            user.as_bytes(),
            REALM.as_bytes(),
            pass.as_bytes(),
        );
        b.attr(attr::USERNAME, user.as_bytes());
        b.attr(attr::REALM, REALM.as_bytes());
        b.attr(attr::NONCE, nonce);
        b.integrity(hmac_sha1(&key));
    }
    b.fingerprint();
    buf
}

#[tokio::test]
async fn rest_credentials_expired_or_tampered_rejected() -> Result<()> {
    let relay = start_relay().await?;
    let server: SocketAddr = relay.addr("turn-udp").parse()?;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let key = TicketKey::new(&shared::Secret::new(SECRET));
    let now = shared::ticket::unix_now();

    let resp = exchange(&sock, server, &allocate_request(1, None)).await?;
    let m = Message::parse(&resp)?;
    let code = m
        .attribute(attr::ERROR_CODE)
        .and_then(errors::decode_error_code);
    assert_eq!(code, Some(401));
    let nonce = m.attribute(attr::NONCE).context("NONCE")?.to_vec();

    let code_of = |resp: &[u8]| -> Result<Option<u16>> {
        let m = Message::parse(resp)?;
        Ok(m.attribute(attr::ERROR_CODE)
            .and_then(errors::decode_error_code))
    };
    // Expired an hour ago.
    let (user, pass) = key.turn_credentials("dev-1", now - 7200, 3600);
    let resp = exchange(
        &sock,
        server,
        &allocate_request(2, Some((&user, &pass, &nonce))),
    )
    .await?;
    assert_eq!(code_of(&resp)?, Some(401), "expired ticket");
    // Expiry pushed into the future by hand: the HMAC no longer matches.
    let (user, pass) = key.turn_credentials("dev-1", now, 600);
    let forged_user = format!("{}:dev-1", now + 86_400);
    let resp = exchange(
        &sock,
        server,
        &allocate_request(3, Some((&forged_user, &pass, &nonce))),
    )
    .await?;
    assert_eq!(code_of(&resp)?, Some(401), "tampered username");
    // Signed with another secret.
    let other = TicketKey::new(&shared::Secret::new("not-the-secret"));
    let (ouser, opass) = other.turn_credentials("dev-1", now, 600);
    let resp = exchange(
        &sock,
        server,
        &allocate_request(4, Some((&ouser, &opass, &nonce))),
    )
    .await?;
    assert_eq!(code_of(&resp)?, Some(401), "foreign secret");
    // The genuine ticket works.
    let resp = exchange(
        &sock,
        server,
        &allocate_request(5, Some((&user, &pass, &nonce))),
    )
    .await?;
    let m = Message::parse(&resp)?;
    assert_eq!(m.class(), Class::Success);
    assert!(m.attribute(attr::XOR_RELAYED_ADDRESS).is_some());
    relay.terminate().await?;
    Ok(())
}
