//! The TCP driver: RFC 8489 stream framing (STUN messages and ChannelData padded to 4 bytes,
//! RFC 8656 §12.5). Each connection is its own [`Server`] shard on a tokio task with the relay
//! sockets of its allocations; a semaphore bounds the number of connections. TCP is the
//! fallback transport, so its relay path favours simplicity (one task per relay socket
//! feeding the connection through a channel) over the UDP path's zero-allocation loop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch, Semaphore};

use super::ports::{PortPool, SocketPorts};
use super::server::{Now, Server, Shared, Transport, Via};
use crate::stun::channel_data::frame_len;

/// Largest frame: a STUN header plus a 16-bit length.
const MAX_FRAME: usize = 20 + 65_535 + 3;

/// Accepts connections until `draining` turns true.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    pool: Arc<PortPool>,
    max_connections: usize,
    mut draining: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(max_connections.max(1)));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = draining.wait_for(|d| *d) => break,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Over the limit: the connection is closed at once.
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            metrics::counter!("vc_relay_turn_tcp_rejected_total").increment(1);
            continue;
        };
        let shared = shared.clone();
        let pool = pool.clone();
        tokio::spawn(async move {
            metrics::gauge!("vc_relay_turn_tcp_connections_active").increment(1.0);
            let _ = connection(stream, peer, shared, pool).await;
            metrics::gauge!("vc_relay_turn_tcp_connections_active").decrement(1.0);
            drop(permit);
        });
    }
}

struct Relay {
    socket: Arc<UdpSocket>,
    reader: tokio::task::JoinHandle<()>,
}

async fn connection(
    mut stream: TcpStream,
    client: SocketAddr,
    shared: Arc<Shared>,
    pool: Arc<PortPool>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut server = Server::new(shared, Transport::Tcp, SocketPorts::new(pool));
    let (tx, mut rx) = mpsc::channel::<(SocketAddr, SocketAddr, Vec<u8>)>(1024);
    let mut relays: HashMap<SocketAddr, Relay> = HashMap::new();
    let mut rbuf = vec![0u8; MAX_FRAME * 2];
    let mut filled = 0usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let result = loop {
        tokio::select! {
            read = stream.read(&mut rbuf[filled..]) => {
                let n = match read {
                    Ok(0) | Err(_) => break Ok(()),
                    Ok(n) => n,
                };
                filled += n;
                let mut start = 0;
                while filled - start >= 4 {
                    let Some(len) = frame_len(&rbuf[start..filled]) else {
                        // Neither STUN nor ChannelData: the stream is out of sync.
                        return Ok(());
                    };
                    if filled - start < len {
                        break;
                    }
                    let frame = &rbuf[start..start + len];
                    if let Some(t) = server.handle_input(Now::system(), Via::Listener, client, frame) {
                        match t.via {
                            Via::Listener => stream.write_all(t.payload).await?,
                            Via::Relay(addr) => {
                                if let Some(r) = relays.get(&addr) {
                                    let _ = r.socket.try_send_to(t.payload, t.dst);
                                }
                            }
                        }
                    }
                    sync_relays(&mut server, &mut relays, &tx);
                    start += len;
                }
                rbuf.copy_within(start..filled, 0);
                filled -= start;
            }
            Some((relay, from, data)) = rx.recv() => {
                if let Some(t) = server.handle_input(Now::system(), Via::Relay(relay), from, &data) {
                    if t.via == Via::Listener {
                        stream.write_all(t.payload).await?;
                    }
                }
            }
            _ = tick.tick() => {
                server.handle_timeout(std::time::Instant::now());
                sync_relays(&mut server, &mut relays, &tx);
                server.take_stats().flush();
            }
        }
    };
    drop(server);
    for (_, r) in relays {
        r.reader.abort();
    }
    result
}

/// Starts readers for newly bound relay sockets and stops those of released ones.
fn sync_relays(
    server: &mut Server<SocketPorts>,
    relays: &mut HashMap<SocketAddr, Relay>,
    tx: &mpsc::Sender<(SocketAddr, SocketAddr, Vec<u8>)>,
) {
    let ports = server.ports_mut();
    for addr in ports.closed.drain(..) {
        if let Some(r) = relays.remove(&addr) {
            r.reader.abort();
        }
    }
    for sock in ports.opened.drain(..) {
        let Ok(addr) = sock.local_addr() else {
            continue;
        };
        let Ok(socket) = UdpSocket::from_std(sock) else {
            continue;
        };
        let socket = Arc::new(socket);
        let rs = socket.clone();
        let tx = tx.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                match rs.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        if tx.send((addr, from, buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                    Err(_) => return,
                }
            }
        });
        relays.insert(addr, Relay { socket, reader });
    }
}

/// Whether `shared` is refusing new allocations.
pub fn is_draining(shared: &Shared) -> bool {
    shared.draining.load(Ordering::Relaxed)
}
