//! The relay port range (RFC 8656 §7.2 steps for EVEN-PORT and RESERVATION-TOKEN).
//!
//! The state machine asks a [`RelayPorts`] for a relayed address; the drivers implement it by
//! binding real sockets ([`SocketPorts`]), so the kernel is the single arbiter of which port
//! is free across shards and processes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What kind of port an Allocate asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRequest {
    Any,
    /// EVEN-PORT; with `reserve_next` the next port is held for a RESERVATION-TOKEN.
    Even {
        reserve_next: bool,
    },
    /// A port reserved earlier by an EVEN-PORT allocation.
    Reserved(u64),
}

/// A relayed address handed out, with the token of a port reserved alongside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayPort {
    pub addr: SocketAddr,
    pub reservation: Option<u64>,
}

/// Source of relay ports for a [`super::Server`].
pub trait RelayPorts {
    /// A free relayed address, or `None` when the range is exhausted (508) or the token is
    /// unknown.
    fn acquire(&mut self, req: PortRequest, now: Instant) -> Option<RelayPort>;
    /// Gives a relayed address back (allocation deleted or expired).
    fn release(&mut self, addr: SocketAddr);
}

/// The port range shared by all shards of a process.
#[derive(Debug)]
pub struct PortPool {
    ip: IpAddr,
    min: u16,
    max: u16,
    cursor: AtomicU32,
    socket_buffer: usize,
    reservation_lifetime: Duration,
    /// Ports held for RESERVATION-TOKENs (rare: only EVEN-PORT with the R bit).
    reserved: Mutex<HashMap<u64, (UdpSocket, Instant)>>,
}

impl PortPool {
    pub fn new(
        ip: IpAddr,
        min: u16,
        max: u16,
        socket_buffer: usize,
        reservation_lifetime: Duration,
    ) -> Self {
        let span = u32::from(max.saturating_sub(min)) + 1;
        let start = rand::random::<u32>() % span;
        Self {
            ip,
            min,
            max: max.max(min),
            cursor: AtomicU32::new(start),
            socket_buffer,
            reservation_lifetime,
            reserved: Mutex::new(HashMap::new()),
        }
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    fn span(&self) -> u32 {
        u32::from(self.max - self.min) + 1
    }

    fn next_port(&self) -> u16 {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed) % self.span();
        self.min + n as u16
    }

    /// Binds a relay socket on `port` (non-blocking, no SO_REUSEPORT: exclusive).
    pub fn bind(&self, port: u16) -> std::io::Result<UdpSocket> {
        use socket2::{Domain, Protocol, Socket, Type};
        let addr = SocketAddr::new(self.ip, port);
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        let _ = s.set_recv_buffer_size(self.socket_buffer);
        let _ = s.set_send_buffer_size(self.socket_buffer);
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        Ok(s.into())
    }

    /// Binds a socket per `req`; returns it with its relay port.
    pub fn acquire_socket(&self, req: PortRequest, now: Instant) -> Option<(UdpSocket, RelayPort)> {
        let addr_of = |s: &UdpSocket| s.local_addr().ok();
        match req {
            PortRequest::Reserved(token) => {
                let mut held = self.reserved.lock().ok()?;
                held.retain(|_, (_, t)| *t > now);
                let (sock, _) = held.remove(&token)?;
                let addr = addr_of(&sock)?;
                Some((
                    sock,
                    RelayPort {
                        addr,
                        reservation: None,
                    },
                ))
            }
            PortRequest::Any => {
                for _ in 0..self.span() {
                    if let Ok(sock) = self.bind(self.next_port()) {
                        let addr = addr_of(&sock)?;
                        return Some((
                            sock,
                            RelayPort {
                                addr,
                                reservation: None,
                            },
                        ));
                    }
                }
                None
            }
            PortRequest::Even { reserve_next } => {
                for _ in 0..self.span() {
                    let p = self.next_port();
                    if !p.is_multiple_of(2)
                        || (reserve_next && p == u16::MAX)
                        || (reserve_next && p >= self.max)
                    {
                        continue;
                    }
                    let Ok(sock) = self.bind(p) else { continue };
                    let addr = addr_of(&sock)?;
                    if !reserve_next {
                        return Some((
                            sock,
                            RelayPort {
                                addr,
                                reservation: None,
                            },
                        ));
                    }
                    let Ok(next) = self.bind(p + 1) else { continue };
                    let token = rand::random::<u64>();
                    let mut held = self.reserved.lock().ok()?;
                    held.retain(|_, (_, t)| *t > now);
                    held.insert(token, (next, now + self.reservation_lifetime));
                    return Some((
                        sock,
                        RelayPort {
                            addr,
                            reservation: Some(token),
                        },
                    ));
                }
                None
            }
        }
    }
}

/// [`RelayPorts`] of one driver shard: binds real sockets from the shared [`PortPool`] and
/// queues them for the driver to register.
#[derive(Debug)]
pub struct SocketPorts {
    pool: Arc<PortPool>,
    /// Sockets bound by the last inputs, to be registered by the driver.
    pub opened: Vec<UdpSocket>,
    /// Relayed addresses given back, to be closed by the driver.
    pub closed: Vec<SocketAddr>,
}

impl SocketPorts {
    pub fn new(pool: Arc<PortPool>) -> Self {
        Self {
            pool,
            opened: Vec::new(),
            closed: Vec::new(),
        }
    }
}

impl RelayPorts for SocketPorts {
    fn acquire(&mut self, req: PortRequest, now: Instant) -> Option<RelayPort> {
        let (sock, port) = self.pool.acquire_socket(req, now)?;
        self.opened.push(sock);
        Some(port)
    }

    fn release(&mut self, addr: SocketAddr) {
        self.closed.push(addr);
    }
}
