//! A vc-control under test: the real binary on port 0 with a temp SQLite file or a fresh
//! Postgres database, and a JSON client for it (shared by control_api.rs and
//! abuse_control.rs).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::{fresh_postgres_url, start, Running};

/// The ticket secret the instance is started with (tests mint and verify tickets with it).
pub const TICKET_SECRET: &str = "control-api-test-ticket-secret";
/// The `server_url` written into QR codes.
pub const SERVER_URL: &str = "https://cams.example.test";

/// A running vc-control and an HTTP client for it.
pub struct Control {
    pub running: Running,
    pub base: String,
    pub http: Client,
    _data: tempfile::TempDir,
}

/// Which database the instance runs on.
pub enum Db {
    Sqlite,
    Postgres,
}

/// Starts vc-control with the test defaults (cheap argon2, fixed ticket secret) plus
/// `extra_env`.
pub async fn start_control(db: Db, extra_env: &[(&str, &str)]) -> Result<Control> {
    let data = tempfile::tempdir()?;
    let url = match db {
        Db::Sqlite => format!("sqlite://{}/vc.db?mode=rwc", data.path().display()),
        Db::Postgres => fresh_postgres_url().await?,
    };
    let data_dir = data.path().display().to_string();
    let mut env = vec![
        ("VC_LISTEN", "127.0.0.1:0"),
        ("VC_DATABASE_URL", url.as_str()),
        ("VC_DATA_DIR", data_dir.as_str()),
        ("VC_SERVER_URL", SERVER_URL),
        ("VC_TICKET_SECRET", TICKET_SECRET),
        ("VC_RELAY__SIGNALING_URL", "ws://relay.test/ws"),
        ("VC_ARGON2__MEMORY_KIB", "1024"),
        ("VC_ARGON2__ITERATIONS", "1"),
        ("RUST_LOG", "warn"),
    ];
    env.extend_from_slice(extra_env);
    let running = start("vc-control", &[], &env).await?;
    let base = running.url("http");
    let http = Client::builder().timeout(Duration::from_secs(40)).build()?;
    Ok(Control {
        running,
        base,
        http,
        _data: data,
    })
}

impl Control {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        crate::api_call(&self.http, &self.base, method, path, token, body).await
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

    /// Registers and logs in; returns the JWT.
    pub async fn user(&self, email: &str) -> Result<String> {
        let (s, v) = self
            .post(
                "/api/register",
                None,
                json!({"email": email, "password": "password123"}),
            )
            .await?;
        ensure!(s == StatusCode::CREATED, "register {s} {v}");
        let (s, v) = self
            .post(
                "/api/login",
                None,
                json!({"email": email, "password": "password123"}),
            )
            .await?;
        ensure!(s == StatusCode::OK, "login {s} {v}");
        Ok(v["access_token"]
            .as_str()
            .context("access_token")?
            .to_owned())
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

/// The `error.code` of an error body.
pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}
