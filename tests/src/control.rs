//! A vc-control under test: the real binary on port 0 with a temp SQLite file or a fresh
//! Postgres database (or another instance on an existing one), and a JSON client for it.
//! One place for every integration test that talks to vc-control.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use shared::api::{ActivateResponse, TicketResponse};
use uuid::Uuid;

use crate::{fresh_postgres_url, start, Running};

/// The password [`Control::user`] registers accounts with.
pub const USER_PASSWORD: &str = "password123";

/// The ticket secret [`start_control`] starts the instance with.
pub const TICKET_SECRET: &str = "control-api-test-ticket-secret-at-least-32-bytes";
/// The `server_url` [`start_control`] writes into QR codes.
pub const SERVER_URL: &str = "https://cams.example.test";

/// vc-control with the API-test defaults (fixed ticket secret and server URL) plus `extra_env`.
pub async fn start_control(db: Db, extra_env: &[(&str, &str)]) -> Result<Control> {
    let mut env = vec![
        ("VC_SERVER_URL", SERVER_URL),
        ("VC_RELAY__SIGNALING_URL", "ws://relay.test/ws"),
    ];
    env.extend_from_slice(extra_env);
    Control::start(db, TICKET_SECRET, &env).await
}

/// Which database a vc-control runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A running vc-control.
pub struct Control {
    pub running: Running,
    /// `http://<addr>` of the public API listener.
    pub base: String,
    /// `http://<addr>` of the admin listener (`/metrics`, `/healthz`).
    pub admin: String,
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
        Self::start_in(data, db_url, secret, extra_env).await
    }

    /// Another instance on an existing database (several vc-control behind a load balancer).
    pub async fn start_on(db_url: &str, secret: &str, extra_env: &[(&str, &str)]) -> Result<Self> {
        Self::start_in(tempfile::tempdir()?, db_url.to_owned(), secret, extra_env).await
    }

    async fn start_in(
        data: tempfile::TempDir,
        db_url: String,
        secret: &str,
        extra_env: &[(&str, &str)],
    ) -> Result<Self> {
        let data_dir = data.path().display().to_string();
        let mut env = vec![
            ("VC_LISTEN", "127.0.0.1:0"),
            ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
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
            admin: running.url("admin"),
            running,
            http: shared::tls::http_client_builder(None)
                .map_err(anyhow::Error::msg)?
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(64)
                .build()?,
            db_url,
            _data: data,
        })
    }

    /// The Prometheus text of the admin listener's `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        let res = self
            .http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await?;
        ensure!(
            res.status() == StatusCode::OK,
            "admin /metrics {}",
            res.status()
        );
        Ok(res.text().await?)
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

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Result<(StatusCode, Value)> {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Result<(StatusCode, Value)> {
        self.call(Method::GET, path, token, None).await
    }

    /// Registers and logs in `email` with [`USER_PASSWORD`]; returns the JWT.
    pub async fn user(&self, email: &str) -> Result<String> {
        let creds = json!({"email": email, "password": USER_PASSWORD});
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

    /// Logs in; returns the status and body (the JWT is `access_token`).
    pub async fn login(&self, email: &str, password: &str) -> Result<(StatusCode, Value)> {
        self.post(
            "/api/login",
            None,
            json!({"email": email, "password": password}),
        )
        .await
    }

    /// Logs in, expecting success; returns the JWT.
    pub async fn jwt(&self, email: &str, password: &str) -> Result<String> {
        let (s, v) = self.login(email, password).await?;
        ensure!(s == StatusCode::OK, "login {email} {s} {v}");
        Ok(v["access_token"].as_str().context("jwt")?.to_owned())
    }

    /// Runs `vc-control admin create --email <email>` on this instance's database, writing
    /// `password` and a newline to its stdin (not a terminal: it reads one line). Returns
    /// whether it succeeded and its stdout and stderr.
    pub async fn admin_create(&self, email: &str, password: &str) -> Result<(bool, String)> {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new(crate::binary("vc-control"));
        cmd.args(["admin", "create", "--email", email])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, _) in std::env::vars() {
            if k.starts_with("VC_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("VC_DATABASE_URL", &self.db_url)
            .env("VC_DATA_DIR", self._data.path())
            .env("VC_ARGON2__MEMORY_KIB", "1024")
            .env("VC_ARGON2__ITERATIONS", "1")
            .env("RUST_LOG", "warn");
        let mut child = cmd.spawn().context("spawn vc-control admin")?;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(format!("{password}\n").as_bytes()).await?;
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .context("vc-control admin did not finish within 30 s")??;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// An admin made with [`Control::admin_create`], logged in; returns the JWT.
    pub async fn admin(&self, email: &str, password: &str) -> Result<String> {
        let (ok, out) = self.admin_create(email, password).await?;
        ensure!(ok, "admin create failed: {out}");
        self.jwt(email, password).await
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

    /// Every device `GET /api/camera/devices` lists for `jwt`, all pages.
    pub async fn devices(&self, jwt: &str) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut query = String::new();
        loop {
            let page = self.devices_page(jwt, &query).await?;
            ensure!(page.status == StatusCode::OK, "devices {}", page.status);
            all.extend(page.devices);
            match page.next {
                Some(next) => query = format!("after={next}"),
                None => return Ok(all),
            }
        }
    }

    /// One page of `GET /api/camera/devices?<query>` as `jwt`.
    pub async fn devices_page(&self, jwt: &str, query: &str) -> Result<DevicePage> {
        let res = self
            .http
            .get(format!("{}/api/camera/devices?{query}", self.base))
            .bearer_auth(jwt)
            .send()
            .await?;
        let status = res.status();
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (next, link) = (header("x-next-cursor"), header("link"));
        let body: Value = res.json().await?;
        let devices = match body.as_array() {
            Some(a) if status == StatusCode::OK => a.clone(),
            _ => Vec::new(),
        };
        Ok(DevicePage {
            status,
            devices,
            next,
            link,
            body,
        })
    }

    /// `POST /api/camera/devices/{device}/shares` as `jwt`, inviting `email` as a viewer.
    pub async fn share(&self, jwt: &str, device: Uuid, email: &str) -> Result<(StatusCode, Value)> {
        self.post(
            &format!("/api/camera/devices/{device}/shares"),
            Some(jwt),
            json!({"email": email, "role": "viewer"}),
        )
        .await
    }

    /// Runs `query` on this instance's database with the sqlite3 or psql client; returns
    /// the rows, one a line, columns separated by `|`.
    pub async fn sql(&self, query: &str) -> Result<String> {
        let out = match self.db_url.strip_prefix("sqlite://") {
            Some(rest) => {
                let path = rest.split('?').next().unwrap_or_default();
                tokio::process::Command::new("sqlite3")
                    .arg(path)
                    .arg(query)
                    .output()
                    .await?
            }
            None => {
                tokio::process::Command::new("psql")
                    .arg(&self.db_url)
                    .args(["-At", "-c", query])
                    .output()
                    .await?
            }
        };
        ensure!(
            out.status.success(),
            "{query}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
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

    pub async fn onboard(&self, jwt: &str, name: &str) -> Result<Value> {
        let (s, v) = self
            .post("/api/camera/onboard", Some(jwt), json!({"camera_model": "CP_PLUS_WIFI_V2", "wifi_ssid": "HomeNet", "wifi_password": "wifi-pass-123", "device_name": name}))
            .await?;
        ensure!(s == StatusCode::CREATED, "onboard {s} {v}");
        Ok(v)
    }

    pub async fn activate(&self, token: &str, uid: &str) -> Result<(StatusCode, Value)> {
        self.post("/api/camera/activate", None, json!({"device_token": token, "device_uid": uid, "camera_model": "CP_PLUS_WIFI_V2", "local_ip": "192.168.1.50"}))
            .await
    }
}

/// One page of the device list.
#[derive(Debug)]
pub struct DevicePage {
    pub status: StatusCode,
    /// The body's array (empty unless 200).
    pub devices: Vec<Value>,
    /// `x-next-cursor`: more follow.
    pub next: Option<String>,
    pub link: Option<String>,
    pub body: Value,
}

/// The `error.code` of an error body.
pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}
