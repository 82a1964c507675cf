//! A Rust WebRTC viewer (webrtc crate, relay-only ICE): signaling over the relay's WebSocket,
//! VP8 decoded and the camera's burnt-in frame counter read back, a data channel to ask the
//! camera things. Used by camera_flow.rs and fleet.rs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use shared::api::TicketResponse;
use shared::signaling::{ClientMessage, ErrorCode, IceCandidate, IceServer, ServerMessage};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::APIBuilder;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice::candidate::CandidateType;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::media::io::sample_builder::SampleBuilder;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp::codecs::vp8::Vp8Packet;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::stats::StatsReportType;

/// A Rust viewer: one signaling connection, one relay-only peer connection.
pub struct Viewer {
    pc: Arc<RTCPeerConnection>,
    dc: Arc<RTCDataChannel>,
    counters: mpsc::UnboundedReceiver<u64>,
    replies: mpsc::UnboundedReceiver<String>,
    /// Signaling messages not consumed by the call itself (`bye`, `error`, ...).
    pub events: mpsc::UnboundedReceiver<ServerMessage>,
    outbox: mpsc::UnboundedSender<ClientMessage>,
    session_id: Uuid,
}

pub enum Connect {
    Session(Box<Viewer>),
    CameraOffline,
}

/// The next signaling message (10 s at most).
pub async fn next_message<S>(stream: &mut S) -> Result<ServerMessage>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                return serde_json::from_str::<ServerMessage>(&t).context("server message")
            }
            Ok(Some(Ok(_))) => continue,
            other => bail!("signaling ended: {other:?}"),
        }
    }
}

/// Opens a session to `device_id` with a viewer `ticket` and starts the WebRTC call.
pub async fn viewer_connect(ticket: &TicketResponse, device_id: Uuid) -> Result<Connect> {
    let url = format!("{}?token={}", ticket.signaling.url, ticket.signaling.token);
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .context("viewer websocket")?;
    call(ws, device_id).await
}

/// [`viewer_connect`] for a `wss://host:port/path` signaling URL, trusting only `trust` (the
/// test certificate's DER; the TLS server name is `localhost`).
pub async fn viewer_connect_wss(
    ticket: &TicketResponse,
    device_id: Uuid,
    trust: &[u8],
) -> Result<Connect> {
    let rest = ticket
        .signaling
        .url
        .strip_prefix("wss://")
        .context("ticket signaling URL is not wss://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = format!("{path}?token={}", ticket.signaling.token);
    let addr = match authority.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => authority.to_owned(),
    };
    let (ws, _) = crate::signaling_client::wss_connect(&addr, &path, trust).await?;
    call(ws, device_id).await
}

async fn call<W>(ws: W, device_id: Uuid) -> Result<Connect>
where
    W: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + Send
        + Unpin
        + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let ice_servers: Vec<IceServer> = match next_message(&mut stream).await? {
        ServerMessage::Welcome { ice_servers, .. } => ice_servers,
        other => bail!("expected welcome, got {other:?}"),
    };
    ensure!(!ice_servers.is_empty(), "welcome names TURN servers");
    let connect = serde_json::to_string(&ClientMessage::Connect { device_id })?;
    sink.send(Message::text(connect)).await?;
    let session_id = match next_message(&mut stream).await? {
        ServerMessage::Session { session_id, .. } => session_id,
        ServerMessage::Error {
            code: ErrorCode::CameraOffline,
            ..
        } => return Ok(Connect::CameraOffline),
        other => bail!("expected session, got {other:?}"),
    };

    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?;
    let webrtc_api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build();
    let pc = Arc::new(
        webrtc_api
            .new_peer_connection(RTCConfiguration {
                ice_servers: ice_servers
                    .iter()
                    .map(|s| RTCIceServer {
                        urls: s.urls.clone(),
                        username: s.username.clone(),
                        credential: s.credential.clone(),
                    })
                    .collect(),
                ice_transport_policy: RTCIceTransportPolicy::Relay,
                ..Default::default()
            })
            .await?,
    );
    pc.add_transceiver_from_kind(
        RTPCodecType::Video,
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            send_encodings: vec![],
        }),
    )
    .await?;
    let (counter_tx, counters) = mpsc::unbounded_channel();
    pc.on_track(Box::new(move |track, _, _| {
        let counter_tx = counter_tx.clone();
        tokio::spawn(async move {
            let mut builder = SampleBuilder::new(128, Vp8Packet::default(), 90_000);
            let Ok(mut decoder) = camera::vp8::Vp8Decoder::new() else {
                return;
            };
            while let Ok((packet, _)) = track.read_rtp().await {
                builder.push(packet);
                while let Some(sample) = builder.pop() {
                    if let Ok(Some(luma)) = decoder.decode(&sample.data) {
                        if let Some(n) =
                            camera::pattern::read_counter(&luma.y, luma.width, luma.height)
                        {
                            let _ = counter_tx.send(n);
                        }
                    }
                }
            }
        });
        Box::pin(async {})
    }));
    let dc = pc.create_data_channel("control", None).await?;
    let (reply_tx, replies) = mpsc::unbounded_channel();
    dc.on_message(Box::new(move |msg: DataChannelMessage| {
        let _ = reply_tx.send(String::from_utf8_lossy(&msg.data).into_owned());
        Box::pin(async {})
    }));
    let (outbox, mut out_rx) = mpsc::unbounded_channel::<ClientMessage>();
    let cand_out = outbox.clone();
    pc.on_ice_candidate(Box::new(move |c| {
        if let Some(init) = c.and_then(|c| c.to_json().ok()) {
            let _ = cand_out.send(ClientMessage::Candidate {
                session_id,
                candidate: IceCandidate {
                    candidate: init.candidate,
                    sdp_mid: init.sdp_mid,
                    sdp_mline_index: init.sdp_mline_index,
                    username_fragment: init.username_fragment,
                },
            });
        }
        Box::pin(async {})
    }));
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer.clone()).await?;
    outbox.send(ClientMessage::Offer {
        session_id,
        sdp: offer.sdp,
    })?;

    let (events_tx, events) = mpsc::unbounded_channel();
    let task_pc = pc.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                out = out_rx.recv() => {
                    let Some(msg) = out else { break };
                    let text = serde_json::to_string(&msg).unwrap_or_default();
                    if sink.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                incoming = stream.next() => {
                    let text = match incoming {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(_)) => continue,
                        _ => break,
                    };
                    let Ok(msg) = serde_json::from_str::<ServerMessage>(&text) else { continue };
                    match msg {
                        ServerMessage::Answer { sdp, .. } => {
                            if let Ok(answer) = RTCSessionDescription::answer(sdp) {
                                let _ = task_pc.set_remote_description(answer).await;
                            }
                        }
                        ServerMessage::Candidate { candidate, .. } => {
                            let _ = task_pc
                                .add_ice_candidate(RTCIceCandidateInit {
                                    candidate: candidate.candidate,
                                    sdp_mid: candidate.sdp_mid,
                                    sdp_mline_index: candidate.sdp_mline_index,
                                    username_fragment: candidate.username_fragment,
                                })
                                .await;
                        }
                        other => {
                            let _ = events_tx.send(other);
                        }
                    }
                }
            }
        }
    });
    Ok(Connect::Session(Box::new(Viewer {
        pc,
        dc,
        counters,
        replies,
        events,
        outbox,
        session_id,
    })))
}

