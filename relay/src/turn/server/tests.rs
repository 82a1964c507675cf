//! State-machine tests: every rule of the TURN issue without sockets, on a virtual clock.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use super::*;
use crate::stun::errors::decode_error_code;
use crate::stun::integrity::long_term_key;
use crate::turn::ports::RelayPort;

/// In-memory port range for the state machine's tests (the drivers bind real sockets).
#[derive(Default)]
struct MemPorts {
    range: Vec<u16>,
    used: HashSet<u16>,
    reserved: HashMap<u64, u16>,
    next_token: u64,
}

impl MemPorts {
    fn new(lo: u16, hi: u16) -> Self {
        Self {
            range: (lo..=hi).collect(),
            ..Default::default()
        }
    }
    fn addr(p: u16) -> SocketAddr {
        SocketAddr::new("198.51.100.1".parse().unwrap(), p)
    }
}

impl RelayPorts for MemPorts {
    fn acquire(&mut self, req: PortRequest, _now: Instant) -> Option<RelayPort> {
        let taken = |s: &Self, p: u16| s.used.contains(&p) || s.reserved.values().any(|&r| r == p);
        match req {
            PortRequest::Reserved(t) => {
                let p = self.reserved.remove(&t)?;
                self.used.insert(p);
                Some(RelayPort {
                    addr: Self::addr(p),
                    reservation: None,
                })
            }
            PortRequest::Any => {
                let p = *self.range.iter().find(|&&p| !taken(self, p))?;
                self.used.insert(p);
                Some(RelayPort {
                    addr: Self::addr(p),
                    reservation: None,
                })
            }
            PortRequest::Even { reserve_next } => {
                let p = *self.range.iter().find(|&&p| {
                    p % 2 == 0 && !taken(self, p) && (!reserve_next || !taken(self, p + 1))
                })?;
                self.used.insert(p);
                let reservation = reserve_next.then(|| {
                    self.next_token += 1;
                    self.reserved.insert(self.next_token, p + 1);
                    self.next_token
                });
                Some(RelayPort {
                    addr: Self::addr(p),
                    reservation,
                })
            }
        }
    }
    fn release(&mut self, addr: SocketAddr) {
        self.used.remove(&addr.port());
    }
}

const REALM: &str = "vc.test";

fn config() -> TurnConfig {
    TurnConfig {
        realm: REALM.into(),
        users: vec!["alice:pw".into(), "bob:pw2".into()],
        user_quota: 2,
        max_allocations: 3,
        ..TurnConfig::default()
    }
}

fn server_with(cfg: TurnConfig, ports: MemPorts) -> Server<MemPorts> {
    let auth = Authenticator::new(
        &cfg.realm,
        &cfg.users,
        Some(shared::ticket::TicketKey::new(&shared::Secret::new(
            "tsecret",
        ))),
        b"nonce",
        cfg.nonce_lifetime,
    )
    .unwrap();
    Server::new(
        Arc::new(Shared::new(&cfg, auth).unwrap()),
        Transport::Udp,
        ports,
    )
}

fn server() -> Server<MemPorts> {
    server_with(config(), MemPorts::new(50000, 50009))
}

fn t0() -> Now {
    Now {
        instant: Instant::now(),
        unix: 1_700_000_000,
    }
}

fn later(now: Now, s: u64) -> Now {
    Now {
        instant: now.instant + Duration::from_secs(s),
        unix: now.unix + s,
    }
}

const CLIENT: &str = "203.0.113.5:40000";
const PEER: &str = "8.8.8.8:5000";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A client's view: builds signed requests.
struct Client {
    user: String,
    key: [u8; 16],
    nonce: Vec<u8>,
    tid: u8,
}

impl Client {
    fn new(user: &str, pass: &str) -> Self {
        Self {
            user: user.into(),
            key: long_term_key(user.as_bytes(), REALM.as_bytes(), pass.as_bytes()),
            nonce: Vec::new(),
            tid: 0,
        }
    }

    fn build(
        &mut self,
        method: Method,
        sign: bool,
        f: impl FnOnce(&mut MessageBuilder<'_>),
    ) -> Vec<u8> {
        self.tid = self.tid.wrapping_add(1);
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, Class::Request, method, &[self.tid; 12]);
        f(&mut b);
        if sign {
            b.attr(attr::USERNAME, self.user.as_bytes());
            b.attr(attr::REALM, REALM.as_bytes());
            b.attr(attr::NONCE, &self.nonce);
            b.integrity(hmac_sha1(&self.key));
        }
        b.fingerprint();
        buf
    }
}

