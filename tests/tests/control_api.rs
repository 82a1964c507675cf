//! vc-control end to end: the real binary on an ephemeral port, against SQLite (temp dir)
//! and Postgres (fresh database), walking the whole API including every error case.
//!
//! Argon2 runs at a low cost here (`VC_ARGON2__MEMORY_KIB=1024`, one pass) to keep the
//! suite fast; the shipped default is OWASP's 19 MiB / 2 passes.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use shared::api::{ActivateResponse, PresenceReport, QrPayload, TicketResponse};
use shared::ticket::{Role, TicketKey};
use shared::Secret;
use uuid::Uuid;
use vc_tests::control::{code, start_control, Db, SERVER_URL, TICKET_SECRET};
use vc_tests::start;

fn decode_qr(data_url: &str) -> Result<String> {
    let b64 = data_url
        .strip_prefix("data:image/png;base64,")
        .context("not a PNG data URL")?;
    let png = base64::engine::general_purpose::STANDARD.decode(b64)?;
    let img = image::load_from_memory(&png)?.to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(img);
    let grids = prepared.detect_grids();
    ensure!(
        grids.len() == 1,
        "expected one QR code, found {}",
        grids.len()
    );
    let (_, content) = grids[0].decode()?;
    Ok(content)
}

async fn full_flow(db: Db) -> Result<()> {
    let c = start_control(db, &[]).await?;
    let key = TicketKey::new(&Secret::new(TICKET_SECRET));

    // Health, docs, static app.
    let (s, v) = c.get("/healthz", None).await?;
    ensure!(
        s == StatusCode::OK && v["status"] == "ok",
        "healthz {s} {v}"
    );
    let (s, v) = c.get("/api/openapi.json", None).await?;
    ensure!(
        s == StatusCode::OK && v["paths"]["/api/camera/activate"].is_object(),
        "openapi {s}"
    );
    let docs = c.http.get(format!("{}/docs/", c.base)).send().await?;
    ensure!(
        docs.status() == StatusCode::OK && docs.text().await?.contains("swagger"),
        "swagger ui"
    );
    let index = c.http.get(format!("{}/", c.base)).send().await?;
    ensure!(index.status() == StatusCode::OK, "index {}", index.status());
    ensure!(
        index.headers()["content-type"]
            .to_str()?
            .starts_with("text/html"),
        "index content type"
    );

    // Accounts.
    let (s, v) = c
        .post(
            "/api/register",
            None,
            json!({"email": " Alice@Example.COM ", "password": "password123"}),
        )
        .await?;
    ensure!(s == StatusCode::CREATED, "register {s} {v}");
    ensure!(
        v["email"] == "alice@example.com" && v["id"].is_string() && v["created_at"].is_string(),
        "{v}"
    );
    ensure!(
        !v.to_string().contains("password"),
        "register echoes password"
    );
    let (s, v) = c
        .post(
            "/api/register",
            None,
            json!({"email": "alice@example.com", "password": "password123"}),
        )
        .await?;
    ensure!(
        s == StatusCode::CONFLICT && code(&v) == "email_taken",
        "dup register {s} {v}"
    );
    let (s, v) = c
        .post(
            "/api/register",
            None,
            json!({"email": "not-an-email", "password": "password123"}),
        )
        .await?;
    ensure!(
        s == StatusCode::UNPROCESSABLE_ENTITY && code(&v) == "invalid_email",
        "{s} {v}"
    );
    let (s, v) = c
        .post(
            "/api/register",
            None,
            json!({"email": "bob@example.com", "password": "short"}),
        )
        .await?;
    ensure!(
        s == StatusCode::UNPROCESSABLE_ENTITY && code(&v) == "weak_password",
        "{s} {v}"
    );
    let (s, v) = c
        .post(
            "/api/register",
            None,
            json!({"email": 42, "password": "password123"}),
        )
        .await?;
    ensure!(
        s == StatusCode::BAD_REQUEST
            && code(&v) == "malformed_json"
            && v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("email"),
        "{s} {v}"
    );
    let (s, v) = c
        .post("/api/register", None, json!({"email": "x@y.zz"}))
        .await?;
    ensure!(
        s == StatusCode::BAD_REQUEST
            && v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("password"),
        "{s} {v}"
    );
    let (s, v) = c
        .post(
            "/api/login",
            None,
            json!({"email": "ALICE@example.com", "password": "password123"}),
        )
        .await?;
    ensure!(
        s == StatusCode::OK && v["token_type"] == "bearer" && v["expires_in"] == 86400,
        "login {s} {v}"
    );
    let jwt = v["access_token"].as_str().context("token")?.to_owned();
    let (s1, v1) = c
        .post(
            "/api/login",
            None,
            json!({"email": "alice@example.com", "password": "wrong-password"}),
        )
        .await?;
    let (s2, v2) = c
        .post(
            "/api/login",
            None,
            json!({"email": "nobody@example.com", "password": "password123"}),
        )
        .await?;
    ensure!(
        s1 == StatusCode::UNAUTHORIZED && s2 == StatusCode::UNAUTHORIZED && v1 == v2,
        "login failures differ: {v1} {v2}"
    );

    // Models.
    let (s, v) = c.get("/api/camera/models", None).await?;
    let models = v.as_array().context("models array")?;
    ensure!(s == StatusCode::OK && models.len() >= 3, "{v}");
    ensure!(
        models.iter().any(|m| m["code"] == "CP_PLUS_WIFI_V2"
            && m["display_name"].is_string()
            && m["capabilities"]["audio"].is_boolean()),
        "{v}"
    );

    // Onboarding: auth and validation errors.
    let good = json!({"camera_model": "CP_PLUS_WIFI_V2", "wifi_ssid": "HomeNet", "wifi_password": "wifi-pass-123", "device_name": "Porch"});
    let (s, v) = c.post("/api/camera/onboard", None, good.clone()).await?;
    ensure!(s == StatusCode::UNAUTHORIZED, "no jwt {s} {v}");
    let (s, _) = c
        .post("/api/camera/onboard", Some("not.a.jwt"), good.clone())
        .await?;
    ensure!(s == StatusCode::UNAUTHORIZED, "forged jwt {s}");
    let other_key_jwt = {
        // A well-formed JWT signed with another key.
        let parts: Vec<&str> = jwt.split('.').collect();
        format!(
            "{}.{}.{}",
            parts[0], parts[1], "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        )
    };
    let (s, _) = c
        .post("/api/camera/onboard", Some(&other_key_jwt), good.clone())
        .await?;
    ensure!(s == StatusCode::UNAUTHORIZED, "bad signature jwt {s}");
    for (patch, want) in [
        (json!({"camera_model": "NOPE"}), "unknown_model"),
        (json!({"wifi_ssid": ""}), "invalid_ssid"),
        (json!({"wifi_ssid": "x".repeat(33)}), "invalid_ssid"),
        (json!({"wifi_password": "short"}), "invalid_wifi_password"),
        (
            json!({"wifi_password": "x".repeat(64)}),
            "invalid_wifi_password",
        ),
    ] {
        let mut body = good.clone();
        for (k, val) in patch.as_object().context("patch")? {
            body[k] = val.clone();
        }
        let (s, v) = c.post("/api/camera/onboard", Some(&jwt), body).await?;
        ensure!(
            s == StatusCode::UNPROCESSABLE_ENTITY && code(&v) == want,
            "{patch}: {s} {v}"
        );
    }
    let (s, v) = c
        .post(
            "/api/camera/onboard",
            Some(&jwt),
            json!({"camera_model": "CP_PLUS_WIFI_V2", "wifi_ssid": 7}),
        )
        .await?;
    ensure!(
        s == StatusCode::BAD_REQUEST
            && v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("wifi_ssid"),
        "{s} {v}"
    );
    // Open network: empty password is fine.
    let mut open = good.clone();
    open["wifi_password"] = json!("");
    let (s, _) = c.post("/api/camera/onboard", Some(&jwt), open).await?;
    ensure!(s == StatusCode::CREATED, "open network {s}");

    // Onboard and read the QR code back.
    let ob = c.onboard(&jwt, "Porch").await?;
    let token = ob["device_token"]
        .as_str()
        .context("device_token")?
        .to_owned();
    let device_id: Uuid = ob["device_id"].as_str().context("device_id")?.parse()?;
    ensure!(token.len() >= 22, "token too short for 128 bits");
    let decoded = decode_qr(ob["qr_code"].as_str().context("qr_code")?)?;
    ensure!(
        decoded == ob["qr_payload"].as_str().context("qr_payload")?,
        "QR content differs from qr_payload"
    );
    let payload: QrPayload = serde_json::from_str(&decoded)?;
    ensure!(
        payload.v == 1
            && payload.device_token == token
            && payload.wifi_ssid == "HomeNet"
            && payload.wifi_password == "wifi-pass-123",
        "{payload:?}"
    );
    ensure!(
        payload.server_url == SERVER_URL && payload.camera_model == "CP_PLUS_WIFI_V2",
        "{payload:?}"
    );
    ensure!(
        payload.expires_at > shared::ticket::unix_now() as i64,
        "expiry in the past"
    );
    ensure!(ob["qr_svg"].as_str().unwrap_or("").contains("<svg"), "svg");

    // Pending device is listed; no secrets anywhere.
    let (s, v) = c
        .get(&format!("/api/camera/devices/{device_id}"), Some(&jwt))
        .await?;
    ensure!(
        s == StatusCode::OK && v["status"] == "pending" && v["device_name"] == "Porch",
        "{s} {v}"
    );
    let (s, v) = c
        .get(&format!("/api/camera/check-status/{token}"), Some(&jwt))
        .await?;
    ensure!(
        s == StatusCode::OK && v["activated"] == false && v["status"] == "pending",
        "{s} {v}"
    );

    // Viewer ticket for a pending camera: 409.
    let (s, v) = c
        .post(
            "/api/relay/ticket",
            Some(&jwt),
            json!({"device_id": device_id}),
        )
        .await?;
    ensure!(
        s == StatusCode::CONFLICT && code(&v) == "device_not_activated",
        "{s} {v}"
    );

    // Long poll woken by the activation.
    let poll = {
        let http = c.http.clone();
        let url = format!("{}/api/camera/check-status/{token}?wait=30", c.base);
        let jwt = jwt.clone();
        tokio::spawn(async move {
            http.get(url)
                .bearer_auth(jwt)
                .send()
                .await?
                .json::<Value>()
                .await
        })
    };
    // Activation errors before the real one: unknown token, model mismatch, bad uid.
    let (s, v) = c.activate("A".repeat(43).as_str(), "CAM-1").await?;
    ensure!(s == StatusCode::NOT_FOUND, "unknown token {s} {v}");
    let (s, v) = c.post("/api/camera/activate", None, json!({"device_token": token, "device_uid": "CAM-1", "camera_model": "CP_PLUS_PTZ_4MP"})).await?;
    ensure!(
        s == StatusCode::CONFLICT && code(&v) == "model_mismatch",
        "{s} {v}"
    );
    let (s, v) = c.activate(&token, "").await?;
    ensure!(s == StatusCode::UNPROCESSABLE_ENTITY, "empty uid {s} {v}");

    let (s, v) = c.activate(&token, "CAM-1").await?;
    ensure!(s == StatusCode::OK, "activate {s} {v}");
    let act: ActivateResponse = serde_json::from_value(v)?;
    ensure!(
        act.device_id == device_id
            && act.signaling_url == "ws://relay.test/ws"
            && act.turn_uris.len() == 2,
        "{act:?}"
    );
    let polled = tokio::time::timeout(Duration::from_secs(35), poll).await???;
    ensure!(
        polled["activated"] == true
            && polled["status"] == "offline"
            && polled["device_id"] == device_id.to_string(),
        "long poll {polled}"
    );

    // Retry from the same camera: same id, fresh secret replacing the old one.
    let (s, v) = c.activate(&token, "CAM-1").await?;
    ensure!(s == StatusCode::OK, "retry {s} {v}");
    let retry: ActivateResponse = serde_json::from_value(v)?;
    ensure!(
        retry.device_id == device_id && retry.device_secret != act.device_secret,
        "retry must rotate secret"
    );
    let (s, v) = c
        .post(
            "/api/relay/ticket",
            None,
            json!({"device_id": device_id, "device_secret": act.device_secret}),
        )
        .await?;
    ensure!(
        s == StatusCode::UNAUTHORIZED && code(&v) == "invalid_device_credentials",
        "old secret {s} {v}"
    );
    // Another camera reusing the token.
    let (s, v) = c.activate(&token, "CAM-OTHER").await?;
    ensure!(
        s == StatusCode::GONE && code(&v) == "token_used",
        "reuse {s} {v}"
    );

    // Camera ticket, verified with the ticket secret alone.
    let (s, v) = c
        .post(
            "/api/relay/ticket",
            None,
            json!({"device_id": device_id, "device_secret": retry.device_secret}),
        )
        .await?;
    ensure!(s == StatusCode::OK, "camera ticket {s} {v}");
    let t: TicketResponse = serde_json::from_value(v)?;
    let now = shared::ticket::unix_now();
    key.verify_turn_credentials(&t.turn.username, &t.turn.credential, now)?;
    let claims = key.verify_signaling(&t.signaling.token, now)?;
    ensure!(
        claims.role == Role::Camera
            && claims.devices == vec![device_id]
            && claims.sub == device_id.to_string(),
        "{claims:?}"
    );
    // The owner rides along (TURN quota per account); the subject stays the device.
    let camera_account = claims.account.clone().context("camera ticket account")?;
    ensure!(
        t.turn
            .username
            .ends_with(&format!(":{device_id}:{camera_account}"))
            && t.turn.ttl == 600
            && t.turn.uris.len() == 2,
        "{:?}",
        t.turn
    );
    ensure!(t.signaling.url == "ws://relay.test/ws", "signaling url");
    ensure!(
        TicketKey::new(&Secret::new("other"))
            .verify_signaling(&t.signaling.token, now)
            .is_err(),
        "other key accepted"
    );
    // Viewer ticket.
    let (s, v) = c
        .post(
            "/api/relay/ticket",
            Some(&jwt),
            json!({"device_id": device_id}),
        )
        .await?;
    ensure!(s == StatusCode::OK, "viewer ticket {s} {v}");
    let t: TicketResponse = serde_json::from_value(v)?;
    let claims = key.verify_signaling(&t.signaling.token, now)?;
    ensure!(
        claims.role == Role::Viewer
            && claims.devices == vec![device_id]
            && claims.account.as_deref() == Some(claims.sub.as_str())
            && claims.sub == camera_account,
        "{claims:?} (camera account {camera_account})"
    );
    key.verify_turn_credentials(&t.turn.username, &t.turn.credential, now)?;
    let (s, _) = c
        .post("/api/relay/ticket", None, json!({"device_id": device_id}))
        .await?;
    ensure!(
        s == StatusCode::UNAUTHORIZED,
        "ticket without credentials {s}"
    );
    let (s, _) = c
        .post(
            "/api/relay/ticket",
            None,
            json!({"device_id": device_id, "device_secret": "wrong-secret-wrong-secret"}),
        )
        .await?;
    ensure!(s == StatusCode::UNAUTHORIZED, "wrong secret {s}");

    // Presence: signed report updates status; bad signature and stale reports are refused.
    let unknown = Uuid::new_v4();
    let report = PresenceReport {
        sent_at: shared::ticket::unix_now(),
        node_id: "node-1".into(),
        epoch: 1,
        lease_ms: 60_000,
        leaving: false,
        revoked_since_ms: 0,
        events: vec![
            shared::api::PresenceEvent {
                device_id,
                online: true,
                at_ms: now * 1000,
                conn: 5,
            },
            shared::api::PresenceEvent {
                device_id: unknown,
                online: true,
                at_ms: now * 1000,
                conn: 6,
            },
        ],
    };
    let body = serde_json::to_vec(&report)?;
    let presence = |body: Vec<u8>, sig: String| {
        c.http
            .post(format!("{}/api/internal/presence", c.base))
            .header("x-vc-signature", sig)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let res = presence(body.clone(), key.sign_internal(&body)).await?;
    ensure!(res.status() == StatusCode::OK, "presence {}", res.status());
    let ack: shared::api::PresenceAck = res.json().await?;
    ensure!(ack.unknown_devices == vec![unknown], "{ack:?}");
    let (_, v) = c
        .get(&format!("/api/camera/devices/{device_id}"), Some(&jwt))
        .await?;
    ensure!(
        v["status"] == "online" && v["last_seen"].is_string(),
        "after presence {v}"
    );
    let res = presence(
        body.clone(),
        TicketKey::new(&Secret::new("wrong")).sign_internal(&body),
    )
    .await?;
    ensure!(
        res.status() == StatusCode::UNAUTHORIZED,
        "bad signature {}",
        res.status()
    );
    let stale = PresenceReport {
        sent_at: shared::ticket::unix_now() - 120,
        events: vec![],
        ..report.clone()
    };
    let stale_body = serde_json::to_vec(&stale)?;
    let res = presence(stale_body.clone(), key.sign_internal(&stale_body)).await?;
    ensure!(
        res.status() == StatusCode::UNAUTHORIZED,
        "stale report {}",
        res.status()
    );
    // An older connection's offline arriving late does not override the newer online.
    let late = PresenceReport {
        sent_at: shared::ticket::unix_now(),
        events: vec![shared::api::PresenceEvent {
            device_id,
            online: false,
            at_ms: now * 1000 - 5000,
            conn: 3,
        }],
        ..report.clone()
    };
    let late_body = serde_json::to_vec(&late)?;
    presence(late_body.clone(), key.sign_internal(&late_body)).await?;
    let (_, v) = c
        .get(&format!("/api/camera/devices/{device_id}"), Some(&jwt))
        .await?;
    ensure!(v["status"] == "online", "reordered presence applied {v}");

    // Lists never carry secrets.
    let (s, v) = c.get("/api/camera/devices", Some(&jwt)).await?;
    ensure!(s == StatusCode::OK, "list {s}");
    let list = v.as_array().context("list")?;
    ensure!(
        list.iter().any(|d| d["id"] == device_id.to_string()
            && d["device_uid"] == "CAM-1"
            && d["local_ip"] == "192.168.1.50"),
        "{v}"
    );
    let text = v.to_string();
    for secret in [
        &retry.device_secret,
        &token,
        "wifi-pass-123",
        "secret_hash",
        "token_hash",
    ] {
        ensure!(!text.contains(secret), "device list leaks {secret}");
    }

    // Cross-user access: 404 everywhere.
    let mallory = c.user("mallory@example.com").await?;
    let (s, v) = c
        .get(&format!("/api/camera/devices/{device_id}"), Some(&mallory))
        .await?;
    ensure!(
        s == StatusCode::NOT_FOUND && code(&v) == "not_found",
        "{s} {v}"
    );
    let (s, _) = c
        .call(
            Method::DELETE,
            &format!("/api/camera/devices/{device_id}"),
            Some(&mallory),
            None,
        )
        .await?;
    ensure!(s == StatusCode::NOT_FOUND, "cross delete {s}");
    let (s, _) = c
        .get(&format!("/api/camera/check-status/{token}"), Some(&mallory))
        .await?;
    ensure!(s == StatusCode::NOT_FOUND, "cross check-status {s}");
    let (s, _) = c
        .post(
            "/api/relay/ticket",
            Some(&mallory),
            json!({"device_id": device_id}),
        )
        .await?;
    ensure!(s == StatusCode::NOT_FOUND, "cross ticket {s}");
    let (_, v) = c.get("/api/camera/devices", Some(&mallory)).await?;
    ensure!(
        v.as_array().is_some_and(|a| a.is_empty()),
        "mallory sees {v}"
    );
    // The same uid activated under another owner: allowed (a uid is a claim, not a key),
    // and the first owner's camera is untouched (issue 11 #8).
    let mob = c.onboard(&mallory, "Stolen").await?;
    let (s, v) = c
        .activate(mob["device_token"].as_str().context("token")?, "CAM-1")
        .await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    let (_, v) = c.get("/api/camera/devices", Some(&jwt)).await?;
    ensure!(
        v.as_array()
            .is_some_and(|a| a.iter().any(|d| d["id"] == device_id.to_string().as_str())),
        "owner lost its camera: {v}"
    );

    // The same owner re-onboarding a camera (after a factory reset) replaces the old entry.
    let first = c.onboard(&jwt, "Garage").await?;
    let (s, v) = c
        .activate(first["device_token"].as_str().context("token")?, "CAM-2")
        .await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    let again = c.onboard(&jwt, "Garage again").await?;
    let (s, v) = c
        .activate(again["device_token"].as_str().context("token")?, "CAM-2")
        .await?;
    ensure!(
        s == StatusCode::OK && v["device_id"] == again["device_id"],
        "{s} {v}"
    );
    let (s, _) = c
        .get(
            &format!(
                "/api/camera/devices/{}",
                first["device_id"].as_str().unwrap_or_default()
            ),
            Some(&jwt),
        )
        .await?;
    ensure!(s == StatusCode::NOT_FOUND, "old registration kept: {s}");

    // Concurrent activations of one token by different cameras: exactly one wins.
    let race = c.onboard(&jwt, "Race").await?;
    let race_token = race["device_token"].as_str().context("token")?.to_owned();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let http = c.http.clone();
        let url = format!("{}/api/camera/activate", c.base);
        let body = json!({"device_token": race_token, "device_uid": format!("RACE-{i}"), "camera_model": "CP_PLUS_WIFI_V2"});
        tasks.push(tokio::spawn(async move {
            http.post(url).json(&body).send().await.map(|r| r.status())
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await??);
    }
    ensure!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count() == 1,
        "winners: {statuses:?}"
    );
    ensure!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::GONE),
        "{statuses:?}"
    );

    // Delete: the device secret stops working.
    let (s, v) = c
        .call(
            Method::DELETE,
            &format!("/api/camera/devices/{device_id}"),
            Some(&jwt),
            None,
        )
        .await?;
    ensure!(s == StatusCode::NO_CONTENT, "delete {s} {v}");
    let (s, v) = c
        .post(
            "/api/relay/ticket",
            None,
            json!({"device_id": device_id, "device_secret": retry.device_secret}),
        )
        .await?;
    ensure!(
        s == StatusCode::UNAUTHORIZED,
        "deleted device's secret {s} {v}"
    );
    let (s, _) = c
        .get(&format!("/api/camera/devices/{device_id}"), Some(&jwt))
        .await?;
    ensure!(s == StatusCode::NOT_FOUND, "deleted device {s}");
    let (s, _) = c
        .call(
            Method::DELETE,
            &format!("/api/camera/devices/{device_id}"),
            Some(&jwt),
            None,
        )
        .await?;
    ensure!(s == StatusCode::NOT_FOUND, "double delete {s}");

    // Metrics reflect the traffic with route templates, not raw paths.
    let metrics = c.metrics().await?;
    ensure!(
        metrics.contains("http_requests_total")
            && metrics.contains("route=\"/api/camera/devices/{id}\""),
        "metrics: {metrics}"
    );
    ensure!(
        !metrics.contains(&device_id.to_string()),
        "metrics carry a device id"
    );
    ensure!(
        metrics.contains("activations_total") && metrics.contains("devices{status=\"pending\"}"),
        "metrics: {metrics}"
    );

    let status = c.running.terminate().await?;
    ensure!(status.success(), "vc-control exited with {status}");
    Ok(())
}