/// Connects with a fresh ticket from `ticket` each try, retrying while the relay says the
/// camera is offline (it is still connecting).
pub async fn viewer_until_online<F, Fut>(
    ticket: F,
    device_id: Uuid,
    within: Duration,
) -> Result<Viewer>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<TicketResponse>>,
{
    until_online(ticket, device_id, within, None).await
}

/// [`viewer_until_online`] over `wss://` signaling, trusting only `trust`.
pub async fn viewer_until_online_wss<F, Fut>(
    ticket: F,
    device_id: Uuid,
    within: Duration,
    trust: &[u8],
) -> Result<Viewer>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<TicketResponse>>,
{
    until_online(ticket, device_id, within, Some(trust)).await
}

async fn until_online<F, Fut>(
    mut ticket: F,
    device_id: Uuid,
    within: Duration,
    trust: Option<&[u8]>,
) -> Result<Viewer>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<TicketResponse>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let attempt = match (ticket().await, trust) {
            (Ok(t), None) => viewer_connect(&t, device_id).await,
            (Ok(t), Some(trust)) => viewer_connect_wss(&t, device_id, trust).await,
            (Err(e), _) => Err(e),
        };
        match attempt {
            Ok(Connect::Session(v)) => return Ok(*v),
            Ok(Connect::CameraOffline) | Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(Connect::CameraOffline) => bail!("camera still offline after {within:?}"),
            Err(e) => return Err(e),
        }
    }
}

impl Viewer {
    /// Waits for `n` decoded frames with increasing counters.
    pub async fn frames(&mut self, n: usize) -> Result<Vec<u64>> {
        let mut seen = Vec::new();
        let got = tokio::time::timeout(Duration::from_secs(30), async {
            while seen.len() < n {
                match self.counters.recv().await {
                    Some(c) => seen.push(c),
                    None => break,
                }
            }
        })
        .await;
        ensure!(
            got.is_ok() && seen.len() >= n,
            "only {} decoded frames arrived",
            seen.len()
        );
        ensure!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "frame counters must increase: {seen:?}"
        );
        Ok(seen)
    }

    pub async fn ask(&mut self, command: &str) -> Result<String> {
        tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                if self.dc.send_text(command).await.is_ok() {
                    if let Ok(Some(r)) =
                        tokio::time::timeout(Duration::from_millis(500), self.replies.recv()).await
                    {
                        return r;
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
        .await
        .with_context(|| format!("no answer to {command:?}"))
    }

    /// The nominated candidate pair's local candidate type.
    pub async fn selected_local_type(&self) -> Option<CandidateType> {
        let stats = self.pc.get_stats().await;
        let pair = stats.reports.values().find_map(|r| match r {
            StatsReportType::CandidatePair(p) if p.nominated => Some(p.local_candidate_id.clone()),
            _ => None,
        })?;
        stats.reports.values().find_map(|r| match r {
            StatsReportType::LocalCandidate(c) if c.id == pair => Some(c.candidate_type),
            _ => None,
        })
    }

    pub async fn close(self) {
        let _ = self.outbox.send(ClientMessage::Bye {
            session_id: self.session_id,
            reason: None,
        });
        let _ = self.pc.close().await;
    }
}
