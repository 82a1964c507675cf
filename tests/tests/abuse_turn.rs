//! Abusive TURN clients against the real vc-relay binary (issue 11, items 4, 9, 10): idle TCP
//! sockets, too many sockets from one IP, reflection floods, SSRF peers. Each test shows the
//! attacker refused or shed and a well-behaved client served meanwhile. Loopback only; other
//! source IPs are 127.0.0.x (Linux routes all of 127/8 to lo).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use relay::stun::{attr, errors, Class, Message, MessageBuilder, Method};
use relay::turn::auth::hmac_sha1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use vc_tests::Running;

const REALM: &str = "vc.test";

async fn start_relay(extra: &[(&str, &str)]) -> Result<Running> {
    let mut env = vec![
        ("VC_TICKET_SECRET", "abuse-test-secret-abuse-test-secret"),
        ("VC_TURN__LISTEN", "127.0.0.1:0"),
        ("VC_TURN__REALM", REALM),
        ("VC_TURN__USERS", "[\"bench:bench\"]"),
        ("VC_TURN__ALLOW_LOOPBACK_PEERS", "true"),
        ("VC_TURN__THREADS", "1"),
        ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
        ("VC_SIGNALING__LISTEN", "127.0.0.1:0"),
        ("VC_DRAIN_SECS", "0"),
    ];
    env.extend_from_slice(extra);
    vc_tests::start("vc-relay", &[], &env).await
}

fn request(method: Method, tid: u8, creds: Option<&[u8]>) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, Class::Request, method, &[tid; 12]);
    if method == Method::Allocate {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    }
    if let Some(nonce) = creds {
        let key = relay::stun::integrity::long_term_key(b"bench", REALM.as_bytes(), b"bench");
        b.attr(attr::USERNAME, b"bench");
        b.attr(attr::REALM, REALM.as_bytes());
        b.attr(attr::NONCE, nonce);
        b.integrity(hmac_sha1(&key));
    }
    if method != Method::Binding {
        b.fingerprint();
    }
    buf
}

/// One STUN message over a TCP stream (requests and answers here are STUN, not ChannelData).
async fn tcp_exchange(s: &mut TcpStream, req: &[u8]) -> Result<Vec<u8>> {
    s.write_all(req).await?;
    let mut head = [0u8; 20];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .context("no answer")??;
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut msg = head.to_vec();
    msg.resize(20 + len, 0);
    s.read_exact(&mut msg[20..]).await?;
    Ok(msg)
}

fn error_code(raw: &[u8]) -> Option<u16> {
    Message::parse(raw)
        .ok()?
        .attribute(attr::ERROR_CODE)
        .and_then(errors::decode_error_code)
}

/// A full TCP TURN client: Binding, 401, authenticated Allocate.
async fn legit_tcp_client(turn: SocketAddr, source: &str) -> Result<()> {
    let mut s = connect_from(source, turn).await?;
    let raw = tcp_exchange(&mut s, &request(Method::Binding, 1, None)).await?;
    assert_eq!(Message::parse(&raw)?.class(), Class::Success);
    let raw = tcp_exchange(&mut s, &request(Method::Allocate, 2, None)).await?;
    assert_eq!(error_code(&raw), Some(401));
    let nonce = Message::parse(&raw)?
        .attribute(attr::NONCE)
        .unwrap()
        .to_vec();
    let raw = tcp_exchange(&mut s, &request(Method::Allocate, 3, Some(&nonce))).await?;
    let m = Message::parse(&raw)?;
    assert_eq!((m.class(), error_code(&raw)), (Class::Success, None));
    assert!(m.attribute(attr::XOR_RELAYED_ADDRESS).is_some());
    Ok(())
}

async fn connect_from(source: &str, to: SocketAddr) -> Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(format!("{source}:0").parse()?)?;
    Ok(
        tokio::time::timeout(Duration::from_secs(5), sock.connect(to))
            .await
            .context("connect")??,
    )
}

