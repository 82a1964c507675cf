//! Running several vc-relay nodes as one fleet (issue 9): the NATS driver beside the WebSocket
//! driver. Design, subjects, KV bucket, wire format and failure behaviour: `docs/cluster.md`.
//!
//! The router stays sans-IO: it emits [`Delivery::Forward`] (a message for a session party on
//! another node) and [`Delivery::Connect`] (find the camera's node and open a session there);
//! [`Signaling::deliver`](crate::signaling::Signaling) hands them to [`ClusterLink::push`], a
//! non-blocking `try_send` into one bounded queue (full: dropped and counted, the router never
//! waits on NATS). This driver drains the queue:
//! * `Forward` -> publish to `vc.node.<node>` (dropped and counted while NATS is down: stale
//!   signaling is useless after an outage, the peers renegotiate).
//! * `Connect` -> directory lookup (KV `vc_directory`: device -> node) and a request to the
//!   camera's node; the reply opens the session on both sides. Fails fast (error
//!   `unavailable`) while NATS is down, `camera_offline` when the directory has no live node.
//! * `Presence` -> directory put / compare-and-delete.
//!
//! async-nats reconnects by itself (backoff with jitter, unlimited attempts) and re-subscribes;
//! on every (re)connect the driver re-publishes this node's directory entries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use rand::Rng;
use serde::{Deserialize, Serialize};
use shared::signaling::{ErrorCode, ServerMessage};
use tokio::sync::{mpsc, RwLock, Semaphore};
use uuid::Uuid;

use crate::signaling::router::{ConnId, Delivery, NodeName};
use crate::signaling::Signaling;

/// `[cluster]` settings (env `VC_CLUSTER__<FIELD>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// This node's name, unique in the fleet: presence leases and the cross-node directory are
    /// keyed by it. Default: the host name.
    pub node_id: String,
    /// NATS server(s) for cross-node routing, comma separated (`nats://127.0.0.1:4222`).
    /// Empty: a single node, no NATS needed (the embedded default).
    pub nats_url: String,
    /// A cross-node `connect` (directory lookup + request to the camera's node) gives up after
    /// this many milliseconds with error `unavailable`.
    pub request_timeout_ms: u64,
    /// Bound of the queue from the router to the NATS driver, messages. Full: the message is
    /// dropped and counted (`vc_relay_cluster_dropped_total`), never waited for.
    pub outbound_queue: usize,
    /// Cross-node `connect`s in flight at once; more get `busy`.
    pub max_inflight_connects: usize,
    /// Every this many seconds a node re-writes its directory entries. The KV bucket keeps an
    /// entry 3x as long, so a dead node's entries lapse by themselves.
    pub directory_refresh_secs: u64,
    /// Upper bound of the (jittered, exponential) delay between NATS reconnect attempts, ms.
    pub reconnect_max_delay_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: default_node_id(),
            nats_url: String::new(),
            request_timeout_ms: 2000,
            outbound_queue: 8192,
            max_inflight_connects: 256,
            directory_refresh_secs: 300,
            reconnect_max_delay_ms: 2000,
        }
    }
}

fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay-1".into())
}

/// The directory bucket: device id -> node id.
pub const DIRECTORY_BUCKET: &str = "vc_directory";
/// Wire format version ([`Envelope::v`]).
pub const WIRE_VERSION: u8 = 1;

/// The subject node `node` listens on.
pub fn node_subject(node: &str) -> String {
    format!("vc.node.{node}")
}

/// One NATS message between nodes: JSON `{"v":1,"type":...,...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u8,
    #[serde(flatten)]
    pub body: Wire,
}

