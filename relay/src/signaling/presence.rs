//! Presence reporter: tells vc-control which cameras came online or went offline, and keeps
//! this node's lease alive (the contract is `shared::api::PresenceReport`).
//!
//! Only changes are sent: the router emits an event when a camera connects or drops; events
//! are coalesced per device (the latest wins) and leave in reports of at most
//! `presence_max_events`, the first within `presence_batch_ms` of the change. When nothing
//! changed for `presence_heartbeat_ms`, an empty report renews the lease (`presence_lease_secs`):
//! that is the whole steady-state cost, whatever the number of idle cameras. Each answer also
//! lists the devices deleted since the previous one, whose connections are closed. vc-control counts a
//! camera online while the lease of the node and epoch that reported it lives, so a crashed node's
//! cameras go offline when its lease lapses, and a restarted node (new epoch) starts clean.
//!
//! A failed report is retried with jittered exponential backoff (100 ms doubling to 5 s); its
//! events merge back under newer ones, and events keep being collected while a report is in
//! flight, so a failing report never blocks newer events and memory is bounded by one entry per
//! device. A report vc-control refuses as malformed (4xx other than 401/408/429) is dropped
//! and counted rather than retried forever. The answer's `unknown_devices` (deleted) are
//! closed (close code 4004).
//!
//! [`Reporter`] is the sans-IO state machine (time in, reports out); [`run`] is its tokio driver.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::api::{PresenceAck, PresenceEvent, PresenceReport, PRESENCE_SIGNATURE_HEADER};
use shared::ticket::unix_now;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::server::Signaling;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Unix milliseconds (the wall clock presence events are stamped with).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reporter timing and size limits (from `SignalingConfig`).
#[derive(Debug, Clone, Copy)]
pub struct ReporterLimits {
    pub batch: Duration,
    pub heartbeat: Duration,
    pub max_events: usize,
}

/// How vc-control answered a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// Worth retrying (network error, 5xx, 401/408/429): the events go back to pending.
    Retry,
    /// Refused for good (malformed, conflict): the events are dropped.
    Rejected,
}

/// Sans-IO presence state: events and outcomes in, reports out.
#[derive(Debug)]
pub struct Reporter {
    limits: ReporterLimits,
    /// At most one event per device: the latest.
    pending: HashMap<Uuid, PresenceEvent>,
    /// When the oldest pending event arrived (starts the batch window).
    pending_since: Option<Instant>,
    inflight: Option<Vec<PresenceEvent>>,
    /// Last accepted (or rejected) report: the heartbeat is due a period after it.
    last_done: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// More events than one report holds were pending when the last one left: send on at once.
    backlog: bool,
    /// When the reporter started: the first report (the lease) is due then.
    started: Instant,
}

impl Reporter {
    pub fn new(limits: ReporterLimits, now: Instant) -> Self {
        Self {
            limits: ReporterLimits {
                max_events: limits.max_events.max(1),
                ..limits
            },
            pending: HashMap::new(),
            pending_since: None,
            inflight: None,
            last_done: None,
            retry_at: None,
            backoff: BACKOFF_START,
            backlog: false,
            started: now,
        }
    }

    pub fn push(&mut self, event: PresenceEvent, now: Instant) {
        self.pending.insert(event.device_id, event);
        self.pending_since.get_or_insert(now);
    }

