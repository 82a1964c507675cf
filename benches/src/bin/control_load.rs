//! Load driver for the vc-control API: starts the real `vc-control` binary (from the same
//! target dir) on SQLite and/or Postgres, then drives each operation with `--concurrency`
//! workers for `--seconds` and reports requests/s with p50/p99 latency (HDR histogram).
//!
//! ```sh
//! cargo build --release -p control -p vc-benches
//! target/release/control_load --db both --seconds 5 --concurrency 32
//! ```
//! Operations: onboard (includes QR PNG + SVG rendering), activate (of the tokens the
//! onboard phase made), devices list (a user with 10 devices), viewer ticket issue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use vc_benches::{start_server, user};

struct Opts {
    dbs: Vec<String>,
    seconds: u64,
    concurrency: usize,
    pg: String,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        dbs: vec!["sqlite".into(), "postgres".into()],
        seconds: 5,
        concurrency: 32,
        pg: std::env::var("VC_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().context("missing value");
        match a.as_str() {
            "--db" => {
                o.dbs = match val()?.as_str() {
                    "both" => vec!["sqlite".into(), "postgres".into()],
                    one @ ("sqlite" | "postgres") => vec![one.into()],
                    other => bail!("--db sqlite|postgres|both, not {other}"),
                }
            }
            "--seconds" => o.seconds = val()?.parse()?,
            "--concurrency" => o.concurrency = val()?.parse()?,
            "--pg" => o.pg = val()?,
            other => bail!("unknown argument {other}; usage: control_load [--db sqlite|postgres|both] [--seconds N] [--concurrency N] [--pg URL]"),
        }
    }
    Ok(o)
}

struct Outcome {
    hist: Histogram<u64>,
    ok: usize,
    errors: usize,
    elapsed: Duration,
}

/// Runs `op(worker, seq)` from `concurrency` workers until `deadline` or until `op` says stop
/// (`Ok(None)`), recording latencies of successful calls.
async fn drive<F, Fut>(concurrency: usize, seconds: u64, op: F) -> Outcome
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Option<bool>>> + Send,
{
    let op = Arc::new(op);
    let seq = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let op = op.clone();
        let seq = seq.clone();
        tasks.push(tokio::spawn(async move {
            // Invariant: 1 µs .. 60 s with 3 significant digits is a valid histogram range.
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let (mut ok, mut errors) = (0, 0);
            while Instant::now() < deadline {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                match op(w, n).await {
                    Ok(Some(true)) => {
                        ok += 1;
                        let _ = hist.record(t.elapsed().as_micros() as u64);
                    }
                    Ok(Some(false)) | Err(_) => errors += 1,
                    Ok(None) => break,
                }
            }
            (hist, ok, errors)
        }));
    }
    let mut out = Outcome {
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        if let Ok((h, ok, errors)) = t.await {
            let _ = out.hist.add(h);
            out.ok += ok;
            out.errors += errors;
        }
    }
    out.elapsed = start.elapsed();
    out
}

fn report(db: &str, name: &str, o: &Outcome) {
    println!(
        "| {db} | {name} | {:.0} | {:.2} | {:.2} | {} | {} |",
        o.ok as f64 / o.elapsed.as_secs_f64(),
        o.hist.value_at_quantile(0.5) as f64 / 1000.0,
        o.hist.value_at_quantile(0.99) as f64 / 1000.0,
        o.ok,
        o.errors
    );
}

