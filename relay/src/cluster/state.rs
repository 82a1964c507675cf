//! The NATS driver's decisions, sans-IO: deliveries from the router, NATS connection events,
//! completed lookups/requests and time go in; [`Action`]s (publish, look up, request, directory
//! writes, refuse or open a viewer's session) come out. The driver in `mod.rs` only performs
//! them, so every rule of the failure table in `docs/cluster.md` is a unit test below with a
//! virtual clock: what is dropped while NATS is down, how a cross-node `connect` ends (opened,
//! refused, timed out, failed fast on disconnect), the in-flight bound, and when the directory
//! is re-published (after every connect and every `refresh`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shared::signaling::ErrorCode;
use uuid::Uuid;

use super::{node_subject, Wire};
use crate::signaling::router::{ConnId, Delivery, NodeName};

/// Names an in-flight cross-node `connect` between the core and the driver.
pub type Ticket = u64;

/// Why a message was not sent (each a `vc_relay_cluster_dropped_total` reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    NatsDown,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Fire-and-forget publish (core NATS).
    Publish {
        subject: String,
        payload: Bytes,
    },
    /// Read the directory entry of `device`; answer with [`ClusterCore::lookup_done`].
    Lookup {
        ticket: Ticket,
        device: Uuid,
    },
    /// NATS request; answer with [`ClusterCore::request_done`].
    Request {
        ticket: Ticket,
        subject: String,
        payload: Bytes,
    },
    /// The camera is on this node now: directory entry -> this node.
    DirectoryPut {
        device: Uuid,
    },
    /// The camera left this node: delete its entry only if it still names this node (it may
    /// be online elsewhere already).
    DirectoryDeleteOwn {
        device: Uuid,
    },
    /// Write every local camera's entry (after a connect, and every refresh period).
    Republish,
    /// Answer the viewer's `connect` with an error.
    Refuse {
        viewer: ConnId,
        device: Uuid,
        code: ErrorCode,
        message: String,
    },
    /// The camera's node opened the session: open the viewer's side.
    Opened {
        viewer: ConnId,
        device: Uuid,
        node: NodeName,
        session_id: Uuid,
        camera: ConnId,
        rtt: Duration,
    },
    Dropped(DropReason),
}

/// How a directory lookup ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The entry names this node.
    Found(String),
    Missing,
    Failed(String),
}

/// How a NATS request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Payload(Bytes),
    /// Nobody subscribes to the subject: the node the directory named is gone.
    NoResponders,
    Failed(String),
}

/// Timing and bounds (from `ClusterConfig`).
#[derive(Debug, Clone, Copy)]
pub struct CoreLimits {
    pub request_timeout: Duration,
    pub max_inflight_connects: usize,
    pub directory_refresh: Duration,
}

#[derive(Debug)]
struct PendingConnect {
    viewer: ConnId,
    device: Uuid,
    started: Instant,
    deadline: Instant,
    /// The camera's node, once the directory named it.
    node: Option<NodeName>,
}

/// Sans-IO state of one node's NATS link.
#[derive(Debug)]
pub struct ClusterCore {
    node: NodeName,
    limits: CoreLimits,
    connected: bool,
    next_refresh: Option<Instant>,
    pending: HashMap<Ticket, PendingConnect>,
    next_ticket: Ticket,
}

impl ClusterCore {
    pub fn new(node: NodeName, limits: CoreLimits) -> Self {
        Self {
            node,
            limits: CoreLimits {
                max_inflight_connects: limits.max_inflight_connects.max(1),
                directory_refresh: limits.directory_refresh.max(Duration::from_secs(1)),
                request_timeout: limits.request_timeout.max(Duration::from_millis(1)),
            },
            connected: false,
            next_refresh: None,
            pending: HashMap::new(),
            next_ticket: 0,
        }
    }

    /// Cross-node connects in flight.
    #[cfg(test)]
    pub fn inflight(&self) -> usize {
        self.pending.len()
    }

    /// NATS (re)connected: the server may have restarted and lost the directory, so every
    /// local entry is written again, and the refresh period starts over.
    pub fn handle_connected(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.connected = true;
        self.next_refresh = Some(now + self.limits.directory_refresh);
        out.push(Action::Republish);
    }

