//! Load drivers live in `src/bin/` (one binary per workload); see `benches/README.md`.
//! Shared here: starting the real vc-control and vc-relay from the same target dir, and reading
//! a process's RSS, CPU time and open fds from `/proc`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The running server; killed on drop, and its Postgres database dropped with it (every run
/// makes a fresh one; left behind they pile up on the shared server).
pub struct Server {
    child: Child,
    pub base: String,
    /// The database URL it runs on.
    pub db_url: String,
    /// `(server URL, database name)` of the Postgres database made for this run.
    pg_database: Option<(String, String)>,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some((pg, name)) = self.pg_database.take() {
            // Synchronous: drop runs outside any await point, and the run is over anyway.
            let _ = std::process::Command::new("psql")
                .arg(format!("{pg}/postgres"))
                .arg("-qc")
                .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
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
    let mut pg_database = None;
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
        pg_database = Some((pg.to_owned(), name.clone()));
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
        child,
        base: base.context("no listening line")?,
        db_url: url,
        pg_database,
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

/// A started `vc-relay`: killed on drop.
pub struct RelayProcess {
    pub child: Child,
    pub pid: u32,
    /// `listening <name> <addr>` lines: name -> addr.
    pub listening: HashMap<String, String>,
}

impl RelayProcess {
    /// The address of listener `name` (`admin`, `turn-udp`, `signaling`, ...).
    pub fn addr(&self, name: &str) -> Result<&str> {
        self.listening
            .get(name)
            .map(String::as_str)
            .with_context(|| format!("relay printed no {name} listener"))
    }
}

/// Starts the `vc-relay` at `path` with `env` (VC_* overrides) and waits for `ready`.
pub async fn start_relay(path: &Path, env: &[(&str, &str)]) -> Result<RelayProcess> {
    let mut child = Command::new(path)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {}", path.display()))?;
    let pid = child.id().context("pid")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut listening = HashMap::new();
    while let Some(line) = lines.next_line().await? {
        if let Some((name, addr)) = line
            .strip_prefix("listening ")
            .and_then(|r| r.split_once(' '))
        {
            listening.insert(name.to_owned(), addr.to_owned());
        }
        if line == "ready" {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(RelayProcess {
        child,
        pid,
        listening,
    })
}

/// Resident set size of `pid`, KiB (0 if unreadable).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of `pid`, seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// Open file descriptors of `pid` (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Raises this process's soft fd limit to the hard limit (load drivers hold many sockets).
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct passed by valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The value of the Prometheus metric `name` in a `/metrics` text, summed over its label sets.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let v: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        *found.get_or_insert(0.0) += v;
    }
    found
}

/// The 1-, 5- and 15-minute load averages, as `/proc/loadavg` prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Median of `v` (NaN when empty; the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1` (rcgen), generated per run and
/// written into a directory: never a committed key.
pub struct SelfSigned {
    /// PEM certificate (`cert.pem`): what the relay serves and the clients trust.
    pub cert: std::path::PathBuf,
    /// PEM PKCS#8 private key (`key.pem`).
    pub key: std::path::PathBuf,
}

/// Generates a [`SelfSigned`] certificate into `dir`.
pub fn self_signed_cert(dir: &Path) -> Result<SelfSigned> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.key_pair.serialize_pem())?;
    Ok(SelfSigned { cert, key })
}

/// A UDP port `p` on 127.0.0.1 with `p + 1` free too (`turnutils_peer` listens on both).
pub fn free_udp_port_pair() -> Result<u16> {
    for _ in 0..100 {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let p = s.local_addr()?.port();
        if p < 65535 && std::net::UdpSocket::bind(("127.0.0.1", p + 1)).is_ok() {
            return Ok(p);
        }
    }
    anyhow::bail!("no free UDP port pair")
}

/// A port on 127.0.0.1 free for both TCP and UDP right now (for servers that need a fixed
/// port in their config, like coturn).
pub fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let t = std::net::TcpListener::bind("127.0.0.1:0")?;
        let p = t.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
    anyhow::bail!("no free port")
}