async fn bench_db(db: &str, opts: &Opts) -> Result<()> {
    let server = start_server(db, &opts.pg, &[("VC_DB_MAX_CONNECTIONS", "16")]).await?;
    let base = Arc::new(server.base.clone());
    let http = shared::tls::http_client_builder(None)
        .map_err(anyhow::Error::msg)?
        .pool_max_idle_per_host(opts.concurrency * 2)
        .build()?;
    let users: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..opts.concurrency.min(16) {
            v.push(user(&http, &base, &format!("bench{i}@example.com")).await?);
        }
        v
    };
    let users = Arc::new(users);
    let tokens = Arc::new(Mutex::new(Vec::<String>::new()));

    // Onboard.
    let (h, b, u, t) = (http.clone(), base.clone(), users.clone(), tokens.clone());
    let o = drive(opts.concurrency, opts.seconds, move |w, _| {
        let (h, b, u, t) = (h.clone(), b.clone(), u.clone(), t.clone());
        async move {
            let res = h
                .post(format!("{b}/api/camera/onboard"))
                .bearer_auth(&u[w % u.len()])
                .json(&json!({"camera_model": "CP_PLUS_WIFI_V2", "wifi_ssid": "BenchNet", "wifi_password": "bench-pass-1", "device_name": "Bench"}))
                .send()
                .await?;
            if res.status() != 201 {
                return Ok(Some(false));
            }
            let v: Value = res.json().await?;
            if let Some(tok) = v["device_token"].as_str() {
                t.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(tok.to_owned());
            }
            Ok(Some(true))
        }
    })
    .await;
    report(db, "onboard", &o);

    // Activate every token made above (bounded by the same duration).
    let (h, b, t) = (http.clone(), base.clone(), tokens.clone());
    let o = drive(opts.concurrency, opts.seconds, move |_, n| {
        let (h, b, t) = (h.clone(), b.clone(), t.clone());
        async move {
            let Some(tok) = t.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop() else {
                return Ok(None);
            };
            let res = h
                .post(format!("{b}/api/camera/activate"))
                .json(&json!({"device_token": tok, "device_uid": format!("BENCH-{n}"), "camera_model": "CP_PLUS_WIFI_V2"}))
                .send()
                .await?;
            let ok = res.status() == 200;
            res.bytes().await?;
            Ok(Some(ok))
        }
    })
    .await;
    report(db, "activate", &o);

    // Devices list of a user with 10 devices, and viewer tickets for one of them.
    let lister = user(&http, &base, "lister@example.com").await?;
    let mut device = String::new();
    for i in 0..10 {
        let v: Value = http
            .post(format!("{base}/api/camera/onboard"))
            .bearer_auth(&lister)
            .json(&json!({"camera_model": "CP_PLUS_WIFI_V2", "wifi_ssid": "BenchNet", "wifi_password": "", "device_name": format!("Cam {i}")}))
            .send()
            .await?
            .json()
            .await?;
        let tok = v["device_token"]
            .as_str()
            .with_context(|| format!("onboard answered {v}"))?;
        let a: Value = http
            .post(format!("{base}/api/camera/activate"))
            .json(&json!({"device_token": tok, "device_uid": format!("LISTER-{i}"), "camera_model": "CP_PLUS_WIFI_V2"}))
            .send()
            .await?
            .json()
            .await?;
        device = a["device_id"].as_str().context("device_id")?.to_owned();
    }
    let lister = Arc::new(lister);
    let (h, b, l) = (http.clone(), base.clone(), lister.clone());
    let o = drive(opts.concurrency, opts.seconds, move |_, _| {
        let (h, b, l) = (h.clone(), b.clone(), l.clone());
        async move {
            let res = h
                .get(format!("{b}/api/camera/devices"))
                .bearer_auth(&*l)
                .send()
                .await?;
            let ok = res.status() == 200;
            res.bytes().await?;
            Ok(Some(ok))
        }
    })
    .await;
    report(db, "devices list", &o);

    let device = Arc::new(device);
    let (h, b, l, d) = (http.clone(), base.clone(), lister.clone(), device.clone());
    let o = drive(opts.concurrency, opts.seconds, move |_, _| {
        let (h, b, l, d) = (h.clone(), b.clone(), l.clone(), d.clone());
        async move {
            let res = h
                .post(format!("{b}/api/relay/ticket"))
                .bearer_auth(&*l)
                .json(&json!({"device_id": *d}))
                .send()
                .await?;
            let ok = res.status() == 200;
            res.bytes().await?;
            Ok(Some(ok))
        }
    })
    .await;
    report(db, "ticket", &o);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let opts = parse_args()?;
    println!(
        "\n## control API: {} s per operation, {} concurrent clients\n",
        opts.seconds, opts.concurrency
    );
    println!("| db | operation | req/s | p50 ms | p99 ms | ok | errors |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for db in &opts.dbs {
        bench_db(db, &opts).await?;
    }
    Ok(())
}
