//! Presence reporter: tells vc-control which cameras came online or went offline.
//!
//! Mechanism (the contract in `shared::api::PresenceReport`): the router emits a presence event
//! when a camera connects or drops; this task batches them (a batch leaves at most
//! `presence_batch_ms` after its first event), coalesces per device (the latest event wins) and
//! `POST`s `<control_url>/api/internal/presence` with header `x-vc-signature:
//! TicketKey::sign_internal(body)`. Failures are retried with exponential backoff (100 ms doubling
//! to 5 s), newer events merging into the pending batch. Every `presence_resync_secs` all
//! connected cameras are re-reported online: that refreshes `last_seen`, repairs the control
//! plane's view after it restarts, and lets it name deleted devices. The answer's
//! `unknown_devices` are closed (close code 4004).

use std::sync::Arc;
use std::time::Duration;

use shared::api::{PresenceAck, PresenceEvent, PresenceReport, PRESENCE_SIGNATURE_HEADER};
use shared::ticket::unix_now;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::server::Signaling;

const MAX_BATCH: usize = 1000;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Pending events, at most one per device (the latest), in arrival order.
#[derive(Debug, Default)]
pub struct Pending {
    events: Vec<PresenceEvent>,
}

impl Pending {
    pub fn push(&mut self, event: PresenceEvent) {
        self.events.retain(|e| e.device_id != event.device_id);
        self.events.push(event);
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// A signed report of everything pending, `(body, signature)`.
    pub fn report(&self, key: &shared::ticket::TicketKey, sent_at: u64) -> (Vec<u8>, String) {
        let report = PresenceReport {
            sent_at,
            events: self.events.clone(),
        };
        // Invariant: a struct of integers, bools and uuids always serialises.
        let body = serde_json::to_vec(&report).expect("presence report serialises");
        let signature = key.sign_internal(&body);
        (body, signature)
    }

    fn clear(&mut self) {
        self.events.clear();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Posts one report; returns the devices vc-control does not know.
async fn post(
    client: &reqwest::Client,
    url: &str,
    sig: &Signaling,
    pending: &Pending,
) -> Result<Vec<Uuid>, String> {
    let (body, signature) = pending.report(&sig.key, unix_now());
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header(PRESENCE_SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    // An empty or unexpected body is not worth a retry: the events were accepted.
    let ack: PresenceAck = serde_json::from_slice(&bytes).unwrap_or_default();
    Ok(ack.unknown_devices)
}

/// The reporter task (spawned by `Signaling::start`).
pub(crate) async fn run(sig: Arc<Signaling>, mut rx: mpsc::UnboundedReceiver<PresenceEvent>) {
    let url = format!(
        "{}/api/internal/presence",
        sig.config.control_url.trim_end_matches('/')
    );
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "presence reporter: no HTTP client; presence disabled");
            return;
        }
    };
    let batch = Duration::from_millis(sig.config.presence_batch_ms);
    let resync = Duration::from_secs(sig.config.presence_resync_secs.max(1));
    let mut next_resync = Instant::now() + resync;
    let mut shutdown = sig.shutdown.clone();
    let mut pending = Pending::default();
    let mut backoff = BACKOFF_START;
    let mut retry_at: Option<Instant> = None;
    let mut out = Vec::new();

    loop {
        let stopping = *shutdown.borrow();
        if stopping && sig.conns.is_empty() {
            // Last report: the offline events of the connections just closed.
            while let Ok(ev) = rx.try_recv() {
                pending.push(ev);
            }
            if !pending.is_empty() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    post(&client, &url, &sig, &pending),
                )
                .await;
            }
            return;
        }
        // When to send: after a batch window from the first pending event, or at retry time.
        let send_at = match (pending.is_empty(), retry_at) {
            (true, _) => None,
            (false, Some(t)) => Some(t),
            (false, None) => Some(Instant::now() + batch),
        };
        let wake = send_at.unwrap_or(next_resync).min(next_resync);
        let wake = if stopping {
            wake.min(Instant::now() + Duration::from_millis(20))
        } else {
            wake
        };
        tokio::select! {
            ev = rx.recv() => {
                match ev {
                    Some(ev) => pending.push(ev),
                    None => return,
                }
                // Collect what arrives within the batch window before sending.
                let until = Instant::now() + batch;
                while pending.len() < MAX_BATCH {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(ev)) => pending.push(ev),
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                if retry_at.is_some_and(|t| t > Instant::now()) {
                    continue;
                }
            }
            _ = shutdown.changed(), if !stopping => continue,
            _ = tokio::time::sleep_until(wake) => {
                if Instant::now() >= next_resync {
                    next_resync = Instant::now() + resync;
                    let at_ms = now_ms();
                    for device_id in sig.router.online_devices() {
                        pending.push(PresenceEvent { device_id, online: true, at_ms });
                    }
                }
                if pending.is_empty() || send_at.is_none_or(|t| t > Instant::now()) {
                    continue;
                }
            }
        }
        match post(&client, &url, &sig, &pending).await {
            Ok(unknown) => {
                sig.metrics.presence_reports.increment(1);
                pending.clear();
                retry_at = None;
                backoff = BACKOFF_START;
                for device in unknown {
                    sig.router.close_device(device, &mut out);
                }
                sig.deliver(&mut out);
            }
            Err(e) => {
                sig.metrics.presence_failures.increment(1);
                tracing::warn!(error = %e, %url, retry_in_ms = backoff.as_millis() as u64, "presence report failed");
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ticket::TicketKey;
    use shared::Secret;

    #[test]
    fn pending_keeps_latest_per_device() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let mut p = Pending::default();
        p.push(PresenceEvent {
            device_id: a,
            online: true,
            at_ms: 1,
        });
        p.push(PresenceEvent {
            device_id: b,
            online: true,
            at_ms: 2,
        });
        p.push(PresenceEvent {
            device_id: a,
            online: false,
            at_ms: 3,
        });
        assert_eq!(
            p.events,
            vec![
                PresenceEvent {
                    device_id: b,
                    online: true,
                    at_ms: 2
                },
                PresenceEvent {
                    device_id: a,
                    online: false,
                    at_ms: 3
                },
            ]
        );
    }

    #[test]
    fn report_is_signed_over_its_exact_body() {
        let key = TicketKey::new(&Secret::new("s"));
        let mut p = Pending::default();
        p.push(PresenceEvent {
            device_id: Uuid::nil(),
            online: true,
            at_ms: 5,
        });
        let (body, sig) = p.report(&key, 42);
        key.verify_internal(&body, &sig).unwrap();
        let parsed: PresenceReport = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.sent_at, 42);
        assert_eq!(parsed.events.len(), 1);
    }
}
