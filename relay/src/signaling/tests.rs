//! The driver in-process on port 0: real WebSockets against `Signaling::start`, tokens minted
//! with the ticket key (the full flow with vc-control is in `tests/tests/signaling.rs`).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shared::signaling::{ClientMessage, ErrorCode, ServerMessage};
use shared::ticket::{unix_now, Role, TicketKey};
use shared::Secret;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::{Signaling, SignalingConfig};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn recv(ws: &mut Ws) -> ServerMessage {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("open")
            .expect("no error");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).expect("server JSON");
        }
    }
}

async fn send(ws: &mut Ws, m: &ClientMessage) {
    ws.send(Message::text(serde_json::to_string(m).unwrap()))
        .await
        .unwrap();
}

#[tokio::test]
async fn camera_and_viewer_exchange_offer_and_answer() {
    let key = TicketKey::new(&Secret::new("driver-test"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = SignalingConfig {
        control_url: String::new(),
        control_ca_file: String::new(),
        turn_uris: vec!["turn:127.0.0.1:3478?transport=udp".into()],
        ..SignalingConfig::default()
    };
    let handle = Signaling::start(config, key.clone(), listener, None);
    let url = format!("ws://{addr}/ws");
    let dev = Uuid::new_v4();
    let now = unix_now();
    let (ct, _) = key.mint_signaling(&dev.to_string(), Role::Camera, vec![dev], now, 600);
    let (vt, _) = key.mint_signaling("user", Role::Viewer, vec![dev], now, 600);

    let (mut cam, _) = tokio_tungstenite::connect_async(format!("{url}?token={ct}"))
        .await
        .unwrap();
    match recv(&mut cam).await {
        ServerMessage::Welcome {
            role: Role::Camera,
            device_id: Some(d),
            ice_servers,
            ..
        } if d == dev => {
            assert_eq!(ice_servers.len(), 1);
            key.verify_turn_credentials(&ice_servers[0].username, &ice_servers[0].credential, now)
                .unwrap();
        }
        other => panic!("{other:?}"),
    }
    // Viewer with first-message auth.
    let (mut viewer, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    send(&mut viewer, &ClientMessage::Auth { token: vt }).await;
    assert!(matches!(
        recv(&mut viewer).await,
        ServerMessage::Welcome {
            role: Role::Viewer,
            ..
        }
    ));
    send(&mut viewer, &ClientMessage::Connect { device_id: dev }).await;
    let ServerMessage::Session { session_id, .. } = recv(&mut viewer).await else {
        panic!("no session")
    };
    send(
        &mut viewer,
        &ClientMessage::Offer {
            session_id,
            sdp: "o".into(),
        },
    )
    .await;
    assert_eq!(
        recv(&mut cam).await,
        ServerMessage::Offer {
            session_id,
            sdp: "o".into()
        }
    );
    send(
        &mut cam,
        &ClientMessage::Answer {
            session_id,
            sdp: "a".into(),
        },
    )
    .await;
    assert_eq!(
        recv(&mut viewer).await,
        ServerMessage::Answer {
            session_id,
            sdp: "a".into()
        }
    );
    // Bad JSON: bad_message, connection stays.
    viewer.send(Message::text("{")).await.unwrap();
    assert!(matches!(
        recv(&mut viewer).await,
        ServerMessage::Error {
            code: ErrorCode::BadMessage,
            ..
        }
    ));
    // Too large: too_large, then close 1009.
    let _ = viewer.send(Message::text("x".repeat(70 * 1024))).await;
    assert!(matches!(
        recv(&mut viewer).await,
        ServerMessage::Error {
            code: ErrorCode::TooLarge,
            ..
        }
    ));
    // Camera learns the viewer left.
    assert_eq!(
        recv(&mut cam).await,
        ServerMessage::Bye {
            session_id,
            reason: Some("viewer_left".into())
        }
    );
    // Bad upgrade token: 401.
    match tokio_tungstenite::connect_async(format!("{url}?token=bad")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("{:?}", other.map(|_| ())),
    }
    handle.shutdown(Duration::from_secs(2)).await;
    // Shutdown closes the camera with 1001.
    loop {
        match cam.next().await {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1001);
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}