/// The messages nodes exchange (see `docs/cluster.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Wire {
    /// Published to `vc.node.<to>`: offer/answer/candidate/bye of a session with a party there.
    Signal { from: String, msg: ServerMessage },
    /// Request to `vc.node.<camera's node>`: open a session for viewer connection `viewer`.
    Connect {
        from: String,
        viewer: ConnId,
        device: Uuid,
    },
    /// Reply to `connect`: the session exists on the camera's node.
    Opened { session_id: Uuid, camera: ConnId },
    /// Reply to `connect`: refused, with the error for the viewer.
    Refused { code: ErrorCode, message: String },
}

impl Wire {
    fn encode(self) -> Bytes {
        let env = Envelope {
            v: WIRE_VERSION,
            body: self,
        };
        Bytes::from(serde_json::to_vec(&env).unwrap_or_default())
    }

    fn decode(payload: &[u8]) -> Option<Wire> {
        let env: Envelope = serde_json::from_slice(payload).ok()?;
        (env.v == WIRE_VERSION).then_some(env.body)
    }
}

/// Cluster metrics (`vc_relay_cluster_*`), no per-device labels.
struct ClusterMetrics {
    messages_out: Counter,
    messages_in: Counter,
    dropped_disconnected: Counter,
    rejected_in: Counter,
    connect_rtt: Histogram,
    connected: Gauge,
    reconnects: Counter,
}

impl ClusterMetrics {
    fn new() -> Self {
        Self {
            messages_out: counter!("vc_relay_cluster_messages_total", "direction" => "out"),
            messages_in: counter!("vc_relay_cluster_messages_total", "direction" => "in"),
            dropped_disconnected: counter!("vc_relay_cluster_dropped_total", "reason" => "nats_down"),
            rejected_in: counter!("vc_relay_cluster_rejected_total"),
            connect_rtt: histogram!("vc_relay_cluster_connect_rtt_seconds"),
            connected: gauge!("vc_relay_cluster_nats_connected"),
            reconnects: counter!("vc_relay_cluster_nats_connects_total"),
        }
    }
}

/// The router side of the cluster: a bounded queue to the driver.
#[derive(Clone)]
pub struct ClusterLink {
    pub node: NodeName,
    tx: mpsc::Sender<Delivery>,
    dropped: Counter,
}

impl ClusterLink {
    /// Queues `d` for the driver without waiting; `false` (and counted) when the queue is full.
    pub fn push(&self, d: Delivery) -> bool {
        match self.tx.try_send(d) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.increment(1);
                false
            }
        }
    }
}

/// The driver's end of the link, handed to [`spawn`].
pub struct ClusterQueue(mpsc::Receiver<Delivery>);

/// The link and its queue when `[cluster] nats_url` is set; `None` otherwise (single node).
pub fn link(config: &ClusterConfig) -> Option<(ClusterLink, ClusterQueue)> {
    if config.nats_url.trim().is_empty() {
        return None;
    }
    let (tx, rx) = mpsc::channel(config.outbound_queue.max(1));
    Some((
        ClusterLink {
            node: config.node_id.as_str().into(),
            tx,
            dropped: counter!("vc_relay_cluster_dropped_total", "reason" => "queue_full"),
        },
        ClusterQueue(rx),
    ))
}

struct Driver {
    config: ClusterConfig,
    node: NodeName,
    client: async_nats::Client,
    sig: Arc<Signaling>,
    metrics: ClusterMetrics,
    directory: RwLock<Option<kv::Store>>,
    inflight: Arc<Semaphore>,
}

