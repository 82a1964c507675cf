//! `relay::run` in-process on port 0: every service answers, and the shutdown future stops it.

use std::time::Duration;

use futures_util::StreamExt;
use shared::signaling::ServerMessage;
use shared::ticket::{unix_now, Role, TicketKey};
use shared::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

#[tokio::test]
async fn run_serves_admin_turn_and_signaling_until_shutdown() {
    let secret = "in-process-test-secret-of-32-bytes!!";
    let mut config = relay::RelayConfig {
        ticket_secret: Secret::new(secret),
        admin_listen: "127.0.0.1:0".into(),
        drain_secs: 1,
        ..relay::RelayConfig::default()
    };
    config.signaling.listen = "127.0.0.1:0".into();
    config.signaling.control_url = String::new();
    config.turn.listen = "127.0.0.1:0".into();
    config.turn.relay_address = "127.0.0.1".into();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let signaling = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let sig_addr = signaling.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(relay::run(
        config,
        relay::Listeners { admin, signaling },
        async move {
            let _ = stop_rx.await;
        },
    ));

    // Admin: /healthz.
    let mut s = TcpStream::connect(admin_addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body))
        .await
        .unwrap()
        .unwrap();
    assert!(
        body.starts_with("HTTP/1.1 200") && body.ends_with("ok\n"),
        "{body}"
    );

    // Signaling: a camera token gets `welcome`.
    let key = TicketKey::new(&Secret::new(secret));
    let dev = Uuid::new_v4();
    let (token, _) = key.mint_signaling(&dev.to_string(), Role::Camera, vec![dev], unix_now(), 600);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{sig_addr}/ws?token={token}"))
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Text(t) = m else { panic!("{m:?}") };
    let welcome: ServerMessage = serde_json::from_str(&t).unwrap();
    assert!(
        matches!(
            welcome,
            ServerMessage::Welcome {
                role: Role::Camera,
                ..
            }
        ),
        "{welcome:?}"
    );

    // The shutdown future ends `run` (signaling closes the camera, TURN drains).
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), relay)
        .await
        .expect("run returns after shutdown")
        .unwrap()
        .unwrap();
    // The signaling port no longer accepts upgrades.
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{sig_addr}/ws"))
            .await
            .is_err()
    );
}
