//! The camera's signaling link to vc-relay: a WebSocket (`ws://` or `wss://`, the ticket's `url`) or QUIC
//! (`quic://host:port`, the ticket's `quic_url`; quinn, ALPN `vc-signal/1`). Both are exposed
//! as the same stream and sink of tungstenite messages, so [`crate::run`] serves them alike.
//!
//! QUIC framing (docs/signaling.md, "QUIC"): one bidirectional stream opened by the camera;
//! each message is a u32 big-endian length then that many bytes of the WebSocket JSON. An
//! empty frame is the relay's ping, answered with an empty frame (the pong).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{future, Sink, SinkExt, Stream, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::version;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

/// The ALPN protocol of the relay's QUIC signaling listener.
pub const ALPN: &[u8] = b"vc-signal/1";

/// Largest frame the camera accepts from the relay (offers with many candidates stay far below).
const MAX_FRAME: usize = 1 << 20;

/// Which link `vc-camera run` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// QUIC when the ticket offers a `quic_url`, else WebSocket; WebSocket also when the QUIC
    /// handshake fails (UDP blocked).
    Auto,
    /// QUIC only (the ticket must offer a `quic_url`).
    Quic,
    /// WebSocket only.
    Ws,
}

/// Settings of the QUIC link.
#[derive(Debug, Clone)]
pub struct QuicOptions {
    /// PEM certificates to trust for the relay (else the system's roots).
    pub ca_file: Option<PathBuf>,
    /// QUIC keep-alive (PING) interval: below common 30 s UDP NAT mapping timeouts.
    pub keepalive: Duration,
    /// The connection is dead after this long without a packet from the relay.
    pub idle_timeout: Duration,
    /// Handshake deadline before giving up (and, in `auto`, falling back to WebSocket).
    pub connect_timeout: Duration,
}

pub type LinkSink = Pin<Box<dyn Sink<Message, Error = WsError> + Send>>;
pub type LinkStream = Pin<Box<dyn Stream<Item = Result<Message, WsError>> + Send>>;

/// An open signaling link.
pub struct Link {
    pub sink: LinkSink,
    pub stream: LinkStream,
    /// The QUIC endpoint (to rebind its socket) when the link is QUIC.
    pub quic: Option<QuicLink>,
}

/// The QUIC side of a [`Link`]: kept so the socket can move (connection migration).
pub struct QuicLink {
    pub endpoint: quinn::Endpoint,
    pub connection: quinn::Connection,
}

impl QuicLink {
    /// Moves the connection to a fresh UDP socket on a new ephemeral port, as a NAT rebinding
    /// or a Wi-Fi change would; the connection migrates and no reconnect happens. Returns the
    /// new local address.
    pub fn rebind(&self) -> std::io::Result<SocketAddr> {
        let any: SocketAddr = if self.connection.remote_address().is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        self.endpoint.rebind(UdpSocket::bind(any)?)?;
        self.endpoint.local_addr()
    }
}