    /// Events not yet handed out in a report.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn in_flight(&self) -> bool {
        self.inflight.is_some()
    }

    /// When the next report is due; `None` while one is in flight.
    pub fn next_due(&self) -> Option<Instant> {
        if self.inflight.is_some() {
            return None;
        }
        if let Some(t) = self.retry_at {
            return Some(t);
        }
        let heartbeat = self.last_done.map(|t| t + self.limits.heartbeat);
        let Some(since) = self.pending_since else {
            // Nothing pending: a heartbeat, and the very first report at once (the lease).
            return Some(heartbeat.unwrap_or(self.started));
        };
        let batch_due = if self.backlog {
            since
        } else {
            since + self.limits.batch
        };
        Some(heartbeat.map_or(batch_due, |h| h.min(batch_due)))
    }

    /// The events of the report to send now, if one is due (empty = a heartbeat). The caller
    /// sends it and reports back with [`Self::on_outcome`].
    pub fn poll_report(&mut self, now: Instant) -> Option<Vec<PresenceEvent>> {
        if self.next_due()? > now {
            return None;
        }
        let take = self.pending.len().min(self.limits.max_events);
        let keys: Vec<Uuid> = self.pending.keys().take(take).copied().collect();
        let events: Vec<PresenceEvent> =
            keys.iter().filter_map(|k| self.pending.remove(k)).collect();
        self.backlog = !self.pending.is_empty();
        if self.pending.is_empty() {
            self.pending_since = None;
        }
        self.retry_at = None;
        self.inflight = Some(events.clone());
        Some(events)
    }

    /// What became of the report in flight. `jitter` in `[0, 1)` spreads retries of a fleet.
    /// Returns the number of events dropped (rejected).
    /// When the oldest event of the report in flight happened (wall ms): its presence lag is
    /// the time from then until vc-control accepts the report.
    pub fn in_flight_oldest_ms(&self) -> Option<u64> {
        self.inflight.as_ref()?.iter().map(|e| e.at_ms).min()
    }

    pub fn on_outcome(&mut self, outcome: Outcome, now: Instant, jitter: f64) -> usize {
        let Some(events) = self.inflight.take() else {
            return 0;
        };
        match outcome {
            Outcome::Accepted | Outcome::Rejected => {
                self.last_done = Some(now);
                self.backoff = BACKOFF_START;
                if outcome == Outcome::Rejected {
                    return events.len();
                }
            }
            Outcome::Retry => {
                for event in events {
                    // A newer event for the device arrived meanwhile: it wins.
                    self.pending.entry(event.device_id).or_insert(event);
                }
                if !self.pending.is_empty() {
                    self.pending_since.get_or_insert(now);
                }
                let delay = self.backoff.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0);
                self.retry_at = Some(now + delay);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
        0
    }

    /// Everything not yet accepted (the in-flight report's events too), for the last reports
    /// at shutdown.
    pub fn take_all(&mut self) -> Vec<PresenceEvent> {
        let mut all: Vec<PresenceEvent> = self.inflight.take().unwrap_or_default();
        all.retain(|e| !self.pending.contains_key(&e.device_id));
        all.extend(self.pending.drain().map(|(_, e)| e));
        self.pending_since = None;
        all
    }
}

/// Who reports: the node, its incarnation and lease, and its revocation cursor.
#[derive(Debug, Clone)]
pub struct ReportHeader {
    pub node_id: String,
    pub epoch: u64,
    pub lease: Duration,
    pub revoked_since_ms: u64,
}

/// A signed report, `(body, signature)`.
pub fn signed_report(
    key: &shared::ticket::TicketKey,
    header: &ReportHeader,
    leaving: bool,
    events: Vec<PresenceEvent>,
) -> (Vec<u8>, String) {
    let report = PresenceReport {
        sent_at: unix_now(),
        node_id: header.node_id.clone(),
        epoch: header.epoch,
        lease_ms: header.lease.as_millis() as u64,
        leaving,
        revoked_since_ms: header.revoked_since_ms,
        events,
    };
    // Invariant: a struct of strings, integers, bools and uuids always serialises.
    let body = serde_json::to_vec(&report).expect("presence report serialises");
    let signature = key.sign_internal(&body);
    (body, signature)
}

/// Posts one report: the outcome, vc-control's answer (when accepted) and why not.
async fn post(client: reqwest::Client, url: Arc<str>, body: Vec<u8>, signature: String) -> Posted {
    let resp = match client
        .post(&*url)
        .header("content-type", "application/json")
        .header(PRESENCE_SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return (Outcome::Retry, None, e.to_string()),
    };
    let status = resp.status();
    let bytes = resp.bytes().await.unwrap_or_default();
    if status.is_success() {
        // An empty or unexpected body is not worth a retry: the events were accepted.
        let ack: PresenceAck = serde_json::from_slice(&bytes).unwrap_or_default();
        return (Outcome::Accepted, Some(ack), String::new());
    }
    let why = format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
    let retry = status.is_server_error() || matches!(status.as_u16(), 401 | 408 | 429);
    let outcome = if retry {
        Outcome::Retry
    } else {
        Outcome::Rejected
    };
    (outcome, None, why)
}

