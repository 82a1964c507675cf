//! The UDP driver: one worker thread per core, each with its own SO_REUSEPORT listening
//! socket, its own [`Server`] shard and the relay sockets of that shard's allocations, all on
//! one mio event loop. The kernel's 4-tuple hash keeps a client on one socket, hence on one
//! shard; nothing is shared per packet, nothing is allocated per packet. Reads and the
//! answers to clients are batched (`recvmmsg`/`sendmmsg`, see [`super::mmsg`]).

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use super::mmsg::{RecvBatch, SendBatch};
use super::ports::{PortPool, SocketPorts};
use super::server::{Now, Server, Shared, Transport, Via};

const LISTENER: Token = Token(0);
/// Batches read from one socket before the loop looks at the others.
const BUDGET: usize = 8;
const NO_SLOT: u32 = u32::MAX;

/// Binds a UDP socket with SO_REUSEPORT (one per worker on the same address).
pub fn bind_reuseport(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    let _ = s.set_recv_buffer_size(buffer);
    let _ = s.set_send_buffer_size(buffer);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

struct RelaySocket {
    addr: SocketAddr,
    socket: mio::net::UdpSocket,
}

/// One worker's event loop state.
struct Shard {
    poll: Poll,
    listener: mio::net::UdpSocket,
    server: Server<SocketPorts>,
    /// Relay sockets; token `i + 1` is slot `i`.
    relays: Vec<Option<RelaySocket>>,
    free: Vec<usize>,
    /// Relay port -> slot (all relay sockets share one IP): an array, not a hash.
    by_port: Vec<u32>,
    /// Tokens whose socket still had data when its budget ran out.
    pending: Vec<Token>,
}

impl Shard {
    fn register_new_sockets(&mut self) {
        let ports = self.server.ports_mut();
        if ports.opened.is_empty() && ports.closed.is_empty() {
            return;
        }
        let opened: Vec<UdpSocket> = ports.opened.drain(..).collect();
        let closed: Vec<SocketAddr> = ports.closed.drain(..).collect();
        for addr in closed {
            let slot = self.by_port[addr.port() as usize];
            if slot == NO_SLOT {
                continue;
            }
            self.by_port[addr.port() as usize] = NO_SLOT;
            if let Some(mut r) = self.relays[slot as usize].take() {
                let _ = self.poll.registry().deregister(&mut r.socket);
            }
            self.free.push(slot as usize);
        }
        for std_sock in opened {
            let Ok(addr) = std_sock.local_addr() else {
                continue;
            };
            let mut socket = mio::net::UdpSocket::from_std(std_sock);
            let slot = self.free.pop().unwrap_or_else(|| {
                self.relays.push(None);
                self.relays.len() - 1
            });
            if self
                .poll
                .registry()
                .register(&mut socket, Token(slot + 1), Interest::READABLE)
                .is_err()
            {
                self.free.push(slot);
                continue;
            }
            self.by_port[addr.port() as usize] = slot as u32;
            self.relays[slot] = Some(RelaySocket { addr, socket });
        }
    }

    /// Reads datagrams from the socket of `token` in batches (`recvmmsg`) until it is empty or
    /// [`BUDGET`] batches were read, feeding the server; answers to clients go out in batches
    /// (`sendmmsg`) on the listener, relayed data on the relay sockets.
    fn drain(&mut self, token: Token, rx: &mut RecvBatch, tx: &mut SendBatch) {
        let listener_fd = self.listener.as_raw_fd();
        for _ in 0..BUDGET {
            let (fd, via) = if token == LISTENER {
                (listener_fd, Via::Listener)
            } else {
                match self.relays.get(token.0 - 1) {
                    Some(Some(r)) => (r.socket.as_raw_fd(), Via::Relay(r.addr)),
                    _ => return,
                }
            };
            let n = match rx.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                // ICMP errors (port unreachable from a peer) surface here: keep reading.
                Err(_) => continue,
            };
            let now = Now::system();
            for i in 0..n {
                let Some((from, data)) = rx.get(i) else {
                    continue;
                };
                if let Some(t) = self.server.handle_input(now, via, from, data) {
                    match t.via {
                        Via::Listener => {
                            if tx.is_full() {
                                tx.flush(listener_fd);
                            }
                            if !tx.push(t.dst, t.payload) {
                                let _ = self.listener.send_to(t.payload, t.dst);
                            }
                        }
                        Via::Relay(addr) => {
                            let slot = self.by_port[addr.port() as usize];
                            if let Some(Some(r)) = self.relays.get(slot as usize) {
                                let _ = r.socket.send_to(t.payload, t.dst);
                            }
                        }
                    }
                }
                let ports = self.server.ports_mut();
                if !ports.opened.is_empty() || !ports.closed.is_empty() {
                    self.register_new_sockets();
                }
            }
            if !tx.is_empty() {
                tx.flush(listener_fd);
            }
        }
        self.pending.push(token);
    }
}

/// Runs one worker until `stop` is set.
pub fn run_worker(
    listener: UdpSocket,
    shared: Arc<Shared>,
    pool: Arc<PortPool>,
    stop: Arc<AtomicBool>,
    report_gauge: bool,
) -> std::io::Result<()> {
    let poll = Poll::new()?;
    let mut listener = mio::net::UdpSocket::from_std(listener);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut shard = Shard {
        poll,
        listener,
        server: Server::new(shared.clone(), Transport::Udp, SocketPorts::new(pool)),
        relays: Vec::new(),
        free: Vec::new(),
        by_port: vec![NO_SLOT; 65536],
        pending: Vec::new(),
    };
    let mut events = Events::with_capacity(1024);
    let mut rx = RecvBatch::new();
    let mut tx = SendBatch::new();
    let mut next_flush = Instant::now() + Duration::from_secs(1);
    let mut pending = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut timeout = if shard.pending.is_empty() {
            Duration::from_millis(200)
        } else {
            Duration::ZERO
        };
        if let Some(t) = shard.server.poll_timeout() {
            timeout = timeout.min(t.saturating_duration_since(now));
        }
        if let Err(e) = shard.poll.poll(&mut events, Some(timeout)) {
            if e.kind() != ErrorKind::Interrupted {
                return Err(e);
            }
        }
        std::mem::swap(&mut pending, &mut shard.pending);
        for token in pending.drain(..) {
            shard.drain(token, &mut rx, &mut tx);
        }
        for ev in events.iter() {
            shard.drain(ev.token(), &mut rx, &mut tx);
        }
        let now = Instant::now();
        shard.server.handle_timeout(now);
        shard.register_new_sockets();
        if now >= next_flush {
            next_flush = now + Duration::from_secs(1);
            shard.server.take_stats().flush();
            if report_gauge {
                metrics::gauge!("vc_relay_turn_allocations_active")
                    .set(f64::from(shared.quotas.active()));
            }
        }
    }
    shard.server.take_stats().flush();
    Ok(())
}