/// Sends `bytes` from `from` and returns (class, error code, raw response).
fn call(
    s: &mut Server<MemPorts>,
    now: Now,
    from: &str,
    bytes: &[u8],
) -> (Class, Option<u16>, Vec<u8>) {
    let t = s
        .handle_input(now, Via::Listener, sa(from), bytes)
        .expect("a response");
    assert_eq!(t.via, Via::Listener);
    assert_eq!(t.dst, sa(from));
    let m = Message::parse(t.payload).expect("valid response with fingerprint");
    let code = m.attribute(attr::ERROR_CODE).and_then(decode_error_code);
    (m.class(), code, t.payload.to_vec())
}

/// Does the 401 dance and allocates; returns the relayed address.
fn allocate(s: &mut Server<MemPorts>, now: Now, c: &mut Client, from: &str) -> SocketAddr {
    let req = c.build(Method::Allocate, false, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let (class, code, raw) = call(s, now, from, &req);
    assert_eq!((class, code), (Class::Error, Some(401)));
    let m = Message::parse(&raw).unwrap();
    assert_eq!(m.attribute(attr::REALM).unwrap(), REALM.as_bytes());
    c.nonce = m.attribute(attr::NONCE).unwrap().to_vec();
    let req = c.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let (class, code, raw) = call(s, now, from, &req);
    assert_eq!((class, code), (Class::Success, None), "allocate");
    let m = Message::parse(&raw).unwrap();
    assert!(m.verify_integrity(hmac_sha1(&c.key)), "response signed");
    let tid = m.transaction_id();
    assert_eq!(
        address::decode_xor(m.attribute(attr::XOR_MAPPED_ADDRESS).unwrap(), tid, 0).unwrap(),
        sa(from)
    );
    assert_eq!(
        tattr::decode_lifetime(m.attribute(attr::LIFETIME).unwrap()).unwrap(),
        600
    );
    address::decode_xor(m.attribute(attr::XOR_RELAYED_ADDRESS).unwrap(), tid, 0).unwrap()
}

fn peer_attr(b: &mut MessageBuilder<'_>, peer: &str) {
    b.xor_address(attr::XOR_PEER_ADDRESS, sa(peer));
}

#[test]
fn binding_answers_anyone() {
    let mut s = server();
    let mut c = Client::new("x", "y");
    let req = c.build(Method::Binding, false, |_| {});
    let (class, _, raw) = call(&mut s, t0(), CLIENT, &req);
    assert_eq!(class, Class::Success);
    let m = Message::parse(&raw).unwrap();
    let a = address::decode_xor(
        m.attribute(attr::XOR_MAPPED_ADDRESS).unwrap(),
        m.transaction_id(),
        0,
    );
    assert_eq!(a.unwrap(), sa(CLIENT));
    // Unauthenticated: no SOFTWARE (reflection size).
    assert!(m.attribute(attr::SOFTWARE).is_none());
}

#[test]
fn allocate_permission_channel_and_data_both_ways() {
    let mut s = server();
    let now = t0();
    let mut c = Client::new("alice", "pw");
    let relay = allocate(&mut s, now, &mut c, CLIENT);

    // No permission yet: peer traffic is dropped, Send too.
    assert!(s
        .handle_input(now, Via::Relay(relay), sa(PEER), b"x")
        .is_none());
    let send = {
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, Class::Indication, Method::Send, &[9; 12]);
        peer_attr(&mut b, PEER);
        b.attr(attr::DATA, b"hello");
        buf
    };
    assert!(s
        .handle_input(now, Via::Listener, sa(CLIENT), &send)
        .is_none());

    let req = c.build(Method::CreatePermission, true, |b| peer_attr(b, PEER));
    assert_eq!(call(&mut s, now, CLIENT, &req).0, Class::Success);
    let t = s
        .handle_input(now, Via::Listener, sa(CLIENT), &send)
        .unwrap();
    assert_eq!(
        (t.via, t.dst, t.payload),
        (Via::Relay(relay), sa(PEER), &b"hello"[..])
    );

    // Peer -> client without a channel: a Data indication.
    let t = s
        .handle_input(now, Via::Relay(relay), sa(PEER), b"back")
        .unwrap();
    assert_eq!((t.via, t.dst), (Via::Listener, sa(CLIENT)));
    let m = Message::parse(t.payload).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Indication, Method::Data));
    assert_eq!(m.attribute(attr::DATA).unwrap(), b"back");

    // ChannelBind, then ChannelData both ways.
    let req = c.build(Method::ChannelBind, true, |b| {
        b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0]);
        peer_attr(b, PEER);
    });
    assert_eq!(call(&mut s, now, CLIENT, &req).0, Class::Success);
    let mut cd = vec![0x40, 0x01, 0, 3];
    cd.extend_from_slice(b"abc\0");
    let t = s.handle_input(now, Via::Listener, sa(CLIENT), &cd).unwrap();
    assert_eq!(
        (t.via, t.dst, t.payload),
        (Via::Relay(relay), sa(PEER), &b"abc"[..])
    );
    let t = s
        .handle_input(now, Via::Relay(relay), sa(PEER), b"xyz")
        .unwrap();
    assert_eq!(t.payload, &[0x40, 0x01, 0, 3, b'x', b'y', b'z']);
    // Unbound channel: dropped.
    assert!(s
        .handle_input(now, Via::Listener, sa(CLIENT), &[0x40, 0x02, 0, 0])
        .is_none());
    let st = s.take_stats();
    assert_eq!(
        (
            st.to_peer_packets,
            st.to_client_packets,
            st.allocations_created
        ),
        (2, 2, 1)
    );
}

