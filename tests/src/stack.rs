//! The real vc-control (and vc-relay) for integration tests: started on port 0 with a known
//! ticket secret, users and activated cameras made through the HTTP API.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use shared::api::{ActivateResponse, TicketResponse};
use uuid::Uuid;

use crate::{fresh_postgres_url, start, Running};

/// Which database a vc-control runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A running vc-control.
pub struct Control {
    pub running: Running,
    pub base: String,
    pub http: Client,
    /// The database URL (a fresh Postgres database, or SQLite in the temp dir).
    pub db_url: String,
    _data: tempfile::TempDir,
}

impl Control {
    /// Starts vc-control on `db` with ticket secret `secret`; `extra_env` overrides.
    /// Argon2 runs at a low cost (1 MiB, one pass) to keep suites fast.
    pub async fn start(db: Db, secret: &str, extra_env: &[(&str, &str)]) -> Result<Self> {
        let data = tempfile::tempdir()?;
        let db_url = match db {
            Db::Sqlite => format!("sqlite://{}/vc.db?mode=rwc", data.path().display()),
            Db::Postgres => fresh_postgres_url().await?,
        };
        let data_dir = data.path().display().to_string();
        let mut env = vec![
            ("VC_LISTEN", "127.0.0.1:0"),
            ("VC_DATABASE_URL", db_url.as_str()),
            ("VC_DATA_DIR", data_dir.as_str()),
            ("VC_TICKET_SECRET", secret),
            ("VC_ARGON2__MEMORY_KIB", "1024"),
            ("VC_ARGON2__ITERATIONS", "1"),
            ("RUST_LOG", "warn"),
        ];
        env.extend_from_slice(extra_env);
        let running = start("vc-control", &[], &env).await?;
        Ok(Self {
            base: running.url("http"),
            running,
            http: Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(64)
                .build()?,
            db_url,
            _data: data,
        })
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        jwt: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        crate::api_call(&self.http, &self.base, method, path, jwt, body).await
    }

    /// Registers and logs in `email`; returns the JWT.
    pub async fn user(&self, email: &str) -> Result<String> {
        let creds = json!({"email": email, "password": "password123"});
        let (s, v) = self
            .call(Method::POST, "/api/register", None, Some(creds.clone()))
            .await?;
        ensure!(s == StatusCode::CREATED, "register {s} {v}");
        let (s, v) = self
            .call(Method::POST, "/api/login", None, Some(creds))
            .await?;
        ensure!(s == StatusCode::OK, "login {s} {v}");
        Ok(v["access_token"].as_str().context("jwt")?.to_owned())
    }

    /// Onboards and activates a camera named `uid`; returns `(device_id, device_secret)`.
    pub async fn camera(&self, jwt: &str, uid: &str) -> Result<(Uuid, String)> {
        let (s, ob) = self
            .call(
                Method::POST,
                "/api/camera/onboard",
                Some(jwt),
                Some(
                    json!({"camera_model": "CP_PLUS_WIFI_V2", "wifi_ssid": "HomeNet",
                            "wifi_password": "wifi-pass-123", "device_name": uid}),
                ),
            )
            .await?;
        ensure!(s == StatusCode::CREATED, "onboard {s} {ob}");
        let (s, v) = self
            .call(
                Method::POST,
                "/api/camera/activate",
                None,
                Some(
                    json!({"device_token": ob["device_token"], "device_uid": uid,
                            "camera_model": "CP_PLUS_WIFI_V2"}),
                ),
            )
            .await?;
        ensure!(s == StatusCode::OK, "activate {s} {v}");
        let act: ActivateResponse = serde_json::from_value(v)?;
        Ok((act.device_id, act.device_secret))
    }

    pub async fn camera_ticket(&self, device: Uuid, secret: &str) -> Result<TicketResponse> {
        let (s, v) = self
            .call(
                Method::POST,
                "/api/relay/ticket",
                None,
                Some(json!({"device_id": device, "device_secret": secret})),
            )
            .await?;
        ensure!(s == StatusCode::OK, "camera ticket {s} {v}");
        Ok(serde_json::from_value(v)?)
    }

    pub async fn viewer_ticket(&self, jwt: &str, device: Uuid) -> Result<TicketResponse> {
        let (s, v) = self
            .call(
                Method::POST,
                "/api/relay/ticket",
                Some(jwt),
                Some(json!({"device_id": device})),
            )
            .await?;
        ensure!(s == StatusCode::OK, "viewer ticket {s} {v}");
        Ok(serde_json::from_value(v)?)
    }

    /// `GET /api/camera/devices` as `jwt`.
    pub async fn devices(&self, jwt: &str) -> Result<Vec<Value>> {
        let (s, v) = self
            .call(Method::GET, "/api/camera/devices", Some(jwt), None)
            .await?;
        ensure!(s == StatusCode::OK, "devices {s} {v}");
        Ok(v.as_array().context("device list")?.clone())
    }

    /// The device as `GET /api/camera/devices` lists it.
    pub async fn listed(&self, jwt: &str, device: Uuid) -> Result<Value> {
        self.devices(jwt)
            .await?
            .into_iter()
            .find(|d| d["id"] == device.to_string())
            .context("device not listed")
    }

    /// Waits (up to 5 s) until the device list shows `status`; returns how long it took.
    pub async fn wait_status(&self, jwt: &str, device: Uuid, status: &str) -> Result<Duration> {
        let t0 = Instant::now();
        loop {
            let d = self.listed(jwt, device).await?;
            if d["status"] == status {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(5) {
                bail!("device {device} did not become {status}: {d}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Starts vc-relay with ticket secret `secret`, reporting presence to `control_url` (empty:
/// none), all listeners on loopback port 0; `extra_env` overrides.
pub async fn start_relay(
    secret: &str,
    control_url: &str,
    extra_env: &[(&str, &str)],
) -> Result<Running> {
    let mut env = vec![
        ("VC_TICKET_SECRET", secret),
        ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
        ("VC_SIGNALING__LISTEN", "127.0.0.1:0"),
        ("VC_SIGNALING__CONTROL_URL", control_url),
        ("VC_TURN__LISTEN", "127.0.0.1:0"),
        // Only used with [tls]; never the fixed default 5349 (tests run in parallel).
        ("VC_TURN__TLS_LISTEN", "127.0.0.1:0"),
        ("RUST_LOG", "warn"),
    ];
    env.extend_from_slice(extra_env);
    start("vc-relay", &[], &env).await
}

/// One Prometheus sample's value from a text exposition (`name` with no labels, or
/// `name{labels}` exactly as exported); `None` when absent.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}
