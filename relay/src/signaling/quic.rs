//! The QUIC signaling transport (issue 10): one connection, one bidirectional stream opened by
//! the client, ALPN `vc-signal/1`. Each message is a frame: u32 big-endian length, then that
//! many bytes of the same JSON as a WebSocket text message. A zero-length frame is a ping
//! (from the relay) or a pong (from the client): WebSocket's pongs keep an idle-but-alive
//! client within `idle_timeout_secs`, and this keeps the rule the same here.
//!
//! [`Frames`] adapts the stream to the message `Sink`/`Stream` the WebSocket connection task
//! already drives ([`super::connection::run`]), so authentication, limits, timers, routing
//! and the connection registry are the very same code for both transports.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use quinn::{RecvStream, SendStream, VarInt};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec, LengthDelimitedCodecError};

use super::router::CloseReason;
use super::Signaling;
use crate::Error;

/// The ALPN protocol of the QUIC signaling link.
pub const ALPN: &[u8] = b"vc-signal/1";

/// Binds the QUIC endpoint on `listen` with `tls` (TLS 1.3 only, as QUIC requires).
/// `max_message_bytes`: the signaling message limit, which sizes the flow-control windows.
pub fn endpoint(
    listen: &str,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    max_message_bytes: usize,
) -> Result<quinn::Endpoint, Error> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| Error::Config(format!("quic.listen {listen:?}: {e}")))?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| Error::Config(format!("QUIC TLS config: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport(max_message_bytes)));
    Ok(quinn::Endpoint::server(config, addr)?)
}

/// A camera link is one bidirectional stream of small frames, not a bulk transfer: the
/// client may open that one stream only (no uni streams, no datagrams), and the windows hold
/// one largest message twice over instead of quinn's megabytes, so a client cannot make
/// the relay buffer more than that per connection.
fn transport(max_message_bytes: usize) -> quinn::TransportConfig {
    let window = u32::try_from((max_message_bytes + 4).saturating_mul(2)).unwrap_or(u32::MAX);
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        .stream_receive_window(VarInt::from_u32(window))
        .receive_window(VarInt::from_u32(window))
        .send_window(u64::from(window));
    t
}

/// Accepts QUIC connections until the endpoint or the signaling plane shuts down.
pub async fn serve(sig: Arc<Signaling>, endpoint: quinn::Endpoint) {
    let mut shutdown = sig.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            _ = shutdown.changed() => {
                endpoint.close(VarInt::from_u32(CloseReason::Shutdown.code().into()), b"relay shutting down");
                return;
            }
        };
        // The same per-IP and global limits as WebSocket: one registry, one budget.
        match sig.admit(incoming.remote_address().ip()) {
            Some(admission) => {
                tokio::spawn(connection(sig.clone(), incoming, admission));
            }
            None => incoming.refuse(),
        }
    }
}

async fn connection(
    sig: Arc<Signaling>,
    incoming: quinn::Incoming,
    admission: super::server::Admission,
) {
    let peer = incoming.remote_address();
    let deadline = tokio::time::Instant::now() + sig.handshake_timeout();
    let conn = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => {
            sig.metrics.rejected_handshake_timeout.increment(1);
            tracing::debug!(%peer, "QUIC handshake not completed within handshake_timeout_ms");
            return;
        }
    };
    // A stream is only seen once the client writes on it, i.e. sends its `auth` frame: so
    // opening it falls under the auth timeout, and a silent client gets the same refusal.
    let auth_wait = std::time::Duration::from_secs(sig.config.auth_timeout_secs.max(1));
    let (send, recv) = match tokio::time::timeout(auth_wait, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return,
        Err(_) => {
            sig.metrics
                .error(shared::signaling::ErrorCode::Unauthorized);
            conn.close(
                VarInt::from_u32(CloseReason::Unauthorized.code().into()),
                b"no token within the auth timeout",
            );
            return;
        }
    };
    // TURN URIs in `welcome` name the host the client dialled (its SNI), like the Host header.
    let host = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.server_name)
        .or_else(|| {
            conn.local_ip()
                .map(|ip| SocketAddr::new(ip, 0))
                .map(|a| host_of(&a))
        })
        .unwrap_or_else(|| "127.0.0.1".into());
    let closed = Arc::new(Mutex::new(None));
    let frames = Frames::new(send, recv, sig.config.max_message_bytes, closed.clone());
    super::connection::run(sig, frames, None, host, admission).await;
    // The last frames (an error, then FIN) are still in flight: closing the connection now
    // would discard them. Give the client a moment to read them and close first.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn.closed()).await;
    let (code, reason) = closed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .map(|f: CloseFrame| (u16::from(f.code), f.reason.to_string()))
        .unwrap_or((1000, String::new()));
    conn.close(VarInt::from_u32(code.into()), reason.as_bytes());
}

