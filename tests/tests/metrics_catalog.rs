//! The dashboard, the alert rules and the README's metrics table cannot drift from what the
//! daemons export (issue 12): after some real traffic through vc-control and vc-relay, every
//! metric named in `deploy/grafana/visionconnect.json` and `deploy/prometheus/alerts.yml` is in
//! one of the two `/metrics` scrapes (both daemons' admin listeners), and every exported
//! VisionConnect metric has a README row.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use reqwest::Method;
use serde_json::{json, Value};
use shared::signaling::ServerMessage;
use vc_tests::signaling_client::{recv, STEP};
use vc_tests::stack::{start_relay, Control, Db};

const SECRET: &str = "metrics-catalog-ticket-secret-at-least-32-bytes";

/// Metric names a PromQL expression reads: identifiers that are not functions, keywords,
/// label names (inside `{}` or `by (...)`), durations, strings or `$variables`.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    let mut s = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_str = false;
    for c in expr.chars() {
        match c {
            '"' => in_str = !in_str,
            _ if in_str => {}
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            c => s.push(c),
        }
        if c == '}' || c == ']' {
            s.push(' ');
        }
    }
    let mut out = BTreeSet::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '$' {
            // A dashboard variable.
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
            let keyword = matches!(
                word.as_str(),
                "by" | "without"
                    | "and"
                    | "or"
                    | "unless"
                    | "offset"
                    | "bool"
                    | "on"
                    | "ignoring"
                    | "group_left"
                    | "group_right"
                    // Aggregations: may be followed by `by (...)` before their `(`.
                    | "sum"
                    | "avg"
                    | "min"
                    | "max"
                    | "count"
                    | "stddev"
                    | "stdvar"
                    | "topk"
                    | "bottomk"
                    | "quantile"
                    | "count_values"
                    | "group"
            );
            if matches!(word.as_str(), "by" | "without" | "on" | "ignoring") {
                skip_group = true;
            } else if skip_group && next == Some('(') {
                // handled below
            } else if next == Some('(') || keyword || skip_group {
                // function call, or label names of a grouping
            } else if start == 0 || !chars[start - 1].is_ascii_digit() {
                out.insert(word);
            }
            continue;
        }
        if c == '(' && skip_group {
            // Skip the grouping's label list.
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_group = false;
        }
        i += 1;
    }
    out.remove("up");
    out.remove("e");
    out
}

/// Every sample's metric name in a Prometheus text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Is `name` exported (histograms and summaries export `_bucket`/`_sum`/`_count`)?
fn has(exported: &BTreeSet<String>, name: &str) -> bool {
    exported.contains(name)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| exported.contains(&format!("{name}{s}")))
        || ["_bucket", "_sum", "_count"].iter().any(|s| {
            name.strip_suffix(s)
                .is_some_and(|base| exported.iter().any(|e| e.starts_with(base)))
        })
}

#[test]
fn promql_names_are_extracted() {
    let got = promql_metrics(
        r#"sum by (route, status) (rate(http_requests_total{job=~"$control_job",status=~"[45].."}[$__rate_interval])) / clamp_min(sum(vc_x{a="b"}), 1e-9) > 0.05 and histogram_quantile(0.99, sum by (le) (rate(vc_y_bucket[5m])))"#,
    );
    let want: BTreeSet<String> = ["http_requests_total", "vc_x", "vc_y_bucket"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn dashboards_alerts_and_readme_match_the_exported_metrics() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let c = Control::start(Db::Sqlite, SECRET, &[]).await?;
    let relay = start_relay(SECRET, &c.base, &[]).await?;

    // Traffic: a failed and a good login, onboarding, activation, tickets, a camera and a
    // viewer on the relay, a TURN request without credentials.
    let jwt = c.user("ops@example.com").await?;
    let _ = c
        .call(
            Method::POST,
            "/api/login",
            None,
            Some(json!({"email": "ops@example.com", "password": "wrong-password"})),
        )
        .await?;
    let (dev, secret) = c.camera(&jwt, "OPS-1").await?;
    let ct = c.camera_ticket(dev, &secret).await?;
    let vt = c.viewer_ticket(&jwt, dev).await?;
    let ws = |token: &str| format!("ws://{}/ws?token={token}", relay.addr("signaling"));
    let (mut cam, _) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::connect_async(ws(&ct.signaling.token)),
    )
    .await??;
    ensure!(matches!(
        recv(&mut cam).await?,
        ServerMessage::Welcome { .. }
    ));
    let (mut viewer, _) = tokio::time::timeout(
        STEP,
        tokio_tungstenite::connect_async(ws(&vt.signaling.token)),
    )
    .await??;
    ensure!(matches!(
        recv(&mut viewer).await?,
        ServerMessage::Welcome { .. }
    ));
    c.wait_status(&jwt, dev, "online").await?;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    // An Allocate without credentials (RFC 8656): answered 401, counted.
    let mut allocate = vec![0x00, 0x03, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
    allocate.extend_from_slice(&[7u8; 12]);
    allocate.extend_from_slice(&[0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0]);
    udp.send_to(&allocate, relay.addr("turn-udp")).await?;
    let mut buf = [0u8; 1500];
    let _ = tokio::time::timeout(STEP, udp.recv_from(&mut buf)).await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;

    let scrape = |url: String| {
        let http = c.http.clone();
        async move { Ok::<_, anyhow::Error>(http.get(url).send().await?.text().await?) }
    };
    let control_text = c.metrics().await?;
    // Only the admin listener serves them: the public API answers 404.
    let public = c.http.get(format!("{}/metrics", c.base)).send().await?;
    ensure!(
        public.status() == reqwest::StatusCode::NOT_FOUND,
        "public /metrics answered {}",
        public.status()
    );
    let relay_text = scrape(format!("http://{}/metrics", relay.addr("admin"))).await?;
    let mut all = exported(&control_text);
    all.extend(exported(&relay_text));

    // Names the dashboard and the alerts read.
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        root.join("deploy/grafana/visionconnect.json"),
    )?)?;
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml"))?;
    exprs.extend(
        alerts
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr:"))
            .map(|e| e.trim().to_owned()),
    );
    ensure!(exprs.len() > 20, "found only {} expressions", exprs.len());
    let named: BTreeSet<String> = exprs.iter().flat_map(|e| promql_metrics(e)).collect();
    let missing: Vec<&String> = named.iter().filter(|n| !has(&all, n)).collect();
    ensure!(
        missing.is_empty(),
        "dashboard/alerts name metrics no daemon exports: {missing:?}"
    );

    // Every exported VisionConnect metric (not the exporter's own process_* ones) has a
    // README row.
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let undocumented: Vec<&String> = all
        .iter()
        .filter(|n| !n.starts_with("process_"))
        .filter(|n| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n);
            !readme.contains(&format!("`{base}`")) && !readme.contains(&format!("`{n}`"))
        })
        .collect();
    ensure!(
        undocumented.is_empty(),
        "exported but not in README's metrics table: {undocumented:?}"
    );
    drop(cam);
    drop(viewer);
    Context::context(relay.terminate().await, "relay exit")?;
    Ok(())
}
