//! One WebRTC peer connection per viewer session: answers the viewer's offer with the
//! shared live VP8 track, trickles ICE candidates out through [`PeerEvent`]s, and answers
//! the viewer's data channel (`ping` -> `pong`, `info` -> camera JSON).

use std::sync::{Arc, Weak};

use serde::Serialize;
use shared::signaling::{IceCandidate, IceServer};
use tokio::sync::mpsc;
use uuid::Uuid;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::track::track_local::TrackLocal;

use crate::media::{VideoSource, ViewerGuard};
use crate::vp8::Vp8Config;

/// What a peer connection reports to the signaling loop that owns it.
#[derive(Debug, Clone)]
pub enum PeerEvent {
    /// A local ICE candidate to trickle to the viewer.
    Candidate {
        session_id: Uuid,
        candidate: IceCandidate,
    },
    /// The peer connection changed state.
    State {
        session_id: Uuid,
        state: RTCPeerConnectionState,
    },
}

/// Who this camera is, for the data channel's `info` answer.
#[derive(Debug, Clone, Serialize)]
pub struct CameraInfo {
    pub device_id: Option<Uuid>,
    pub uid: String,
    pub model: String,
}

/// Camera-wide WebRTC settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerOptions {
    /// Gather relay candidates only (`iceTransportPolicy: relay`).
    pub relay_only: bool,
    /// Offer loopback host candidates too (single-host tests and demos).
    pub include_loopback: bool,
}

/// The camera's media side: a WebRTC API instance and the shared video source.
pub struct Camera {
    api: API,
    video: VideoSource,
    info: CameraInfo,
    options: PeerOptions,
}

/// A viewer's peer connection; closed with [`PeerSession::close`].
pub struct PeerSession {
    pc: Arc<RTCPeerConnection>,
    /// Released on close (or drop), so the encoder idles when nobody watches.
    viewer: std::sync::Mutex<Option<ViewerGuard>>,
}

impl Camera {
    /// Builds the WebRTC stack and starts the video source (inside a tokio runtime).
    pub fn new(video: Vp8Config, info: CameraInfo, options: PeerOptions) -> anyhow::Result<Self> {
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        let registry = register_default_interceptors(Registry::new(), &mut media)?;
        let mut setting = SettingEngine::default();
        setting.set_include_loopback_candidate(options.include_loopback);
        let api = APIBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(setting)
            .build();
        Ok(Self {
            api,
            video: VideoSource::start(video)?,
            info,
            options,
        })
    }

    pub fn video(&self) -> &VideoSource {
        &self.video
    }