#[test]
fn channel_bind_rules() {
    let mut s = server();
    let now = t0();
    let mut c = Client::new("alice", "pw");
    allocate(&mut s, now, &mut c, CLIENT);
    let bind = |c: &mut Client, ch: [u8; 2], peer: &str| {
        c.build(Method::ChannelBind, true, |b| {
            b.attr(attr::CHANNEL_NUMBER, &[ch[0], ch[1], 0, 0]);
            peer_attr(b, peer);
        })
    };
    for bad in [[0x3F, 0xFF], [0x80, 0x00], [0xFF, 0xFF]] {
        let r = bind(&mut c, bad, PEER);
        assert_eq!(call(&mut s, now, CLIENT, &r).1, Some(400), "{bad:?}");
    }
    let r = bind(&mut c, [0x40, 0x00], PEER);
    assert_eq!(call(&mut s, now, CLIENT, &r).1, None);
    // Same number, other peer; same peer, other number: 400. Refresh of the same: ok.
    let r = bind(&mut c, [0x40, 0x00], "8.8.4.4:1");
    assert_eq!(call(&mut s, now, CLIENT, &r).1, Some(400));
    let r = bind(&mut c, [0x40, 0x01], PEER);
    assert_eq!(call(&mut s, now, CLIENT, &r).1, Some(400));
    let r = bind(&mut c, [0x40, 0x00], PEER);
    assert_eq!(call(&mut s, now, CLIENT, &r).1, None);
    // Missing attributes.
    let r = c.build(Method::ChannelBind, true, |b| peer_attr(b, PEER));
    assert_eq!(call(&mut s, now, CLIENT, &r).1, Some(400));
}

#[test]
fn strict_channel_numbers_refuse_rfc5766_range() {
    let now = t0();
    let bind = |c: &mut Client, ch: [u8; 2]| {
        c.build(Method::ChannelBind, true, |b| {
            b.attr(attr::CHANNEL_NUMBER, &[ch[0], ch[1], 0, 0]);
            peer_attr(b, PEER);
        })
    };
    let mut s = server();
    let mut c = Client::new("alice", "pw");
    allocate(&mut s, now, &mut c, CLIENT);
    let r = bind(&mut c, [0x7F, 0xFF]);
    assert_eq!(
        call(&mut s, now, CLIENT, &r).1,
        None,
        "RFC 5766 range by default"
    );
    let mut s = server_with(
        TurnConfig {
            strict_channel_numbers: true,
            ..config()
        },
        MemPorts::new(50000, 50009),
    );
    let mut c = Client::new("alice", "pw");
    allocate(&mut s, now, &mut c, CLIENT);
    let r = bind(&mut c, [0x50, 0x00]);
    assert_eq!(call(&mut s, now, CLIENT, &r).1, Some(400));
    let r = bind(&mut c, [0x4F, 0xFF]);
    assert_eq!(call(&mut s, now, CLIENT, &r).1, None);
}

