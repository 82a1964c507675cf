//! The signaling protocol between cameras, viewers and `vc-relay` (WebSocket, JSON text frames).
//! Every message is an object with a `type` field; see `docs/signaling.md`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ticket::Role;

/// An ICE candidate as browsers and the `webrtc` crate exchange it (`RTCIceCandidateInit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u16>,
    #[serde(
        rename = "usernameFragment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

/// An entry of `RTCConfiguration.iceServers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

/// Client -> relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First-message authentication, when the token was not given as `?token=`.
    Auth { token: String },
    /// Viewer: open a session to a camera the token names. Answered by `session`.
    Connect { device_id: Uuid },
    /// Viewer -> camera.
    Offer { session_id: Uuid, sdp: String },
    /// Camera -> viewer.
    Answer { session_id: Uuid, sdp: String },
    /// Either direction.
    Candidate {
        session_id: Uuid,
        candidate: IceCandidate,
    },
    /// Either direction: the session ends.
    Bye {
        session_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// Relay -> client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Sent once the connection is authenticated.
    Welcome {
        role: Role,
        /// The camera's device id (camera connections).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_id: Option<Uuid>,
        /// This viewer connection's id (viewer connections).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connection_id: Option<Uuid>,
        /// Fresh TURN REST credentials for the relay's TURN listener.
        ice_servers: Vec<IceServer>,
    },
    /// Viewer: the session opened by `connect`.
    Session { session_id: Uuid, device_id: Uuid },
    /// To the camera: a viewer's offer (a new session when the id is new to it).
    Offer { session_id: Uuid, sdp: String },
    /// To the viewer: the camera's answer.
    Answer { session_id: Uuid, sdp: String },
    Candidate {
        session_id: Uuid,
        candidate: IceCandidate,
    },
    Bye {
        session_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
        /// What the error refers to: the session id or the message type.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
}

/// Stable error codes of `error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    CameraOffline,
    Forbidden,
    UnknownSession,
    BadMessage,
    RateLimited,
    TooLarge,
    Unauthorized,
    Busy,
    /// Cross-node routing is down (the relay lost NATS); retry later.
    Unavailable,
    /// The connection's token expired: refresh it with `auth {token}` (or reconnect).
    TokenExpired,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::CameraOffline => "camera_offline",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Busy => "busy",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::TokenExpired => "token_expired",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let id = Uuid::nil();
        let m: ClientMessage = serde_json::from_str(&format!(
            r#"{{"type":"candidate","session_id":"{id}","candidate":{{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ relay","sdpMid":"0","sdpMLineIndex":0}}}}"#
        ))
        .unwrap();
        assert!(matches!(m, ClientMessage::Candidate { .. }));
        let e = ServerMessage::Error {
            code: ErrorCode::CameraOffline,
            message: "m".into(),
            reference: Some("x".into()),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"error","code":"camera_offline","message":"m","ref":"x"}"#
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"nope"}"#).is_err());
    }
}
