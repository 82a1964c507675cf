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
    let metrics = relay::admin::install_recorder();
    let (admin, admin_addr) = relay::admin::bind(&config.admin_listen)
        .await
        .with_context(|| format!("bind admin {}", config.admin_listen))?;
    println!("listening admin {admin_addr}");
    tokio::spawn(relay::admin::serve(admin, metrics));

    // Signaling (WebSocket, issue 5).
    let ticket_key = shared::ticket::TicketKey::new(&config.resolve_ticket_secret()?);

    // TURN (issue 4): UDP workers and TCP on one port.
    let turn = relay::turn::TurnService::start(&config.turn, Some(ticket_key.clone()))
        .with_context(|| format!("start TURN on {}", config.turn.listen))?;
    println!("listening turn-udp {}", turn.udp_addr);
    if let Some(addr) = turn.tcp_addr {
        println!("listening turn-tcp {addr}");
    }
    if let Err(e) = relay::signaling::raise_fd_limit() {
        tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE");
    }
    let signaling_listener = tokio::net::TcpListener::bind(&config.signaling.listen)
        .await
        .with_context(|| format!("bind signaling {}", config.signaling.listen))?;
    println!("listening signaling {}", signaling_listener.local_addr()?);
    // The TURN port advertised in `welcome.ice_servers` when `signaling.turn_uris` is empty
    // (should be the bound TURN port once the TURN listener is wired in here).
    let turn_port: Option<u16> = Some(turn.udp_addr.port());
    let cluster = relay::cluster::link(&config.cluster);
    let (link, queue) = cluster.map_or((None, None), |(l, q)| (Some(l), Some(q)));
    let signaling = relay::signaling::Signaling::start_clustered(
        config.signaling.clone(),
        ticket_key.clone(),
        signaling_listener,
        turn_port,
        link,
    );
    if let Some(queue) = queue {
        relay::cluster::spawn(config.cluster.clone(), signaling.signaling.clone(), queue).await?;
        println!(
            "cluster {} {}",
            config.cluster.node_id, config.cluster.nats_url
        );
    }

    println!("ready");
    shutdown_signal().await;
    tracing::info!("shutting down");
    signaling
        .shutdown(std::time::Duration::from_secs(config.drain_secs.min(5)))
        .await;
    turn.drain(std::time::Duration::from_secs(config.drain_secs))
        .await;
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