#[test]
fn peer_policy_forbids_internal_addresses() {
    let mut s = server();
    let now = t0();
    let mut c = Client::new("alice", "pw");
    allocate(&mut s, now, &mut c, CLIENT);
    for peer in [
        "127.0.0.1:1",
        "10.0.0.1:1",
        "192.168.1.1:1",
        "169.254.0.1:1",
        "224.0.0.1:1",
        "0.0.0.0:1",
    ] {
        let r = c.build(Method::CreatePermission, true, |b| peer_attr(b, peer));
        assert_eq!(call(&mut s, now, CLIENT, &r).1, Some(403), "{peer}");
        let r = c.build(Method::ChannelBind, true, |b| {
            b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]);
            peer_attr(b, peer);
        });
        assert_eq!(call(&mut s, now, CLIENT, &r).1, Some(403), "{peer}");
    }
    let r = c.build(Method::CreatePermission, true, |b| {
        peer_attr(b, "[2001:db8::1]:1")
    });
    assert_eq!(call(&mut s, now, CLIENT, &r).1, Some(443));
    // Allowed with allow_loopback_peers.
    let mut s = server_with(
        TurnConfig {
            allow_loopback_peers: true,
            ..config()
        },
        MemPorts::new(50000, 50009),
    );
    let mut c = Client::new("alice", "pw");
    allocate(&mut s, now, &mut c, CLIENT);
    let r = c.build(Method::CreatePermission, true, |b| {
        peer_attr(b, "127.0.0.1:1")
    });
    assert_eq!(call(&mut s, now, CLIENT, &r).1, None);
}

#[test]
fn auth_errors() {
    let mut s = server();
    let now = t0();
    // Wrong password: 401 with a fresh nonce.
    let mut c = Client::new("alice", "wrong");
    c.nonce = s.shared.auth.nonce(now.unix).to_vec();
    let r = c.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(call(&mut s, now, CLIENT, &r).1, Some(401));
    // Unknown user.
    let mut c = Client::new("mallory", "pw");
    c.nonce = s.shared.auth.nonce(now.unix).to_vec();
    let r = c.build(Method::Refresh, true, |_| {});
    assert_eq!(call(&mut s, now, CLIENT, &r).1, Some(401));
    // Stale nonce: 438 and a new NONCE.
    let mut c = Client::new("alice", "pw");
    c.nonce = s.shared.auth.nonce(now.unix - 601).to_vec();
    let r = c.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let (_, code, raw) = call(&mut s, now, CLIENT, &r);
    assert_eq!(code, Some(438));
    assert!(Message::parse(&raw)
        .unwrap()
        .attribute(attr::NONCE)
        .is_some());
    // Integrity without USERNAME: 400.
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, Class::Request, Method::Allocate, &[1; 12]);
    b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    b.integrity(hmac_sha1(b"k"));
    assert_eq!(call(&mut s, now, CLIENT, &buf).1, Some(400));
    // Another user on an existing allocation: 441.
    let mut alice = Client::new("alice", "pw");
    allocate(&mut s, now, &mut alice, CLIENT);
    let mut bob = Client::new("bob", "pw2");
    bob.nonce = alice.nonce.clone();
    let r = bob.build(Method::Refresh, true, |_| {});
    assert_eq!(call(&mut s, now, CLIENT, &r).1, Some(441));
    assert!(s.take_stats().auth_failures >= 2);
}

#[test]
fn rest_tickets_accepted_expired_and_tampered_rejected() {
    let mut s = server();
    let now = t0();
    let tk = shared::ticket::TicketKey::new(&shared::Secret::new("tsecret"));
    let (user, pass) = tk.turn_credentials("dev-1", now.unix, 600);
    let mut c = Client::new(&user, &pass);
    allocate(&mut s, now, &mut c, CLIENT);

    let (user, pass) = tk.turn_credentials("dev-2", now.unix - 700, 600);
    let mut c = Client::new(&user, &pass);
    c.nonce = s.shared.auth.nonce(now.unix).to_vec();
    let r = c.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(
        call(&mut s, now, "203.0.113.6:1", &r).1,
        Some(401),
        "expired"
    );

    let (user, pass) = tk.turn_credentials("dev-3", now.unix, 600);
    let mut c = Client::new(&user.replace("dev-3", "dev-4"), &pass);
    c.nonce = s.shared.auth.nonce(now.unix).to_vec();
    let r = c.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(
        call(&mut s, now, "203.0.113.7:1", &r).1,
        Some(401),
        "tampered"
    );
}

