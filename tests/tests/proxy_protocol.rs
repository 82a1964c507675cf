//! PROXY protocol v2 on vc-relay's TURN TCP listener (`turn.proxy_protocol_from`) and, at the
//! end, its signaling listener and single TLS port (`signaling.proxy_protocol_from`): behind a
//! balancer sending `send-proxy-v2`, a TURN client sees its own address in
//! XOR-MAPPED-ADDRESS, not the balancer's; a header from an untrusted source is refused, and a
//! trusted source without a header is refused too (it would make every client the balancer).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use vc_tests::balancer::Balancer;
use vc_tests::stack::start_relay;
use vc_tests::turn_client::TurnClient;

/// From 127.0.0.1 only: the balancer's upstream connections come from there; test clients
/// connect from other loopback addresses.
async fn relay() -> Result<vc_tests::Running> {
    start_relay(
        "proxy-protocol-test-secret-0123456789abcdef",
        "",
        &[
            ("VC_TURN__REALM", "vc.test"),
            ("VC_TURN__USERS", "[\"bench:bench\"]"),
            ("VC_TURN__ALLOW_LOOPBACK_PEERS", "true"),
            ("VC_TURN__PROXY_PROTOCOL_FROM", "[\"127.0.0.1/32\"]"),
            ("VC_TURN__TCP_FIRST_MESSAGE_TIMEOUT", "2"),
        ],
    )
    .await
}

async fn connect_from(source: &str, to: &str) -> Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(format!("{source}:0").parse()?)?;
    let to: SocketAddr = to.parse()?;
    Ok(
        tokio::time::timeout(Duration::from_secs(5), sock.connect(to))
            .await
            .context("connect")??,
    )
}

#[tokio::test]
async fn the_real_client_address_reaches_xor_mapped_address() -> Result<()> {
    let relay = relay().await?;
    let turn = relay.addr("turn-tcp").to_owned();
    let lb = Balancer::start_proxy_v2(vec![turn.clone()]).await?;

    let s = connect_from("127.0.0.3", &lb.addr).await?;
    let me = s.local_addr()?;
    let mut client = TurnClient::new(s, "bench", "bench", "vc.test");
    let (_, mapped) = client.allocate().await?;
    ensure!(
        mapped == me,
        "XOR-MAPPED-ADDRESS {mapped}, the client is {me}"
    );

    // Untrusted source (127.0.0.2) claiming another address: refused, nothing answered.
    let mut s = connect_from("127.0.0.2", &turn).await?;
    s.write_all(&relay::proxy::encode(
        "198.51.100.9:4000".parse()?,
        turn.parse()?,
    ))
    .await?;
    let mut forged = TurnClient::new(s, "bench", "bench", "vc.test");
    ensure!(
        forged.allocate().await.is_err(),
        "a forged header was accepted"
    );

    // Untrusted source without a header: served as usual, under its own address.
    let s = connect_from("127.0.0.2", &turn).await?;
    let me = s.local_addr()?;
    let mut direct = TurnClient::new(s, "bench", "bench", "vc.test");
    let (_, mapped) = direct.allocate().await?;
    ensure!(mapped == me, "direct client mapped to {mapped}");

    // Trusted source without a header: refused.
    let s = connect_from("127.0.0.1", &turn).await?;
    let mut bare = TurnClient::new(s, "bench", "bench", "vc.test");
    ensure!(
        bare.allocate().await.is_err(),
        "a trusted source without a header was served"
    );
    Ok(())
}

