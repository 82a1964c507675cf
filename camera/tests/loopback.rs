//! The media path without any server: the camera's real peer-connection code answers two
//! in-process viewers (webrtc crate) over host candidates; each viewer reassembles the
//! RTP stream into VP8 frames, decodes them with libvpx and reads the burnt-in frame
//! counter back, and talks to the camera over the data channel.

use std::sync::Arc;
use std::time::Duration;

use camera::peer::{Camera, CameraInfo, PeerEvent, PeerOptions, PeerSession};
use camera::vp8::{Vp8Config, Vp8Decoder};
use shared::signaling::IceCandidate;
use tokio::sync::mpsc;
use uuid::Uuid;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::interceptor::registry::Registry;
use webrtc::media::io::sample_builder::SampleBuilder;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp::codecs::vp8::Vp8Packet;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;

struct Viewer {
    pc: Arc<RTCPeerConnection>,
    dc: Arc<RTCDataChannel>,
    /// Frame counters read from decoded pictures.
    counters: mpsc::UnboundedReceiver<u64>,
    /// Text messages received on the data channel.
    replies: mpsc::UnboundedReceiver<String>,
    session: Arc<PeerSession>,
}

async fn connect_viewer(camera: &Camera) -> Viewer {
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let registry = register_default_interceptors(Registry::new(), &mut media).unwrap();
    let mut setting = SettingEngine::default();
    setting.set_include_loopback_candidate(true);
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(setting)
        .build();
    let pc = Arc::new(
        api.new_peer_connection(RTCConfiguration::default())
            .await
            .unwrap(),
    );
    pc.add_transceiver_from_kind(
        RTPCodecType::Video,
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            send_encodings: vec![],
        }),
    )
    .await
    .unwrap();

    let (counter_tx, counters) = mpsc::unbounded_channel();
    pc.on_track(Box::new(move |track, _, _| {
        let counter_tx = counter_tx.clone();
        tokio::spawn(async move {
            let mut builder = SampleBuilder::new(128, Vp8Packet::default(), 90_000);
            let mut decoder = Vp8Decoder::new().unwrap();
            while let Ok((packet, _)) = track.read_rtp().await {
                builder.push(packet);
                while let Some(sample) = builder.pop() {
                    if let Ok(Some(luma)) = decoder.decode(&sample.data) {
                        assert_eq!((luma.width, luma.height), (320, 180));
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

    let dc = pc.create_data_channel("control", None).await.unwrap();
    let (reply_tx, replies) = mpsc::unbounded_channel();
    dc.on_message(Box::new(move |msg: DataChannelMessage| {
        let _ = reply_tx.send(String::from_utf8_lossy(&msg.data).into_owned());
        Box::pin(async {})
    }));

    // Viewer candidates are held until the camera's session exists.
    let (vcand_tx, mut vcand_rx) = mpsc::unbounded_channel::<RTCIceCandidateInit>();
    pc.on_ice_candidate(Box::new(move |c| {
        if let Some(c) = c {
            let _ = vcand_tx.send(c.to_json().unwrap());
        }
        Box::pin(async {})
    }));

    let offer = pc.create_offer(None).await.unwrap();
    pc.set_local_description(offer.clone()).await.unwrap();
    let session_id = Uuid::new_v4();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (session, answer) = camera
        .answer(session_id, offer.sdp, &[], events_tx)
        .await
        .unwrap();
    let session = Arc::new(session);
    pc.set_remote_description(RTCSessionDescription::answer(answer).unwrap())
        .await
        .unwrap();

    // Trickle both ways, as the relay would.
    let viewer_pc = pc.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let PeerEvent::Candidate { candidate, .. } = ev {
                let _ = viewer_pc
                    .add_ice_candidate(RTCIceCandidateInit {
                        candidate: candidate.candidate,
                        sdp_mid: candidate.sdp_mid,
                        sdp_mline_index: candidate.sdp_mline_index,
                        username_fragment: candidate.username_fragment,
                    })
                    .await;
            }
        }
    });
    let cam_session = session.clone();
    tokio::spawn(async move {
        while let Some(c) = vcand_rx.recv().await {
            let _ = cam_session
                .add_candidate(IceCandidate {
                    candidate: c.candidate,
                    sdp_mid: c.sdp_mid,
                    sdp_mline_index: c.sdp_mline_index,
                    username_fragment: c.username_fragment,
                })
                .await;
        }
    });

    Viewer {
        pc,
        dc,
        counters,
        replies,
        session,
    }
}

/// Waits for `n` decoded frames and checks their counters increase.
async fn expect_frames(viewer: &mut Viewer, n: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while seen.len() < n {
            seen.push(viewer.counters.recv().await.expect("track ended"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} decoded frames in 30 s", seen.len()));
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "counters must increase: {seen:?}"
    );
    seen
}

async fn ask(viewer: &mut Viewer, command: &str) -> String {
    tokio::time::timeout(Duration::from_secs(10), async {
        // The channel may still be opening: retry until it is.
        loop {
            if viewer.dc.send_text(command).await.is_ok() {
                if let Ok(Some(reply)) =
                    tokio::time::timeout(Duration::from_millis(500), viewer.replies.recv()).await
                {
                    return reply;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no answer to {command:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_viewers_get_live_decodable_video_and_data_channel_answers() {
    let camera = Camera::new(
        Vp8Config {
            width: 320,
            height: 180,
            fps: 20,
            bitrate_kbps: 300,
            keyframe_interval: 60,
        },
        CameraInfo {
            device_id: None,
            uid: "VC-TEST".into(),
            model: "VC-100".into(),
        },
        PeerOptions {
            relay_only: false,
            include_loopback: true,
        },
    )
    .unwrap();
    assert_eq!(camera.video().viewers(), 0);

    let mut a = connect_viewer(&camera).await;
    let first = expect_frames(&mut a, 30).await;
    assert_eq!(ask(&mut a, "ping").await, "pong");
    let info: serde_json::Value = serde_json::from_str(&ask(&mut a, "info").await).unwrap();
    assert_eq!(info["model"], "VC-100");
    assert_eq!(info["uid"], "VC-TEST");
    assert_eq!(info["video"]["codec"], "VP8");

    // A second viewer joins mid-stream: it gets a key frame and the same live counter.
    let mut b = connect_viewer(&camera).await;
    assert_eq!(camera.video().viewers(), 2);
    let second = expect_frames(&mut b, 10).await;
    assert!(
        second[0] > first[first.len() - 1],
        "b joins the live stream"
    );
    let more_a = expect_frames(&mut a, 5).await;
    assert!(more_a[0] > first[first.len() - 1]);

    // Closing one session leaves the other streaming.
    let Viewer { session, pc, .. } = a;
    pc.close().await.unwrap();
    session.close().await;
    assert_eq!(camera.video().viewers(), 1);
    // Drain what was buffered, then require fresh frames.
    while b.counters.try_recv().is_ok() {}
    expect_frames(&mut b, 10).await;
    b.pc.close().await.unwrap();
}