#[test]
fn allocation_mismatch_retransmit_and_transport() {
    let mut s = server();
    let now = t0();
    let mut c = Client::new("alice", "pw");
    allocate(&mut s, now, &mut c, CLIENT);
    // The same Allocate again (same transaction id) is answered with success.
    c.tid -= 1;
    let r = c.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(call(&mut s, now, CLIENT, &r).0, Class::Success);
    // A new Allocate on the same 5-tuple: 437.
    let r = c.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(call(&mut s, now, CLIENT, &r).1, Some(437));
    // Refresh / CreatePermission without an allocation: 437.
    let r = c.build(Method::Refresh, true, |_| {});
    assert_eq!(call(&mut s, now, "203.0.113.9:9", &r).1, Some(437));
    let r = c.build(Method::CreatePermission, true, |b| peer_attr(b, PEER));
    assert_eq!(call(&mut s, now, "203.0.113.9:9", &r).1, Some(437));
    // TCP relaying: 442; no REQUESTED-TRANSPORT: 400; IPv6: 440; token + even: 400.
    let r = c.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
    });
    assert_eq!(call(&mut s, now, "203.0.113.9:9", &r).1, Some(442));
    let r = c.build(Method::Allocate, true, |_| {});
    assert_eq!(call(&mut s, now, "203.0.113.9:9", &r).1, Some(400));
    let r = c.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        b.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    });
    assert_eq!(call(&mut s, now, "203.0.113.9:9", &r).1, Some(440));
    let r = c.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        b.attr(attr::EVEN_PORT, &[0x80]);
        b.reservation_token(1);
    });
    assert_eq!(call(&mut s, now, "203.0.113.9:9", &r).1, Some(400));
}

#[test]
fn unknown_comprehension_required_attribute_gets_420() {
    let mut s = server();
    let mut c = Client::new("alice", "pw");
    let r = c.build(Method::Allocate, false, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        b.attr(0x0024, &[0, 0, 0, 1]);
        b.attr(0x8024, &[0, 0, 0, 1]); // comprehension-optional: ignored
    });
    let (_, code, raw) = call(&mut s, t0(), CLIENT, &r);
    assert_eq!(code, Some(420));
    assert_eq!(
        Message::parse(&raw)
            .unwrap()
            .attribute(attr::UNKNOWN_ATTRIBUTES)
            .unwrap(),
        &[0, 0x24]
    );
}

#[test]
fn camera_tickets_count_against_their_owners_quota() {
    // user_quota 2: one account's cameras share it, whatever their device ids.
    let mut s = server();
    let now = t0();
    let tk = shared::ticket::TicketKey::new(&shared::Secret::new("tsecret"));
    for (i, dev) in ["dev-1", "dev-2"].into_iter().enumerate() {
        let (user, pass) = tk.turn_credentials_for_account(dev, "acct-a", now.unix, 600);
        let mut c = Client::new(&user, &pass);
        allocate(&mut s, now, &mut c, &format!("203.0.113.1:{}", i + 1));
    }
    let (user, pass) = tk.turn_credentials_for_account("dev-3", "acct-a", now.unix, 600);
    let mut c = Client::new(&user, &pass);
    c.nonce = s.shared.auth.nonce(now.unix).to_vec();
    let r = c.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(call(&mut s, now, "203.0.113.1:3", &r).1, Some(486));
    // Another account's camera has its own quota.
    let (user, pass) = tk.turn_credentials_for_account("dev-4", "acct-b", now.unix, 600);
    let mut c = Client::new(&user, &pass);
    allocate(&mut s, now, &mut c, "203.0.113.2:1");
    assert_eq!(s.take_stats().failed_quota, 1);
}

