//! Load drivers live in `src/bin/` (one binary per workload); see `benches/README.md`.
//! Shared here: starting the real vc-control from the same target dir.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The running server; killed on drop.
pub struct Server {
    _child: Child,
    pub base: String,
    /// The database URL it runs on.
    pub db_url: String,
    _data: tempfile::TempDir,
}

/// Starts `vc-control` (next to this executable) on `db` (`sqlite` or `postgres`: a fresh
/// database on server `pg`), with `extra_env` on top of cheap argon2.
pub async fn start_server(db: &str, pg: &str, extra_env: &[(&str, &str)]) -> Result<Server> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("exe dir")?.join("vc-control");
    ensure!(
        bin.exists(),
        "{} missing: cargo build --release -p control",
        bin.display()
    );
    let data = tempfile::tempdir()?;
    let url = if db == "sqlite" {
        format!("sqlite://{}/bench.db?mode=rwc", data.path().display())
    } else {
        let name = format!("vc_bench_{}", uuid::Uuid::new_v4().simple());
        let st = Command::new("psql")
            .arg(format!("{pg}/postgres"))
            .arg("-qc")
            .arg(format!("CREATE DATABASE {name}"))
            .status()
            .await?;
        ensure!(st.success(), "CREATE DATABASE failed");
        format!("{pg}/{name}")
    };
    let mut child = Command::new(bin)
        .env("VC_LISTEN", "127.0.0.1:0")
        .env("VC_ADMIN_LISTEN", "127.0.0.1:0")
        .env("VC_DATABASE_URL", &url)
        .env("VC_DATA_DIR", data.path())
        .env("VC_ARGON2__MEMORY_KIB", "1024")
        .env("VC_ARGON2__ITERATIONS", "1")
        // Throughput, not the abuse limits: every load client comes from 127.0.0.1 and the
        // onboard phase makes thousands of cameras.
        .env("VC_REGISTER_MAX_PER_CLIENT", "1000000")
        .env("VC_MAX_CAMERAS_PER_ACCOUNT", "1000000")
        .env("RUST_LOG", "error")
        .envs(extra_env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut base = None;
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = line.strip_prefix("listening http ") {
                base = Some(format!("http://{addr}"));
            }
            if line == "ready" {
                break;
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server {
        _child: child,
        base: base.context("no listening line")?,
        db_url: url,
        _data: data,
    })
}

/// Registers and logs in `email`; returns the JWT.
pub async fn user(http: &reqwest::Client, base: &str, email: &str) -> Result<String> {
    let creds = json!({"email": email, "password": "password123"});
    http.post(format!("{base}/api/register"))
        .json(&creds)
        .send()
        .await?;
    let v: Value = http
        .post(format!("{base}/api/login"))
        .json(&creds)
        .send()
        .await?
        .json()
        .await?;
    Ok(v["access_token"].as_str().context("token")?.to_owned())
}
