//! Abuse of vc-control's API (issue 11): parallel password guessing, address rotation,
//! forged `X-Forwarded-For`, registration floods. Each test starts the real binary through
//! the harness and fails without the defence it names.

use anyhow::{ensure, Context, Result};
use reqwest::StatusCode;
use serde_json::json;
use vc_tests::control::{code, start_control, Control, Db};

const PASSWORD: &str = "password123";

/// One login attempt with an optional `X-Forwarded-For`; the status and error code.
async fn login(c: &Control, email: &str, password: &str, xff: Option<&str>) -> Result<StatusCode> {
    let mut req = c
        .http
        .post(format!("{}/api/login", c.base))
        .json(&json!({"email": email, "password": password}));
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    let res = req.send().await?;
    let status = res.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry: u64 = res
            .headers()
            .get("retry-after")
            .context("429 without Retry-After")?
            .to_str()?
            .parse()?;
        ensure!(retry >= 1, "retry-after {retry}");
        let v: serde_json::Value = res.json().await?;
        ensure!(code(&v) == "rate_limited", "{v}");
    }
    Ok(status)
}

async fn register(c: &Control, email: &str) -> Result<StatusCode> {
    let (s, _) = c
        .post(
            "/api/register",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await?;
    Ok(s)
}

/// 30 wrong passwords at once for one account: the attempts are reserved before argon2
/// runs, so at most `login_max_failures` of them get an answer other than 429 (with the
/// old check-then-record limiter all 30 reached the password check).
async fn concurrent_guesses(db: Db) -> Result<()> {
    let c = start_control(db, &[("VC_LOGIN_MAX_FAILURES", "5")]).await?;
    ensure!(register(&c, "victim@example.com").await? == StatusCode::CREATED);
    let guesses = (0..30).map(|i| {
        let c = &c;
        async move { login(c, "victim@example.com", &format!("guess-{i:04}"), None).await }
    });
    let answers = futures_util::future::try_join_all(guesses).await?;
    let passed = answers
        .iter()
        .filter(|s| **s != StatusCode::TOO_MANY_REQUESTS)
        .count();
    ensure!(
        passed <= 5,
        "{passed} of 30 guesses reached the password check"
    );
    ensure!(
        answers
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS),
        "{answers:?}"
    );
    // Even the right password waits out the window now.
    ensure!(
        login(&c, "victim@example.com", PASSWORD, None).await? == StatusCode::TOO_MANY_REQUESTS
    );
    c.running.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn sqlite_concurrent_guesses_are_limited() -> Result<()> {
    concurrent_guesses(Db::Sqlite).await
}

#[tokio::test]
async fn postgres_concurrent_guesses_are_limited() -> Result<()> {
    concurrent_guesses(Db::Postgres).await
}

/// Behind a trusted proxy, a client rotating addresses inside its IPv6 /64 is still one
/// client; another /64 is another client. (The proxy is the test itself on 127.0.0.1.)
#[tokio::test]
async fn ipv6_rotation_within_a_64_does_not_bypass() -> Result<()> {
    let c = start_control(
        Db::Sqlite,
        &[
            ("VC_LOGIN_MAX_FAILURES", "3"),
            ("VC_TRUSTED_PROXIES", "[\"127.0.0.1/32\"]"),
        ],
    )
    .await?;
    ensure!(register(&c, "v6@example.com").await? == StatusCode::CREATED);
    let mut answers = Vec::new();
    for i in 1..=8 {
        let xff = format!("2001:db8:1:2::{i:x}, 2001:db8:1:2:{i:x}::9");
        answers.push(login(&c, "v6@example.com", "wrong-password", Some(&xff)).await?);
    }
    let expected: Vec<StatusCode> = [StatusCode::UNAUTHORIZED; 3]
        .into_iter()
        .chain([StatusCode::TOO_MANY_REQUESTS; 5])
        .collect();
    ensure!(answers == expected, "{answers:?}");
    // The header is believed from the trusted proxy: another /64 has its own budget.
    let other = login(&c, "v6@example.com", PASSWORD, Some("2001:db8:1:3::1")).await?;
    ensure!(other == StatusCode::OK, "another /64: {other}");
    c.running.terminate().await?;
    Ok(())
}

/// By default no proxy is trusted (not even localhost): a forged `X-Forwarded-For` per
/// request gives no fresh budget.
#[tokio::test]
async fn forwarded_for_is_ignored_unless_the_proxy_is_trusted() -> Result<()> {
    let c = start_control(Db::Sqlite, &[("VC_LOGIN_MAX_FAILURES", "3")]).await?;
    ensure!(register(&c, "xff@example.com").await? == StatusCode::CREATED);
    let mut answers = Vec::new();
    for i in 1..=6 {
        let xff = format!("198.51.100.{i}");
        answers.push(login(&c, "xff@example.com", "wrong-password", Some(&xff)).await?);
    }
    let limited = answers
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    ensure!(limited == 3, "{answers:?}");
    c.running.terminate().await?;
    Ok(())
}

/// Guesses at one account spread over many clients hit the per-account limit.
#[tokio::test]
async fn distributed_guesses_hit_the_account_limit() -> Result<()> {
    let c = start_control(
        Db::Sqlite,
        &[
            ("VC_LOGIN_ACCOUNT_MAX_FAILURES", "4"),
            ("VC_TRUSTED_PROXIES", "[\"127.0.0.1/32\"]"),
        ],
    )
    .await?;
    ensure!(register(&c, "spread@example.com").await? == StatusCode::CREATED);
    let mut answers = Vec::new();
    for i in 1..=6 {
        let xff = format!("203.0.113.{i}");
        answers.push(login(&c, "spread@example.com", "wrong-password", Some(&xff)).await?);
    }
    let limited = answers
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    ensure!(limited == 2, "{answers:?}");
    c.running.terminate().await?;
    Ok(())
}

/// Registrations are limited per client (each costs an argon2 hash and a row).
#[tokio::test]
async fn registration_is_limited_per_client() -> Result<()> {
    let c = start_control(Db::Sqlite, &[("VC_REGISTER_MAX_PER_CLIENT", "3")]).await?;
    let mut answers = Vec::new();
    for i in 0..5 {
        answers.push(register(&c, &format!("bulk{i}@example.com")).await?);
    }
    let expected: Vec<StatusCode> = [StatusCode::CREATED; 3]
        .into_iter()
        .chain([StatusCode::TOO_MANY_REQUESTS; 2])
        .collect();
    ensure!(answers == expected, "{answers:?}");
    let res = c
        .http
        .post(format!("{}/api/register", c.base))
        .json(&json!({"email": "bulk9@example.com", "password": PASSWORD}))
        .send()
        .await?;
    ensure!(res.status() == StatusCode::TOO_MANY_REQUESTS);
    ensure!(res.headers().contains_key("retry-after"), "no Retry-After");
    c.running.terminate().await?;
    Ok(())
}

/// One account cannot pile up cameras (each can hold relay capacity): 8 concurrent
/// onboardings with `max_cameras_per_account` 3 create exactly 3; another account is
/// unaffected.
async fn camera_cap(db: Db) -> Result<()> {
    let c = start_control(db, &[("VC_MAX_CAMERAS_PER_ACCOUNT", "3")]).await?;
    let jwt = c.user("hoarder@example.com").await?;
    let body = json!({"camera_model": "CP_PLUS_WIFI_V2", "wifi_ssid": "HomeNet", "wifi_password": "wifi-pass-123"});
    let tries = (0..8).map(|_| c.post("/api/camera/onboard", Some(&jwt), body.clone()));
    let answers = futures_util::future::try_join_all(tries).await?;
    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    ensure!(created == 3, "{created} created: {answers:?}");
    for (s, v) in answers.iter().filter(|(s, _)| *s != StatusCode::CREATED) {
        ensure!(
            *s == StatusCode::CONFLICT && code(v) == "camera_limit",
            "{s} {v}"
        );
    }
    let (s, v) = c.get("/api/camera/devices", Some(&jwt)).await?;
    ensure!(
        s == StatusCode::OK && v.as_array().map(Vec::len) == Some(3),
        "{s} {v}"
    );
    let other = c.user("modest@example.com").await?;
    c.onboard(&other, "Porch").await?;
    c.running.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn sqlite_camera_cap_per_account() -> Result<()> {
    camera_cap(Db::Sqlite).await
}

#[tokio::test]
async fn postgres_camera_cap_per_account() -> Result<()> {
    camera_cap(Db::Postgres).await
}

/// Status of a camera ticket request with `secret`: proves which secret is stored.
async fn camera_ticket(c: &Control, device_id: &str, secret: &str) -> Result<StatusCode> {
    let (s, _) = c
        .post(
            "/api/relay/ticket",
            None,
            json!({"device_id": device_id, "device_secret": secret}),
        )
        .await?;
    Ok(s)
}

async fn activate_with(
    c: &Control,
    token: &str,
    uid: &str,
    secret: Option<&str>,
) -> Result<(StatusCode, serde_json::Value)> {
    let mut body =
        json!({"device_token": token, "device_uid": uid, "camera_model": "CP_PLUS_WIFI_V2"});
    if let Some(s) = secret {
        body["device_secret"] = json!(s);
    }
    c.post("/api/camera/activate", None, body).await
}

/// Someone with the QR code and the camera's uid retries the activation after the retry
/// window: refused, and the real camera's secret still works. The real camera, presenting
/// its secret, may still retry.
#[tokio::test]
async fn late_activation_retry_needs_the_device_secret() -> Result<()> {
    let c = start_control(Db::Sqlite, &[("VC_ACTIVATION_RETRY_WINDOW_SECS", "1")]).await?;
    let jwt = c.user("owner@example.com").await?;
    let ob = c.onboard(&jwt, "Hall").await?;
    let token = ob["device_token"].as_str().context("token")?;
    let (s, v) = activate_with(&c, token, "CAM-REAL", None).await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    let device_id = v["device_id"].as_str().context("device_id")?.to_owned();
    let real = v["device_secret"].as_str().context("secret")?.to_owned();

    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (s, v) = activate_with(&c, token, "CAM-REAL", None).await?;
    ensure!(
        s == StatusCode::CONFLICT && code(&v) == "activation_locked",
        "late retry without secret: {s} {v}"
    );
    let forged = "A".repeat(43);
    let (s, v) = activate_with(&c, token, "CAM-REAL", Some(&forged)).await?;
    ensure!(
        s == StatusCode::UNAUTHORIZED && code(&v) == "invalid_device_credentials",
        "late retry with a wrong secret: {s} {v}"
    );
    ensure!(camera_ticket(&c, &device_id, &real).await? == StatusCode::OK);

    // The real camera proves itself: a fresh secret replaces the one it presented.
    let (s, v) = activate_with(&c, token, "CAM-REAL", Some(&real)).await?;
    ensure!(s == StatusCode::OK, "retry with the secret: {s} {v}");
    let fresh = v["device_secret"].as_str().context("secret")?;
    ensure!(v["device_id"] == device_id.as_str() && fresh != real, "{v}");
    ensure!(camera_ticket(&c, &device_id, fresh).await? == StatusCode::OK);
    ensure!(camera_ticket(&c, &device_id, &real).await? == StatusCode::UNAUTHORIZED);
    c.running.terminate().await?;
    Ok(())
}

/// Inside the retry window, but after the camera used its secret (it got its answer and
/// fetched a relay ticket): a secretless retry is refused too.
#[tokio::test]
async fn activation_retry_after_the_secret_was_used_is_refused() -> Result<()> {
    let c = start_control(Db::Postgres, &[]).await?;
    let jwt = c.user("owner2@example.com").await?;
    let ob = c.onboard(&jwt, "Yard").await?;
    let token = ob["device_token"].as_str().context("token")?;
    let (s, v) = activate_with(&c, token, "CAM-YARD", None).await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    let device_id = v["device_id"].as_str().context("device_id")?.to_owned();
    let real = v["device_secret"].as_str().context("secret")?.to_owned();
    ensure!(camera_ticket(&c, &device_id, &real).await? == StatusCode::OK);
    let (s, v) = activate_with(&c, token, "CAM-YARD", None).await?;
    ensure!(
        s == StatusCode::CONFLICT && code(&v) == "activation_locked",
        "{s} {v}"
    );
    ensure!(camera_ticket(&c, &device_id, &real).await? == StatusCode::OK);
    c.running.terminate().await?;
    Ok(())
}

/// Reads `stream` until the server closes it (EOF or reset); how long that took.
async fn time_until_closed(
    stream: &mut tokio::net::tcp::OwnedReadHalf,
    limit: std::time::Duration,
) -> Result<std::time::Duration> {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), stream.read(&mut buf))
            .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(start.elapsed()),
            Ok(Ok(_)) => {} // e.g. a 408 before the close
            Err(_) => anyhow::bail!("connection still open after {limit:?}"),
        }
    }
}

