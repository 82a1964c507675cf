//! Serving the API: warp's filter on hyper-util connections accepted here, because warp
//! 0.4's own server sets no header-read timeout, no idle timeout and no connection cap, so
//! a slowloris client (headers a byte at a time) or a pile of idle sockets could hold a
//! task and a file descriptor each, forever. With `[tls]` a TLS handshake (ALPN `h2`,
//! `http/1.1`) comes first, under the same caps and the header-read deadline.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::config::HttpConfig;

/// The TCP peer of a request, put into its extensions for [`crate::routes::client_ip`]
/// (warp's `addr::remote` filter only works under warp's own server).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Serves `routes` on `listener` (over TLS through `tls` when given) until `shutdown`
/// completes, then lets every connection finish its request in flight (idle ones close at
/// once) and returns when all are gone.
pub async fn serve(
    listener: TcpListener,
    routes: BoxedFilter<(Response,)>,
    cfg: &HttpConfig,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let max = cfg.max_connections.clamp(1, Semaphore::MAX_PERMITS as u32);
    let slots = Arc::new(Semaphore::new(max as usize));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper also runs this timer while a kept-alive connection waits for its next
        // request, so for HTTP/1 the idle limit is the shorter of the two settings.
        .header_read_timeout(Duration::from_secs(cfg.header_read_timeout_secs.max(1)));
    // (With TLS, ALPN only tells the client what we speak: the auto builder still picks the
    // protocol by the connection's first bytes, the h2 preface or not.)
    let builder = Arc::new(builder);
    let header_timeout = Duration::from_secs(cfg.header_read_timeout_secs.max(1));
    let idle = Duration::from_secs(cfg.keep_alive_idle_secs.max(1));
    let service = warp::service(routes);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the cap: closing at once costs less than queueing the socket.
            metrics::counter!("http_connections_rejected_total").increment(1);
            drop(stream);
            continue;
        };
        let builder = builder.clone();
        let service = service.clone();
        let stop = stop_rx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let activity = Arc::new(Activity::new());
            let io = Tracked {
                inner: stream,
                activity: activity.clone(),
            };
            match tls {
                None => connection(io, activity, peer, &builder, service, idle, stop).await,
                Some(acceptor) => {
                    // A client that opens a socket and stalls the handshake gets the same
                    // deadline as one that stalls its request header (the slot is held).
                    match tokio::time::timeout(header_timeout, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => {
                            connection(tls, activity, peer, &builder, service, idle, stop).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it ends: having them all back means all ended.
    let _ = slots.acquire_many(max).await;
}

type Request = warp::hyper::Request<warp::hyper::body::Incoming>;

async fn connection<I, S>(
    stream: I,
    activity: Arc<Activity>,
    peer: SocketAddr,
    builder: &auto::Builder<TokioExecutor>,
    service: S,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower_service::Service<Request, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let io = TokioIo::new(stream);
    let in_flight = activity.clone();
    let svc = warp::hyper::service::service_fn(move |mut req: Request| {
        req.extensions_mut().insert(PeerAddr(peer));
        let mut service = service.clone();
        let busy = InFlight::new(in_flight.clone());
        async move {
            let res = tower_service::Service::call(&mut service, req).await;
            drop(busy);
            res
        }
    });
    let conn = builder.serve_connection(io, svc);
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = activity.idle_for(idle), if !closing => {
                tracing::debug!(%peer, "closing idle connection");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = stop.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// When a connection last moved bytes, and how many of its requests are being handled
/// (a long poll moves no bytes for up to a minute and is not idle).
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once the connection has moved no bytes for `idle` with no request in
    /// flight.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = last + idle;
            if Instant::now() >= due && self.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            let next = if Instant::now() >= due {
                Instant::now() + idle
            } else {
                due
            };
            tokio::time::sleep_until(next).await;
        }
    }
}

/// One request being handled; counted in [`Activity::in_flight`] until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that records when bytes last moved.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        res
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
