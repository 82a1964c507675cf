//! JSON types of the control API that other programs (camera, tests, benches) read or write.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Current version of the QR payload format (field `v`).
pub const QR_PAYLOAD_VERSION: u8 = 1;

/// What the onboarding QR code carries, as compact JSON. Documented in README.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QrPayload {
    /// Format version, [`QR_PAYLOAD_VERSION`].
    pub v: u8,
    pub wifi_ssid: String,
    /// Empty for an open network.
    pub wifi_password: String,
    /// Public base URL of `vc-control` the camera activates against.
    pub server_url: String,
    /// One-time device token.
    pub device_token: String,
    pub camera_model: String,
    /// Token expiry, unix seconds.
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActivateRequest {
    pub device_token: String,
    pub device_uid: String,
    pub camera_model: String,
    #[serde(default)]
    pub local_ip: Option<String>,
    /// The secret of an earlier successful activation with this token, if the camera has
    /// one: a retry after the retry window must prove it is the same camera.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_secret: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActivateResponse {
    pub device_id: Uuid,
    pub device_secret: String,
    pub signaling_url: String,
    pub turn_uris: Vec<String>,
}

/// `POST /api/relay/ticket` body. A viewer sends a bearer JWT and `device_id`;
/// a camera sends `device_id` + `device_secret` and no JWT.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TicketRequest {
    pub device_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_secret: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TurnTicket {
    pub username: String,
    pub credential: String,
    /// Seconds the credentials stay valid.
    pub ttl: u64,
    pub uris: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignalingTicket {
    pub url: String,
    pub token: String,
    /// `quic://host:port` of the relay's QUIC listener (ALPN `vc-signal/1`), in camera tickets
    /// when vc-control's `relay.quic_url` is set: the camera's preferred link, `url` its fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TicketResponse {
    pub turn: TurnTicket,
    pub signaling: SignalingTicket,
}

/// Every API error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// `POST /api/internal/presence`: the relay tells the control plane which cameras came
/// online or went offline, and renews its node lease. The body is signed: header
/// [`PRESENCE_SIGNATURE_HEADER`] carries [`crate::ticket::TicketKey::sign_internal`] of the
/// exact body bytes, and `sent_at` must be within a minute of the control plane's clock (replay
/// window).
///
/// Only changes are reported (at most a bounded number of events per report; more follow in
/// further reports). Every report, an empty one included (the heartbeat), renews the lease of
/// `(node_id, epoch)` for `lease_ms`. A camera reported online counts as online only while the
/// lease of the node and epoch that reported it is alive, so a node that dies or restarts (new
/// epoch) takes its cameras offline without a write per camera.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceReport {
    /// Unix seconds when the relay sent the report.
    pub sent_at: u64,
    /// The reporting relay node (unique in the fleet).
    #[serde(default)]
    pub node_id: String,
    /// The node's incarnation: unix milliseconds when the process started. Grows on restart.
    #[serde(default)]
    pub epoch: u64,
    /// How long this report keeps the node's lease alive, milliseconds (the control plane
    /// clamps it).
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// The node is shutting down cleanly: its lease ends now.
    #[serde(default)]
    pub leaving: bool,
    /// The `cursor_ms` of the last [`PresenceAck`] this node got (0: none yet): the ack lists
    /// devices revoked since then.
    #[serde(default)]
    pub revoked_since_ms: u64,
    pub events: Vec<PresenceEvent>,
}

fn default_lease_ms() -> u64 {
    15_000
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEvent {
    pub device_id: Uuid,
    pub online: bool,
    /// Unix milliseconds when the relay saw the change.
    pub at_ms: u64,
    /// The camera's connection on the reporting node (increasing within a node's epoch). An
    /// `offline` applies only to that connection or an older one of the same node and epoch, so
    /// a camera that moved to another node stays online whatever order the reports arrive in.
    #[serde(default)]
    pub conn: u64,
}

/// The control plane's answer to a presence report: devices whose connections the relay
/// should close.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceAck {
    /// Reported online but unknown (deleted before the camera connected).
    pub unknown_devices: Vec<Uuid>,
    /// Access revoked since the report's `revoked_since_ms`.
    #[serde(default)]
    pub revocations: Vec<Revocation>,
    /// The control plane's clock (unix ms) when it answered: the next report's
    /// `revoked_since_ms`.
    #[serde(default)]
    pub cursor_ms: u64,
}

/// Access taken away: the relay closes the matching connections and refuses tickets issued
/// (`iat`) at or before `revoked_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// A user id (viewer tickets' subject). Alone: every ticket of that user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// A device. Alone: the camera (its tickets and connection); with `subject`: that user's
    /// access to it (a share revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<Uuid>,
    /// Unix milliseconds.
    pub revoked_at_ms: u64,
}

/// Header carrying the signature of an internal (relay -> control) request body.
pub const PRESENCE_SIGNATURE_HEADER: &str = "x-vc-signature";
