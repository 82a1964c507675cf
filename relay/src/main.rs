//! `vc-relay` binary: reads config, binds every listener, prints `listening <name> <addr>`
//! lines and `ready` (the integration tests read them), runs until SIGTERM/SIGINT.

use std::path::PathBuf;

use anyhow::{Context, Result};
use relay::RelayConfig;

fn config_path() -> Result<Option<PathBuf>> {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => path = Some(PathBuf::from(args.next().context("--config PATH")?)),
            "--help" | "-h" => {
                println!("usage: vc-relay [--config relay.toml]   (env overrides: VC_*)");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(path)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config: RelayConfig = shared::config::load(config_path()?.as_deref())?;
    let (admin, _) = relay::admin::bind(&config.admin_listen)
        .await
        .with_context(|| format!("bind admin {}", config.admin_listen))?;
    let signaling = tokio::net::TcpListener::bind(&config.signaling.listen)
        .await
        .with_context(|| format!("bind signaling {}", config.signaling.listen))?;
    let turn_listen = config.turn.listen.clone();
    let cluster_line = format!(
        "cluster {} {}",
        config.cluster.node_id, config.cluster.nats_url
    );
    let relay = relay::Relay::start(config, relay::Listeners { admin, signaling })
        .await
        .with_context(|| format!("start relay (TURN on {turn_listen})"))?;
    println!("listening admin {}", relay.admin_addr);
    println!("listening turn-udp {}", relay.turn_udp_addr);
    if let Some(addr) = relay.turn_tcp_addr {
        println!("listening turn-tcp {addr}");
    }
    if let Some(addr) = relay.turn_tls_addr {
        println!("listening turn-tls {addr}");
    }
    println!("listening signaling {}", relay.signaling_addr);
    if let Some(addr) = relay.single_port_addr {
        println!("listening single-port {addr}");
    }
    if let Some(addr) = relay.quic_addr {
        println!("listening quic {addr}");
    }
    if relay.clustered {
        println!("{cluster_line}");
    }
    println!("ready");
    shutdown_signal().await;
    tracing::info!("shutting down");
    relay.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