#[test]
fn quotas_and_port_exhaustion() {
    let now = t0();
    // user_quota 2, max_allocations 3.
    let mut s = server();
    let mut a = Client::new("alice", "pw");
    allocate(&mut s, now, &mut a, "203.0.113.1:1");
    allocate(&mut s, now, &mut a, "203.0.113.1:2");
    let r = a.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(call(&mut s, now, "203.0.113.1:3", &r).1, Some(486));
    let mut b = Client::new("bob", "pw2");
    allocate(&mut s, now, &mut b, "203.0.113.2:1");
    b.tid += 1;
    let r = b.build(Method::Allocate, true, |m| {
        m.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(call(&mut s, now, "203.0.113.2:2", &r).1, Some(508), "total");
    let st = s.take_stats();
    assert_eq!((st.failed_quota, st.failed_capacity), (1, 1));

    // Two ports only: the third allocation gets 508, and a deleted one frees its port.
    let mut s = server_with(
        TurnConfig {
            user_quota: 0,
            max_allocations: 100,
            ..config()
        },
        MemPorts::new(50000, 50001),
    );
    let mut a = Client::new("alice", "pw");
    allocate(&mut s, now, &mut a, "203.0.113.1:1");
    allocate(&mut s, now, &mut a, "203.0.113.1:2");
    let r = a.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(call(&mut s, now, "203.0.113.1:3", &r).1, Some(508));
    let r = a.build(Method::Refresh, true, |b| {
        b.lifetime(0);
    });
    assert_eq!(call(&mut s, now, "203.0.113.1:1", &r).1, None);
    allocate(&mut s, now, &mut a, "203.0.113.1:3");
}

#[test]
fn even_port_and_reservation_token() {
    let now = t0();
    let mut s = server_with(
        TurnConfig {
            user_quota: 0,
            ..config()
        },
        MemPorts::new(50001, 50009),
    );
    let mut c = Client::new("alice", "pw");
    allocate(&mut s, now, &mut c, "203.0.113.1:1");
    let r = c.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        b.attr(attr::EVEN_PORT, &[0x80, 0, 0, 0]);
    });
    let (class, _, raw) = call(&mut s, now, "203.0.113.1:2", &r);
    assert_eq!(class, Class::Success);
    let m = Message::parse(&raw).unwrap();
    let relay = address::decode_xor(
        m.attribute(attr::XOR_RELAYED_ADDRESS).unwrap(),
        m.transaction_id(),
        0,
    )
    .unwrap();
    assert_eq!(relay.port() % 2, 0);
    let token =
        tattr::decode_reservation_token(m.attribute(attr::RESERVATION_TOKEN).unwrap()).unwrap();
    let r = c.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        b.reservation_token(token);
    });
    let (class, _, raw) = call(&mut s, now, "203.0.113.1:3", &r);
    assert_eq!(class, Class::Success);
    let m = Message::parse(&raw).unwrap();
    let next = address::decode_xor(
        m.attribute(attr::XOR_RELAYED_ADDRESS).unwrap(),
        m.transaction_id(),
        0,
    )
    .unwrap();
    assert_eq!(next.port(), relay.port() + 1);
}

#[test]
fn lifetimes_refresh_and_reaping() {
    let mut s = server();
    let now = t0();
    let mut c = Client::new("alice", "pw");
    let relay = allocate(&mut s, now, &mut c, CLIENT);
    let r = c.build(Method::CreatePermission, true, |b| peer_attr(b, PEER));
    call(&mut s, now, CLIENT, &r);
    // Permission lasts 300 s.
    let t = later(now, 299);
    assert!(s
        .handle_input(t, Via::Relay(relay), sa(PEER), b"x")
        .is_some());
    let t = later(now, 300);
    assert!(s
        .handle_input(t, Via::Relay(relay), sa(PEER), b"x")
        .is_none());
    // Refresh above the maximum is capped at 3600.
    let r = c.build(Method::Refresh, true, |b| {
        b.lifetime(100_000);
    });
    let (_, _, raw) = call(&mut s, t, CLIENT, &r);
    let m = Message::parse(&raw).unwrap();
    assert_eq!(
        tattr::decode_lifetime(m.attribute(attr::LIFETIME).unwrap()).unwrap(),
        3600
    );
    s.handle_timeout(later(now, 3000).instant);
    assert_eq!(s.allocation_count(), 1);
    s.handle_timeout(later(now, 300 + 3600).instant);
    assert_eq!(s.allocation_count(), 0);
    assert_eq!(s.shared.quotas.active(), 0);
    assert!(s.ports.used.is_empty(), "port released");
    assert!(s
        .handle_input(later(now, 4000), Via::Relay(relay), sa(PEER), b"x")
        .is_none());
}

