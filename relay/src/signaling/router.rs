//! The sans-IO signaling router: who is connected, which sessions exist, where a message goes.
//!
//! Events go in (`connected`, `message`, `disconnected`, `close_device`, each with the current
//! time passed by the caller), [`Delivery`]s come out (send this [`ServerMessage`] to connection
//! X, close connection X with a reason, a camera's presence changed). No sockets, no clock, no
//! tokio: every rule is a deterministic unit test below.
//!
//! # Concurrency
//! One `Router` is shared (`Arc`) by every connection task; its methods take `&self`. State is
//! split so that the hot path takes no global lock:
//! * **Per-connection state** ([`ConnState`]: role, the devices its token names, the sessions a
//!   viewer opened) is *owned* by the connection's task and passed in as `&mut`: no lock at all.
//! * **`sessions`** (session id -> [`Route`]) is a sharded concurrent map (`DashMap`). Routing an
//!   `offer`/`answer`/`candidate` is one shard read-lock held for a 40-byte copy, so routing runs
//!   on all cores in parallel.
//! * **`devices`** (device id -> [`DeviceSlot`]: the camera's connection and its sessions) is a
//!   second `DashMap`; it is written only when sessions or cameras come and go.
//!
//! Lock order is always `devices` entry, then `sessions` entry, then `remote_viewers`; nothing
//! takes them the other way round, so the maps cannot deadlock. Session creation, removal and
//! camera replacement are done under the device's entry lock, which makes them atomic with
//! respect to each other for that device.
//!
//! # Several nodes (issue 9, `docs/cluster.md`)
//! A session's party is a [`Party`]: a connection on this node, or one on another node. A
//! router built with [`Router::clustered`] answers a `connect` for a camera it does not hold with
//! [`Delivery::Connect`] (the cluster driver asks the camera's node) and sends messages for a
//! remote party as [`Delivery::Forward`]. The local path is unchanged: a `Party::Local` compare
//! is one discriminant + integer compare and cloning it touches no reference count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use shared::signaling::{ClientMessage, ErrorCode, ServerMessage};
use shared::ticket::{Role, SignalingClaims, TicketKey};
use uuid::Uuid;

use super::revocations::Revocations;

/// Revocations are kept this long (seconds): longer than any ticket lives (vc-control's
/// `ticket_ttl_secs` defaults to 600), as long as vc-control keeps them.
const REVOCATION_KEEP_SECS: u64 = 3600;

/// A connection's id, unique for the life of the process (assigned by the driver).
pub type ConnId = u64;

/// `bye` reasons the relay itself sends.
pub mod bye_reason {
    /// The camera connected again; the viewer should `connect` again.
    pub const CAMERA_RECONNECTED: &str = "camera_reconnected";
    /// The camera's connection dropped.
    pub const CAMERA_OFFLINE: &str = "camera_offline";
    /// The viewer's connection dropped.
    pub const VIEWER_LEFT: &str = "viewer_left";
}

/// Why the relay closes a connection (the WebSocket close frame carries [`Self::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The same camera connected again; this older connection is superseded.
    Replaced,
    /// The control plane does not know this device (deleted).
    DeviceUnknown,
    /// The token expired and no fresh `auth` arrived in time.
    TokenExpired,
    /// The connection's outbound queue stayed full.
    SlowConsumer,
    /// A message exceeded the size limit.
    TooLarge,
    /// Nothing received for the idle timeout.
    Idle,
    /// No token within the authentication timeout, or a bad first-message token.
    Unauthorized,
    /// The relay is shutting down.
    Shutdown,
    /// vc-control revoked this connection's access (user disabled, share revoked, ...).
    Revoked,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Replaced => "replaced by a newer connection of the same camera",
            CloseReason::DeviceUnknown => "device unknown to the control plane",
            CloseReason::TokenExpired => "token expired",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::TooLarge => "message too large",
            CloseReason::Idle => "idle timeout",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::Shutdown => "relay shutting down",
            CloseReason::Revoked => "access revoked",
        }
    }

    /// WebSocket close code (RFC 6455 section 7.4, 4000-4999 for application codes).
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Replaced => 4001,
            CloseReason::DeviceUnknown => 4004,
            CloseReason::TokenExpired => 4002,
            CloseReason::SlowConsumer => 4008,
            CloseReason::TooLarge => 1009,
            CloseReason::Idle => 4000,
            CloseReason::Unauthorized => 4003,
            CloseReason::Shutdown => 1001,
            CloseReason::Revoked => 4005,
        }
    }
}

/// A relay node's name (`[cluster] node_id`), shared cheaply.
pub type NodeName = Arc<str>;

/// One side of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Party {
    /// A connection on this node.
    Local(ConnId),
    /// Connection `conn` on node `node` (its connection ids are its own, not ours).
    Remote { node: NodeName, conn: ConnId },
}

/// What the router asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Send `msg` to connection `to`.
    Send { to: ConnId, msg: ServerMessage },
    /// Send `msg` (offer/answer/candidate/bye of a session) to the session's party on `node`.
    Forward { node: NodeName, msg: ServerMessage },
    /// Clustered only: `viewer` (allowed to, limits checked) wants a session with `device`, whose
    /// camera is not on this node: find its node and ask it ([`Router::remote_connect`] there,
    /// [`Router::remote_opened`] here).
    Connect { viewer: ConnId, device: Uuid },
    /// Close connection `conn`.
    Close { conn: ConnId, reason: CloseReason },
    /// A camera came online or went offline at `at_ms` (unix milliseconds), on connection
    /// `conn` (which orders a device's events: see `shared::api::PresenceEvent::conn`).
    Presence {
        device_id: Uuid,
        online: bool,
        at_ms: u64,
        conn: ConnId,
    },
}

/// Router limits (from `SignalingConfig`).
#[derive(Debug, Clone, Copy)]
pub struct RouterLimits {
    /// Concurrent viewer sessions one camera serves.
    pub max_sessions_per_camera: usize,
    /// Concurrent sessions one viewer connection may hold open.
    pub max_sessions_per_viewer: usize,
}

impl Default for RouterLimits {
    fn default() -> Self {
        Self {
            max_sessions_per_camera: 8,
            max_sessions_per_viewer: 16,
        }
    }
}

/// State of one authenticated connection, owned by its task (never shared).
#[derive(Debug, Clone)]
pub struct ConnState {
    id: ConnId,
    role: Role,
    subject: String,
    /// Viewer: the devices it may reach. Camera: exactly its own device.
    devices: Vec<Uuid>,
    /// Viewer: sessions it opened. May hold ids the camera side already ended; pruned lazily.
    sessions: Vec<Uuid>,
    /// Token expiry, unix seconds.
    expires_at: u64,
    /// Token issue time, unix seconds (revocations refuse tickets issued before them).
    issued_at: u64,
}

