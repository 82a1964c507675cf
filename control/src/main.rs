//! `vc-control [--config FILE]`: reads config, binds, prints `listening http <addr>`,
//! `listening admin <addr>` (`/metrics`) and `ready` on stdout (logs go to stderr), serves
//! until SIGINT/SIGTERM. The line says `http`
//! with `[tls]` set too: it names the listener (the harness's contract), not the scheme.
//! `vc-control admin create --email E`: see [`control::admin_cli`].

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();

    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("admin") {
        let done = control::admin_cli::run(args.skip(1).collect()).await?;
        println!("{done}");
        return Ok(());
    }
    let mut config_file: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                config_file = Some(args.next().context("--config needs a path")?.into())
            }
            "--help" | "-h" => {
                println!("usage: vc-control [--config FILE]   (env overrides: VC_<KEY>, VC_<SECTION>__<KEY>)");
                println!("       {}", control::admin_cli::USAGE);
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let mut config: control::Config =
        shared::config::load(config_file.as_deref()).context("loading configuration")?;

    let listeners = control::Listeners::bind(&config)
        .await
        .with_context(|| format!("binding {} and {}", config.listen, config.admin_listen))?;
    let addr = listeners.api.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    // A derived server_url names the port actually bound (`listen` may say port 0).
    config.server_url = config.resolve_server_url(&addr.to_string());
    let app = control::App::new(config).await.context("starting")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening http {addr}")?;
        writeln!(out, "listening admin {admin_addr}")?;
        writeln!(out, "ready")?;
        out.flush()?;
    }
    let scheme = if app.tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, %admin_addr, scheme, "vc-control serving");
    control::serve(listeners, app, shutdown_signal()).await;
    tracing::info!("vc-control stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
