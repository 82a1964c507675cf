//! vc-control: the control plane of VisionConnect. Accounts, camera models, QR onboarding,
//! camera activation, devices, relay tickets and the relay's presence reports, over
//! HTTP/JSON (warp) on SQLite or Postgres (sqlx).
//!
//! [`run`] serves on a listener the caller bound, so `main` and in-process tests share it.

pub mod admin_cli;
pub mod audit;
pub mod auth;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod http;
pub mod limiter;
pub mod presence;
pub mod qr;
pub mod routes;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shared::ticket::TicketKey;
use shared::Secret;
use tokio::sync::broadcast;
use uuid::Uuid;

pub use config::Config;
pub use error::{ApiError, StartError};

/// Everything a request handler needs, shared read-mostly between requests.
pub struct App {
    pub config: Config,
    pub db: db::Db,
    pub jwt: auth::Jwt,
    pub passwords: auth::Passwords,
    pub tickets: TicketKey,
    /// Login and registration limits, kept in the database (shared by all instances).
    pub limiter: limiter::Limiter,
    /// The camera models, read once at start.
    pub models: Vec<routes::onboarding::CameraModel>,
    /// Device ids as they activate, to wake check-status long polls.
    pub activations: broadcast::Sender<Uuid>,
    pub rng: ring::rand::SystemRandom,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The HTTP listener's certificate when `[tls]` is set (None: plaintext).
    pub tls: Option<Arc<shared::tls::ReloadableCert>>,
    /// Reloads `tls` on SIGHUP and on file changes; aborted when [`serve`] returns.
    tls_watch: Option<tokio::task::JoinHandle<()>>,
}

impl App {
    /// Opens and migrates the database and loads (or generates) the secrets.
    pub async fn new(mut config: Config) -> Result<Arc<Self>, StartError> {
        // Loaded first: a bad certificate fails startup before the database is touched.
        let tls = config.load_tls()?;
        // (`main` already resolved it with the bound port; then this keeps it.)
        config.server_url = config.resolve_server_url(&config.listen);
        // Owner-only before anything is written into it (warns if an existing one is not).
        shared::config::create_private_dir(&config.data_dir)
            .map_err(|e| StartError::Config(e.to_string()))?;
        let jwt_secret = secret_or_generate(
            &config.jwt_secret,
            "jwt_secret (VC_JWT_SECRET)",
            &config,
            "jwt.secret",
        )?;
        let ticket_secret = secret_or_generate(
            &config.ticket_secret,
            "ticket_secret (VC_TICKET_SECRET)",
            &config,
            "ticket.secret",
        )?;
        // The ticket secret is shared with every relay; the login key must not be, or a
        // relay's operator could mint login tokens.
        if jwt_secret == ticket_secret {
            return Err(StartError::Config(
                "jwt_secret and ticket_secret are the same: use two different secrets".into(),
            ));
        }
        let db = db::Db::connect(&config.database_url, config.db_max_connections).await?;
        let models = routes::onboarding::load_models(&db).await?;
        let (activations, _) = broadcast::channel(1024);
        let passwords = auth::Passwords::new(&config.argon2)?;
        // Started here, not in `serve`: the SIGHUP handler must be in place before `main`
        // prints `ready`, or an early SIGHUP would kill the process (its default action).
        // Last, so that a failed start leaves no watcher behind.
        let tls_watch = match &tls {
            Some(cert) => {
                let check = Duration::from_secs(config.tls.reload_check_secs);
                Some(tokio::spawn(cert.clone().watch(check)?))
            }
            None => None,
        };
        Ok(Arc::new(Self {
            jwt: auth::Jwt::new(&jwt_secret, config.jwt_ttl_secs),
            passwords,
            tickets: TicketKey::new(&ticket_secret),
            limiter: limiter::Limiter::new(db.clone()),
            models,
            activations,
            rng: ring::rand::SystemRandom::new(),
            metrics: routes::health::metrics_handle(),
            tls,
            tls_watch,
            db,
            config,
        }))
    }
}

