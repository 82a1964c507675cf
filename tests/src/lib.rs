//! Harness for the integration tests: start the real `vc-*` binaries on port 0 and learn
//! their addresses from the lines they print.
//!
//! Contract with the binaries: on stdout each prints one line `listening <name> <addr>` per
//! listener it bound (e.g. `listening http 127.0.0.1:40123`), then a line `ready`.
//! Binaries are looked up in the cargo target dir next to this test executable, so
//! `cargo build --workspace --bins` must have run first (README's test command does).

pub mod balancer;
pub mod browser;
pub mod certs;
pub mod control;
pub mod signaling_client;
pub mod stack;
pub mod turn_client;
pub mod viewer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Path of a workspace binary built into the same target dir as the running test.
pub fn binary(name: &str) -> PathBuf {
    // The test executable lives in target/<profile>/deps/; binaries in target/<profile>/.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A running binary; killed when dropped.
pub struct Running {
    pub child: Child,
    /// Listener name -> address, from the `listening` lines.
    pub addrs: HashMap<String, String>,
    /// What the process printed after `ready` is kept flowing to the test's stderr.
    pub name: String,
    /// ... and kept here, one entry a line, for tests that read a binary's status lines.
    output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Running {
    pub fn addr(&self, listener: &str) -> &str {
        self.addrs
            .get(listener)
            .unwrap_or_else(|| panic!("{} has no listener {listener}: {:?}", self.name, self.addrs))
    }

    /// The stdout lines printed after `ready` so far.
    pub fn output(&self) -> Vec<String> {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits (up to `within`) for a stdout line after `ready` starting with `prefix`.
    pub async fn wait_line(&self, prefix: &str, within: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(l) = self.output().into_iter().find(|l| l.starts_with(prefix)) {
                return Ok(l);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} printed no `{prefix}` line within {within:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://<addr>` of a listener.
    pub fn url(&self, listener: &str) -> String {
        format!("http://{}", self.addr(listener))
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        Ok(tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await??)
    }
}

/// Starts `name` with `args` and `env`, waits (up to 30 s) for `ready`.
pub async fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Running> {
    let mut cmd = Command::new(binary(name));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // Tests must not pick up the developer's environment overrides.
    for (k, _) in std::env::vars() {
        if k.starts_with("VC_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().with_context(|| format!("spawn {name}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut addrs = HashMap::new();
    let wait = async {
        while let Some(line) = lines.next_line().await? {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some("listening"), Some(listener), Some(addr)) => {
                    addrs.insert(listener.to_owned(), addr.to_owned());
                }
                (Some("ready"), None, None) => return Ok(true),
                _ => eprintln!("[{name}] {line}"),
            }
        }
        Ok::<_, anyhow::Error>(false)
    };
    match tokio::time::timeout(Duration::from_secs(30), wait).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => bail!("{name} exited before printing `ready`"),
        Ok(Err(e)) => return Err(e),
        Err(_) => bail!("{name} did not print `ready` within 30 s"),
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    let tag = name.to_owned();
    let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = output.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{tag}] {line}");
            kept.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
    Ok(Running {
        child,
        addrs,
        name: name.to_owned(),
        output,
    })
}

/// A fresh Postgres database for one test, dropped by nobody: names are unique and the
/// CI machine is thrown away. `VC_TEST_PG` overrides the server URL
/// (default `postgres://postgres@127.0.0.1:5432`).
pub async fn fresh_postgres_url() -> Result<String> {
    let server = std::env::var("VC_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let db = format!("vc_test_{}", uuid::Uuid::new_v4().simple());
    let status = Command::new("psql")
        .arg(format!("{server}/postgres"))
        .arg("-qc")
        .arg(format!("CREATE DATABASE {db}"))
        .status()
        .await
        .context("run psql")?;
    if !status.success() {
        bail!("CREATE DATABASE {db} failed (is Postgres up on {server}?)");
    }
    Ok(format!("{server}/{db}"))
}

/// One JSON API call: `method base+path` with an optional bearer token and JSON body.
/// Returns the status and the parsed body (`Null` when empty); a non-JSON body is an error
/// naming the path, so a test failure shows what the server said.
pub async fn api_call(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
) -> Result<(reqwest::StatusCode, serde_json::Value)> {
    let mut req = http.request(method, format!("{base}{path}"));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await?;
    let status = res.status();
    let text = res.text().await?;
    let value = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).with_context(|| format!("{path}: not JSON: {text}"))?
    };
    Ok((status, value))
}

/// A private `nats-server` (JetStream, its own store dir) on a free loopback port, so a test can
/// kill and restart it without touching the machine's shared one. Killed when dropped.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
}

impl Nats {
    /// Starts one; `VC_TEST_NATS_SERVER` overrides the binary (default `/usr/sbin/nats-server`,
    /// else `nats-server` on PATH).
    pub async fn start() -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut nats = Self {
            child: None,
            port,
            store: tempfile::tempdir()?,
        };
        nats.restart().await?;
        Ok(nats)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `kill -9`, as a crash would.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }

    /// (Re)starts on the same port and store; waits (up to 10 s) until it accepts TCP.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await?;
        let bin = std::env::var("VC_TEST_NATS_SERVER").unwrap_or_else(|_| {
            if std::path::Path::new("/usr/sbin/nats-server").exists() {
                "/usr/sbin/nats-server".into()
            } else {
                "nats-server".into()
            }
        });
        let child = Command::new(bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawn nats-server")?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            if tokio::time::Instant::now() > deadline {
                bail!("nats-server did not listen on {} within 10 s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}