/// Slowloris: a client sending its headers a byte every 200 ms is cut off after
/// `header_read_timeout_secs` (warp's own server never cut it off).
#[tokio::test]
async fn slow_headers_are_cut_off() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let c = start_control(Db::Sqlite, &[("VC_HTTP__HEADER_READ_TIMEOUT_SECS", "1")]).await?;
    let stream = tokio::net::TcpStream::connect(c.running.addr("http")).await?;
    let (mut rd, mut wr) = stream.into_split();
    let dribble = tokio::spawn(async move {
        let head = b"GET /api/camera/models HTTP/1.1\r\nHost: control.test\r\nX-Slow: ";
        let _ = wr.write_all(head).await;
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            if wr.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let took = time_until_closed(&mut rd, std::time::Duration::from_secs(6)).await?;
    dribble.abort();
    ensure!(
        took < std::time::Duration::from_secs(4),
        "closed after {took:?}"
    );
    // A normal client is served as before.
    let (s, _) = c.get("/api/camera/models", None).await?;
    ensure!(s == StatusCode::OK, "{s}");
    c.running.terminate().await?;
    Ok(())
}

/// A connection that never sends a request is closed after `keep_alive_idle_secs`.
#[tokio::test]
async fn idle_connections_are_closed() -> Result<()> {
    let c = start_control(Db::Sqlite, &[("VC_HTTP__KEEP_ALIVE_IDLE_SECS", "1")]).await?;
    let stream = tokio::net::TcpStream::connect(c.running.addr("http")).await?;
    let (mut rd, _wr) = stream.into_split();
    let took = time_until_closed(&mut rd, std::time::Duration::from_secs(6)).await?;
    ensure!(
        took >= std::time::Duration::from_millis(800) && took < std::time::Duration::from_secs(4),
        "closed after {took:?}"
    );
    c.running.terminate().await?;
    Ok(())
}

/// Beyond `max_connections` a connection is closed at once; a freed slot serves again.
#[tokio::test]
async fn connections_beyond_the_cap_are_closed() -> Result<()> {
    let c = start_control(Db::Sqlite, &[("VC_HTTP__MAX_CONNECTIONS", "2")]).await?;
    let addr = c.running.addr("http").to_owned();
    let held = [
        tokio::net::TcpStream::connect(&addr).await?,
        tokio::net::TcpStream::connect(&addr).await?,
    ];
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let third = tokio::net::TcpStream::connect(&addr).await?;
    let (mut rd, _wr) = third.into_split();
    let took = time_until_closed(&mut rd, std::time::Duration::from_secs(3)).await?;
    ensure!(
        took < std::time::Duration::from_secs(1),
        "closed after {took:?}"
    );
    drop(held);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match c.get("/api/camera/models", None).await {
            Ok((s, _)) if s == StatusCode::OK => break,
            other if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("no slot freed: {other:?}")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    c.running.terminate().await?;
    Ok(())
}

/// Attempts refused by a later bucket are given back to the earlier ones: a client
/// hammering a locked account does not use up its own budget for other accounts.
#[tokio::test]
async fn refused_attempts_do_not_count_against_the_client() -> Result<()> {
    let c = start_control(
        Db::Sqlite,
        &[
            ("VC_LOGIN_ACCOUNT_MAX_FAILURES", "2"),
            ("VC_LOGIN_CLIENT_MAX_FAILURES", "3"),
        ],
    )
    .await?;
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(login(&c, "locked@example.com", "wrong-password", None).await?);
    }
    let expected: Vec<StatusCode> = [StatusCode::UNAUTHORIZED; 2]
        .into_iter()
        .chain([StatusCode::TOO_MANY_REQUESTS; 3])
        .collect();
    ensure!(answers == expected, "{answers:?}");
    // Two failures counted for this client, not five: one more is allowed, then 429.
    let s = login(&c, "other@example.com", "wrong-password", None).await?;
    ensure!(s == StatusCode::UNAUTHORIZED, "{s}");
    let s = login(&c, "third@example.com", "wrong-password", None).await?;
    ensure!(s == StatusCode::TOO_MANY_REQUESTS, "{s}");
    c.running.terminate().await?;
    Ok(())
}

/// Issue 11 #8: a stranger who activates a camera's uid (read off its label) into their own
/// account first blocks nobody and learns nothing: the real owner's activation succeeds with
/// the same answer shape as for a never-seen uid, and the stranger's entry affects no one
/// else. A reset camera presenting its old registration's secret moves to the new account:
/// the old entry is gone and its secret refused; a uid alone moves nothing.
async fn uid_squatting(db: Db) -> Result<()> {
    let c = start_control(db, &[]).await?;
    let mallory = c.user("mallory@example.com").await?;
    let alice = c.user("alice@example.com").await?;
    let bob = c.user("bob@example.com").await?;

    // Mallory squats CAM-LABEL before its owner activates it.
    let ob = c.onboard(&mallory, "squat").await?;
    let (s, v) = activate_with(
        &c,
        ob["device_token"].as_str().context("t")?,
        "CAM-LABEL",
        None,
    )
    .await?;
    ensure!(s == StatusCode::OK, "squat {s} {v}");
    let squat_id = v["device_id"].as_str().context("id")?.to_owned();
    let squat_secret = v["device_secret"].as_str().context("secret")?.to_owned();

    // Alice activates the real camera, and a never-seen uid: same status, same fields.
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        k.sort();
        k
    };
    let ob = c.onboard(&alice, "Hall").await?;
    let (s1, taken) = activate_with(
        &c,
        ob["device_token"].as_str().context("t")?,
        "CAM-LABEL",
        None,
    )
    .await?;
    let ob2 = c.onboard(&alice, "Porch").await?;
    let (s2, fresh) = activate_with(
        &c,
        ob2["device_token"].as_str().context("t")?,
        "CAM-NEVER-SEEN",
        None,
    )
    .await?;
    ensure!(
        s1 == StatusCode::OK && s2 == StatusCode::OK,
        "{s1} {taken} / {s2} {fresh}"
    );
    ensure!(
        keys(&taken) == keys(&fresh),
        "answers differ: {taken} vs {fresh}"
    );
    let alice_id = taken["device_id"].as_str().context("id")?.to_owned();
    let alice_secret = taken["device_secret"]
        .as_str()
        .context("secret")?
        .to_owned();
    ensure!(camera_ticket(&c, &alice_id, &alice_secret).await? == StatusCode::OK);
    // Mallory's entry is still only Mallory's, and her secret does not move Alice's camera:
    // presenting it while activating into Bob's account leaves Alice's registration alone.
    let ob = c.onboard(&bob, "not a transfer").await?;
    let (s, v) = activate_with(
        &c,
        ob["device_token"].as_str().context("t")?,
        "CAM-LABEL",
        Some(&squat_secret),
    )
    .await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    ensure!(
        camera_ticket(&c, &alice_id, &alice_secret).await? == StatusCode::OK,
        "alice's camera was moved by a secret that is not its own"
    );
    // That secret did prove Mallory's own entry, which moved to Bob.
    let moved = camera_ticket(&c, &squat_id, &squat_secret).await?;
    ensure!(
        moved == StatusCode::UNAUTHORIZED || moved == StatusCode::NOT_FOUND,
        "{moved}"
    );

    // The real camera is reset and onboarded by Bob; it presents its old secret: transferred.
    let ob = c.onboard(&bob, "Bob's hall").await?;
    let (s, v) = activate_with(
        &c,
        ob["device_token"].as_str().context("t")?,
        "CAM-LABEL",
        Some(&alice_secret),
    )
    .await?;
    ensure!(s == StatusCode::OK, "transfer {s} {v}");
    let bob_id = v["device_id"].as_str().context("id")?.to_owned();
    let bob_secret = v["device_secret"].as_str().context("secret")?.to_owned();
    ensure!(camera_ticket(&c, &bob_id, &bob_secret).await? == StatusCode::OK);
    let old = camera_ticket(&c, &alice_id, &alice_secret).await?;
    ensure!(
        old == StatusCode::UNAUTHORIZED || old == StatusCode::NOT_FOUND,
        "old registration still works: {old}"
    );
    let (_, list) = c.get("/api/camera/devices", Some(&alice)).await?;
    ensure!(
        list.as_array()
            .is_some_and(|a| a.iter().all(|d| d["id"] != alice_id.as_str())),
        "alice still lists the moved camera: {list}"
    );
    c.running.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn sqlite_uid_squatting_blocks_nobody() -> Result<()> {
    uid_squatting(Db::Sqlite).await
}

#[tokio::test]
async fn postgres_uid_squatting_blocks_nobody() -> Result<()> {
    uid_squatting(Db::Postgres).await
}