    /// Creates a peer connection for `session_id`, applies the viewer's offer and returns
    /// the session with the SDP answer. Local candidates arrive later as
    /// [`PeerEvent::Candidate`] on `events` (trickle ICE).
    pub async fn answer(
        &self,
        session_id: Uuid,
        offer_sdp: String,
        ice_servers: &[IceServer],
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> anyhow::Result<(PeerSession, String)> {
        let config = RTCConfiguration {
            ice_servers: ice_servers
                .iter()
                .map(|s| RTCIceServer {
                    urls: s.urls.clone(),
                    username: s.username.clone(),
                    credential: s.credential.clone(),
                })
                .collect(),
            ice_transport_policy: if self.options.relay_only {
                RTCIceTransportPolicy::Relay
            } else {
                RTCIceTransportPolicy::All
            },
            ..Default::default()
        };
        let pc = Arc::new(self.api.new_peer_connection(config).await?);
        let session = PeerSession {
            pc: pc.clone(),
            viewer: std::sync::Mutex::new(Some(self.video.attach())),
        };
        match self.negotiate(&pc, session_id, offer_sdp, events).await {
            Ok(answer) => Ok((session, answer)),
            Err(e) => {
                session.close().await;
                Err(e)
            }
        }
    }

    async fn negotiate(
        &self,
        pc: &Arc<RTCPeerConnection>,
        session_id: Uuid,
        offer_sdp: String,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> anyhow::Result<String> {
        let track: Arc<dyn TrackLocal + Send + Sync> = self.video.track();
        let sender = pc.add_track(track).await?;
        // Read RTCP: it drives the interceptors (NACK, reports) and carries key frame requests.
        let keyframes = self.video.keyframe_handle();
        tokio::spawn(async move {
            while let Ok((packets, _)) = sender.read_rtcp().await {
                for p in packets {
                    let any = p.as_any();
                    if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                        keyframes();
                    }
                }
            }
        });

        let ev = events.clone();
        pc.on_ice_candidate(Box::new(move |c| {
            let ev = ev.clone();
            Box::pin(async move {
                let Some(c) = c else { return };
                match c.to_json() {
                    Ok(init) => {
                        let _ = ev.send(PeerEvent::Candidate {
                            session_id,
                            candidate: IceCandidate {
                                candidate: init.candidate,
                                sdp_mid: init.sdp_mid,
                                sdp_mline_index: init.sdp_mline_index,
                                username_fragment: init.username_fragment,
                            },
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "local candidate"),
                }
            })
        }));
        let ev = events;
        pc.on_peer_connection_state_change(Box::new(move |state| {
            let _ = ev.send(PeerEvent::State { session_id, state });
            Box::pin(async {})
        }));
        let info = serde_json::json!({
            "device_id": self.info.device_id,
            "uid": self.info.uid,
            "model": self.info.model,
            "video": {
                "codec": "VP8",
                "width": self.video.config().width,
                "height": self.video.config().height,
                "fps": self.video.config().fps,
            },
        })
        .to_string();
        pc.on_data_channel(Box::new(move |dc: Arc<RTCDataChannel>| {
            let info = info.clone();
            // Weak: the handler is stored inside the channel itself.
            let weak: Weak<RTCDataChannel> = Arc::downgrade(&dc);
            dc.on_message(Box::new(move |msg: DataChannelMessage| {
                let reply = data_channel_reply(&msg, &info);
                let weak = weak.clone();
                Box::pin(async move {
                    if let (Some(dc), Some(reply)) = (weak.upgrade(), reply) {
                        if let Err(e) = dc.send_text(reply).await {
                            tracing::debug!(error = %e, "data channel send");
                        }
                    }
                })
            }));
            Box::pin(async {})
        }));

        self.apply_offer(pc, offer_sdp).await
    }

    /// Applies a (re-)offer and returns the answer SDP.
    pub async fn apply_offer(
        &self,
        pc: &RTCPeerConnection,
        offer_sdp: String,
    ) -> anyhow::Result<String> {
        pc.set_remote_description(RTCSessionDescription::offer(offer_sdp)?)
            .await?;
        let answer = pc.create_answer(None).await?;
        let sdp = answer.sdp.clone();
        pc.set_local_description(answer).await?;
        Ok(sdp)
    }
}

impl PeerSession {
    pub fn peer_connection(&self) -> &Arc<RTCPeerConnection> {
        &self.pc
    }

    /// Adds a remote (viewer) ICE candidate.
    pub async fn add_candidate(&self, c: IceCandidate) -> anyhow::Result<()> {
        self.pc
            .add_ice_candidate(RTCIceCandidateInit {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_mline_index: c.sdp_mline_index,
                username_fragment: c.username_fragment,
            })
            .await?;
        Ok(())
    }

    pub async fn close(&self) {
        // A poisoned lock only means another closer panicked; the guard is still droppable.
        drop(
            self.viewer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(),
        );
        if let Err(e) = self.pc.close().await {
            tracing::debug!(error = %e, "close peer connection");
        }
    }
}

/// The answer to one data channel message, if any.
pub fn data_channel_reply(msg: &DataChannelMessage, info: &str) -> Option<String> {
    if !msg.is_string {
        return None;
    }
    match std::str::from_utf8(&msg.data).map(str::trim) {
        Ok("ping") => Some("pong".to_owned()),
        Ok("info") => Some(info.to_owned()),
        Ok(other) => Some(
            serde_json::json!({"error": "unknown_command", "command": other.chars().take(64).collect::<String>()})
                .to_string(),
        ),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> DataChannelMessage {
        DataChannelMessage {
            is_string: true,
            data: bytes::Bytes::copy_from_slice(s.as_bytes()),
        }
    }

    #[test]
    fn data_channel_commands() {
        assert_eq!(
            data_channel_reply(&text("ping"), "{}").as_deref(),
            Some("pong")
        );
        assert_eq!(
            data_channel_reply(&text("info\n"), "{\"a\":1}").as_deref(),
            Some("{\"a\":1}")
        );
        assert!(data_channel_reply(&text("reboot"), "{}")
            .unwrap()
            .contains("unknown_command"));
        let binary = DataChannelMessage {
            is_string: false,
            data: bytes::Bytes::from_static(b"ping"),
        };
        assert_eq!(data_channel_reply(&binary, "{}"), None);
    }
}