impl ConnState {
    /// State for a connection authenticated with `claims` (already verified).
    pub fn new(id: ConnId, claims: SignalingClaims) -> Self {
        Self {
            id,
            role: claims.role,
            subject: claims.sub,
            devices: claims.devices,
            sessions: Vec::new(),
            expires_at: claims.exp,
            issued_at: claims.iat,
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The token subject (user id or device id).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// A camera's device id.
    pub fn device(&self) -> Option<Uuid> {
        match self.role {
            Role::Camera => self.devices.first().copied(),
            Role::Viewer => None,
        }
    }

    /// Unix seconds at which the current token expires.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

/// Where a session's messages go. At most one party is remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub device: Uuid,
    pub viewer: Party,
    pub camera: Party,
}

/// An online camera and the sessions it serves.
#[derive(Debug)]
struct DeviceSlot {
    camera: ConnId,
    /// `(session id, viewer)`; short (at most `max_sessions_per_camera`).
    sessions: Vec<(Uuid, Party)>,
}

/// The signaling router. See the module docs for the concurrency design.
pub struct Router {
    key: TicketKey,
    limits: RouterLimits,
    devices: DashMap<Uuid, DeviceSlot>,
    sessions: DashMap<Uuid, Route>,
    viewers: AtomicUsize,
    /// Clustered: this node's name. `None`: single node, no remote destinations ever.
    node: Option<NodeName>,
    /// Access vc-control revoked recently: older tickets are refused.
    revocations: Revocations,
    /// Clustered: a local viewer's sessions with cameras on other nodes (the driver opens them,
    /// so they cannot live in the viewer-owned [`ConnState`]).
    remote_viewers: DashMap<ConnId, Vec<Uuid>>,
}

/// A message for `party`: a local send or a forward to its node.
fn to_party(party: &Party, msg: ServerMessage) -> Delivery {
    match party {
        Party::Local(to) => Delivery::Send { to: *to, msg },
        Party::Remote { node, .. } => Delivery::Forward {
            node: node.clone(),
            msg,
        },
    }
}

/// The session a routed message belongs to.
fn session_of(msg: &ServerMessage) -> Option<Uuid> {
    match msg {
        ServerMessage::Offer { session_id, .. }
        | ServerMessage::Answer { session_id, .. }
        | ServerMessage::Candidate { session_id, .. }
        | ServerMessage::Bye { session_id, .. } => Some(*session_id),
        _ => None,
    }
}

fn error(to: ConnId, code: ErrorCode, message: &str, reference: Option<String>) -> Delivery {
    Delivery::Send {
        to,
        msg: ServerMessage::Error {
            code,
            message: message.to_owned(),
            reference,
        },
    }
}

#[cfg(test)]
fn bye(to: ConnId, session_id: Uuid, reason: Option<&str>) -> Delivery {
    Delivery::Send {
        to,
        msg: ServerMessage::Bye {
            session_id,
            reason: reason.map(str::to_owned),
        },
    }
}

impl Router {
    pub fn new(key: TicketKey, limits: RouterLimits) -> Self {
        Self {
            key,
            limits,
            devices: DashMap::new(),
            sessions: DashMap::new(),
            viewers: AtomicUsize::new(0),
            node: None,
            revocations: Revocations::new(REVOCATION_KEEP_SECS),
            remote_viewers: DashMap::new(),
        }
    }

    /// A router of node `node` in a cluster: cameras it does not hold are looked up elsewhere.
    pub fn clustered(key: TicketKey, limits: RouterLimits, node: NodeName) -> Self {
        Self {
            node: Some(node),
            ..Self::new(key, limits)
        }
    }

    /// This node's name when clustered.
    pub fn node(&self) -> Option<&NodeName> {
        self.node.as_ref()
    }

    /// Verifies a signaling token at `now` (unix seconds): signature, expiry, and that it was
    /// not issued before a revocation of its user or camera.
    pub fn authenticate(&self, token: &str, now: u64) -> Result<SignalingClaims, shared::Error> {
        let claims = self.key.verify_signaling(token, now)?;
        if self.revocations.refuses(&claims) {
            return Err(shared::Error::Revoked);
        }
        Ok(claims)
    }

    /// Revocations vc-control reported (see [`Revocations`]).
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Connected cameras.
    pub fn cameras(&self) -> usize {
        self.devices.len()
    }

    /// Connected viewers.
    pub fn viewers(&self) -> usize {
        self.viewers.load(Ordering::Relaxed)
    }

    /// Open sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Devices whose camera is connected now.
    pub fn online_devices(&self) -> Vec<Uuid> {
        self.devices.iter().map(|e| *e.key()).collect()
    }

    /// The route of a session, if it exists.
    pub fn route(&self, session_id: Uuid) -> Option<Route> {
        self.sessions.get(&session_id).map(|r| r.clone())
    }

    /// An authenticated connection joined. A camera replaces any older connection of the same
    /// device: that one is closed and its viewers get `bye` with reason `camera_reconnected`.
    pub fn connected(&self, now_ms: u64, conn: &ConnState, out: &mut Vec<Delivery>) {
        match conn.role {
            Role::Viewer => {
                self.viewers.fetch_add(1, Ordering::Relaxed);
            }
            Role::Camera => {
                let Some(device) = conn.device() else {
                    // Camera tokens name exactly one device (checked by `verify_signaling`).
                    return;
                };
                let fresh = DeviceSlot {
                    camera: conn.id,
                    sessions: Vec::new(),
                };
                if let Some(old) = self.devices.insert(device, fresh) {
                    for (session_id, viewer) in old.sessions {
                        self.sessions.remove(&session_id);
                        out.push(bye_to(&viewer, session_id, bye_reason::CAMERA_RECONNECTED));
                    }
                    out.push(Delivery::Close {
                        conn: old.camera,
                        reason: CloseReason::Replaced,
                    });
                }
                if self.node.is_some() {
                    self.end_stale_remote_sessions(device, out);
                }
                out.push(Delivery::Presence {
                    device_id: device,
                    online: true,
                    at_ms: now_ms,
                    conn: conn.id,
                });
            }
        }
    }

    /// A connection left (closed by either side, or dropped).
    pub fn disconnected(&self, now_ms: u64, conn: &ConnState, out: &mut Vec<Delivery>) {
        match conn.role {
            Role::Viewer => {
                self.viewers.fetch_sub(1, Ordering::Relaxed);
                let me = Party::Local(conn.id);
                for &session_id in &conn.sessions {
                    if let Some(route) = self.end_session(session_id, &me) {
                        out.push(bye_to(&route.camera, session_id, bye_reason::VIEWER_LEFT));
                    }
                }
                if self.node.is_some() {
                    self.drop_remote_viewer(conn.id, out);
                }
            }
            Role::Camera => {
                let Some(device) = conn.device() else {
                    return;
                };
                // Only if this connection is still the device's camera: a replaced connection
                // already handed its sessions over and must not mark the device offline.
                if let Some((_, slot)) = self.devices.remove_if(&device, |_, s| s.camera == conn.id)
                {
                    for (session_id, viewer) in slot.sessions {
                        self.sessions.remove(&session_id);
                        out.push(bye_to(&viewer, session_id, bye_reason::CAMERA_OFFLINE));
                    }
                    out.push(Delivery::Presence {
                        device_id: device,
                        online: false,
                        at_ms: now_ms,
                        conn: conn.id,
                    });
                }
            }
        }
    }

    /// The control plane reports `device` unknown (deleted): close its camera's connection.
    /// Cleanup follows when that connection's task reports `disconnected`.
    pub fn close_device(&self, device: Uuid, out: &mut Vec<Delivery>) {
        if let Some(slot) = self.devices.get(&device) {
            out.push(Delivery::Close {
                conn: slot.camera,
                reason: CloseReason::DeviceUnknown,
            });
        }
    }

    /// A message from an authenticated connection. `now_ms` is unix milliseconds.
    pub fn message(
        &self,
        now_ms: u64,
        conn: &mut ConnState,
        msg: ClientMessage,
        out: &mut Vec<Delivery>,
    ) {
        let me = conn.id;
        let local = Party::Local(me);
        match msg {
            ClientMessage::Auth { token } => self.refresh(now_ms / 1000, conn, &token, out),
            ClientMessage::Connect { device_id } => self.connect(conn, device_id, out),
            ClientMessage::Offer { session_id, sdp } => {
                if conn.role != Role::Viewer {
                    out.push(error(
                        me,
                        ErrorCode::Forbidden,
                        "only viewers send offers",
                        Some(session_id.to_string()),
                    ));
                    return;
                }
                match self.route(session_id) {
                    Some(r) if r.viewer == local => out.push(to_party(
                        &r.camera,
                        ServerMessage::Offer { session_id, sdp },
                    )),
                    _ => out.push(unknown_session(me, session_id)),
                }
            }
            ClientMessage::Answer { session_id, sdp } => {
                if conn.role != Role::Camera {
                    out.push(error(
                        me,
                        ErrorCode::Forbidden,
                        "only cameras send answers",
                        Some(session_id.to_string()),
                    ));
                    return;
                }
                match self.route(session_id) {
                    Some(r) if r.camera == local => out.push(to_party(
                        &r.viewer,
                        ServerMessage::Answer { session_id, sdp },
                    )),
                    _ => out.push(unknown_session(me, session_id)),
                }
            }
            ClientMessage::Candidate {
                session_id,
                candidate,
            } => match self.route(session_id).and_then(|r| peer_of(r, conn)) {
                Some(to) => out.push(to_party(
                    &to,
                    ServerMessage::Candidate {
                        session_id,
                        candidate,
                    },
                )),
                None => out.push(unknown_session(me, session_id)),
            },
            ClientMessage::Bye { session_id, reason } => {
                let party = self
                    .route(session_id)
                    .is_some_and(|r| peer_of(r, conn).is_some());
                let ended = if party {
                    self.end_session(session_id, &local)
                } else {
                    None
                };
                match ended.and_then(|r| peer_of(r, conn)) {
                    Some(to) => {
                        conn.sessions.retain(|s| *s != session_id);
                        out.push(to_party(&to, ServerMessage::Bye { session_id, reason }));
                    }
                    None => out.push(unknown_session(me, session_id)),
                }
            }
        }
    }

    /// `connect {device_id}` from a viewer.
    fn connect(&self, conn: &mut ConnState, device: Uuid, out: &mut Vec<Delivery>) {
        let me = conn.id;
        let reference = Some(device.to_string());
        if conn.role != Role::Viewer {
            out.push(error(
                me,
                ErrorCode::Forbidden,
                "only viewers open sessions",
                reference,
            ));
            return;
        }
        if !conn.devices.contains(&device) {
            out.push(error(
                me,
                ErrorCode::Forbidden,
                "the token does not name this device",
                reference,
            ));
            return;
        }
        if self
            .revocations
            .refuses_access(&conn.subject, device, conn.issued_at)
        {
            out.push(error(
                me,
                ErrorCode::Forbidden,
                "access to this device was revoked",
                reference,
            ));
            return;
        }
        // Drop ids of sessions the camera side has ended since.
        conn.sessions.retain(|s| {
            self.sessions
                .get(s)
                .is_some_and(|r| r.viewer == Party::Local(me))
        });
        let remote = match self.node {
            Some(_) => self.remote_viewers.get(&me).map_or(0, |v| v.len()),
            None => 0,
        };
        if conn.sessions.len() + remote >= self.limits.max_sessions_per_viewer {
            out.push(error(
                me,
                ErrorCode::Busy,
                "too many open sessions on this connection",
                reference,
            ));
            return;
        }
        let Some(mut slot) = self.devices.get_mut(&device) else {
            if self.node.is_some() {
                out.push(Delivery::Connect { viewer: me, device });
                return;
            }
            out.push(error(
                me,
                ErrorCode::CameraOffline,
                "the camera is not connected",
                reference,
            ));
            return;
        };
        if slot.sessions.len() >= self.limits.max_sessions_per_camera {
            out.push(error(
                me,
                ErrorCode::Busy,
                "the camera serves its maximum number of viewers",
                reference,
            ));
            return;
        }
        let session_id = Uuid::new_v4();
        slot.sessions.push((session_id, Party::Local(me)));
        // Lock order devices -> sessions (see module docs).
        self.sessions.insert(
            session_id,
            Route {
                device,
                viewer: Party::Local(me),
                camera: Party::Local(slot.camera),
            },
        );
        drop(slot);
        conn.sessions.push(session_id);
        out.push(Delivery::Send {
            to: me,
            msg: ServerMessage::Session {
                session_id,
                device_id: device,
            },
        });
    }

    /// Removes `session_id` if `party` is its viewer or camera; returns its route.
    fn end_session(&self, session_id: Uuid, party: &Party) -> Option<Route> {
        let route = self.route(session_id)?;
        if route.viewer != *party && route.camera != *party {
            return None;
        }
        // Lock order devices -> sessions -> remote_viewers (see module docs).
        let mut slot = match route.camera {
            Party::Local(_) => self.devices.get_mut(&route.device),
            Party::Remote { .. } => None,
        };
        let removed = self
            .sessions
            .remove_if(&session_id, |_, r| *r == route)
            .map(|(_, r)| r);
        if let (Some(slot), Some(_)) = (slot.as_mut(), removed.as_ref()) {
            slot.sessions.retain(|(s, _)| *s != session_id);
        }
        if let (Some(r), Party::Remote { .. }) = (removed.as_ref(), &route.camera) {
            if let Party::Local(viewer) = r.viewer {
                if let Some(mut list) = self.remote_viewers.get_mut(&viewer) {
                    list.retain(|s| *s != session_id);
                }
            }
        }
        removed
    }

    /// Clustered, on the camera's node: node `from`'s viewer connection `viewer` asks for a
    /// session with `device`. The viewer's node already checked its token and its limits (nodes
    /// trust each other; NATS access is the perimeter). Returns the session id and the camera's
    /// connection id, or the error for the viewer.
    pub fn remote_connect(
        &self,
        from: NodeName,
        viewer: ConnId,
        device: Uuid,
    ) -> Result<(Uuid, ConnId), (ErrorCode, &'static str)> {
        let Some(mut slot) = self.devices.get_mut(&device) else {
            return Err((ErrorCode::CameraOffline, "the camera is not connected"));
        };
        if slot.sessions.len() >= self.limits.max_sessions_per_camera {
            return Err((
                ErrorCode::Busy,
                "the camera serves its maximum number of viewers",
            ));
        }
        let session_id = Uuid::new_v4();
        let party = Party::Remote {
            node: from,
            conn: viewer,
        };
        slot.sessions.push((session_id, party.clone()));
        let camera = slot.camera;
        self.sessions.insert(
            session_id,
            Route {
                device,
                viewer: party,
                camera: Party::Local(camera),
            },
        );
        Ok((session_id, camera))
    }

    /// Clustered, on the viewer's node: `node` opened `session_id` for local `viewer` with its
    /// camera connection `camera`. Records the route and tells the viewer.
    pub fn remote_opened(
        &self,
        viewer: ConnId,
        device: Uuid,
        session_id: Uuid,
        node: NodeName,
        camera: ConnId,
        out: &mut Vec<Delivery>,
    ) {
        self.sessions.insert(
            session_id,
            Route {
                device,
                viewer: Party::Local(viewer),
                camera: Party::Remote { node, conn: camera },
            },
        );
        self.remote_viewers
            .entry(viewer)
            .or_default()
            .push(session_id);
        out.push(Delivery::Send {
            to: viewer,
            msg: ServerMessage::Session {
                session_id,
                device_id: device,
            },
        });
    }

    /// Clustered: `device`'s camera is now here, so sessions local viewers hold with it on
    /// another node are dead (that node died or the camera moved; nobody else tells us). Their
    /// viewers get `bye` `camera_reconnected` and connect again. One scan of the sessions per
    /// camera connect, only when clustered.
    fn end_stale_remote_sessions(&self, device: Uuid, out: &mut Vec<Delivery>) {
        let stale: Vec<(Uuid, Party)> = self
            .sessions
            .iter()
            .filter(|r| r.device == device && matches!(r.camera, Party::Remote { .. }))
            .map(|r| (*r.key(), r.viewer.clone()))
            .collect();
        for (session_id, viewer) in stale {
            self.sessions.remove(&session_id);
            if let Party::Local(v) = viewer {
                if let Some(mut list) = self.remote_viewers.get_mut(&v) {
                    list.retain(|s| *s != session_id);
                }
            }
            out.push(bye_to(&viewer, session_id, bye_reason::CAMERA_RECONNECTED));
        }
    }

    /// Clustered: local `viewer` is gone; ends its sessions with cameras on other nodes.
    pub fn drop_remote_viewer(&self, viewer: ConnId, out: &mut Vec<Delivery>) {
        let me = Party::Local(viewer);
        if let Some((_, remote)) = self.remote_viewers.remove(&viewer) {
            for session_id in remote {
                if let Some(route) = self.end_session(session_id, &me) {
                    out.push(bye_to(&route.camera, session_id, bye_reason::VIEWER_LEFT));
                }
            }
        }
    }

    /// Clustered: `msg` (offer/answer/candidate/bye) arrived from node `from`. Delivered to the
    /// local party only if the session's other party is on `from` and the direction fits (an
    /// offer goes to a camera, an answer to a viewer); anything else is dropped and `false`
    /// returned. A `bye` ends the session here too.
    pub fn remote_signal(&self, from: &str, msg: ServerMessage, out: &mut Vec<Delivery>) -> bool {
        let Some(session_id) = session_of(&msg) else {
            return false;
        };
        let Some(route) = self.route(session_id) else {
            return false;
        };
        let (remote, local) = match (&route.viewer, &route.camera) {
            (r @ Party::Remote { node, .. }, Party::Local(c)) if &**node == from => (r, *c),
            (Party::Local(v), r @ Party::Remote { node, .. }) if &**node == from => (r, *v),
            _ => return false,
        };
        let to_camera = matches!(route.camera, Party::Local(_));
        match &msg {
            ServerMessage::Offer { .. } if !to_camera => return false,
            ServerMessage::Answer { .. } if to_camera => return false,
            ServerMessage::Bye { .. } => {
                let remote = remote.clone();
                if self.end_session(session_id, &remote).is_none() {
                    return false;
                }
            }
            _ => {}
        }
        out.push(Delivery::Send { to: local, msg });
        true
    }

    /// `auth {token}` on an authenticated connection: a token refresh. It must be for the same
    /// role and subject (a camera: the same device); the connection then lives until the new
    /// expiry. A viewer's device list is replaced by the new token's.
    fn refresh(&self, now: u64, conn: &mut ConnState, token: &str, out: &mut Vec<Delivery>) {
        let me = conn.id;
        let claims = match self.authenticate(token, now) {
            Ok(c) => c,
            Err(e) => {
                out.push(error(
                    me,
                    ErrorCode::Unauthorized,
                    &format!("token refresh rejected: {e}"),
                    Some("auth".into()),
                ));
                return;
            }
        };
        if claims.role != conn.role
            || claims.sub != conn.subject
            || (conn.role == Role::Camera && claims.devices != conn.devices)
        {
            out.push(error(
                me,
                ErrorCode::Forbidden,
                "a refreshed token must be for the same role, subject and camera",
                Some("auth".into()),
            ));
            return;
        }
        conn.expires_at = claims.exp;
        conn.issued_at = claims.iat;
        if conn.role == Role::Viewer {
            conn.devices = claims.devices;
        }
    }
}

fn bye_to(party: &Party, session_id: Uuid, reason: &str) -> Delivery {
    to_party(
        party,
        ServerMessage::Bye {
            session_id,
            reason: Some(reason.to_owned()),
        },
    )
}

fn unknown_session(to: ConnId, session_id: Uuid) -> Delivery {
    error(
        to,
        ErrorCode::UnknownSession,
        "no such session on this connection",
        Some(session_id.to_string()),
    )
}

/// The other party of a session, if `conn` is one of its parties.
fn peer_of(route: Route, conn: &ConnState) -> Option<Party> {
    let me = Party::Local(conn.id);
    match conn.role {
        Role::Viewer if route.viewer == me => Some(route.camera),
        Role::Camera if route.camera == me => Some(route.viewer),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::signaling::IceCandidate;
    use shared::Secret;

    const NOW: u64 = 1_700_000_000;

    struct Fixture {
        key: TicketKey,
        router: Router,
        next: ConnId,
    }

    impl Fixture {
        fn new() -> Self {
            Self::with_limits(RouterLimits::default())
        }

        fn with_limits(limits: RouterLimits) -> Self {
            let key = TicketKey::new(&Secret::new("router-test"));
            Self {
                router: Router::new(key.clone(), limits),
                key,
                next: 1,
            }
        }

        fn claims(&self, sub: &str, role: Role, devices: Vec<Uuid>) -> SignalingClaims {
            self.key.mint_signaling(sub, role, devices, NOW, 600).1
        }

        fn join(
            &mut self,
            sub: &str,
            role: Role,
            devices: Vec<Uuid>,
        ) -> (ConnState, Vec<Delivery>) {
            let conn = ConnState::new(self.next, self.claims(sub, role, devices));
            self.next += 1;
            let mut out = Vec::new();
            self.router.connected(NOW * 1000, &conn, &mut out);
            (conn, out)
        }

        fn camera(&mut self, device: Uuid) -> ConnState {
            self.join(&device.to_string(), Role::Camera, vec![device]).0
        }

        fn viewer(&mut self, devices: Vec<Uuid>) -> ConnState {
            self.join("user-1", Role::Viewer, devices).0
        }

        fn send(&self, conn: &mut ConnState, msg: ClientMessage) -> Vec<Delivery> {
            let mut out = Vec::new();
            self.router.message(NOW * 1000, conn, msg, &mut out);
            out
        }

        fn open(&self, viewer: &mut ConnState, device: Uuid) -> Uuid {
            let out = self.send(viewer, ClientMessage::Connect { device_id: device });
            match out.as_slice() {
                [Delivery::Send {
                    to,
                    msg:
                        ServerMessage::Session {
                            session_id,
                            device_id,
                        },
                }] if *to == viewer.id && *device_id == device => *session_id,
                other => panic!("expected a session, got {other:?}"),
            }
        }
    }

    fn error_code(out: &[Delivery], to: ConnId) -> ErrorCode {
        match out {
            [Delivery::Send {
                to: t,
                msg: ServerMessage::Error { code, .. },
            }] if *t == to => *code,
            other => panic!("expected one error to {to}, got {other:?}"),
        }
    }

    fn cand() -> IceCandidate {
        IceCandidate {
            candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
            username_fragment: None,
        }
    }

    #[test]
    fn camera_connect_reports_presence() {
        let mut f = Fixture::new();
        let dev = Uuid::new_v4();
        let (cam, out) = f.join(&dev.to_string(), Role::Camera, vec![dev]);
        assert_eq!(
            out,
            vec![Delivery::Presence {
                device_id: dev,
                online: true,
                at_ms: NOW * 1000,
                conn: cam.id,
            }]
        );
        assert_eq!(f.router.cameras(), 1);
        assert_eq!(f.router.online_devices(), vec![dev]);
        let mut out = Vec::new();
        f.router.disconnected(NOW * 1000 + 5, &cam, &mut out);
        assert_eq!(
            out,
            vec![Delivery::Presence {
                device_id: dev,
                online: false,
                at_ms: NOW * 1000 + 5,
                conn: cam.id,
            }]
        );
        assert_eq!(f.router.cameras(), 0);
    }

    #[test]
    fn offer_answer_candidates_routed_to_the_right_peer_only() {
        let mut f = Fixture::new();
        let dev = Uuid::new_v4();
        let mut cam = f.camera(dev);
        let mut v1 = f.viewer(vec![dev]);
        let mut v2 = f.viewer(vec![dev]);
        let s1 = f.open(&mut v1, dev);
        let s2 = f.open(&mut v2, dev);
        assert_ne!(s1, s2);
        assert_eq!(f.router.sessions(), 2);

        let out = f.send(
            &mut v1,
            ClientMessage::Offer {
                session_id: s1,
                sdp: "o1".into(),
            },
        );
        assert_eq!(
            out,
            vec![Delivery::Send {
                to: cam.id,
                msg: ServerMessage::Offer {
                    session_id: s1,
                    sdp: "o1".into()
                }
            }]
        );
        let out = f.send(
            &mut cam,
            ClientMessage::Answer {
                session_id: s2,
                sdp: "a2".into(),
            },
        );
        assert_eq!(
            out,
            vec![Delivery::Send {
                to: v2.id,
                msg: ServerMessage::Answer {
                    session_id: s2,
                    sdp: "a2".into()
                }
            }]
        );
        let out = f.send(
            &mut cam,
            ClientMessage::Candidate {
                session_id: s1,
                candidate: cand(),
            },
        );
        assert_eq!(
            out,
            vec![Delivery::Send {
                to: v1.id,
                msg: ServerMessage::Candidate {
                    session_id: s1,
                    candidate: cand()
                }
            }]
        );
        let out = f.send(
            &mut v2,
            ClientMessage::Candidate {
                session_id: s2,
                candidate: cand(),
            },
        );
        assert!(matches!(out.as_slice(), [Delivery::Send { to, .. }] if *to == cam.id));
    }

    #[test]
    fn a_viewer_cannot_use_another_viewers_session() {
        let mut f = Fixture::new();
        let dev = Uuid::new_v4();
        let _cam = f.camera(dev);
        let mut v1 = f.viewer(vec![dev]);
        let mut v2 = f.viewer(vec![dev]);
        let s1 = f.open(&mut v1, dev);
        for msg in [
            ClientMessage::Offer {
                session_id: s1,
                sdp: "x".into(),
            },
            ClientMessage::Candidate {
                session_id: s1,
                candidate: cand(),
            },
            ClientMessage::Bye {
                session_id: s1,
                reason: None,
            },
        ] {
            let out = f.send(&mut v2, msg);
            assert_eq!(error_code(&out, v2.id), ErrorCode::UnknownSession);
        }
        assert!(
            f.router.route(s1).is_some(),
            "v2's bye must not end v1's session"
        );
    }

    #[test]
    fn a_camera_speaks_only_for_its_sessions() {
        let mut f = Fixture::new();
        let dev_a = Uuid::new_v4();
        let dev_b = Uuid::new_v4();
        let _cam_a = f.camera(dev_a);
        let mut cam_b = f.camera(dev_b);
        let mut v = f.viewer(vec![dev_a, dev_b]);
        let s_a = f.open(&mut v, dev_a);
        let out = f.send(
            &mut cam_b,
            ClientMessage::Answer {
                session_id: s_a,
                sdp: "x".into(),
            },
        );
        assert_eq!(error_code(&out, cam_b.id), ErrorCode::UnknownSession);
        let out = f.send(
            &mut cam_b,
            ClientMessage::Candidate {
                session_id: s_a,
                candidate: cand(),
            },
        );
        assert_eq!(error_code(&out, cam_b.id), ErrorCode::UnknownSession);
    }

    #[test]
    fn role_rules() {
        let mut f = Fixture::new();
        let dev = Uuid::new_v4();
        let mut cam = f.camera(dev);
        let mut v = f.viewer(vec![dev]);
        let s = f.open(&mut v, dev);
        // A camera cannot open sessions or send offers; a viewer cannot answer.
        let out = f.send(&mut cam, ClientMessage::Connect { device_id: dev });
        assert_eq!(error_code(&out, cam.id), ErrorCode::Forbidden);
        let out = f.send(
            &mut cam,
            ClientMessage::Offer {
                session_id: s,
                sdp: "x".into(),
            },
        );
        assert_eq!(error_code(&out, cam.id), ErrorCode::Forbidden);
        let out = f.send(
            &mut v,
            ClientMessage::Answer {
                session_id: s,
                sdp: "x".into(),
            },
        );
        assert_eq!(error_code(&out, v.id), ErrorCode::Forbidden);
    }

    #[test]
    fn viewer_reaches_only_devices_its_token_names() {
        let mut f = Fixture::new();
        let mine = Uuid::new_v4();
        let theirs = Uuid::new_v4();
        let _cam = f.camera(theirs);
        let mut v = f.viewer(vec![mine]);
        let out = f.send(&mut v, ClientMessage::Connect { device_id: theirs });
        assert_eq!(error_code(&out, v.id), ErrorCode::Forbidden);
        assert_eq!(f.router.sessions(), 0);
    }

    #[test]
    fn camera_offline() {
        let mut f = Fixture::new();
        let dev = Uuid::new_v4();
        let mut v = f.viewer(vec![dev]);
        let out = f.send(&mut v, ClientMessage::Connect { device_id: dev });
        assert_eq!(error_code(&out, v.id), ErrorCode::CameraOffline);
    }

    #[test]
    fn unknown_session() {
        let mut f = Fixture::new();
        let mut v = f.viewer(vec![]);
        let out = f.send(
            &mut v,
            ClientMessage::Offer {
                session_id: Uuid::new_v4(),
                sdp: "x".into(),
            },
        );
        assert_eq!(error_code(&out, v.id), ErrorCode::UnknownSession);
    }

    #[test]
    fn per_camera_session_limit() {
        let mut f = Fixture::with_limits(RouterLimits {
            max_sessions_per_camera: 2,
            max_sessions_per_viewer: 16,
        });
        let dev = Uuid::new_v4();
        let _cam = f.camera(dev);
        let mut v1 = f.viewer(vec![dev]);
        let mut v2 = f.viewer(vec![dev]);
        let s1 = f.open(&mut v1, dev);
        f.open(&mut v2, dev);
        let out = f.send(&mut v1, ClientMessage::Connect { device_id: dev });
        assert_eq!(error_code(&out, v1.id), ErrorCode::Busy);
        // Ending a session frees a place.
        f.send(
            &mut v1,
            ClientMessage::Bye {
                session_id: s1,
                reason: None,
            },
        );
        f.open(&mut v1, dev);
    }

    #[test]
    fn default_limit_is_eight_per_camera() {
        let mut f = Fixture::new();
        let dev = Uuid::new_v4();
        let _cam = f.camera(dev);
        let mut viewers: Vec<_> = (0..9).map(|_| f.viewer(vec![dev])).collect();
        for v in viewers.iter_mut().take(8) {
            f.open(v, dev);
        }
        let v9 = &mut viewers[8];
        let id = v9.id;
        let out = f.send(v9, ClientMessage::Connect { device_id: dev });
        assert_eq!(error_code(&out, id), ErrorCode::Busy);
    }

    #[test]
    fn per_viewer_session_limit_prunes_sessions_the_camera_ended() {
        let mut f = Fixture::with_limits(RouterLimits {
            max_sessions_per_camera: 8,
            max_sessions_per_viewer: 1,
        });
        let dev = Uuid::new_v4();
        let mut cam = f.camera(dev);
        let mut v = f.viewer(vec![dev]);
        let s = f.open(&mut v, dev);
        let out = f.send(&mut v, ClientMessage::Connect { device_id: dev });
        assert_eq!(error_code(&out, v.id), ErrorCode::Busy);
        let out = f.send(
            &mut cam,
            ClientMessage::Bye {
                session_id: s,
                reason: Some("done".into()),
            },
        );
        assert_eq!(out, vec![bye(v.id, s, Some("done"))]);
        f.open(&mut v, dev);
    }

    #[test]
    fn bye_ends_the_session_both_ways() {
        let mut f = Fixture::new();
        let dev = Uuid::new_v4();
        let mut cam = f.camera(dev);
        let mut v = f.viewer(vec![dev]);
        let s = f.open(&mut v, dev);
        let out = f.send(
            &mut v,
            ClientMessage::Bye {
                session_id: s,
                reason: None,
            },
        );
        assert_eq!(out, vec![bye(cam.id, s, None)]);
        assert_eq!(f.router.sessions(), 0);
        let out = f.send(
            &mut cam,
            ClientMessage::Candidate {
                session_id: s,
                candidate: cand(),
            },
        );
        assert_eq!(error_code(&out, cam.id), ErrorCode::UnknownSession);
    }

    #[test]
    fn camera_reconnect_replaces_old_connection_and_byes_viewers() {
        let mut f = Fixture::new();
        let dev = Uuid::new_v4();
        let old = f.camera(dev);
        let mut v1 = f.viewer(vec![dev]);
        let mut v2 = f.viewer(vec![dev]);
        let s1 = f.open(&mut v1, dev);
        let s2 = f.open(&mut v2, dev);
        let (new, out) = f.join(&dev.to_string(), Role::Camera, vec![dev]);
        assert!(out.contains(&bye(v1.id, s1, Some(bye_reason::CAMERA_RECONNECTED))));
        assert!(out.contains(&bye(v2.id, s2, Some(bye_reason::CAMERA_RECONNECTED))));
        assert!(out.contains(&Delivery::Close {
            conn: old.id,
            reason: CloseReason::Replaced
        }));
        assert!(out.contains(&Delivery::Presence {
            device_id: dev,
            online: true,
            at_ms: NOW * 1000,
            conn: new.id,
        }));
        assert_eq!(f.router.sessions(), 0);
        assert_eq!(f.router.cameras(), 1);
        // The old connection's later disconnect neither marks the device offline nor touches
        // the new connection's sessions.
        let s3 = f.open(&mut v1, dev);
        let mut out = Vec::new();
        f.router.disconnected(NOW * 1000, &old, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(
            f.router.route(s3).map(|r| r.camera),
            Some(Party::Local(new.id))
        );
        assert_eq!(f.router.cameras(), 1);
    }

    #[test]
    fn camera_disconnect_byes_its_viewers() {
        let mut f = Fixture::new();
        let dev = Uuid::new_v4();
        let cam = f.camera(dev);
        let mut v = f.viewer(vec![dev]);
        let s = f.open(&mut v, dev);
        let mut out = Vec::new();
        f.router.disconnected(NOW * 1000, &cam, &mut out);
        assert!(out.contains(&bye(v.id, s, Some(bye_reason::CAMERA_OFFLINE))));
        assert_eq!(f.router.sessions(), 0);
        let out = f.send(&mut v, ClientMessage::Connect { device_id: dev });
        assert_eq!(error_code(&out, v.id), ErrorCode::CameraOffline);
    }

    #[test]
    fn viewer_disconnect_byes_the_camera() {
        let mut f = Fixture::new();
        let dev = Uuid::new_v4();
        let cam = f.camera(dev);
        let mut v = f.viewer(vec![dev]);
        let s = f.open(&mut v, dev);
        assert_eq!(f.router.viewers(), 1);
        let mut out = Vec::new();
        f.router.disconnected(NOW * 1000, &v, &mut out);
        assert_eq!(out, vec![bye(cam.id, s, Some(bye_reason::VIEWER_LEFT))]);
        assert_eq!(f.router.sessions(), 0);
        assert_eq!(f.router.viewers(), 0);
    }

    #[test]
    fn close_device_closes_its_camera() {
        let mut f = Fixture::new();
        let dev = Uuid::new_v4();
        let cam = f.camera(dev);
        let mut out = Vec::new();
        f.router.close_device(dev, &mut out);
        f.router.close_device(Uuid::new_v4(), &mut out);
        assert_eq!(
            out,
            vec![Delivery::Close {
                conn: cam.id,
                reason: CloseReason::DeviceUnknown
            }]
        );
    }

    #[test]
    fn token_refresh() {
        let mut f = Fixture::new();
        let dev = Uuid::new_v4();
        let mut cam = f.camera(dev);
        let old_exp = cam.expires_at();
        let (fresh, _) =
            f.key
                .mint_signaling(&dev.to_string(), Role::Camera, vec![dev], NOW + 100, 600);
        let out = f.send(&mut cam, ClientMessage::Auth { token: fresh });
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(cam.expires_at(), old_exp + 100);
        // Another device's token cannot take over this connection.
        let other = Uuid::new_v4();
        let (wrong, _) =
            f.key
                .mint_signaling(&other.to_string(), Role::Camera, vec![other], NOW, 900);
        let out = f.send(&mut cam, ClientMessage::Auth { token: wrong });
        assert_eq!(error_code(&out, cam.id), ErrorCode::Forbidden);
        assert_eq!(cam.expires_at(), old_exp + 100);
        // Garbage and expired tokens are refused.
        let out = f.send(&mut cam, ClientMessage::Auth { token: "x".into() });
        assert_eq!(error_code(&out, cam.id), ErrorCode::Unauthorized);
        let (expired, _) =
            f.key
                .mint_signaling(&dev.to_string(), Role::Camera, vec![dev], NOW - 1000, 10);
        let out = f.send(&mut cam, ClientMessage::Auth { token: expired });
        assert_eq!(error_code(&out, cam.id), ErrorCode::Unauthorized);
    }

    #[test]
    fn viewer_refresh_replaces_device_list() {
        let mut f = Fixture::new();
        let dev = Uuid::new_v4();
        let _cam = f.camera(dev);
        let mut v = f.viewer(vec![]);
        let out = f.send(&mut v, ClientMessage::Connect { device_id: dev });
        assert_eq!(error_code(&out, v.id), ErrorCode::Forbidden);
        let (token, _) = f
            .key
            .mint_signaling("user-1", Role::Viewer, vec![dev], NOW, 600);
        assert!(f.send(&mut v, ClientMessage::Auth { token }).is_empty());
        f.open(&mut v, dev);
        // Another user's token is refused.
        let (token, _) = f
            .key
            .mint_signaling("user-2", Role::Viewer, vec![dev], NOW, 600);
        let out = f.send(&mut v, ClientMessage::Auth { token });
        assert_eq!(error_code(&out, v.id), ErrorCode::Forbidden);
    }

    #[test]
    fn concurrent_sessions_from_many_threads_stay_consistent() {
        let mut f = Fixture::with_limits(RouterLimits {
            max_sessions_per_camera: 8,
            max_sessions_per_viewer: 1000,
        });
        let devices: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        for d in &devices {
            f.camera(*d);
        }
        let viewers: Vec<ConnState> = (0..8).map(|_| f.viewer(devices.clone())).collect();
        let router = &f.router;
        std::thread::scope(|s| {
            for mut v in viewers {
                let devices = devices.clone();
                s.spawn(move || {
                    for i in 0..200 {
                        let mut out = Vec::new();
                        let d = devices[i % devices.len()];
                        router.message(
                            0,
                            &mut v,
                            ClientMessage::Connect { device_id: d },
                            &mut out,
                        );
                        if let [Delivery::Send {
                            msg: ServerMessage::Session { session_id, .. },
                            ..
                        }] = out.as_slice()
                        {
                            let sid = *session_id;
                            out.clear();
                            router.message(
                                0,
                                &mut v,
                                ClientMessage::Bye {
                                    session_id: sid,
                                    reason: None,
                                },
                                &mut out,
                            );
                            assert_eq!(out.len(), 1);
                        }
                    }
                });
            }
        });
        assert_eq!(router.sessions(), 0);
        for d in &devices {
            assert!(router.devices.get(d).is_some_and(|s| s.sessions.is_empty()));
        }
    }

    /// Node a dies with the camera; the camera comes back on b, where the viewer is: the
    /// viewer's dead cross-node session ends with a bye instead of hanging.
    #[test]
    fn a_camera_arriving_ends_sessions_with_its_old_node() {
        let key = TicketKey::new(&Secret::new("router-test"));
        let b = Router::clustered(key.clone(), RouterLimits::default(), "b".into());
        let dev = Uuid::new_v4();
        let claims = |sub: &str, role, devices| key.mint_signaling(sub, role, devices, NOW, 600).1;
        let v = ConnState::new(1, claims("user-1", Role::Viewer, vec![dev]));
        let mut out = Vec::new();
        b.connected(NOW * 1000, &v, &mut out);
        let sid = Uuid::new_v4();
        b.remote_opened(v.id, dev, sid, "a".into(), 7, &mut out);
        assert_eq!(b.sessions(), 1);
        out.clear();
        let cam = ConnState::new(2, claims(&dev.to_string(), Role::Camera, vec![dev]));
        b.connected(NOW * 1000, &cam, &mut out);
        assert!(out.contains(&bye(v.id, sid, Some(bye_reason::CAMERA_RECONNECTED))));
        assert_eq!(b.sessions(), 0);
        assert!(b.remote_viewers.get(&v.id).is_none_or(|l| l.is_empty()));
        // The viewer leaving later sends nothing to the dead node.
        out.clear();
        b.disconnected(NOW * 1000, &v, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    /// Two clustered routers with the driver's part played by hand (no IO, no clock).
    #[test]
    fn cross_node_session_routes_both_ways_and_checks_the_sender_node() {
        let key = TicketKey::new(&Secret::new("router-test"));
        let a = Router::clustered(key.clone(), RouterLimits::default(), "a".into());
        let b = Router::clustered(key.clone(), RouterLimits::default(), "b".into());
        let dev = Uuid::new_v4();
        let other = Uuid::new_v4();
        let claims = |sub: &str, role, devices| key.mint_signaling(sub, role, devices, NOW, 600).1;
        let cam = ConnState::new(1, claims(&dev.to_string(), Role::Camera, vec![dev]));
        let mut out = Vec::new();
        a.connected(NOW * 1000, &cam, &mut out);
        out.clear();
        let mut v = ConnState::new(1, claims("user-1", Role::Viewer, vec![dev]));
        b.connected(NOW * 1000, &v, &mut out);
        // Not on b: b asks the cluster, after its own access check.
        b.message(
            0,
            &mut v,
            ClientMessage::Connect { device_id: dev },
            &mut out,
        );
        assert_eq!(
            out,
            vec![Delivery::Connect {
                viewer: 1,
                device: dev
            }]
        );
        out.clear();
        b.message(
            0,
            &mut v,
            ClientMessage::Connect { device_id: other },
            &mut out,
        );
        assert_eq!(error_code(&out, 1), ErrorCode::Forbidden);
        out.clear();
        // a opens it, b records it.
        let (sid, cam_conn) = a.remote_connect("b".into(), v.id, dev).unwrap();
        assert_eq!(cam_conn, cam.id);
        assert_eq!(
            a.remote_connect("b".into(), 9, other),
            Err((ErrorCode::CameraOffline, "the camera is not connected"))
        );
        b.remote_opened(v.id, dev, sid, "a".into(), cam_conn, &mut out);
        assert!(matches!(
            out.as_slice(),
            [Delivery::Send {
                to: 1,
                msg: ServerMessage::Session { .. }
            }]
        ));
        out.clear();
        // Offer b -> a.
        b.message(
            0,
            &mut v,
            ClientMessage::Offer {
                session_id: sid,
                sdp: "o".into(),
            },
            &mut out,
        );
        let offer = ServerMessage::Offer {
            session_id: sid,
            sdp: "o".into(),
        };
        assert_eq!(
            out,
            vec![Delivery::Forward {
                node: "a".into(),
                msg: offer.clone()
            }]
        );
        out.clear();
        // A node that is not the session's other party is ignored; so is an offer to a viewer.
        assert!(!a.remote_signal("c", offer.clone(), &mut out));
        assert!(!b.remote_signal("a", offer.clone(), &mut out));
        assert!(out.is_empty());
        assert!(a.remote_signal("b", offer.clone(), &mut out));
        assert_eq!(
            out,
            vec![Delivery::Send {
                to: cam.id,
                msg: offer
            }]
        );
        out.clear();
        // Answer and candidate a -> b.
        let mut cam = cam;
        a.message(
            0,
            &mut cam,
            ClientMessage::Answer {
                session_id: sid,
                sdp: "a".into(),
            },
            &mut out,
        );
        let answer = ServerMessage::Answer {
            session_id: sid,
            sdp: "a".into(),
        };
        assert_eq!(
            out,
            vec![Delivery::Forward {
                node: "b".into(),
                msg: answer.clone()
            }]
        );
        out.clear();
        assert!(b.remote_signal("a", answer.clone(), &mut out));
        assert_eq!(
            out,
            vec![Delivery::Send {
                to: v.id,
                msg: answer
            }]
        );
        out.clear();
        a.message(
            0,
            &mut cam,
            ClientMessage::Candidate {
                session_id: sid,
                candidate: cand(),
            },
            &mut out,
        );
        assert!(matches!(&out[..], [Delivery::Forward { node, .. }] if &**node == "b"));
        out.clear();
        // Viewer leaves: its remote session ends on b and a bye goes to a, which ends it there.
        b.disconnected(0, &v, &mut out);
        let bye_msg = ServerMessage::Bye {
            session_id: sid,
            reason: Some(bye_reason::VIEWER_LEFT.into()),
        };
        assert_eq!(
            out,
            vec![Delivery::Forward {
                node: "a".into(),
                msg: bye_msg.clone()
            }]
        );
        assert_eq!(b.sessions(), 0);
        out.clear();
        assert!(a.remote_signal("b", bye_msg.clone(), &mut out));
        assert_eq!(
            out,
            vec![Delivery::Send {
                to: cam.id,
                msg: bye_msg
            }]
        );
        assert_eq!(a.sessions(), 0);
        assert!(a.devices.get(&dev).is_some_and(|s| s.sessions.is_empty()));
    }

    #[test]
    fn camera_leaving_byes_its_remote_viewers_and_single_node_never_goes_remote() {
        let key = TicketKey::new(&Secret::new("router-test"));
        let a = Router::clustered(key.clone(), RouterLimits::default(), "a".into());
        let dev = Uuid::new_v4();
        let cam = ConnState::new(
            1,
            key.mint_signaling(&dev.to_string(), Role::Camera, vec![dev], NOW, 600)
                .1,
        );
        let mut out = Vec::new();
        a.connected(0, &cam, &mut out);
        let (sid, _) = a.remote_connect("b".into(), 4, dev).unwrap();
        out.clear();
        a.disconnected(0, &cam, &mut out);
        assert!(out.contains(&Delivery::Forward {
            node: "b".into(),
            msg: ServerMessage::Bye {
                session_id: sid,
                reason: Some(bye_reason::CAMERA_OFFLINE.into())
            }
        }));
        // Without a cluster a missing camera is `camera_offline` at once.
        let mut f = Fixture::new();
        let mut v = f.viewer(vec![dev]);
        let out = f.send(&mut v, ClientMessage::Connect { device_id: dev });
        assert_eq!(error_code(&out, v.id), ErrorCode::CameraOffline);
    }
}
