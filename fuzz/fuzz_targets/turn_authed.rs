//! The TURN state machine past authentication: every request the fuzzer shapes is signed
//! with a valid MESSAGE-INTEGRITY (known user, realm and a fresh nonce), so Allocate, Refresh,
//! CreatePermission and ChannelBind reach their handlers, and peer data and ChannelData reach
//! a live allocation. (`turn_server` feeds raw bytes, which never authenticate.)
//!
//! Input: a sequence of operations `[op, len, attrs...]`; `attrs` are `[type_hi, type_lo,
//! vlen, value...]` appended to a request before it is signed.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use relay::stun::integrity::long_term_key;
use relay::stun::{attr, Class, MessageBuilder, Method};
use relay::turn::auth::{hmac_sha1, Authenticator};
use relay::turn::ports::{PortRequest, RelayPort, RelayPorts};
use relay::turn::server::Shared;
use relay::turn::{Now, Server, Transport, TurnConfig, Via};

/// Hands out ports from a counter; enough for the state machine.
struct Counter(u16);

impl RelayPorts for Counter {
    fn acquire(&mut self, _req: PortRequest, _now: Instant) -> Option<RelayPort> {
        self.0 = self.0.wrapping_add(1);
        Some(RelayPort {
            addr: SocketAddr::from(([8, 8, 4, 4], self.0)),
            reservation: None,
        })
    }
    fn release(&mut self, _addr: SocketAddr) {}
}

const REALM: &str = "fuzz";

fn signed(method: Method, tid: &[u8; 12], attrs: &[u8], nonce: &[u8], key: &[u8; 16]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, Class::Request, method, tid);
    let mut rest = attrs;
    while rest.len() >= 3 {
        let typ = u16::from_be_bytes([rest[0], rest[1]]);
        let n = (rest[2] as usize).min(rest.len() - 3);
        // Credentials are the target's to add.
        if !matches!(
            typ,
            attr::USERNAME | attr::REALM | attr::NONCE | attr::MESSAGE_INTEGRITY | attr::FINGERPRINT
        ) {
            b.attr(typ, &rest[3..3 + n]);
        }
        rest = &rest[3 + n..];
    }
    b.attr(attr::USERNAME, b"u");
    b.attr(attr::REALM, REALM.as_bytes());
    b.attr(attr::NONCE, nonce);
    b.integrity(hmac_sha1(key));
    b.fingerprint();
    buf
}

fuzz_target!(|data: &[u8]| {
    let transport = if data.first().is_some_and(|b| b & 0x80 != 0) {
        Transport::Tcp
    } else {
        Transport::Udp
    };
    let cfg = TurnConfig {
        realm: REALM.into(),
        users: vec!["u:p".into()],
        unauth_rate: 0,
        ..TurnConfig::default()
    };
    let auth = Authenticator::new(&cfg.realm, &cfg.users, None, b"n", 600).unwrap();
    let shared = Arc::new(Shared::new(&cfg, auth).unwrap());
    let key = long_term_key(b"u", REALM.as_bytes(), b"p");
    let t0 = Instant::now();
    let mut now = Now { instant: t0, unix: 1_700_000_000 };
    let nonce = shared.auth.nonce(now.unix);
    let mut s = Server::new(shared, transport, Counter(1000));
    let client: SocketAddr = "203.0.113.1:5000".parse().unwrap();
    let peer: SocketAddr = "8.8.8.8:6000".parse().unwrap();
    // Start from a live allocation so that every later operation has state to work on.
    let mut tid = [0u8; 12];
    let alloc = signed(Method::Allocate, &tid, &[0, 0x19, 4, 17, 0, 0, 0], &nonce, &key);
    let relay = s
        .handle_input(now, Via::Listener, client, &alloc)
        .map(|_| SocketAddr::from(([8, 8, 4, 4], 1001)))
        .unwrap_or(SocketAddr::from(([8, 8, 4, 4], 1001)));
    // The point of this target: if signing ever stops authenticating, fail at once rather
    // than fuzz the 401 path for hours.
    assert_eq!(s.allocation_count(), 1, "the signed Allocate did not authenticate");
    let mut rest = data.get(1..).unwrap_or_default();
    while rest.len() >= 2 {
        let (op, n) = (rest[0], (rest[1] as usize).min(rest.len() - 2));
        let body = &rest[2..2 + n];
        rest = &rest[2 + n..];
        tid[0] = tid[0].wrapping_add(1);
        let method = match op % 8 {
            0 => Some(Method::Allocate),
            1 => Some(Method::Refresh),
            2 => Some(Method::CreatePermission),
            3 => Some(Method::ChannelBind),
            _ => None,
        };
        match (method, op % 8) {
            (Some(m), _) => {
                let req = signed(m, &tid, body, &nonce, &key);
                let _ = s.handle_input(now, Via::Listener, client, &req);
            }
            // Raw bytes from the client (ChannelData, Send indications).
            (None, 4) => {
                let _ = s.handle_input(now, Via::Listener, client, body);
            }
            // Peer data to the relay address.
            (None, 5) => {
                let _ = s.handle_input(now, Via::Relay(relay), peer, body);
            }
            // Time passes: lifetimes, permissions and channels expire.
            (None, 6) => {
                let secs = u64::from(body.first().copied().unwrap_or(1));
                now = Now {
                    instant: now.instant + Duration::from_secs(secs),
                    unix: now.unix + secs,
                };
                s.handle_timeout(now.instant);
            }
            _ => {
                let _ = s.handle_input(now, Via::Relay(relay), client, body);
            }
        }
    }
    let _ = s.take_stats();
});