/// `ws://` or `wss://` `url` (already carrying `?token=`), within `timeout`. `wss://` trusts
/// `ca_file` (else the system's roots), like HTTPS and QUIC, and offers ALPN `http/1.1` so a
/// relay's single TLS port routes it to signaling without sniffing.
pub async fn websocket(
    url: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<Link, String> {
    match tokio::time::timeout(timeout, websocket_connect(url, ca_file)).await {
        Ok(result) => result.map_err(|e| format!("websocket: {e}")),
        Err(_) => Err("websocket: timed out".into()),
    }
}

async fn websocket_connect(url: &str, ca_file: Option<&Path>) -> Result<Link, String> {
    let request = url.into_client_request().map_err(|e| e.to_string())?;
    let secure = match request.uri().scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(format!("{url:?} is not a ws:// or wss:// URL")),
    };
    let host = request
        .uri()
        .host()
        .ok_or_else(|| format!("{url:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = request
        .uri()
        .port_u16()
        .unwrap_or(if secure { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    // Signaling messages are small and latency-bound.
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    if !secure {
        let (ws, _) = tokio_tungstenite::client_async(request, tcp)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(websocket_link(ws));
    }
    let mut tls = shared::tls::client_config(ca_file, &[&version::TLS13, &version::TLS12])?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host:?}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?;
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| e.to_string())?;
    Ok(websocket_link(ws))
}

fn websocket_link<S>(ws: WebSocketStream<S>) -> Link
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = ws.split();
    Link {
        sink: Box::pin(sink),
        stream: Box::pin(stream),
        quic: None,
    }
}

/// `host` and `port` of a `quic://host:port` URL (IPv6 hosts in brackets).
pub fn parse_quic_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("quic://")
        .ok_or_else(|| format!("{url:?} is not a quic:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?} has no port"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("{url:?}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    Ok((host.to_owned(), port))
}

/// The client TLS config: TLS 1.3 (QUIC requires it), ALPN `vc-signal/1`, trusting
/// [`shared::tls::client_roots`].
pub fn client_config(ca_file: Option<&Path>) -> Result<quinn::ClientConfig, String> {
    let mut tls = shared::tls::client_config(ca_file, &[&version::TLS13])?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// Opens the QUIC link to `url` and its one bidirectional stream.
pub async fn quic(url: &str, options: &QuicOptions) -> Result<Link, String> {
    let (host, port) = parse_quic_url(url)?;
    let remote = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolve {host}: no address"))?;
    let mut config = client_config(options.ca_file.as_deref())?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(options.keepalive));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(options.idle_timeout).map_err(|e| e.to_string())?,
    ));
    config.transport_config(Arc::new(transport));
    let local: SocketAddr = if remote.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = quinn::Endpoint::client(local).map_err(|e| format!("quic socket: {e}"))?;
    let connecting = endpoint
        .connect_with(config, remote, &host)
        .map_err(|e| format!("quic connect {url}: {e}"))?;
    let connection = match tokio::time::timeout(options.connect_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("quic connect {url}: {e}")),
        Err(_) => return Err(format!("quic connect {url}: timed out")),
    };
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| format!("quic stream: {e}"))?;
    let codec = || {
        LengthDelimitedCodec::builder()
            .big_endian()
            .length_field_type::<u32>()
            .max_frame_length(MAX_FRAME)
            .new_codec()
    };
    let write = FramedWrite::new(send, codec());
    let sink = SinkExt::<Bytes>::sink_map_err(write, WsError::Io).with(|msg: Message| {
        future::ready(Ok::<_, WsError>(match msg {
            Message::Text(t) => Bytes::from(t),
            Message::Binary(b) => b,
            // Pings and pongs are both the empty frame.
            _ => Bytes::new(),
        }))
    });
    let stream = FramedRead::new(recv, codec()).map(|frame| match frame {
        Ok(b) if b.is_empty() => Ok(Message::Ping(Bytes::new())),
        Ok(b) => match String::from_utf8(b.to_vec()) {
            Ok(text) => Ok(Message::text(text)),
            Err(_) => Ok(Message::Binary(b.freeze())),
        },
        Err(e) => Err(WsError::Io(e)),
    });
    Ok(Link {
        sink: Box::pin(sink),
        stream: Box::pin(stream),
        quic: Some(QuicLink {
            endpoint,
            connection,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_urls() {
        assert_eq!(
            parse_quic_url("quic://relay.example.com:4433"),
            Ok(("relay.example.com".into(), 4433))
        );
        assert_eq!(parse_quic_url("quic://[::1]:443/"), Ok(("::1".into(), 443)));
        assert!(parse_quic_url("ws://relay:4433").is_err());
        assert!(parse_quic_url("quic://relay").is_err());
        assert!(parse_quic_url("quic://:4433").is_err());
        assert!(parse_quic_url("quic://relay:99999").is_err());
    }
}
