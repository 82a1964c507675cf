//! The TURN state machine fed arbitrary datagrams from a client and from a peer.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use relay::turn::auth::Authenticator;
use relay::turn::ports::{PortRequest, RelayPort, RelayPorts};
use relay::turn::server::Shared;
use relay::turn::{Now, Server, Transport, TurnConfig, Via};

/// Hands out ports from a counter; enough for the state machine.
struct Counter(u16);

impl RelayPorts for Counter {
    fn acquire(&mut self, _req: PortRequest, _now: Instant) -> Option<RelayPort> {
        self.0 = self.0.wrapping_add(1);
        Some(RelayPort {
            addr: SocketAddr::from(([127, 0, 0, 1], self.0)),
            reservation: None,
        })
    }
    fn release(&mut self, _addr: SocketAddr) {}
}

fuzz_target!(|data: &[u8]| {
    let cfg = TurnConfig {
        users: vec!["u:p".into()],
        allow_loopback_peers: true,
        ..TurnConfig::default()
    };
    let auth = Authenticator::new(&cfg.realm, &cfg.users, None, b"n", 600).unwrap();
    let mut s = Server::new(Arc::new(Shared::new(&cfg, auth).unwrap()), Transport::Udp, Counter(1000));
    let now = Now { instant: Instant::now(), unix: 1_700_000_000 };
    let client: SocketAddr = "203.0.113.1:5000".parse().unwrap();
    let peer: SocketAddr = "127.0.0.1:6000".parse().unwrap();
    let _ = s.handle_input(now, Via::Listener, client, data);
    let _ = s.handle_input(now, Via::Relay("127.0.0.1:1001".parse().unwrap()), peer, data);
});