type Posted = (Outcome, Option<PresenceAck>, String);

/// The reporter task (spawned by `Signaling::start`).
pub(crate) async fn run(sig: Arc<Signaling>, mut rx: mpsc::UnboundedReceiver<PresenceEvent>) {
    let url: Arc<str> = format!(
        "{}/api/internal/presence",
        sig.config.control_url.trim_end_matches('/')
    )
    .into();
    let ca_file = &sig.config.control_ca_file;
    let client = match shared::tls::http_client_builder(
        (!ca_file.is_empty()).then(|| std::path::Path::new(ca_file)),
    )
    .and_then(|b| {
        b.timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "presence reporter: no HTTP client; presence disabled");
            return;
        }
    };
    let mut header = ReportHeader {
        node_id: sig.node_id.clone(),
        epoch: sig.epoch_ms,
        lease: Duration::from_secs(sig.config.presence_lease_secs.max(1)),
        revoked_since_ms: 0,
    };
    let mut reporter = Reporter::new(
        ReporterLimits {
            batch: Duration::from_millis(sig.config.presence_batch_ms),
            heartbeat: Duration::from_millis(sig.config.presence_heartbeat_ms.max(50)),
            max_events: sig.config.presence_max_events,
        },
        Instant::now(),
    );
    let mut shutdown = sig.shutdown.clone();
    let mut inflight: Option<tokio::task::JoinHandle<Posted>> = None;
    let mut out = Vec::new();

    loop {
        let stopping = *shutdown.borrow();
        if stopping && sig.conns.is_empty() {
            break;
        }
        let now = Instant::now();
        if inflight.is_none() {
            if let Some(events) = reporter.poll_report(now) {
                let (body, signature) = signed_report(&sig.key, &header, false, events);
                inflight = Some(tokio::spawn(post(
                    client.clone(),
                    url.clone(),
                    body,
                    signature,
                )));
            }
        }
        sig.metrics.presence_pending.set(reporter.pending() as f64);
        let wake = reporter.next_due().map(tokio::time::Instant::from_std);
        let wake = if stopping {
            // Waiting for the last connections to close and report offline.
            Some(tokio::time::Instant::now() + Duration::from_millis(20))
        } else {
            wake
        };
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => reporter.push(ev, Instant::now()),
                None => break,
            },
            done = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                inflight = None;
                let (outcome, ack, why) = done.unwrap_or((Outcome::Retry, None, "reporter task failed".into()));
                let oldest = reporter.in_flight_oldest_ms();
                let dropped = reporter.on_outcome(outcome, Instant::now(), rand::random::<f64>());
                match outcome {
                    Outcome::Accepted => {
                        sig.metrics.presence_reports.increment(1);
                        if let Some(at) = oldest {
                            let lag_ms = wall_ms().saturating_sub(at);
                            sig.metrics.presence_lag.record(lag_ms as f64 / 1000.0);
                        }
                    }
                    Outcome::Retry => {
                        sig.metrics.presence_failures.increment(1);
                        tracing::warn!(error = %why, url = %url, "presence report failed; retrying");
                    }
                    Outcome::Rejected => {
                        sig.metrics.presence_failures.increment(1);
                        sig.metrics.presence_events_dropped.increment(dropped as u64);
                        tracing::error!(error = %why, url = %url, dropped, "presence report refused; its events are dropped");
                    }
                }
                if let Some(ack) = ack {
                    header.revoked_since_ms = ack.cursor_ms;
                    for device in ack.unknown_devices {
                        sig.router.close_device(device, &mut out);
                    }
                    for rev in &ack.revocations {
                        sig.revoke(rev, &mut out);
                    }
                }
                sig.deliver(&mut out);
            },
            _ = shutdown.changed(), if !stopping => {},
            _ = async { tokio::time::sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {},
        }
    }

    // Shutdown: the offline events of the connections just closed, and the lease released, so
    // the node's cameras show offline at once. Bounded: 2 s in all.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    if let Some(h) = inflight.take() {
        if let Ok(Ok((outcome, _, _))) = tokio::time::timeout_at(deadline, h).await {
            reporter.on_outcome(outcome, Instant::now(), 0.0);
        }
    }
    while let Ok(ev) = rx.try_recv() {
        reporter.push(ev, Instant::now());
    }
    let mut events = reporter.take_all();
    loop {
        let rest = events.split_off(events.len().min(sig.config.presence_max_events.max(1)));
        let leaving = rest.is_empty();
        let (body, signature) = signed_report(&sig.key, &header, leaving, events);
        let sent =
            tokio::time::timeout_at(deadline, post(client.clone(), url.clone(), body, signature))
                .await;
        if leaving || sent.is_err() {
            return;
        }
        events = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ticket::TicketKey;
    use shared::Secret;

    const LIMITS: ReporterLimits = ReporterLimits {
        batch: Duration::from_millis(50),
        heartbeat: Duration::from_secs(5),
        max_events: 3,
    };

    fn ev(device: Uuid, online: bool, at_ms: u64) -> PresenceEvent {
        PresenceEvent {
            device_id: device,
            online,
            at_ms,
            conn: at_ms,
        }
    }

    /// A reporter that sent its first heartbeat at `t0`.
    fn started(t0: Instant) -> Reporter {
        let mut r = Reporter::new(LIMITS, t0);
        assert_eq!(
            r.poll_report(t0),
            Some(vec![]),
            "first report at once: the lease"
        );
        r.on_outcome(Outcome::Accepted, t0, 0.0);
        r
    }

    #[test]
    fn idle_node_sends_only_heartbeats() {
        let t0 = Instant::now();
        let mut r = started(t0);
        assert_eq!(r.next_due(), Some(t0 + LIMITS.heartbeat));
        assert_eq!(r.poll_report(t0 + Duration::from_secs(4)), None);
        let t1 = t0 + LIMITS.heartbeat;
        assert_eq!(r.poll_report(t1), Some(vec![]));
        r.on_outcome(Outcome::Accepted, t1, 0.0);
        assert_eq!(r.next_due(), Some(t1 + LIMITS.heartbeat));
    }

    #[test]
    fn events_leave_after_the_batch_window_coalesced_per_device() {
        let t0 = Instant::now();
        let mut r = started(t0);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let t1 = t0 + Duration::from_secs(1);
        r.push(ev(a, true, 1), t1);
        r.push(ev(b, true, 2), t1 + Duration::from_millis(10));
        r.push(ev(a, false, 3), t1 + Duration::from_millis(20));
        assert_eq!(r.poll_report(t1 + Duration::from_millis(49)), None);
        let mut sent = r.poll_report(t1 + LIMITS.batch).unwrap();
        sent.sort_by_key(|e| e.at_ms);
        assert_eq!(sent, vec![ev(b, true, 2), ev(a, false, 3)]);
        assert!(r.in_flight());
        assert_eq!(r.next_due(), None, "one report in flight at a time");
    }

    #[test]
    fn reports_are_bounded_and_a_backlog_drains_without_waiting() {
        let t0 = Instant::now();
        let mut r = started(t0);
        let devices: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
        for (i, d) in devices.iter().enumerate() {
            r.push(ev(*d, true, i as u64), t0);
        }
        let mut seen = Vec::new();
        let mut t = t0 + LIMITS.batch;
        while let Some(events) = r.poll_report(t) {
            if events.is_empty() {
                break;
            }
            assert!(events.len() <= LIMITS.max_events);
            seen.extend(events.iter().map(|e| e.device_id));
            r.on_outcome(Outcome::Accepted, t, 0.0);
            t += Duration::from_millis(1);
        }
        seen.sort();
        let mut want = devices.clone();
        want.sort();
        assert_eq!(seen, want, "every event sent once, in 3 reports");
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn failed_report_retries_with_backoff_and_newer_events_win() {
        let t0 = Instant::now();
        let mut r = started(t0);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        r.push(ev(a, true, 1), t0);
        r.push(ev(b, true, 2), t0);
        let t1 = t0 + LIMITS.batch;
        assert_eq!(r.poll_report(t1).unwrap().len(), 2);
        assert_eq!(
            r.in_flight_oldest_ms(),
            Some(1),
            "the lag counts from the oldest"
        );
        // While it is in flight, a goes offline.
        r.push(ev(a, false, 3), t1 + Duration::from_millis(1));
        r.on_outcome(Outcome::Retry, t1, 0.999);
        let due = r.next_due().unwrap();
        assert!(due > t1 && due <= t1 + BACKOFF_START, "{:?}", due - t1);
        let mut again = r.poll_report(due).unwrap();
        again.sort_by_key(|e| e.at_ms);
        assert_eq!(again, vec![ev(b, true, 2), ev(a, false, 3)]);
        // Backoff doubles up to its cap and resets on success.
        let mut t = due;
        for _ in 0..10 {
            r.on_outcome(Outcome::Retry, t, 0.999);
            t = r.next_due().unwrap();
            r.poll_report(t).unwrap();
        }
        r.on_outcome(Outcome::Retry, t, 0.999);
        let gap = r.next_due().unwrap() - t;
        assert!(gap <= BACKOFF_MAX && gap > BACKOFF_MAX / 2, "{gap:?}");
        assert_eq!(r.pending(), 2, "still one event per device");
        r.poll_report(t + gap).unwrap();
        // Retried events keep their own time: the lag includes every failed attempt.
        assert_eq!(r.in_flight_oldest_ms(), Some(2));
        r.on_outcome(Outcome::Accepted, t + gap, 0.0);
        assert_eq!(r.in_flight_oldest_ms(), None);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.backoff, BACKOFF_START);
    }

    #[test]
    fn a_refused_report_is_dropped_not_retried_forever() {
        let t0 = Instant::now();
        let mut r = started(t0);
        r.push(ev(Uuid::new_v4(), true, 1), t0);
        r.poll_report(t0 + LIMITS.batch).unwrap();
        assert_eq!(r.on_outcome(Outcome::Rejected, t0 + LIMITS.batch, 0.0), 1);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.next_due(), Some(t0 + LIMITS.batch + LIMITS.heartbeat));
    }

    #[test]
    fn pending_is_bounded_by_devices_during_a_long_outage() {
        let t0 = Instant::now();
        let mut r = started(t0);
        let devices: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
        let mut t = t0;
        for round in 0..200u64 {
            for d in &devices {
                r.push(ev(*d, round % 2 == 0, round), t);
            }
            if let Some(_events) = r.poll_report(t) {
                r.on_outcome(Outcome::Retry, t, 0.5);
            }
            t += Duration::from_millis(100);
        }
        assert_eq!(r.pending(), devices.len());
    }

    #[test]
    fn take_all_keeps_the_newest_per_device() {
        let t0 = Instant::now();
        let mut r = started(t0);
        let a = Uuid::new_v4();
        r.push(ev(a, true, 1), t0);
        r.poll_report(t0 + LIMITS.batch).unwrap();
        r.push(ev(a, false, 2), t0 + LIMITS.batch);
        assert_eq!(r.take_all(), vec![ev(a, false, 2)]);
    }

    #[test]
    fn report_is_signed_over_its_exact_body() {
        let key = TicketKey::new(&Secret::new("s"));
        let header = ReportHeader {
            node_id: "node-1".into(),
            epoch: 7,
            lease: Duration::from_secs(15),
            revoked_since_ms: 3,
        };
        let (body, sig) = signed_report(&key, &header, false, vec![ev(Uuid::nil(), true, 5)]);
        key.verify_internal(&body, &sig).unwrap();
        let parsed: PresenceReport = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.node_id, "node-1");
        assert_eq!((parsed.epoch, parsed.lease_ms), (7, 15_000));
        assert_eq!(parsed.revoked_since_ms, 3);
        assert_eq!(parsed.events.len(), 1);
    }
}
