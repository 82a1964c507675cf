//! PROXY protocol v2 on vc-relay's TURN TCP listener (`turn.proxy_protocol_from`): behind a
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