/// Connects to NATS (in the background, retrying: the relay starts and serves local routing
/// without NATS) and starts the driver tasks. They end when the signaling plane shuts down.
pub async fn spawn(
    config: ClusterConfig,
    sig: Arc<Signaling>,
    queue: ClusterQueue,
) -> Result<(), crate::Error> {
    let node: NodeName = config.node_id.as_str().into();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let max_delay = config.reconnect_max_delay_ms.max(10);
    let client = async_nats::ConnectOptions::new()
        .name(format!("vc-relay {node}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        // Full jitter: a fleet of relays that lost the same NATS does not come back in step.
        .reconnect_delay_callback(move |attempt| {
            let cap = (50u64 << attempt.min(10)).min(max_delay);
            Duration::from_millis(rand::thread_rng().gen_range(0..=cap))
        })
        .event_callback(move |event| {
            let tx = events_tx.clone();
            async move {
                let _ = tx.send(event);
            }
        })
        .connect(config.nats_url.as_str())
        .await
        .map_err(|e| crate::Error::Config(format!("nats {}: {e}", config.nats_url)))?;
    let driver = Arc::new(Driver {
        inflight: Arc::new(Semaphore::new(config.max_inflight_connects.max(1))),
        config,
        node,
        client,
        sig,
        metrics: ClusterMetrics::new(),
        directory: RwLock::new(None),
    });
    let subscriber = driver
        .client
        .subscribe(node_subject(&driver.node))
        .await
        .map_err(|e| crate::Error::Config(format!("nats subscribe: {e}")))?;
    tokio::spawn(driver.clone().events(events_rx));
    tokio::spawn(driver.clone().inbound(subscriber));
    tokio::spawn(driver.clone().outbound(queue.0));
    tokio::spawn(driver.clone().refresh());
    Ok(())
}

impl Driver {
    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The directory bucket, created on first use (and again after a NATS restart lost it).
    async fn directory(&self) -> Option<kv::Store> {
        if let Some(store) = self.directory.read().await.clone() {
            return Some(store);
        }
        let js = async_nats::jetstream::new(self.client.clone());
        let max_age = Duration::from_secs(self.config.directory_refresh_secs.max(1) * 3);
        let store = match js.get_key_value(DIRECTORY_BUCKET).await {
            Ok(s) => s,
            Err(_) => {
                // The bucket's stream, made by hand: `create_key_value` first reads the
                // account info, whose reply from nats-server 2.9 (Debian's) async-nats cannot
                // parse (it requires `reserved_memory`). Same layout as a KV bucket.
                js.get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: format!("KV_{DIRECTORY_BUCKET}"),
                    subjects: vec![format!("$KV.{DIRECTORY_BUCKET}.>")],
                    max_messages_per_subject: 1,
                    max_age,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: async_nats::jetstream::stream::DiscardPolicy::New,
                    num_replicas: 1,
                    ..Default::default()
                })
                .await
                .map_err(|e| tracing::warn!(error = %e, "cluster: create directory bucket"))
                .ok()?;
                js.get_key_value(DIRECTORY_BUCKET)
                    .await
                    .map_err(|e| tracing::warn!(error = %e, "cluster: open directory bucket"))
                    .ok()?
            }
        };
        *self.directory.write().await = Some(store.clone());
        Some(store)
    }

    /// Connection events: the state gauge, and directory re-publication after every connect.
    async fn events(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<async_nats::Event>) {
        let mut shutdown = self.sig.shutdown.clone();
        loop {
            let event = tokio::select! {
                e = rx.recv() => match e { Some(e) => e, None => return },
                _ = shutdown.changed() => return,
            };
            match event {
                async_nats::Event::Connected => {
                    tracing::info!(node = %self.node, "cluster: NATS connected");
                    self.metrics.connected.set(1.0);
                    self.metrics.reconnects.increment(1);
                    // A restarted NATS may have lost the bucket (no persistent store).
                    *self.directory.write().await = None;
                    let me = self.clone();
                    tokio::spawn(async move { me.republish().await });
                }
                async_nats::Event::Disconnected => {
                    tracing::warn!(node = %self.node, "cluster: NATS disconnected");
                    self.metrics.connected.set(0.0);
                }
                other => tracing::debug!(event = %other, "cluster: NATS event"),
            }
        }
    }

    /// Writes every local camera's directory entry.
    async fn republish(&self) {
        let Some(dir) = self.directory().await else {
            return;
        };
        let value = Bytes::from(self.node.to_string());
        let mut n = 0usize;
        for device in self.sig.router().online_devices() {
            if dir.put(device.to_string(), value.clone()).await.is_ok() {
                n += 1;
            }
        }
        tracing::info!(node = %self.node, entries = n, "cluster: directory published");
    }

    /// Re-writes the entries well within the bucket's max age.
    async fn refresh(self: Arc<Self>) {
        let period = Duration::from_secs(self.config.directory_refresh_secs.max(1));
        let mut shutdown = self.sig.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.changed() => return,
            }
            if self.connected() {
                self.republish().await;
            }
        }
    }

    /// Drains the router's queue.
    async fn outbound(self: Arc<Self>, mut rx: mpsc::Receiver<Delivery>) {
        let mut shutdown = self.sig.shutdown.clone();
        loop {
            let d = tokio::select! {
                d = rx.recv() => match d { Some(d) => d, None => return },
                _ = shutdown.changed() => return,
            };
            match d {
                Delivery::Forward { node, msg } => {
                    if !self.connected() {
                        self.metrics.dropped_disconnected.increment(1);
                        continue;
                    }
                    let payload = Wire::Signal {
                        from: self.node.to_string(),
                        msg,
                    }
                    .encode();
                    match self.client.publish(node_subject(&node), payload).await {
                        Ok(()) => self.metrics.messages_out.increment(1),
                        Err(_) => self.metrics.dropped_disconnected.increment(1),
                    }
                }
                Delivery::Connect { viewer, device } => {
                    let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
                        self.refuse(
                            viewer,
                            device,
                            ErrorCode::Busy,
                            "too many cross-node connects in flight",
                        );
                        continue;
                    };
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.connect(viewer, device).await;
                        drop(permit);
                    });
                }
                Delivery::Presence {
                    device_id, online, ..
                } => {
                    if !self.connected() {
                        // Re-published in full on reconnect.
                        continue;
                    }
                    let me = self.clone();
                    tokio::spawn(async move { me.directory_update(device_id, online).await });
                }
                Delivery::Send { .. } | Delivery::Close { .. } => {}
            }
        }
    }

    async fn directory_update(&self, device: Uuid, online: bool) {
        let Some(dir) = self.directory().await else {
            return;
        };
        let key = device.to_string();
        if online {
            let _ = dir.put(&key, Bytes::from(self.node.to_string())).await;
            return;
        }
        // Only our own entry: the camera may already be online on another node.
        if let Ok(Some(entry)) = dir.entry(&key).await {
            if entry.operation == kv::Operation::Put && entry.value.as_ref() == self.node.as_bytes()
            {
                let _ = dir.delete_expect_revision(&key, Some(entry.revision)).await;
            }
        }
    }

    fn refuse(&self, viewer: ConnId, device: Uuid, code: ErrorCode, message: &str) {
        self.sig.send(
            viewer,
            &ServerMessage::Error {
                code,
                message: message.to_owned(),
                reference: Some(device.to_string()),
            },
        );
    }

    /// Cross-node `connect`, bounded by `request_timeout_ms`.
    async fn connect(&self, viewer: ConnId, device: Uuid) {
        if !self.connected() {
            self.refuse(
                viewer,
                device,
                ErrorCode::Unavailable,
                "cross-node routing is unavailable (the relay lost NATS); retry",
            );
            return;
        }
        let timeout = Duration::from_millis(self.config.request_timeout_ms.max(1));
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, self.ask(viewer, device)).await;
        let (code, message) = match result {
            Ok(Ok((node, session_id, camera))) => {
                self.metrics
                    .connect_rtt
                    .record(started.elapsed().as_secs_f64());
                let mut out = Vec::new();
                self.sig
                    .router()
                    .remote_opened(viewer, device, session_id, node, camera, &mut out);
                if !self.sig.conns.contains_key(&viewer) {
                    // The viewer left while we asked: undo, tell the camera's node.
                    out.clear();
                    self.sig.router().drop_remote_viewer(viewer, &mut out);
                }
                self.sig.deliver(&mut out);
                self.sig.update_gauges();
                return;
            }
            Ok(Err(refused)) => refused,
            Err(_) => (
                ErrorCode::Unavailable,
                "the camera's relay did not answer in time".to_owned(),
            ),
        };
        self.refuse(viewer, device, code, &message);
    }

    /// Directory lookup + request to the camera's node.
    async fn ask(
        &self,
        viewer: ConnId,
        device: Uuid,
    ) -> Result<(NodeName, Uuid, ConnId), (ErrorCode, String)> {
        let unavailable = |e: String| (ErrorCode::Unavailable, e);
        let offline = || {
            (
                ErrorCode::CameraOffline,
                "the camera is not connected".to_owned(),
            )
        };
        let dir = self
            .directory()
            .await
            .ok_or_else(|| unavailable("cluster directory unavailable".into()))?;
        let node = dir
            .get(device.to_string())
            .await
            .map_err(|e| unavailable(format!("cluster directory: {e}")))?
            .ok_or_else(offline)?;
        let node = std::str::from_utf8(&node).map_err(|_| offline())?;
        if node == &*self.node {
            // Our own stale entry: the camera is not here (the router looked).
            return Err(offline());
        }
        let payload = Wire::Connect {
            from: self.node.to_string(),
            viewer,
            device,
        }
        .encode();
        let reply = match self.client.request(node_subject(node), payload).await {
            Ok(r) => r,
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                // The directory names a node that is gone (killed; its entry lapses).
                return Err(offline());
            }
            Err(e) => return Err(unavailable(format!("cross-node connect: {e}"))),
        };
        match Wire::decode(&reply.payload) {
            Some(Wire::Opened { session_id, camera }) => Ok((node.into(), session_id, camera)),
            Some(Wire::Refused { code, message }) => Err((code, message)),
            _ => Err(unavailable("bad reply from the camera's relay".into())),
        }
    }

    /// Messages from other nodes.
    async fn inbound(self: Arc<Self>, mut sub: async_nats::Subscriber) {
        let mut shutdown = self.sig.shutdown.clone();
        let mut out = Vec::new();
        loop {
            let msg = tokio::select! {
                m = sub.next() => match m { Some(m) => m, None => return },
                _ = shutdown.changed() => return,
            };
            self.metrics.messages_in.increment(1);
            match Wire::decode(&msg.payload) {
                Some(Wire::Signal { from, msg: signal }) => {
                    if !self.sig.router().remote_signal(&from, signal, &mut out) {
                        self.metrics.rejected_in.increment(1);
                    }
                    self.sig.deliver(&mut out);
                    self.sig.update_gauges();
                }
                Some(Wire::Connect {
                    from,
                    viewer,
                    device,
                }) => {
                    let reply =
                        match self
                            .sig
                            .router()
                            .remote_connect(from.as_str().into(), viewer, device)
                        {
                            Ok((session_id, camera)) => Wire::Opened { session_id, camera },
                            Err((code, message)) => Wire::Refused {
                                code,
                                message: message.to_owned(),
                            },
                        };
                    self.sig.update_gauges();
                    if let Some(to) = msg.reply {
                        let _ = self.client.publish(to, reply.encode()).await;
                    }
                }
                _ => self.metrics.rejected_in.increment(1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_versioned_json() {
        let w = Wire::Connect {
            from: "a".into(),
            viewer: 7,
            device: Uuid::nil(),
        };
        let bytes = w.clone().encode();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"type":"connect","from":"a","viewer":7,"device":"00000000-0000-0000-0000-000000000000"}"#
        );
        assert_eq!(Wire::decode(&bytes), Some(w));
        // Another version is not guessed at.
        assert_eq!(
            Wire::decode(text.replace("\"v\":1", "\"v\":2").as_bytes()),
            None
        );
    }
}