fn host_of(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    }
}

/// First read buffer of a QUIC frame reader: room for a length and a small frame.
const READ_BUFFER_START: usize = 256;
/// Queued outbound frame bytes that make the writer hand them to the stream before more.
const FLUSH_AT_BYTES: usize = 16 * 1024;

/// One QUIC bidirectional stream as a stream and sink of tungstenite messages.
pub(crate) struct Frames {
    read: FramedRead<RecvStream, LengthDelimitedCodec>,
    write: FramedWrite<SendStream, LengthDelimitedCodec>,
    max: usize,
    /// The close frame the connection task sent, for the QUIC connection's close code.
    closed: Arc<Mutex<Option<CloseFrame>>>,
    /// A close was sent: the next completed flush finishes the stream (FIN), since the task
    /// closes with a send (feed + flush), as `WebSocketStream::close` does.
    finishing: bool,
}

impl Frames {
    fn new(
        send: SendStream,
        recv: RecvStream,
        max: usize,
        closed: Arc<Mutex<Option<CloseFrame>>>,
    ) -> Self {
        // The length is checked before the payload is buffered: an oversized frame costs 4
        // bytes of memory, not `length`.
        let read = LengthDelimitedCodec::builder()
            .big_endian()
            .length_field_type::<u32>()
            .max_frame_length(max)
            .new_codec();
        // Outbound frames are not limited by the inbound limit: a relayed offer carries routing
        // fields on top of what the sender was allowed (as over WebSocket).
        let write = LengthDelimitedCodec::builder()
            .big_endian()
            .length_field_type::<u32>()
            .max_frame_length(u32::MAX as usize)
            .new_codec();
        // tokio-util's frames start with 8 KiB buffers each way, most of an idle camera link's
        // memory: start small instead (a frame's length, once read, reserves what it needs).
        let mut write = FramedWrite::with_capacity(send, write, 0);
        write.set_backpressure_boundary(FLUSH_AT_BYTES);
        Self {
            read: FramedRead::with_capacity(recv, read, READ_BUFFER_START),
            write,
            max,
            closed,
            finishing: false,
        }
    }
}

impl Stream for Frames {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let max = self.max;
        Pin::new(&mut self.read).poll_next(cx).map(|item| {
            item.map(|frame| match frame {
                Ok(b) if b.is_empty() => Ok(Message::Pong(Bytes::new())),
                Ok(b) => Ok(match String::from_utf8(b.to_vec()) {
                    Ok(text) => Message::text(text),
                    Err(_) => Message::Binary(b.freeze()),
                }),
                Err(e)
                    if e.get_ref()
                        .is_some_and(|i| i.is::<LengthDelimitedCodecError>()) =>
                {
                    // The connection task answers this with `too_large` and closes, as for
                    // an oversized WebSocket message.
                    Err(WsError::Capacity(CapacityError::MessageTooLong {
                        size: max + 1,
                        max_size: max,
                    }))
                }
                Err(e) => Err(WsError::Io(e)),
            })
        })
    }
}

impl Sink<Message> for Frames {
    type Error = WsError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Sink::<Bytes>::poll_ready(Pin::new(&mut self.write), cx).map_err(WsError::Io)
    }

    fn start_send(mut self: Pin<&mut Self>, msg: Message) -> Result<(), WsError> {
        let frame = match msg {
            Message::Text(t) => Bytes::from(t),
            Message::Binary(b) => b,
            Message::Ping(_) => Bytes::new(),
            Message::Close(frame) => {
                *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = frame;
                self.finishing = true;
                return Ok(());
            }
            Message::Pong(_) | Message::Frame(_) => return Ok(()),
        };
        Pin::new(&mut self.write)
            .start_send(frame)
            .map_err(WsError::Io)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        if self.finishing {
            return self.poll_close(cx);
        }
        Sink::<Bytes>::poll_flush(Pin::new(&mut self.write), cx).map_err(WsError::Io)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        // Flushes, then finishes the send stream (FIN): the client reads to the end.
        Sink::<Bytes>::poll_close(Pin::new(&mut self.write), cx).map_err(WsError::Io)
    }
}