/// A WebSocket upgrade to `ws://<to>/ws` on `stream` (after whatever was written to it).
async fn ws_upgrade<S>(stream: S, to: &str) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let upgrade = tokio_tungstenite::client_async(format!("ws://{to}/ws"), stream);
    let (ws, _) = tokio::time::timeout(Duration::from_secs(5), upgrade)
        .await
        .context("upgrade timed out")??;
    // Held open (it occupies its per-IP slot) until the test ends.
    tokio::spawn(async move {
        let _ws = ws;
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    Ok(())
}

/// PROXY v2 on the signaling listener (`signaling.proxy_protocol_from`): behind a balancer,
/// `max_connections_per_ip` counts the client each header names, not the balancer that every
/// connection comes from; a header from an untrusted source is refused.
#[tokio::test]
async fn signaling_per_ip_cap_counts_the_proxied_client() -> Result<()> {
    let relay = start_relay(
        "proxy-protocol-test-secret-0123456789abcdef",
        "",
        &[
            ("VC_SIGNALING__PROXY_PROTOCOL_FROM", "[\"127.0.0.1/32\"]"),
            ("VC_SIGNALING__MAX_CONNECTIONS_PER_IP", "2"),
        ],
    )
    .await?;
    let sig = relay.addr("signaling").to_owned();
    let via_balancer = |client: &'static str| {
        let sig = sig.clone();
        async move {
            let mut s = connect_from("127.0.0.1", &sig).await?;
            s.write_all(&relay::proxy::encode(client.parse()?, sig.parse()?))
                .await?;
            ws_upgrade(s, &sig).await
        }
    };
    // Two clients' worth of connections from one balancer address: each client gets its own
    // two slots (the balancer alone would be capped at 2 in all).
    for client in [
        "198.51.100.7:4000",
        "198.51.100.7:4001",
        "198.51.100.8:4000",
        "198.51.100.8:4001",
    ] {
        via_balancer(client)
            .await
            .with_context(|| format!("upgrade for {client} through the balancer"))?;
    }
    // The third connection of one client is over its cap: closed unread.
    ensure!(
        via_balancer("198.51.100.7:4002").await.is_err(),
        "a third connection of 198.51.100.7 was upgraded"
    );
    // An untrusted source with a header: not a valid HTTP request, no upgrade.
    let mut s = connect_from("127.0.0.2", &sig).await?;
    s.write_all(&relay::proxy::encode(
        "198.51.100.9:4000".parse()?,
        sig.parse()?,
    ))
    .await?;
    ensure!(
        ws_upgrade(s, &sig).await.is_err(),
        "a header from an untrusted source was accepted"
    );
    // The same untrusted source without a header: served as usual.
    let s = connect_from("127.0.0.2", &sig).await?;
    ws_upgrade(s, &sig).await.context("plain upgrade")?;
    // The trusted balancer without a header: refused, and counted.
    let s = connect_from("127.0.0.1", &sig).await?;
    ensure!(
        ws_upgrade(s, &sig).await.is_err(),
        "the balancer's bare connection was upgraded"
    );
    proxy_header_rejections_counted(&relay).await
}

/// The same on the single TLS port (`tls.single_port_listen`): the balancer's header comes
/// before the TLS ClientHello, and the per-IP caps of the routing stage and of signaling count
/// the client it names.
#[tokio::test]
async fn single_port_per_ip_cap_counts_the_proxied_client() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cert = vc_tests::certs::TestCert::generate()?;
    let (c, k) = cert.write(dir.path())?;
    let (c, k) = (c.display().to_string(), k.display().to_string());
    let relay = start_relay(
        "proxy-protocol-test-secret-0123456789abcdef",
        "",
        &[
            ("VC_TLS__CERT_FILE", &c),
            ("VC_TLS__KEY_FILE", &k),
            ("VC_TLS__SINGLE_PORT_LISTEN", "127.0.0.1:0"),
            ("VC_SIGNALING__PROXY_PROTOCOL_FROM", "[\"127.0.0.1/32\"]"),
            ("VC_SIGNALING__MAX_CONNECTIONS_PER_IP", "2"),
        ],
    )
    .await?;
    let port = relay.addr("single-port").to_owned();
    let via_balancer = |client: Option<&'static str>, source: &'static str| {
        let (port, der) = (port.clone(), cert.der.clone());
        async move {
            let mut s = connect_from(source, &port).await?;
            if let Some(client) = client {
                s.write_all(&relay::proxy::encode(client.parse()?, port.parse()?))
                    .await?;
            }
            let tls = vc_tests::signaling_client::tls_over(s, &der, &[b"http/1.1"]).await?;
            ws_upgrade(tls, "localhost").await
        }
    };
    for client in [
        "198.51.100.7:4000",
        "198.51.100.7:4001",
        "198.51.100.8:4000",
        "198.51.100.8:4001",
    ] {
        via_balancer(Some(client), "127.0.0.1")
            .await
            .with_context(|| format!("upgrade for {client} through the balancer"))?;
    }
    ensure!(
        via_balancer(Some("198.51.100.7:4002"), "127.0.0.1")
            .await
            .is_err(),
        "a third connection of 198.51.100.7 was upgraded"
    );
    ensure!(
        via_balancer(Some("198.51.100.9:4000"), "127.0.0.2")
            .await
            .is_err(),
        "a header from an untrusted source was accepted"
    );
    via_balancer(None, "127.0.0.2")
        .await
        .context("plain single-port upgrade")?;
    ensure!(
        via_balancer(None, "127.0.0.1").await.is_err(),
        "the balancer's bare connection was upgraded"
    );
    proxy_header_rejections_counted(&relay).await
}

/// Exactly one refused header so far (the balancer's bare connection), in the metric ops alert
/// on: a balancer that lost `send-proxy-v2` shows up there, not only in debug logs.
async fn proxy_header_rejections_counted(relay: &vc_tests::Running) -> Result<()> {
    let name = "vc_relay_signaling_connections_rejected_total{reason=\"proxy_header\"}";
    // The refusal is counted when the relay gives up on the header, which may be just after
    // the client saw its connection fail.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = vc_tests::stack::relay_metrics(relay).await?;
        let value = vc_tests::stack::metric(&text, name);
        if value == Some(1.0) || tokio::time::Instant::now() > deadline {
            ensure!(value == Some(1.0), "{name} = {value:?}");
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
