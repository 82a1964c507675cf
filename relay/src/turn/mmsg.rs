//! Batched datagram IO on Linux: `recvmmsg(2)` / `sendmmsg(2)`, one syscall for up to
//! [`BATCH`] datagrams. Buffers are allocated once per worker and reused.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockAddr;

/// Datagrams per syscall.
pub const BATCH: usize = 32;
/// Largest datagram handled on the batched path; larger ones are truncated by the kernel and
/// dropped (WebRTC media stays under ~1200 bytes; STUN messages are far smaller).
pub const SLOT: usize = 4096;

/// Receive-side buffers of one worker.
pub struct RecvBatch {
    bufs: Box<[[u8; SLOT]]>,
    addrs: Box<[libc::sockaddr_storage]>,
    lens: [usize; BATCH],
    trunc: [bool; BATCH],
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> Self {
        Self {
            bufs: vec![[0u8; SLOT]; BATCH].into_boxed_slice(),
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addrs: vec![unsafe { std::mem::zeroed::<libc::sockaddr_storage>() }; BATCH]
                .into_boxed_slice(),
            lens: [0; BATCH],
            trunc: [false; BATCH],
            count: 0,
        }
    }

    /// Receives up to [`BATCH`] datagrams without blocking; `Ok(0)` never happens (the
    /// kernel returns EAGAIN instead).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        // SAFETY: iovec and mmsghdr are plain C structs; zeroed is valid before we fill them.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            iovecs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iovecs[i].iov_len = SLOT;
            hdrs[i].msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            hdrs[i].msg_hdr.msg_iov = &mut iovecs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live buffer of SLOT bytes and a sockaddr_storage
        // owned by self, all outliving the call; the count matches the array length.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in hdrs.iter().enumerate().take(n) {
            self.lens[i] = h.msg_len as usize;
            self.trunc[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        self.count = n;
        Ok(n)
    }

    /// Datagram `i` of the last batch: (source, bytes); `None` when truncated or unparsable.
    pub fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        if i >= self.count || self.trunc[i] {
            return None;
        }
        let storage = &self.addrs[i];
        let addr = match i32::from(storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the kernel wrote a sockaddr_in, which fits in
                // (and has no stricter alignment than) sockaddr_storage.
                let a = unsafe {
                    &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
                };
                SocketAddr::from((
                    u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                    u16::from_be(a.sin_port),
                ))
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for sockaddr_in6.
                let a = unsafe {
                    &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
                };
                SocketAddr::from((a.sin6_addr.s6_addr, u16::from_be(a.sin6_port)))
            }
            _ => return None,
        };
        Some((addr, &self.bufs[i][..self.lens[i]]))
    }
}

/// Datagrams queued for one socket, sent with one `sendmmsg`.
pub struct SendBatch {
    bufs: Box<[[u8; SLOT]]>,
    lens: [usize; BATCH],
    addrs: Vec<SockAddr>,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    pub fn new() -> Self {
        Self {
            bufs: vec![[0u8; SLOT]; BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            addrs: Vec::with_capacity(BATCH),
        }
    }

    pub fn is_full(&self) -> bool {
        self.addrs.len() == BATCH
    }

    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Queues a datagram; false (nothing queued) when the batch is full or it is too large.
    pub fn push(&mut self, dst: SocketAddr, payload: &[u8]) -> bool {
        let i = self.addrs.len();
        if i == BATCH || payload.len() > SLOT {
            return false;
        }
        self.bufs[i][..payload.len()].copy_from_slice(payload);
        self.lens[i] = payload.len();
        self.addrs.push(SockAddr::from(dst));
        true
    }

    /// Sends everything queued (datagrams the kernel refuses are dropped, as UDP may).
    pub fn flush(&mut self, fd: RawFd) {
        let n = self.addrs.len();
        let mut sent = 0;
        while sent < n {
            // SAFETY: as in RecvBatch::recv; zeroed C structs are filled before use.
            let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            for i in sent..n {
                let j = i - sent;
                iovecs[j].iov_base = self.bufs[i].as_mut_ptr().cast();
                iovecs[j].iov_len = self.lens[i];
                hdrs[j].msg_hdr.msg_name = self.addrs[i].as_ptr() as *mut libc::c_void;
                hdrs[j].msg_hdr.msg_namelen = self.addrs[i].len();
                hdrs[j].msg_hdr.msg_iov = &mut iovecs[j];
                hdrs[j].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: headers point at live buffers and addresses owned by self.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    (n - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r <= 0 {
                // Skip the datagram that failed (full buffer, unreachable) and go on.
                sent += 1;
            } else {
                sent += r as usize;
            }
        }
        self.addrs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_roundtrip_over_loopback() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut out = SendBatch::new();
        for i in 0..5u8 {
            assert!(out.push(b.local_addr().unwrap(), &[i; 100]));
        }
        out.flush(a.as_raw_fd());
        assert!(out.is_empty());
        b.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut one = [0u8; 10];
        // Wait for the first datagram to arrive, then put it back in the count.
        let (n, from) = b.peek_from(&mut one).unwrap();
        assert_eq!((n, from), (10, a.local_addr().unwrap()));
        let mut got = 0;
        let mut rb = RecvBatch::new();
        while got < 5 {
            match rb.recv(b.as_raw_fd()) {
                Ok(n) => {
                    for i in 0..n {
                        let (src, data) = rb.get(i).unwrap();
                        assert_eq!(src, a.local_addr().unwrap());
                        assert_eq!(data, &[got as u8; 100][..]);
                        got += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
    }
}
