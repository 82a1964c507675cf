//! Running several vc-relay nodes as one fleet (issue 9): the NATS driver beside the WebSocket
//! driver. Design, subjects, KV bucket, wire format and failure behaviour: `docs/cluster.md`.
//!
//! The router stays sans-IO: it emits [`Delivery::Forward`] (a message for a session party on
//! another node) and [`Delivery::Connect`] (find the camera's node and open a session there);
//! [`Signaling::deliver`](crate::signaling::Signaling) hands them to [`ClusterLink::push`], a
//! non-blocking `try_send` into one bounded queue (full: dropped and counted, the router never
//! waits on NATS). The decisions about them are sans-IO too ([`state::ClusterCore`]: NATS
//! events, results and time in, actions out, unit-tested with a virtual clock); this driver
//! only performs its actions:
//! * `Forward` -> publish to `vc.node.<node>` (dropped and counted while NATS is down: stale
//!   signaling is useless after an outage, the peers renegotiate).
//! * `Connect` -> directory lookup (KV `vc_directory`: device -> node) and a request to the
//!   camera's node; the reply opens the session on both sides. Fails fast (error
//!   `unavailable`) while NATS is down, `camera_offline` when the directory has no live node.
//! * `Presence` -> directory put / compare-and-delete.
//!
//! async-nats reconnects by itself (backoff with jitter, unlimited attempts) and re-subscribes;
//! on every (re)connect the driver re-publishes this node's directory entries.

mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use rand::Rng;
use serde::{Deserialize, Serialize};
use shared::signaling::{ErrorCode, ServerMessage};
use tokio::sync::{mpsc, RwLock};
use uuid::Uuid;

use self::state::{Action, ClusterCore, CoreLimits, DropReason, Lookup, Reply, Ticket};
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
    dropped_slow: Counter,
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
            dropped_slow: counter!("vc_relay_cluster_dropped_total", "reason" => "publish_full"),
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
}