/// The configured secret (`setting` names it in errors), or the one kept in
/// `data_dir/<file>` (created on first start). Either must have
/// [`shared::secret::MIN_SECRET_BYTES`].
fn secret_or_generate(
    configured: &Secret,
    setting: &str,
    config: &Config,
    file: &str,
) -> Result<Secret, StartError> {
    let weak = |e: shared::Error| StartError::Config(e.to_string());
    if !configured.is_empty() {
        configured.check_strength(setting).map_err(weak)?;
        return Ok(configured.clone());
    }
    let path = config.data_dir.join(file);
    let (secret, created) = shared::config::load_or_create_secret(&path).map_err(weak)?;
    secret
        .check_strength(&format!("{} ({setting} is empty)", path.display()))
        .map_err(weak)?;
    if created {
        tracing::warn!(path = %path.display(), "no {file} configured: generated a new one and stored it");
    } else {
        tracing::info!(path = %path.display(), "using stored {file}");
    }
    Ok(secret)
}

/// The listeners the caller bound before starting (so tests and `main` can bind port 0 and
/// print the addresses).
pub struct Listeners {
    /// The public API (and web app); HTTPS with `[tls]`.
    pub api: tokio::net::TcpListener,
    /// `/metrics` and `/healthz` for operators (`admin_listen`), plain HTTP.
    pub admin: tokio::net::TcpListener,
}

impl Listeners {
    /// Binds `listen` and `admin_listen`.
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        Ok(Self {
            api: tokio::net::TcpListener::bind(&config.listen).await?,
            admin: tokio::net::TcpListener::bind(&config.admin_listen).await?,
        })
    }
}

/// Serves the API and the admin listener until `shutdown` completes, then finishes
/// in-flight requests.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let app = App::new(config).await?;
    serve(listeners, app, shutdown).await;
    Ok(())
}

/// Serves an already built [`App`] (lets callers learn the app before serving).
pub async fn serve(
    listeners: Listeners,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let sweeper = tokio::spawn(sweep_expired_pending(app.clone()));
    let pruner = tokio::spawn(prune_rate_limits(app.clone()));
    let http = app.config.http.clone();
    // h2 first: both ends prefer it when the client offers it; http/1.1 for the rest.
    let tls = app.tls.as_ref().map(|c| c.acceptor(&[b"h2", b"http/1.1"]));
    // Taken before `app` moves into the routes: the watcher stops with the server.
    let watcher = app.tls_watch.as_ref().map(|w| w.abort_handle());
    // The admin listener stops with the API: same limits, no TLS (loopback, like vc-relay's).
    let (stop_admin, mut admin_stopped) = tokio::sync::watch::channel(false);
    let admin = {
        let (routes, http) = (routes::admin(app.clone()), http.clone());
        tokio::spawn(async move {
            let stop = async move {
                let _ = admin_stopped.changed().await;
            };
            http::serve(listeners.admin, routes, &http, None, stop).await;
        })
    };
    http::serve(listeners.api, routes::all(app), &http, tls, shutdown).await;
    let _ = stop_admin.send(true);
    let _ = admin.await;
    if let Some(w) = watcher {
        w.abort();
    }
    sweeper.abort();
    pruner.abort();
}

/// Every minute, deletes rate-limit rows whose window ended, so the table holds only
/// the last window's clients.
async fn prune_rate_limits(app: Arc<App>) {
    let longest = app
        .config
        .login_window_secs
        .max(app.config.register_window_secs);
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        if let Err(e) = app.limiter.prune(routes::now_secs(), longest).await {
            tracing::warn!(error = %e, "pruning rate limits failed");
        }
    }
}

/// Every minute, deletes onboarded cameras whose token expired more than
/// `pending_retention_secs` ago without an activation (they can never activate now), and
/// logged-out tokens' rows once the tokens expired.
async fn sweep_expired_pending(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let retention = i64::try_from(app.config.pending_retention_secs).unwrap_or(i64::MAX);
        let cutoff = routes::now_secs().saturating_sub(retention);
        let swept =
            sqlx::query("DELETE FROM devices WHERE status = 'pending' AND token_expires_at < $1")
                .bind(cutoff)
                .execute(&app.db.pool)
                .await;
        let now_ms = u64::try_from(routes::now_ms()).unwrap_or(0);
        if let Err(e) = routes::account::prune_revoked_jwts(&app.db).await {
            tracing::warn!(error = %e, "pruning expired logged-out tokens failed");
        }
        if let Err(e) = presence::prune(&app.db, now_ms).await {
            tracing::warn!(error = %e, "pruning old node leases and revocations failed");
        }
        match swept {
            Ok(done) if done.rows_affected() > 0 => {
                tracing::info!(
                    rows = done.rows_affected(),
                    "deleted expired pending cameras"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweeping expired pending cameras failed"),
        }
    }
}