/// Whether the server closes `s` within `within` (EOF or reset), sending nothing.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn idle_tcp_sockets_are_shed_by_the_first_message_deadline() -> Result<()> {
    let relay = start_relay(&[
        ("VC_TURN__MAX_TCP_CONNECTIONS", "8"),
        ("VC_TURN__MAX_TCP_CONNECTIONS_PER_IP", "0"),
        ("VC_TURN__TCP_FIRST_MESSAGE_TIMEOUT", "1"),
    ])
    .await?;
    let turn: SocketAddr = relay.addr("turn-tcp").parse()?;
    // The attacker fills every slot with sockets that never speak.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(connect_from("127.0.0.1", turn).await?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Full: the next one is closed at once.
    let mut late = connect_from("127.0.0.1", turn).await?;
    assert!(
        closed_within(&mut late, Duration::from_millis(900)).await,
        "over max_tcp_connections"
    );
    // The deadline sheds the idle sockets...
    for s in &mut idle {
        assert!(
            closed_within(s, Duration::from_secs(3)).await,
            "idle socket kept"
        );
    }
    // ...and a real client gets the whole way to an allocation.
    legit_tcp_client(turn, "127.0.0.1").await?;
    Ok(())
}

#[tokio::test]
async fn garbage_does_not_count_as_the_first_message() -> Result<()> {
    let relay = start_relay(&[("VC_TURN__TCP_FIRST_MESSAGE_TIMEOUT", "5")]).await?;
    let turn: SocketAddr = relay.addr("turn-tcp").parse()?;
    // ChannelData before any STUN message: closed at once, not after 5 s.
    let mut s = connect_from("127.0.0.1", turn).await?;
    s.write_all(&[0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]).await?;
    assert!(closed_within(&mut s, Duration::from_secs(2)).await);
    Ok(())
}

#[tokio::test]
async fn silent_tcp_connection_without_allocation_times_out() -> Result<()> {
    let relay = start_relay(&[
        ("VC_TURN__TCP_FIRST_MESSAGE_TIMEOUT", "10"),
        ("VC_TURN__TCP_IDLE_TIMEOUT", "1"),
    ])
    .await?;
    let turn: SocketAddr = relay.addr("turn-tcp").parse()?;
    let mut s = connect_from("127.0.0.1", turn).await?;
    let raw = tcp_exchange(&mut s, &request(Method::Binding, 1, None)).await?;
    assert_eq!(Message::parse(&raw)?.class(), Class::Success);
    // A valid message passed the first deadline (10 s); silence after it ends at 1 s.
    assert!(closed_within(&mut s, Duration::from_secs(4)).await);
    Ok(())
}

#[tokio::test]
async fn per_ip_cap_refuses_the_excess_and_not_other_ips() -> Result<()> {
    let relay = start_relay(&[
        ("VC_TURN__MAX_TCP_CONNECTIONS_PER_IP", "3"),
        ("VC_TURN__TCP_FIRST_MESSAGE_TIMEOUT", "30"),
    ])
    .await?;
    let turn: SocketAddr = relay.addr("turn-tcp").parse()?;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.2", turn).await?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut excess = connect_from("127.0.0.2", turn).await?;
    assert!(
        closed_within(&mut excess, Duration::from_secs(2)).await,
        "4th from one IP"
    );
    for s in &mut held {
        assert!(
            !closed_within(s, Duration::from_millis(100)).await,
            "the 3 stay"
        );
    }
    // Another source IP is served while 127.0.0.2 is at its cap.
    legit_tcp_client(turn, "127.0.0.3").await?;
    // A slot comes back when a connection closes.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    legit_tcp_client(turn, "127.0.0.2").await?;
    Ok(())
}