    /// NATS lost: connects in flight fail now rather than at their deadline (their replies
    /// cannot arrive), so viewers can retry at once.
    pub fn handle_disconnected(&mut self, _now: Instant, out: &mut Vec<Action>) {
        self.connected = false;
        self.next_refresh = None;
        let mut failed: Vec<_> = self.pending.drain().collect();
        failed.sort_by_key(|(t, _)| *t);
        for (_, p) in failed {
            out.push(refuse(
                &p,
                ErrorCode::Unavailable,
                "cross-node routing is unavailable (the relay lost NATS); retry",
            ));
        }
    }

    /// One delivery the router addressed to the cluster.
    pub fn handle_delivery(&mut self, d: Delivery, now: Instant, out: &mut Vec<Action>) {
        match d {
            Delivery::Forward { node, msg } => {
                if !self.connected {
                    // Stale signaling is useless after an outage: the peers renegotiate.
                    out.push(Action::Dropped(DropReason::NatsDown));
                    return;
                }
                out.push(Action::Publish {
                    subject: node_subject(&node),
                    payload: Wire::Signal {
                        from: self.node.to_string(),
                        msg,
                    }
                    .encode(),
                });
            }
            Delivery::Connect { viewer, device } => {
                if !self.connected {
                    out.push(Action::Refuse {
                        viewer,
                        device,
                        code: ErrorCode::Unavailable,
                        message: "cross-node routing is unavailable (the relay lost NATS); retry"
                            .into(),
                    });
                    return;
                }
                if self.pending.len() >= self.limits.max_inflight_connects {
                    out.push(Action::Refuse {
                        viewer,
                        device,
                        code: ErrorCode::Busy,
                        message: "too many cross-node connects in flight".into(),
                    });
                    return;
                }
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.pending.insert(
                    ticket,
                    PendingConnect {
                        viewer,
                        device,
                        started: now,
                        deadline: now + self.limits.request_timeout,
                        node: None,
                    },
                );
                out.push(Action::Lookup { ticket, device });
            }
            Delivery::Presence {
                device_id, online, ..
            } => {
                // While NATS is down nothing is written; the republish on reconnect covers it.
                if self.connected {
                    out.push(if online {
                        Action::DirectoryPut { device: device_id }
                    } else {
                        Action::DirectoryDeleteOwn { device: device_id }
                    });
                }
            }
            Delivery::Send { .. } | Delivery::Close { .. } => {}
        }
    }

    /// The directory answered the lookup of `ticket`.
    pub fn lookup_done(&mut self, ticket: Ticket, result: Lookup, out: &mut Vec<Action>) {
        let Some(p) = self.pending.get_mut(&ticket) else {
            return; // timed out or failed already
        };
        let node = match result {
            Lookup::Found(node) if node != *self.node => node,
            // Our own stale entry: the router already looked here and the camera is not.
            Lookup::Found(_) | Lookup::Missing => {
                let p = self.pending.remove(&ticket).expect("pending");
                out.push(offline(&p));
                return;
            }
            Lookup::Failed(e) => {
                let p = self.pending.remove(&ticket).expect("pending");
                out.push(refuse(
                    &p,
                    ErrorCode::Unavailable,
                    &format!("cluster directory: {e}"),
                ));
                return;
            }
        };
        let subject = node_subject(&node);
        let payload = Wire::Connect {
            from: self.node.to_string(),
            viewer: p.viewer,
            device: p.device,
        }
        .encode();
        p.node = Some(node.as_str().into());
        out.push(Action::Request {
            ticket,
            subject,
            payload,
        });
    }