/// A lookup or request the driver performed, back to the state machine.
enum Done {
    Lookup(Ticket, Lookup),
    Reply(Ticket, Reply),
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
        // The state machine times connects out itself; this only ends the request's task.
        .request_timeout(Some(Duration::from_millis(
            config.request_timeout_ms.max(1) + 1000,
        )))
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
    let state = ClusterCore::new(
        node.clone(),
        CoreLimits {
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            max_inflight_connects: config.max_inflight_connects,
            directory_refresh: Duration::from_secs(config.directory_refresh_secs),
        },
    );
    let (publish_tx, publish_rx) = mpsc::channel(config.outbound_queue.max(1));
    let driver = Arc::new(Driver {
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
    tokio::spawn(driver.clone().inbound(subscriber));
    tokio::spawn(driver.clone().publisher(publish_rx));
    tokio::spawn(driver.clone().run(state, queue.0, events_rx, publish_tx));
    Ok(())
}

impl Driver {
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

    /// The state machine's loop: router deliveries, NATS events, finished lookups/requests
    /// and its timer in; its actions performed (none of them waits on NATS here).
    async fn run(
        self: Arc<Self>,
        mut state: ClusterCore,
        mut queue: mpsc::Receiver<Delivery>,
        mut events: mpsc::UnboundedReceiver<async_nats::Event>,
        publish: mpsc::Sender<(String, Bytes)>,
    ) {
        let mut shutdown = self.sig.shutdown.clone();
        // Bounded by `max_inflight_connects`: one result per pending connect step.
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let mut out = Vec::new();
        loop {
            let wake = state.poll_timeout();
            let timer = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                d = queue.recv() => match d {
                    Some(d) => state.handle_delivery(d, Instant::now(), &mut out),
                    None => return,
                },
                e = events.recv() => match e {
                    Some(async_nats::Event::Connected) => {
                        tracing::info!(node = %self.node, "cluster: NATS connected");
                        self.metrics.connected.set(1.0);
                        self.metrics.reconnects.increment(1);
                        // A restarted NATS may have lost the bucket (no persistent store).
                        *self.directory.write().await = None;
                        state.handle_connected(Instant::now(), &mut out);
                    }
                    Some(async_nats::Event::Disconnected) => {
                        tracing::warn!(node = %self.node, "cluster: NATS disconnected");
                        self.metrics.connected.set(0.0);
                        state.handle_disconnected(Instant::now(), &mut out);
                    }
                    Some(other) => tracing::debug!(event = %other, "cluster: NATS event"),
                    None => return,
                },
                Some(done) = done_rx.recv() => match done {
                    Done::Lookup(t, r) => state.lookup_done(t, r, &mut out),
                    Done::Reply(t, r) => state.request_done(t, r, Instant::now(), &mut out),
                },
                _ = timer => state.handle_timeout(Instant::now(), &mut out),
                _ = shutdown.changed() => return,
            }
            for action in out.drain(..) {
                self.perform(action, &publish, &done_tx);
            }
        }
    }

    fn perform(
        self: &Arc<Self>,
        action: Action,
        publish: &mpsc::Sender<(String, Bytes)>,
        done: &mpsc::UnboundedSender<Done>,
    ) {
        match action {
            Action::Publish { subject, payload } => {
                // Full: NATS cannot keep up; stale signaling is dropped, never waited for.
                if publish.try_send((subject, payload)).is_err() {
                    self.metrics.dropped_slow.increment(1);
                }
            }
            Action::Dropped(DropReason::NatsDown) => self.metrics.dropped_disconnected.increment(1),
            Action::Lookup { ticket, device } => {
                let (me, done) = (self.clone(), done.clone());
                tokio::spawn(async move {
                    let r = me.lookup(device).await;
                    let _ = done.send(Done::Lookup(ticket, r));
                });
            }
            Action::Request {
                ticket,
                subject,
                payload,
            } => {
                let (me, done) = (self.clone(), done.clone());
                tokio::spawn(async move {
                    let r = match me.client.request(subject, payload).await {
                        Ok(m) => Reply::Payload(m.payload),
                        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                            Reply::NoResponders
                        }
                        Err(e) => Reply::Failed(e.to_string()),
                    };
                    let _ = done.send(Done::Reply(ticket, r));
                });
            }
            Action::DirectoryPut { device } => {
                let me = self.clone();
                tokio::spawn(async move { me.directory_put(device).await });
            }
            Action::DirectoryDeleteOwn { device } => {
                let me = self.clone();
                tokio::spawn(async move { me.directory_delete_own(device).await });
            }
            Action::Republish => {
                let me = self.clone();
                tokio::spawn(async move { me.republish().await });
            }
            Action::Refuse {
                viewer,
                device,
                code,
                message,
            } => self.sig.send(
                viewer,
                &ServerMessage::Error {
                    code,
                    message,
                    reference: Some(device.to_string()),
                },
            ),
            Action::Opened {
                viewer,
                device,
                node,
                session_id,
                camera,
                rtt,
            } => {
                self.metrics.connect_rtt.record(rtt.as_secs_f64());
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
            }
        }
    }

    /// Publishes in order (signaling of one session must not be reordered).
    async fn publisher(self: Arc<Self>, mut rx: mpsc::Receiver<(String, Bytes)>) {
        while let Some((subject, payload)) = rx.recv().await {
            match self.client.publish(subject, payload).await {
                Ok(()) => self.metrics.messages_out.increment(1),
                Err(_) => self.metrics.dropped_disconnected.increment(1),
            }
        }
    }

    async fn lookup(&self, device: Uuid) -> Lookup {
        let Some(dir) = self.directory().await else {
            return Lookup::Failed("cluster directory unavailable".into());
        };
        match dir.get(device.to_string()).await {
            Ok(Some(v)) => match String::from_utf8(v.to_vec()) {
                Ok(node) => Lookup::Found(node),
                Err(_) => Lookup::Missing,
            },
            Ok(None) => Lookup::Missing,
            Err(e) => Lookup::Failed(e.to_string()),
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

    async fn directory_put(&self, device: Uuid) {
        if let Some(dir) = self.directory().await {
            let _ = dir
                .put(device.to_string(), Bytes::from(self.node.to_string()))
                .await;
        }
    }

    async fn directory_delete_own(&self, device: Uuid) {
        let Some(dir) = self.directory().await else {
            return;
        };
        let key = device.to_string();
        if let Ok(Some(entry)) = dir.entry(&key).await {
            if entry.operation == kv::Operation::Put && entry.value.as_ref() == self.node.as_bytes()
            {
                let _ = dir.delete_expect_revision(&key, Some(entry.revision)).await;
            }
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