#[tokio::test]
async fn sqlite_full_flow() -> Result<()> {
    full_flow(Db::Sqlite).await
}

#[tokio::test]
async fn postgres_full_flow() -> Result<()> {
    full_flow(Db::Postgres).await
}

/// Bad input that is not about one resource: body limit, malformed JSON, unknown routes,
/// login rate limit, expired tokens (a zero token TTL), bad `wait`.
async fn edge_cases(db: Db) -> Result<()> {
    let c = start_control(
        db,
        &[
            ("VC_DEVICE_TOKEN_TTL_SECS", "0"),
            ("VC_LOGIN_MAX_FAILURES", "3"),
        ],
    )
    .await?;
    let jwt = c.user("carol@example.com").await?;

    let big = "x".repeat(70 * 1024);
    let res = c
        .http
        .post(format!("{}/api/register", c.base))
        .header("content-type", "application/json")
        .body(format!("{{\"email\":\"{big}\"}}"))
        .send()
        .await?;
    ensure!(
        res.status() == StatusCode::PAYLOAD_TOO_LARGE,
        "413 expected, got {}",
        res.status()
    );
    let v: Value = res.json().await?;
    ensure!(code(&v) == "payload_too_large", "{v}");
    let res = c
        .http
        .post(format!("{}/api/login", c.base))
        .body("{not json")
        .send()
        .await?;
    ensure!(
        res.status() == StatusCode::BAD_REQUEST,
        "malformed {}",
        res.status()
    );
    let (s, v) = c.get("/api/nope", None).await?;
    ensure!(
        s == StatusCode::NOT_FOUND && code(&v) == "not_found",
        "{s} {v}"
    );
    let (s, v) = c.get("/api/login", None).await?;
    ensure!(s == StatusCode::METHOD_NOT_ALLOWED, "{s} {v}");

    // Expired token: 410.
    let ob = c.onboard(&jwt, "Expired").await?;
    let token = ob["device_token"].as_str().context("token")?;
    let (s, v) = c.activate(token, "CAM-EXP").await?;
    ensure!(
        s == StatusCode::GONE && code(&v) == "token_expired",
        "{s} {v}"
    );
    let (s, v) = c
        .get(
            &format!("/api/camera/check-status/{token}?wait=abc"),
            Some(&jwt),
        )
        .await?;
    ensure!(s == StatusCode::BAD_REQUEST, "{s} {v}");

    // Login limit: 3 failures allowed, the 4th attempt is refused with Retry-After.
    for _ in 0..3 {
        let (s, _) = c
            .post(
                "/api/login",
                None,
                json!({"email": "carol@example.com", "password": "wrong-password"}),
            )
            .await?;
        ensure!(s == StatusCode::UNAUTHORIZED, "{s}");
    }
    let res = c
        .http
        .post(format!("{}/api/login", c.base))
        .json(&json!({"email": "carol@example.com", "password": "password123"}))
        .send()
        .await?;
    ensure!(
        res.status() == StatusCode::TOO_MANY_REQUESTS,
        "429 expected, got {}",
        res.status()
    );
    let retry: u64 = res
        .headers()
        .get("retry-after")
        .context("Retry-After")?
        .to_str()?
        .parse()?;
    ensure!((1..=60).contains(&retry), "retry-after {retry}");
    // Another email from the same IP is unaffected.
    let (s, _) = c
        .post(
            "/api/login",
            None,
            json!({"email": "dave@example.com", "password": "password123"}),
        )
        .await?;
    ensure!(s == StatusCode::UNAUTHORIZED, "{s}");

    c.running.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn sqlite_edge_cases() -> Result<()> {
    edge_cases(Db::Sqlite).await
}

#[tokio::test]
async fn postgres_edge_cases() -> Result<()> {
    edge_cases(Db::Postgres).await
}

/// Generated secrets are written to the data dir once and kept across restarts, so a
/// restart does not log users out.
#[tokio::test]
async fn generated_secrets_survive_restart() -> Result<()> {
    let data = tempfile::tempdir()?;
    let url = format!("sqlite://{}/vc.db?mode=rwc", data.path().display());
    let dir = data.path().display().to_string();
    let env = [
        ("VC_LISTEN", "127.0.0.1:0"),
        ("VC_ADMIN_LISTEN", "127.0.0.1:0"),
        ("VC_DATABASE_URL", url.as_str()),
        ("VC_DATA_DIR", dir.as_str()),
        ("VC_ARGON2__MEMORY_KIB", "1024"),
        ("VC_ARGON2__ITERATIONS", "1"),
    ];
    let first = start("vc-control", &[], &env).await?;
    let http = shared::tls::http_client_builder(None)
        .map_err(anyhow::Error::msg)?
        .build()?;
    let base = first.url("http");
    http.post(format!("{base}/api/register"))
        .json(&json!({"email": "erin@example.com", "password": "password123"}))
        .send()
        .await?;
    let login: Value = http
        .post(format!("{base}/api/login"))
        .json(&json!({"email": "erin@example.com", "password": "password123"}))
        .send()
        .await?
        .json()
        .await?;
    let jwt = login["access_token"].as_str().context("token")?.to_owned();
    first.terminate().await?;
    ensure!(
        data.path().join("jwt.secret").exists() && data.path().join("ticket.secret").exists(),
        "secrets not stored"
    );
    let second = start("vc-control", &[], &env).await?;
    let res = http
        .get(format!("{}/api/camera/devices", second.url("http")))
        .bearer_auth(&jwt)
        .send()
        .await?;
    ensure!(
        res.status() == StatusCode::OK,
        "JWT rejected after restart: {}",
        res.status()
    );
    second.terminate().await?;
    Ok(())
}
