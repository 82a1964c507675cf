//! Signaling metrics (`vc_relay_signaling_*`), registered once so the message path only bumps
//! atomics instead of looking names up.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use shared::signaling::{ErrorCode, ServerMessage};

/// Handles of every signaling metric.
pub struct SignalingMetrics {
    pub cameras: Gauge,
    pub viewers: Gauge,
    pub sessions: Gauge,
    pub connections: Gauge,
    routed_offer: Counter,
    routed_answer: Counter,
    routed_candidate: Counter,
    routed_bye: Counter,
    errors: [Counter; 10],
    pub slow_consumers_dropped: Counter,
    pub write_timeouts: Counter,
    /// Messages dropped by the per-connection rate limit (before being parsed).
    pub messages_rate_limited: Counter,
    pub unauthorized_upgrades: Counter,
    /// Connections refused or cut before becoming WebSockets, by reason.
    pub rejected_per_ip: Counter,
    pub rejected_max_connections: Counter,
    pub rejected_handshake_timeout: Counter,
    /// A trusted balancer's connection without a valid PROXY v2 header.
    pub rejected_proxy_header: Counter,
    pub presence_reports: Counter,
    pub presence_failures: Counter,
    pub presence_events_dropped: Counter,
    pub presence_pending: Gauge,
    /// From a camera's change to vc-control accepting it (the oldest change of each report).
    pub presence_lag: Histogram,
}

const CODES: [ErrorCode; 10] = [
    ErrorCode::CameraOffline,
    ErrorCode::Forbidden,
    ErrorCode::UnknownSession,
    ErrorCode::BadMessage,
    ErrorCode::RateLimited,
    ErrorCode::TooLarge,
    ErrorCode::Unauthorized,
    ErrorCode::Busy,
    ErrorCode::Unavailable,
    ErrorCode::TokenExpired,
];

impl SignalingMetrics {
    /// Registers the metrics with the global recorder (no-ops when none is installed).
    pub fn new() -> Self {
        let routed =
            |t: &'static str| counter!("vc_relay_signaling_messages_routed_total", "type" => t);
        let rejected = |r: &'static str| counter!("vc_relay_signaling_connections_rejected_total", "reason" => r);
        Self {
            cameras: gauge!("vc_relay_signaling_connected_cameras"),
            viewers: gauge!("vc_relay_signaling_connected_viewers"),
            sessions: gauge!("vc_relay_signaling_sessions"),
            connections: gauge!("vc_relay_signaling_connections"),
            routed_offer: routed("offer"),
            routed_answer: routed("answer"),
            routed_candidate: routed("candidate"),
            routed_bye: routed("bye"),
            errors: CODES
                .map(|c| counter!("vc_relay_signaling_errors_total", "code" => c.as_str())),
            slow_consumers_dropped: counter!("vc_relay_signaling_slow_consumers_dropped_total"),
            write_timeouts: counter!("vc_relay_signaling_write_timeouts_total"),
            messages_rate_limited: counter!("vc_relay_signaling_messages_rate_limited_total"),
            unauthorized_upgrades: counter!("vc_relay_signaling_unauthorized_upgrades_total"),
            rejected_per_ip: rejected("per_ip"),
            rejected_max_connections: rejected("max_connections"),
            rejected_handshake_timeout: rejected("handshake_timeout"),
            rejected_proxy_header: rejected("proxy_header"),
            presence_reports: counter!("vc_relay_signaling_presence_reports_total"),
            presence_failures: counter!("vc_relay_signaling_presence_failures_total"),
            presence_events_dropped: counter!("vc_relay_signaling_presence_events_dropped_total"),
            presence_pending: gauge!("vc_relay_signaling_presence_pending_events"),
            presence_lag: histogram!("vc_relay_signaling_presence_lag_seconds"),
        }
    }

    /// Counts a message the relay is about to send: routed messages by type, errors by code.
    pub fn sent(&self, msg: &ServerMessage) {
        match msg {
            ServerMessage::Offer { .. } => self.routed_offer.increment(1),
            ServerMessage::Answer { .. } => self.routed_answer.increment(1),
            ServerMessage::Candidate { .. } => self.routed_candidate.increment(1),
            ServerMessage::Bye { .. } => self.routed_bye.increment(1),
            ServerMessage::Error { code, .. } => self.error(*code),
            ServerMessage::Welcome { .. } | ServerMessage::Session { .. } => {}
        }
    }

    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = CODES.iter().position(|c| *c == code) {
            self.errors[i].increment(1);
        }
    }
}

impl Default for SignalingMetrics {
    fn default() -> Self {
        Self::new()
    }
}
