//! Issue 4, "proof with real clients": an unmodified headless Chromium makes a relay-only
//! WebRTC call through the real `vc-relay`, over UDP, over TCP, and over TLS (`turns:`) on the
//! relay's single TLS port (the one that also serves `wss://` signaling).
//!
//! The browser side is `tests/browser/turn-call.mjs` (playwright-core driving
//! `/usr/bin/chromium`): two peer connections in one page, `iceTransportPolicy: 'relay'`,
//! only our TURN server, canvas video one way and a data-channel echo. It prints a JSON
//! report; this test checks the facts in it again, so a passing run means Chromium's own
//! `getStats()` saw a relay/relay pair through `vc-relay`, decoded video and got every
//! message back. TURN REST credentials are minted with the shared ticket key, as
//! vc-control's ticket endpoint does.
//!
//! Needs `node`, `npm ci --prefix tests/browser` and Chromium (`bash .ci/setup` installs
//! all three). A missing piece fails the test with a message saying what to install: the
//! browser proof is never skipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use shared::{ticket::TicketKey, Secret};
use tokio::process::Command;

const SECRET: &str = "turn-browser-test-secret-at-least-32-bytes";
/// Whole node run, Chromium included; the script's own deadline is shorter.
const NODE_TIMEOUT: Duration = Duration::from_secs(150);
const MIN_FRAMES: u64 = 30;
const MESSAGES: u64 = 50;

fn kit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Fails with an actionable message when node, the npm package or Chromium is missing.
async fn check_prerequisites() -> Result<()> {
    let node = Command::new("node").arg("--version").output().await;
    ensure!(
        matches!(&node, Ok(out) if out.status.success()),
        "`node` is not runnable ({node:?}): install nodejs + npm (bash .ci/setup does)"
    );
    let kit = kit_dir();
    ensure!(
        kit.join("node_modules/playwright-core/package.json").exists(),
        "playwright-core is missing in {}: run `npm ci --prefix tests/browser --no-audit --no-fund` \
         (bash .ci/setup does)",
        kit.display()
    );
    let chromium = chromium_path();
    ensure!(
        chromium.exists(),
        "Chromium not found at {}: install Debian's `chromium` (bash .ci/setup does) or set $CHROMIUM",
        chromium.display()
    );
    Ok(())
}

async fn start_relay() -> Result<vc_tests::Running> {
    start_relay_with(&[]).await
}

async fn start_relay_with(extra: &[(&str, &str)]) -> Result<vc_tests::Running> {
    let mut env = vec![
        ("VC_TICKET_SECRET", SECRET),
        ("VC_TURN__LISTEN", "127.0.0.1:0"),
        // Both relayed addresses of the call are 127.0.0.1:port.
        ("VC_TURN__ALLOW_LOOPBACK_PEERS", "true"),
        ("VC_TURN__REALM", "vc.test"),
        ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
        ("VC_SIGNALING__LISTEN", "127.0.0.1:0"),
        ("VC_DRAIN_SECS", "0"),
        ("VC_TURN__TLS_LISTEN", "127.0.0.1:0"),
        ("VC_QUIC__LISTEN", ""),
    ];
    env.extend_from_slice(extra);
    vc_tests::start("vc-relay", &[], &env).await
}

/// Runs the browser call against `turn_url`; returns the parsed report (whatever it says).
async fn browser_call(turn_url: &str, username: &str, credential: &str) -> Result<Value> {
    browser_call_with(turn_url, username, credential, &[]).await
}

/// [`browser_call`] with extra Chromium flags.
async fn browser_call_with(
    turn_url: &str,
    username: &str,
    credential: &str,
    flags: &[&str],
) -> Result<Value> {
    let script = kit_dir().join("turn-call.mjs");
    let child = Command::new("node")
        .arg(&script)
        .args(flags.iter().map(|f| format!("--flag={f}")))
        .args(["--turn", turn_url, "--username", username])
        .args(["--credential", credential])
        .args(["--min-frames", &MIN_FRAMES.to_string()])
        .args(["--messages", &MESSAGES.to_string()])
        .args(["--timeout-ms", "20000"])
        .env("CHROMIUM", chromium_path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn node {}", script.display()))?;
    let out = tokio::time::timeout(NODE_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("turn-call.mjs did not finish within {NODE_TIMEOUT:?}"))??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The page's event log and the check list: the first thing to read when this fails.
    eprintln!(
        "--- turn-call.mjs {turn_url} (exit {:?}) ---\n{stderr}",
        out.status.code()
    );
    if out.status.code() == Some(2) {
        bail!("the browser kit itself failed (exit 2), see its stderr above");
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "turn-call.mjs printed no JSON report (exit {:?})",
            out.status.code()
        )
    })
}

