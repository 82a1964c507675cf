//! A minimal signaling client for the integration tests (shared by `signaling.rs` and
//! `cluster.rs`): typed send/receive over a real WebSocket, pings skipped.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use shared::signaling::{ClientMessage, ErrorCode, IceCandidate, ServerMessage};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single step (a message, an upgrade) may take.
pub const STEP: Duration = Duration::from_secs(5);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A `wss://` client connection (TLS through our own rustls connector).
pub type Wss = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    msg: &ClientMessage,
) -> Result<()> {
    ws.send(Message::text(serde_json::to_string(msg)?)).await?;
    Ok(())
}

/// The next relay message (pings skipped); errors on close or timeout.
pub async fn recv<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Result<ServerMessage> {
    loop {
        let m = tokio::time::timeout(STEP, ws.next())
            .await
            .context("no message within 5 s")?
            .context("stream ended")??;
        match m {
            Message::Text(t) => return Ok(serde_json::from_str(&t)?),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => bail!("expected a text message, got {other:?}"),
        }
    }
}

/// A host candidate numbered `n` (distinct per `n`, so routing tests can tell them apart).
pub fn cand(n: u16) -> IceCandidate {
    IceCandidate {
        candidate: format!(
            "candidate:{n} 1 udp 2122260223 127.0.0.1 {} typ host",
            40000 + n
        ),
        sdp_mid: Some("0".into()),
        sdp_mline_index: Some(0),
        username_fragment: None,
    }
}

/// Opens a WebSocket to `url` within [`STEP`].
pub async fn ws_connect(url: &str) -> Result<Ws> {
    let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
        .await
        .context("connect timed out")??;
    Ok(ws)
}

/// TLS to `addr` trusting only `trust` (server name `localhost`), offering ALPN `alpn`
/// (empty: none), within [`STEP`].
pub async fn tls_connect(
    addr: &str,
    trust: &[u8],
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    tls_over(tcp, trust, alpn).await
}

/// [`tls_connect`] on an open `tcp` (e.g. after a PROXY header was written to it).
pub async fn tls_over(
    tcp: TcpStream,
    trust: &[u8],
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use tokio_rustls::rustls::{crypto::ring, ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(trust.to_vec()))?;
    let mut cfg =
        ClientConfig::builder_with_provider(std::sync::Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connect = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(ServerName::try_from("localhost")?, tcp);
    Ok(tokio::time::timeout(STEP, connect)
        .await
        .context("TLS connect timed out")??)
}

/// The DER of the certificate the server presented on `tls`.
pub fn peer_cert(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> Option<Vec<u8>> {
    Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec())
}

/// `wss://localhost/<path_and_query>` on `addr`, trusting only `trust`; also returns the
/// certificate the server presented.
pub async fn wss_connect(addr: &str, path_and_query: &str, trust: &[u8]) -> Result<(Wss, Vec<u8>)> {
    let tls = tls_connect(addr, trust, &[b"http/1.1"]).await?;
    let cert = peer_cert(&tls).context("no server certificate")?;
    let url = format!("wss://localhost{path_and_query}");
    let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::client_async(url, tls))
        .await
        .context("upgrade timed out")??;
    Ok((ws, cert))
}

/// The HTTP status a refused WebSocket upgrade to `url` got (errors if it was accepted).
pub async fn refused(url: &str) -> Result<u16> {
    match tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url)).await? {
        Ok(_) => bail!("upgrade to {url} was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Ok(resp.status().as_u16()),
        Err(e) => bail!("upgrade failed without an HTTP status: {e}"),
    }
}

/// Waits for the close frame; returns its code and reason.
pub async fn closed<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Result<(u16, String)> {
    loop {
        let m = tokio::time::timeout(STEP, ws.next())
            .await
            .context("not closed within 5 s")?;
        match m {
            Some(Ok(Message::Close(Some(f)))) => return Ok((f.code.into(), f.reason.to_string())),
            Some(Ok(Message::Close(None))) | None => return Ok((0, String::new())),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("error before close: {e}"),
        }
    }
}

/// Ok if `m` is an `error` with code `want`.
pub fn expect_error(m: ServerMessage, want: ErrorCode) -> Result<()> {
    match m {
        ServerMessage::Error { code, .. } if code == want => Ok(()),
        other => bail!("expected error {want:?}, got {other:?}"),
    }
}
