//! `vc-demo` (README's third command) brings the whole system up on loopback: it prints
//! `ready` only after vc-control reports the simulated camera online, the demo login works
//! and lists that camera online, and SIGTERM stops vc-control, vc-relay and vc-camera.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use reqwest::Method;
use serde_json::json;
use vc_tests::api_call;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_reaches_camera_online_and_stops_everything() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(90), demo())
        .await
        .context("demo test exceeded 90 s")?
}

async fn demo() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dir_arg = dir.path().display().to_string();
    let demo = vc_tests::start(
        "vc-demo",
        &[
            "--port",
            "0",
            "--no-build",
            "--dir",
            &dir_arg,
            "--email",
            "demo-test@example.com",
            "--password",
            "demo-test-password",
        ],
        &[],
    )
    .await?;
    let base = demo.url("http");
    let http = shared::tls::http_client_builder(None)
        .map_err(anyhow::Error::msg)?
        .build()?;
    let (s, body) = api_call(
        &http,
        &base,
        Method::POST,
        "/api/login",
        None,
        Some(json!({ "email": "demo-test@example.com", "password": "demo-test-password" })),
    )
    .await?;
    ensure!(s == 200, "demo login {s} {body}");
    let jwt = body["access_token"].as_str().context("access_token")?;
    let (s, devices) = api_call(
        &http,
        &base,
        Method::GET,
        "/api/camera/devices",
        Some(jwt),
        None,
    )
    .await?;
    ensure!(s == 200, "devices {s}");
    let devices = devices.as_array().context("device list")?;
    ensure!(
        devices.len() == 1 && devices[0]["status"] == "online",
        "one camera, online: {devices:?}"
    );
    // The web app is served where the demo says.
    let page = http.get(format!("{base}/")).send().await?;
    ensure!(page.status() == 200, "web app {}", page.status());

    let status = demo.terminate().await?;
    ensure!(status.success(), "vc-demo exit {status}");
    // Everything it started is gone: the API port no longer answers.
    ensure!(
        http.get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_err(),
        "vc-control still answers after the demo stopped"
    );
    Ok(())
}