    /// The camera's node answered (or did not) the request of `ticket`.
    pub fn request_done(
        &mut self,
        ticket: Ticket,
        result: Reply,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(p) = self.pending.remove(&ticket) else {
            return;
        };
        let payload = match result {
            Reply::Payload(b) => b,
            Reply::NoResponders => return out.push(offline(&p)),
            Reply::Failed(e) => {
                return out.push(refuse(
                    &p,
                    ErrorCode::Unavailable,
                    &format!("cross-node connect: {e}"),
                ))
            }
        };
        match (Wire::decode(&payload), p.node.clone()) {
            (Some(Wire::Opened { session_id, camera }), Some(node)) => out.push(Action::Opened {
                viewer: p.viewer,
                device: p.device,
                node,
                session_id,
                camera,
                rtt: now.saturating_duration_since(p.started),
            }),
            (Some(Wire::Refused { code, message }), _) => out.push(refuse(&p, code, &message)),
            _ => out.push(refuse(
                &p,
                ErrorCode::Unavailable,
                "bad reply from the camera's relay",
            )),
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self.pending.values().map(|p| p.deadline).min();
        match (deadline, self.next_refresh) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires connects past their deadline; re-publishes the directory when due.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Action>) {
        let mut expired: Vec<Ticket> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        expired.sort_unstable();
        for t in expired {
            let p = self.pending.remove(&t).expect("pending");
            out.push(refuse(
                &p,
                ErrorCode::Unavailable,
                "the camera's relay did not answer in time",
            ));
        }
        if let Some(at) = self.next_refresh {
            if at <= now {
                out.push(Action::Republish);
                // From now, not from `at`: a driver that slept through several periods
                // republishes once, not once per missed period.
                self.next_refresh = Some(now + self.limits.directory_refresh);
            }
        }
    }
}

fn refuse(p: &PendingConnect, code: ErrorCode, message: &str) -> Action {
    Action::Refuse {
        viewer: p.viewer,
        device: p.device,
        code,
        message: message.to_owned(),
    }
}

fn offline(p: &PendingConnect) -> Action {
    refuse(p, ErrorCode::CameraOffline, "the camera is not connected")
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::signaling::ServerMessage;

    const TIMEOUT: Duration = Duration::from_millis(2000);
    const REFRESH: Duration = Duration::from_secs(300);

    fn core(max_inflight: usize) -> (ClusterCore, Instant) {
        let c = ClusterCore::new(
            "node-a".into(),
            CoreLimits {
                request_timeout: TIMEOUT,
                max_inflight_connects: max_inflight,
                directory_refresh: REFRESH,
            },
        );
        (c, Instant::now())
    }

    fn up(c: &mut ClusterCore, now: Instant) {
        let mut out = Vec::new();
        c.handle_connected(now, &mut out);
        assert_eq!(out, vec![Action::Republish]);
    }

    fn connect(c: &mut ClusterCore, viewer: ConnId, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        c.handle_delivery(
            Delivery::Connect {
                viewer,
                device: Uuid::from_u128(viewer as u128),
            },
            now,
            &mut out,
        );
        out
    }

    fn ticket_of(out: &[Action]) -> Ticket {
        match out {
            [Action::Lookup { ticket, .. }] | [Action::Request { ticket, .. }] => *ticket,
            other => panic!("expected one lookup/request, got {other:?}"),
        }
    }

    fn refused(out: &[Action]) -> (ConnId, ErrorCode) {
        match out {
            [Action::Refuse { viewer, code, .. }] => (*viewer, *code),
            other => panic!("expected one refusal, got {other:?}"),
        }
    }

    fn bye(session: u128) -> ServerMessage {
        ServerMessage::Bye {
            session_id: Uuid::from_u128(session),
            reason: None,
        }
    }

    #[test]
    fn forwards_publish_to_the_node_subject_and_drop_while_nats_is_down() {
        let (mut c, t) = core(8);
        let mut out = Vec::new();
        c.handle_delivery(
            Delivery::Forward {
                node: "node-b".into(),
                msg: bye(1),
            },
            t,
            &mut out,
        );
        assert_eq!(out, vec![Action::Dropped(DropReason::NatsDown)]);

        up(&mut c, t);
        out.clear();
        c.handle_delivery(
            Delivery::Forward {
                node: "node-b".into(),
                msg: bye(1),
            },
            t,
            &mut out,
        );
        let [Action::Publish { subject, payload }] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(subject, "vc.node.node-b");
        assert_eq!(
            Wire::decode(payload),
            Some(Wire::Signal {
                from: "node-a".into(),
                msg: bye(1)
            })
        );

        // Lost again: dropped again, nothing queued for later.
        out.clear();
        c.handle_disconnected(t, &mut out);
        assert!(out.is_empty());
        c.handle_delivery(
            Delivery::Forward {
                node: "node-b".into(),
                msg: bye(2),
            },
            t,
            &mut out,
        );
        assert_eq!(out, vec![Action::Dropped(DropReason::NatsDown)]);
    }

    #[test]
    fn connect_looks_up_then_asks_the_cameras_node_and_opens() {
        let (mut c, t) = core(8);
        up(&mut c, t);
        let out = connect(&mut c, 7, t);
        assert_eq!(
            out,
            vec![Action::Lookup {
                ticket: 0,
                device: Uuid::from_u128(7)
            }]
        );
        let mut out = Vec::new();
        c.lookup_done(0, Lookup::Found("node-b".into()), &mut out);
        let [Action::Request {
            ticket: 0,
            subject,
            payload,
        }] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(subject, "vc.node.node-b");
        assert_eq!(
            Wire::decode(payload),
            Some(Wire::Connect {
                from: "node-a".into(),
                viewer: 7,
                device: Uuid::from_u128(7)
            })
        );
        let reply = Wire::Opened {
            session_id: Uuid::from_u128(99),
            camera: 3,
        }
        .encode();
        out.clear();
        c.request_done(
            0,
            Reply::Payload(reply),
            t + Duration::from_millis(4),
            &mut out,
        );
        assert_eq!(
            out,
            vec![Action::Opened {
                viewer: 7,
                device: Uuid::from_u128(7),
                node: "node-b".into(),
                session_id: Uuid::from_u128(99),
                camera: 3,
                rtt: Duration::from_millis(4),
            }]
        );
        assert_eq!(c.inflight(), 0);
        assert_eq!(c.poll_timeout(), Some(t + REFRESH));
    }

    #[test]
    fn connect_ends_with_the_right_error_for_every_failure() {
        let (mut c, t) = core(8);
        let mut out = Vec::new();
        // NATS down: refused at once, nothing pending.
        assert_eq!(refused(&connect(&mut c, 1, t)), (1, ErrorCode::Unavailable));
        assert_eq!(c.inflight(), 0);
        up(&mut c, t);

        // No entry, or our own stale one: the camera is offline.
        for (viewer, entry) in [(2, Lookup::Missing), (3, Lookup::Found("node-a".into()))] {
            let tk = ticket_of(&connect(&mut c, viewer, t));
            out.clear();
            c.lookup_done(tk, entry, &mut out);
            assert_eq!(refused(&out), (viewer, ErrorCode::CameraOffline));
        }
        // The directory fails: unavailable.
        let tk = ticket_of(&connect(&mut c, 4, t));
        out.clear();
        c.lookup_done(tk, Lookup::Failed("timed out".into()), &mut out);
        assert_eq!(refused(&out), (4, ErrorCode::Unavailable));

        // The named node is gone (killed; its entry has not lapsed yet): offline.
        let request = |c: &mut ClusterCore, viewer| {
            let tk = ticket_of(&connect(c, viewer, t));
            let mut out = Vec::new();
            c.lookup_done(tk, Lookup::Found("node-b".into()), &mut out);
            ticket_of(&out)
        };
        let tk = request(&mut c, 5);
        out.clear();
        c.request_done(tk, Reply::NoResponders, t, &mut out);
        assert_eq!(refused(&out), (5, ErrorCode::CameraOffline));
        // The camera's node refuses (e.g. not the viewer's camera): its code is passed on.
        let tk = request(&mut c, 6);
        out.clear();
        let no = Wire::Refused {
            code: ErrorCode::Forbidden,
            message: "not yours".into(),
        };
        c.request_done(tk, Reply::Payload(no.encode()), t, &mut out);
        assert_eq!(refused(&out), (6, ErrorCode::Forbidden));
        // Garbage back: unavailable, not a panic.
        let tk = request(&mut c, 8);
        out.clear();
        c.request_done(tk, Reply::Payload(Bytes::from_static(b"{")), t, &mut out);
        assert_eq!(refused(&out), (8, ErrorCode::Unavailable));
        assert_eq!(c.inflight(), 0);
    }

    #[test]
    fn a_connect_nobody_answers_times_out_and_a_late_answer_is_ignored() {
        let (mut c, t) = core(8);
        up(&mut c, t);
        let tk = ticket_of(&connect(&mut c, 1, t));
        let mut out = Vec::new();
        c.lookup_done(tk, Lookup::Found("node-b".into()), &mut out);
        assert_eq!(c.poll_timeout(), Some(t + TIMEOUT));
        out.clear();
        c.handle_timeout(t + TIMEOUT - Duration::from_millis(1), &mut out);
        assert!(out.is_empty(), "{out:?}");
        c.handle_timeout(t + TIMEOUT, &mut out);
        assert_eq!(refused(&out), (1, ErrorCode::Unavailable));
        // The reply that comes after the viewer was told: nothing happens.
        out.clear();
        let late = Wire::Opened {
            session_id: Uuid::nil(),
            camera: 1,
        };
        c.request_done(tk, Reply::Payload(late.encode()), t + TIMEOUT * 2, &mut out);
        c.lookup_done(tk, Lookup::Missing, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn in_flight_connects_are_bounded_and_a_finished_one_frees_its_slot() {
        let (mut c, t) = core(2);
        up(&mut c, t);
        let a = ticket_of(&connect(&mut c, 1, t));
        let _b = ticket_of(&connect(&mut c, 2, t));
        assert_eq!(refused(&connect(&mut c, 3, t)), (3, ErrorCode::Busy));
        let mut out = Vec::new();
        c.lookup_done(a, Lookup::Missing, &mut out);
        assert_eq!(c.inflight(), 1);
        ticket_of(&connect(&mut c, 4, t));
        assert_eq!(c.inflight(), 2);
    }

    #[test]
    fn nats_outage_fails_pending_connects_and_recovery_republishes_the_directory() {
        let (mut c, t) = core(8);
        up(&mut c, t);
        let mut out = Vec::new();
        let presence = |online| Delivery::Presence {
            device_id: Uuid::from_u128(42),
            online,
            at_ms: 0,
            conn: 1,
        };
        c.handle_delivery(presence(true), t, &mut out);
        c.handle_delivery(presence(false), t, &mut out);
        assert_eq!(
            out,
            vec![
                Action::DirectoryPut {
                    device: Uuid::from_u128(42)
                },
                Action::DirectoryDeleteOwn {
                    device: Uuid::from_u128(42)
                }
            ]
        );
        let first = ticket_of(&connect(&mut c, 1, t));
        let second = ticket_of(&connect(&mut c, 2, t));
        out.clear();
        c.lookup_done(second, Lookup::Found("node-b".into()), &mut out);

        // NATS goes away: both connects (one looking up, one asking) end now, not at their
        // deadline; no refresh is scheduled while down; presence is not written.
        out.clear();
        let down = t + Duration::from_millis(10);
        c.handle_disconnected(down, &mut out);
        assert_eq!(
            out.iter()
                .map(|a| refused(std::slice::from_ref(a)))
                .collect::<Vec<_>>(),
            vec![(1, ErrorCode::Unavailable), (2, ErrorCode::Unavailable)]
        );
        assert_eq!(c.poll_timeout(), None);
        out.clear();
        c.handle_delivery(presence(true), down, &mut out);
        assert!(out.is_empty());
        c.lookup_done(first, Lookup::Found("node-b".into()), &mut out);
        assert!(out.is_empty());

        // An hour later NATS is back: everything local is written again, and the periodic
        // refresh resumes from now.
        let back = t + Duration::from_secs(3600);
        c.handle_timeout(back, &mut out);
        assert!(out.is_empty(), "nothing is due while down: {out:?}");
        up(&mut c, back);
        assert_eq!(c.poll_timeout(), Some(back + REFRESH));
        ticket_of(&connect(&mut c, 3, back));
    }

    #[test]
    fn the_directory_is_refreshed_once_per_period_while_connected() {
        let (mut c, t) = core(8);
        up(&mut c, t);
        let mut out = Vec::new();
        c.handle_timeout(t + REFRESH - Duration::from_secs(1), &mut out);
        assert!(out.is_empty());
        c.handle_timeout(t + REFRESH, &mut out);
        assert_eq!(out, vec![Action::Republish]);
        // A driver that slept through three periods republishes once.
        out.clear();
        let late = t + REFRESH * 4;
        c.handle_timeout(late, &mut out);
        assert_eq!(out, vec![Action::Republish]);
        assert_eq!(c.poll_timeout(), Some(late + REFRESH));
    }
}
