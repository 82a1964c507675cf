//! TLS glue of the relay's listeners. The certificate and its reloading live in
//! [`shared::tls`]; this is the stream type a signaling connection runs on, plaintext or TLS.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// ALPN of WebSocket signaling (the upgrade is HTTP/1.1).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN of TURN over TLS (RFC 7443).
pub const ALPN_TURN: &[u8] = b"stun.turn";

/// A signaling connection's transport. One concrete type (not a generic) keeps a single
/// compiled copy of the connection code; the match per read is noise next to the syscall.
pub enum Stream {
    Plain(TcpStream),
    // Boxed: a rustls connection is ~1 KiB, the plaintext variant a few words.
    Tls(Box<Prefixed<TlsStream<TcpStream>>>),
}

impl Stream {
    /// A TLS stream with nothing read ahead.
    pub fn tls(tls: TlsStream<TcpStream>) -> Self {
        Stream::Tls(Box::new(Prefixed::new(Vec::new(), tls)))
    }
}

/// A stream whose first bytes were already read (the single-port listener peeks them to
/// choose a protocol) and are handed out again before the rest.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// ALPNs of the single-port listener, in the server's order of preference.
pub const SINGLE_PORT_ALPN: &[&[u8]] = &[ALPN_TURN, ALPN_HTTP1];

/// Which service a single-port connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Turn,
    Signaling,
}

/// The route for a connection that negotiated `alpn`; None: look at the first byte.
pub fn route_by_alpn(alpn: Option<&[u8]>) -> Option<Route> {
    match alpn {
        Some(ALPN_TURN) => Some(Route::Turn),
        Some(ALPN_HTTP1) => Some(Route::Signaling),
        _ => None,
    }
}

/// The route for a connection that sent no ALPN, by its first byte: a STUN header starts
/// with two zero bits; anything else goes to signaling, whose HTTP parser refuses what is not
/// an upgrade request. (ChannelData, 0b01, starts with the same bits as `GET ` but cannot be
/// a connection's first message: it needs a channel bound by STUN first.)
pub fn route_by_first_byte(b: u8) -> Route {
    if b & 0xC0 == 0 {
        Route::Turn
    } else {
        Route::Signaling
    }
}

/// The single-port TLS listener (`tls.single_port_listen`): one TLS handshake, then WSS
/// signaling or TURN by ALPN or the first byte. The handshake and the routing read share the
/// signaling handshake deadline and a per-IP cap (`signaling.max_connections_per_ip`) of
/// their own; once routed, a connection holds the chosen service's slots and limits.
pub(crate) async fn serve_single_port(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    sig: std::sync::Arc<crate::signaling::Signaling>,
    turn: crate::turn::service::TurnStreams,
) {
    let pending = crate::signaling::server::PerIp::new(sig.config.max_connections_per_ip);
    let mut shutdown = sig.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            res = listener.accept() => match res {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "single-port accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let (acceptor, sig, turn, pending) =
            (acceptor.clone(), sig.clone(), turn.clone(), pending.clone());
        tokio::spawn(async move {
            let mut stream = stream;
            let opened = tokio::time::Instant::now();
            // A trusted balancer's connection starts with a PROXY v2 header (before the TLS
            // ClientHello) naming the client, whose address takes every per-IP slot after it.
            let peer = if sig.proxy.trusts(peer.ip()) {
                match crate::proxy::read_header(&mut stream, peer, &sig.proxy).await {
                    Ok(client) => client,
                    Err(e) => {
                        sig.metrics.rejected_proxy_header.increment(1);
                        tracing::debug!(balancer = %peer, error = %e, "single-port PROXY header refused");
                        return;
                    }
                }
            } else {
                peer
            };
            let Some(slot) = pending.try_acquire(peer.ip()) else {
                sig.metrics.rejected_per_ip.increment(1);
                return;
            };
            let _ = stream.set_nodelay(true);
            let local_ip = crate::signaling::server::local_host(&stream);
            let deadline = opened + sig.handshake_timeout();
            let routed = tokio::time::timeout_at(deadline, async {
                let mut tls = acceptor.accept(stream).await.ok()?;
                let alpn = tls.get_ref().1.alpn_protocol();
                if let Some(route) = route_by_alpn(alpn) {
                    return Some((route, Vec::new(), tls));
                }
                let mut first = [0u8; 1];
                let n = tokio::io::AsyncReadExt::read(&mut tls, &mut first)
                    .await
                    .ok()?;
                (n == 1).then(|| (route_by_first_byte(first[0]), first.to_vec(), tls))
            })
            .await;
            let (route, prefix, tls) = match routed {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(_) => {
                    sig.metrics.rejected_handshake_timeout.increment(1);
                    return;
                }
            };
            // Routed: the pending slot is given back, the service's own caps apply.
            drop(slot);
            match route {
                Route::Turn => {
                    if let Some(admitted) = turn.admit.admit(peer.ip()) {
                        turn.run(Prefixed::new(prefix, tls), peer, opened, admitted)
                            .await;
                    }
                }
                Route::Signaling => {
                    if let Some(ip_slot) = sig.admit_ip(peer.ip()) {
                        let stream = Stream::Tls(Box::new(Prefixed::new(prefix, tls)));
                        crate::signaling::server::upgrade_stream(
                            sig, stream, peer, ip_slot, local_ip, deadline,
                        )
                        .await;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route_by_alpn(Some(b"stun.turn")), Some(Route::Turn));
        assert_eq!(route_by_alpn(Some(b"http/1.1")), Some(Route::Signaling));
        assert_eq!(route_by_alpn(None), None);
        // STUN Binding/Allocate requests start 0x00; `GET ` starts 0x47.
        assert_eq!(route_by_first_byte(0x00), Route::Turn);
        assert_eq!(route_by_first_byte(0x01), Route::Turn);
        assert_eq!(route_by_first_byte(b'G'), Route::Signaling);
        assert_eq!(route_by_first_byte(0x40), Route::Signaling);
    }

    #[tokio::test]
    async fn prefixed_replays_the_peeked_bytes_first() {
        use tokio::io::AsyncReadExt;
        let mut s = Prefixed::new(b"GE".to_vec(), &b"T /ws"[..]);
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "GET /ws");
    }
}