#[test]
fn draining_refuses_new_allocations() {
    let mut s = server();
    let now = t0();
    let mut c = Client::new("alice", "pw");
    allocate(&mut s, now, &mut c, CLIENT);
    s.shared.draining.store(true, Ordering::Relaxed);
    let r = c.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(call(&mut s, now, "203.0.113.1:1", &r).1, Some(508));
    let r = c.build(Method::Refresh, true, |_| {});
    assert_eq!(
        call(&mut s, now, CLIENT, &r).1,
        None,
        "existing allocation still served"
    );
}

#[test]
fn tcp_channel_data_is_padded() {
    let cfg = config();
    let auth = Authenticator::new(&cfg.realm, &cfg.users, None, b"n", 600).unwrap();
    let mut s = Server::new(
        Arc::new(Shared::new(&cfg, auth).unwrap()),
        Transport::Tcp,
        MemPorts::new(50000, 50001),
    );
    let now = t0();
    let mut c = Client::new("alice", "pw");
    // Reuse the UDP helper: the protocol is the same apart from padding.
    let relay = {
        let req = c.build(Method::Allocate, false, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        let t = s
            .handle_input(now, Via::Listener, sa(CLIENT), &req)
            .unwrap();
        c.nonce = Message::parse(t.payload)
            .unwrap()
            .attribute(attr::NONCE)
            .unwrap()
            .to_vec();
        let req = c.build(Method::Allocate, true, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        });
        let t = s
            .handle_input(now, Via::Listener, sa(CLIENT), &req)
            .unwrap();
        let m = Message::parse(t.payload).unwrap();
        address::decode_xor(
            m.attribute(attr::XOR_RELAYED_ADDRESS).unwrap(),
            m.transaction_id(),
            0,
        )
        .unwrap()
    };
    let r = c.build(Method::ChannelBind, true, |b| {
        b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]);
        peer_attr(b, PEER);
    });
    s.handle_input(now, Via::Listener, sa(CLIENT), &r).unwrap();
    let t = s
        .handle_input(now, Via::Relay(relay), sa(PEER), b"12345")
        .unwrap();
    assert_eq!(t.payload.len(), 12);
    assert_eq!(&t.payload[..4], &[0x40, 0x00, 0, 5]);
}