/// Re-checks the report's facts, so the assertion lives in this test, not only in the script.
fn assert_relayed_call(report: &Value, transport: &str, turn_url: &str) {
    let call = &report["call"];
    let failed: Vec<&str> = report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["ok"] != Value::Bool(true))
        .filter_map(|c| c["what"].as_str())
        .collect();
    assert!(
        report["passed"] == Value::Bool(true),
        "Chromium call via {turn_url} failed: {failed:#?}\npage error: {}\ncandidate errors: {}",
        call["error"],
        call["candidateErrors"]
    );
    for side in ["sender", "receiver"] {
        assert_eq!(call["connectionState"][side], "connected", "{side}");
        let pair = &call["stats"][side]["selectedPair"];
        assert_eq!(pair["local"]["candidateType"], "relay", "{side}: {pair}");
        assert_eq!(pair["remote"]["candidateType"], "relay", "{side}: {pair}");
        assert_eq!(pair["local"]["relayProtocol"], transport, "{side}: {pair}");
        assert_eq!(pair["local"]["url"], turn_url, "{side}: {pair}");
        assert!(
            pair["bytesReceived"].as_u64().unwrap_or(0) > 0,
            "{side}: {pair}"
        );
    }
    let frames = call["stats"]["receiver"]["inboundVideo"]["framesDecoded"]
        .as_u64()
        .unwrap_or(0);
    assert!(frames >= MIN_FRAMES, "only {frames} frames decoded");
    assert_eq!(call["data"]["echoed"], MESSAGES, "{}", call["data"]);
    assert_eq!(call["data"]["mismatched"], 0, "{}", call["data"]);
}

async fn relay_only_call(transport: &str) -> Result<()> {
    check_prerequisites().await?;
    let relay = start_relay().await?;
    let listener = format!("turn-{transport}");
    let addr = relay.addr(&listener).to_owned();
    let turn_url = format!("turn:{addr}?transport={transport}");

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let key = TicketKey::new(&Secret::new(SECRET));
    let (username, credential) = key.turn_credentials("turn-browser-test", now, 600);

    let report = browser_call(&turn_url, &username, &credential).await?;
    assert_relayed_call(&report, transport, &turn_url);
    drop(relay); // killed on drop
    Ok(())
}

/// The other side of the proof: the same call with a tampered TURN password must not get
/// through. Chromium reports the relay's 401 as an `icecandidateerror` and gathers nothing.
#[tokio::test]
async fn chromium_with_tampered_credential_gets_no_relay() -> Result<()> {
    check_prerequisites().await?;
    let relay = start_relay().await?;
    let turn_url = format!("turn:{}?transport=udp", relay.addr("turn-udp"));
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let key = TicketKey::new(&Secret::new("not-the-relay-secret"));
    let (username, credential) = key.turn_credentials("turn-browser-test", now, 600);

    let report = browser_call(&turn_url, &username, &credential).await?;
    let call = &report["call"];
    assert_eq!(report["passed"], false, "the call must fail: {report}");
    assert_ne!(call["connectionState"]["sender"], "connected");
    let errors = call["candidateErrors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        errors.iter().any(|e| e["errorCode"] == 401),
        "expected Chromium to report 401 from vc-relay, got {errors:?}"
    );
    drop(relay);
    Ok(())
}

#[tokio::test]
async fn chromium_relay_only_call_over_udp() -> Result<()> {
    relay_only_call("udp").await
}

#[tokio::test]
async fn chromium_relay_only_call_over_tcp() -> Result<()> {
    relay_only_call("tcp").await
}

/// TURN over TLS on the single TLS port: `turns:localhost:<port>` (a DNS name, since Chromium
/// sends SNI only for host names), the relay's test certificate accepted with
/// `--ignore-certificate-errors`. The port is the one `wss://` signaling uses too.
#[tokio::test]
async fn chromium_relay_only_call_over_turns_on_the_single_port() -> Result<()> {
    check_prerequisites().await?;
    let dir = tempfile::tempdir()?;
    let cert = vc_tests::certs::TestCert::generate()?;
    let (c, k) = cert.write(dir.path())?;
    let (c, k) = (c.display().to_string(), k.display().to_string());
    let relay = start_relay_with(&[
        ("VC_TLS__CERT_FILE", &c),
        ("VC_TLS__KEY_FILE", &k),
        ("VC_TLS__SINGLE_PORT_LISTEN", "127.0.0.1:0"),
    ])
    .await?;
    let port = relay
        .addr("single-port")
        .rsplit_once(':')
        .context("host:port")?
        .1
        .to_owned();
    let turn_url = format!("turns:localhost:{port}?transport=tcp");
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let key = TicketKey::new(&Secret::new(SECRET));
    let (username, credential) = key.turn_credentials("turn-browser-test", now, 600);
    let report = browser_call_with(
        &turn_url,
        &username,
        &credential,
        &["--ignore-certificate-errors"],
    )
    .await?;
    assert_relayed_call(&report, "tls", &turn_url);
    drop(relay);
    Ok(())
}