/// Counts answers to `n` requests sent as fast as possible, reading for a while after.
async fn flood(sock: &UdpSocket, to: SocketAddr, req: &[u8], n: usize) -> Result<(usize, usize)> {
    for _ in 0..n {
        sock.send_to(req, to).await?;
    }
    let (mut answers, mut max_len) = (0, 0);
    let mut buf = [0u8; 2048];
    while let Ok(Ok((len, _))) =
        tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await
    {
        answers += 1;
        max_len = max_len.max(len);
    }
    Ok((answers, max_len))
}

#[tokio::test]
async fn reflection_flood_is_limited_per_source_and_answers_are_small() -> Result<()> {
    let relay = start_relay(&[
        ("VC_TURN__UNAUTH_RATE", "5"),
        ("VC_TURN__UNAUTH_BURST", "10"),
    ])
    .await?;
    let turn: SocketAddr = relay.addr("turn-udp").parse()?;
    let attacker = UdpSocket::bind("127.0.0.4:0").await?;
    let binding = request(Method::Binding, 1, None);
    let allocate = request(Method::Allocate, 2, None);
    let (answers, max_len) = flood(&attacker, turn, &binding, 300).await?;
    // Burst of 10, plus at most a few from refill during the flood (5/s).
    assert!(
        (10..=15).contains(&answers),
        "{answers} answers to 300 Bindings"
    );
    assert_eq!(binding.len(), 20);
    assert_eq!(max_len, 32, "Binding answer = header + XOR-MAPPED-ADDRESS");
    let (answers, _) = flood(&attacker, turn, &allocate, 300).await?;
    assert!(
        answers <= 5,
        "{answers} challenges after the budget was spent"
    );
    // Another source is answered during the flood, with a minimal 401.
    let honest = UdpSocket::bind("127.0.0.5:0").await?;
    honest.send_to(&allocate, turn).await?;
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), honest.recv_from(&mut buf))
        .await
        .context("honest source not answered")??;
    assert_eq!(error_code(&buf[..n]), Some(401));
    let m = Message::parse(&buf[..n])?;
    assert!(m.attribute(attr::SOFTWARE).is_none());
    // ERROR-CODE without phrase 8, REALM 4+8, NONCE 4+32, FINGERPRINT 8.
    assert_eq!(
        n,
        20 + 8 + 12 + 36 + 8,
        "401 size (request was {})",
        allocate.len()
    );
    Ok(())
}

#[tokio::test]
async fn ssrf_peers_are_forbidden() -> Result<()> {
    let relay = start_relay(&[("VC_TURN__ALLOW_LOOPBACK_PEERS", "false")]).await?;
    let turn: SocketAddr = relay.addr("turn-udp").parse()?;
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let mut buf = [0u8; 2048];
    sock.send_to(&request(Method::Allocate, 1, None), turn)
        .await?;
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await??;
    let nonce = Message::parse(&buf[..n])?
        .attribute(attr::NONCE)
        .unwrap()
        .to_vec();
    sock.send_to(&request(Method::Allocate, 2, Some(&nonce)), turn)
        .await?;
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await??;
    if Message::parse(&buf[..n])?.class() != Class::Success {
        bail!("allocate failed: {:?}", error_code(&buf[..n]));
    }
    let key = relay::stun::integrity::long_term_key(b"bench", REALM.as_bytes(), b"bench");
    for (i, peer) in [
        "198.18.0.1:9",
        "192.0.0.170:9",
        "127.0.0.1:9",
        "100.64.0.1:9",
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = Vec::new();
        let tid = [10 + i as u8; 12];
        let mut b = MessageBuilder::new(&mut req, Class::Request, Method::CreatePermission, &tid);
        b.xor_address(attr::XOR_PEER_ADDRESS, peer.parse()?);
        b.attr(attr::USERNAME, b"bench");
        b.attr(attr::REALM, REALM.as_bytes());
        b.attr(attr::NONCE, &nonce);
        b.integrity(hmac_sha1(&key));
        b.fingerprint();
        sock.send_to(&req, turn).await?;
        let (n, _) =
            tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await??;
        assert_eq!(error_code(&buf[..n]), Some(403), "{peer}");
    }
    Ok(())
}