#[test]
fn random_and_truncated_input_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x7e57);
    let mut s = server_with(
        TurnConfig {
            allow_loopback_peers: true,
            ..config()
        },
        MemPorts::new(50000, 50009),
    );
    let now = t0();
    let mut c = Client::new("alice", "pw");
    let relay = allocate(&mut s, now, &mut c, CLIENT);
    // Valid messages as seeds, mutated and truncated.
    let seeds: Vec<Vec<u8>> = vec![
        c.build(Method::CreatePermission, true, |b| peer_attr(b, PEER)),
        c.build(Method::ChannelBind, true, |b| {
            b.attr(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]);
            peer_attr(b, PEER);
        }),
        c.build(Method::Allocate, true, |b| {
            b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            b.attr(attr::EVEN_PORT, &[0x80]);
        }),
        vec![0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4],
    ];
    for i in 0..20_000 {
        let mut m = seeds[i % seeds.len()].clone();
        match rng.gen_range(0..4) {
            0 => m.truncate(rng.gen_range(0..=m.len())),
            1 => {
                for _ in 0..rng.gen_range(1..4) {
                    let j = rng.gen_range(0..m.len());
                    m[j] = rng.gen();
                }
            }
            2 => m = (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect(),
            _ => {
                // A plausible header with a random length and random attributes.
                let n = rng.gen_range(0..64) * 4;
                m.truncate(20);
                m[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                m.extend((0..n).map(|_| rng.gen::<u8>()));
            }
        }
        let _ = crate::stun::Message::parse(&m);
        let from = if rng.gen() {
            sa(CLIENT)
        } else {
            sa("203.0.113.77:7")
        };
        let _ = s.handle_input(now, Via::Listener, from, &m);
        let _ = s.handle_input(now, Via::Relay(relay), sa(PEER), &m);
    }
}

/// Unauthenticated answers carry only what the protocol needs: no SOFTWARE, no reason
/// phrase, FINGERPRINT only when the request had one (reflection: answer size / request size).
#[test]
fn unauthenticated_answers_are_minimal() {
    let mut s = server();
    assert!(!s.shared.software.is_empty(), "SOFTWARE is configured");
    let now = t0();
    // A bare 20-byte Binding request: XOR-MAPPED-ADDRESS (IPv4) is the whole answer.
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Class::Request, Method::Binding, &[7; 12]);
    assert_eq!(req.len(), 20);
    let t = s
        .handle_input(now, Via::Listener, sa(CLIENT), &req)
        .unwrap();
    assert_eq!(t.payload.len(), 20 + 12, "header + XOR-MAPPED-ADDRESS only");
    let m = Message::parse(t.payload).unwrap();
    assert!(m.attribute(attr::SOFTWARE).is_none());
    // Allocate without credentials: 401 with ERROR-CODE (no phrase), REALM, NONCE and the
    // FINGERPRINT the request carried.
    let mut c = Client::new("alice", "pw");
    let req = c.build(Method::Allocate, false, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let (class, code, raw) = call(&mut s, now, CLIENT, &req);
    assert_eq!((class, code), (Class::Error, Some(401)));
    let realm = REALM.len().div_ceil(4) * 4;
    assert_eq!(
        raw.len(),
        20 + 8 + (4 + realm) + (4 + super::super::auth::NONCE_LEN) + 8
    );
    let m = Message::parse(&raw).unwrap();
    assert!(m.attribute(attr::SOFTWARE).is_none());
    // Authenticated answers still say who they are.
    let mut c = Client::new("alice", "pw");
    allocate(&mut s, now, &mut c, "203.0.113.8:1");
    let r = c.build(Method::Refresh, true, |_| {});
    let (_, _, raw) = call(&mut s, now, "203.0.113.8:1", &r);
    assert!(Message::parse(&raw)
        .unwrap()
        .attribute(attr::SOFTWARE)
        .is_some());
}

/// A flood of unauthenticated requests from one (spoofed) source gets the burst answered and
/// then silence; another source is answered meanwhile, and the first again later.
#[test]
fn unauthenticated_answers_are_rate_limited_per_source() {
    let mut s = server_with(
        TurnConfig {
            unauth_rate: 5,
            unauth_burst: 10,
            ..config()
        },
        MemPorts::new(50000, 50009),
    );
    let now = t0();
    let mut c = Client::new("alice", "pw");
    let binding = c.build(Method::Binding, false, |_| {});
    let allocate = c.build(Method::Allocate, false, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let victim = sa("198.51.100.77:3478");
    let answered = (0..1000)
        .filter(|i| {
            let req = if i % 2 == 0 { &binding } else { &allocate };
            s.handle_input(now, Via::Listener, victim, req).is_some()
        })
        .count();
    assert_eq!(answered, 10, "only the burst");
    assert_eq!(s.take_stats().unauth_limited, 990);
    // Another source, even on the same port of the same shard, is answered.
    assert_eq!(call(&mut s, now, CLIENT, &allocate).1, Some(401));
    // The victim's budget refills at the configured rate.
    let then = later(now, 1);
    let answered = (0..100)
        .filter(|_| {
            s.handle_input(then, Via::Listener, victim, &binding)
                .is_some()
        })
        .count();
    assert_eq!(answered, 5);
    // Authenticated traffic from a limited source is not affected.
    let mut a = Client::new("alice", "pw");
    a.nonce = s.shared.auth.nonce(now.unix).to_vec();
    let req = a.build(Method::Allocate, true, |b| {
        b.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    assert_eq!(
        call(&mut s, then, &victim.to_string(), &req).0,
        Class::Success
    );
}

#[test]
fn peer_policy_denies_the_relays_own_addresses() {
    let mut s = server_with(
        TurnConfig {
            listen: "8.8.4.4:3478".into(),
            external_address: "9.9.9.9".into(),
            ..config()
        },
        MemPorts::new(50000, 50009),
    );
    let now = t0();
    let mut c = Client::new("alice", "pw");
    allocate(&mut s, now, &mut c, CLIENT);
    for peer in ["8.8.4.4:9090", "9.9.9.9:1", "[::ffff:8.8.4.4]:1"] {
        let r = c.build(Method::CreatePermission, true, |b| peer_attr(b, peer));
        assert_eq!(call(&mut s, now, CLIENT, &r).1, Some(403), "{peer}");
    }
    let r = c.build(Method::CreatePermission, true, |b| peer_attr(b, PEER));
    assert_eq!(call(&mut s, now, CLIENT, &r).1, None);
}
