//! A tiny L4 (TCP) load balancer for cluster tests, standing in for DNS round robin or a cloud
//! load balancer in front of relay nodes: each new connection goes to the next backend in
//! turn, skipping backends that refuse the connection (a dead node), and bytes are copied both
//! ways unchanged; optionally each upstream connection starts with a PROXY protocol v2 header
//! naming the client (HAProxy's `send-proxy-v2`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

/// A running balancer; stops when dropped.
pub struct Balancer {
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// Listens on a free loopback port and balances over `backends` (`host:port`).
    pub async fn start(backends: Vec<String>) -> Result<Self> {
        Self::start_with(backends, false).await
    }

    /// [`Self::start`], prepending a PROXY v2 header to every upstream connection.
    pub async fn start_proxy_v2(backends: Vec<String>) -> Result<Self> {
        Self::start_with(backends, true).await
    }

    async fn start_with(backends: Vec<String>, proxy_v2: bool) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let next = Arc::new(AtomicUsize::new(0));
        let backends = Arc::new(backends);
        let task = tokio::spawn(async move {
            while let Ok((mut client, from)) = listener.accept().await {
                let (backends, next) = (backends.clone(), next.clone());
                tokio::spawn(async move {
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    for i in 0..backends.len() {
                        let backend = &backends[(start + i) % backends.len()];
                        if let Ok(mut upstream) = TcpStream::connect(backend).await {
                            if proxy_v2 {
                                let to = client.local_addr().unwrap_or(from);
                                let header = relay::proxy::encode(from, to);
                                if upstream.write_all(&header).await.is_err() {
                                    return;
                                }
                            }
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            return;
                        }
                    }
                });
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
