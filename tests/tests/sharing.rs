//! Camera sharing (issue 12) end to end, on SQLite and Postgres: real vc-control and vc-relay
//! (presence and revocations flowing between them), accounts and cameras made through the
//! HTTP API, the camera and the invitee's viewer on real WebSockets. Also the device list's
//! cursor pagination.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use shared::signaling::{ClientMessage, ErrorCode, ServerMessage};
use tokio_tungstenite::tungstenite::Error as WsError;
use vc_tests::control::code;
use vc_tests::signaling_client::{closed, expect_error, recv, send, ws_connect, Ws, STEP};
use vc_tests::stack::{start_relay, Control, Db};

const SECRET: &str = "sharing-test-ticket-secret-at-least-32-bytes";

/// Sorted key names of a JSON object, nested objects as `outer.inner`.
fn shape(v: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(o) = v.as_object() {
        for (k, inner) in o {
            keys.push(k.clone());
            keys.extend(shape(inner).into_iter().map(|i| format!("{k}.{i}")));
        }
    }
    keys.sort();
    keys
}

/// A viewer connection authenticated with `token`, past its welcome.
async fn viewer(ws_base: &str, token: &str) -> Result<Ws> {
    let mut ws = ws_connect(ws_base).await?;
    send(
        &mut ws,
        &ClientMessage::Auth {
            token: token.to_owned(),
        },
    )
    .await?;
    match recv(&mut ws).await? {
        ServerMessage::Welcome { .. } => Ok(ws),
        other => bail!("expected welcome, got {other:?}"),
    }
}

async fn status_of(
    c: &Control,
    method: Method,
    path: &str,
    jwt: &str,
    body: Option<Value>,
) -> Result<(StatusCode, String)> {
    let (s, v) = c.call(method, path, Some(jwt), body).await?;
    Ok((s, code(&v).to_owned()))
}

async fn sharing(db: Db) -> Result<()> {
    let control = Control::start(db, SECRET, &[("VC_MAX_SHARES_PER_DEVICE", "3")]).await?;
    let relay = start_relay(SECRET, &control.base, &[]).await?;
    let ws_base = format!("ws://{}/ws", relay.addr("signaling"));

    let alice = control.user("alice@example.com").await?;
    let bob = control.user("bob@example.com").await?;
    let carol = control.user("carol@example.com").await?;
    let (dev, dev_secret) = control.camera(&alice, "CAM-SHARED").await?;
    let dev_path = format!("/api/camera/devices/{dev}");
    let shares_path = format!("{dev_path}/shares");

    // Before any share, another account sees nothing: 404 everywhere, no ticket.
    let (s, v) = control.share(&carol, dev, "bob@example.com").await?;
    ensure!(
        s == StatusCode::NOT_FOUND && code(&v) == "not_found",
        "{s} {v}"
    );
    let (s, _) = status_of(&control, Method::GET, &shares_path, &carol, None).await?;
    ensure!(s == StatusCode::NOT_FOUND, "stranger lists shares: {s}");

    // Owner invites bob (has an account) and an address without one: same status, same body
    // shape, same `status`; only the echoed email and the fresh id differ.
    let (s_known, known) = control.share(&alice, dev, "Bob@Example.com ").await?;
    let (s_unknown, unknown) = control.share(&alice, dev, "nobody@example.com").await?;
    ensure!(
        s_known == StatusCode::ACCEPTED && s_unknown == StatusCode::ACCEPTED,
        "{s_known} {known} / {s_unknown} {unknown}"
    );
    ensure!(shape(&known) == shape(&unknown), "{known} vs {unknown}");
    ensure!(known["status"] == "invited" && unknown["status"] == "invited");
    ensure!(known["share"]["email"] == "bob@example.com", "{known}");
    let bob_share = known["share"]["id"]
        .as_str()
        .context("share id")?
        .to_owned();
    // Grant audited with the client address and the invitee's id (never its email).
    let audit = control
        .sql("SELECT client_ip, detail FROM audit_log WHERE action = 'share_granted' ORDER BY at")
        .await?;
    let lines: Vec<&str> = audit.lines().collect();
    ensure!(lines.len() == 2, "{audit}");
    ensure!(
        lines.iter().all(|l| l.starts_with("127.0.0.1|")) && !audit.contains("@"),
        "{audit}"
    );

    // The invitee lists it as shared (without the owner's network details); the owner as its own.
    let seen = control.listed(&bob, dev).await?;
    ensure!(seen["shared"] == true, "{seen}");
    ensure!(
        seen["local_ip"].is_null() && seen["device_uid"].is_null(),
        "{seen}"
    );
    ensure!(control.listed(&alice, dev).await?["shared"] == false);
    let (s, v) = control.get(&dev_path, Some(&bob)).await?;
    ensure!(s == StatusCode::OK && v["shared"] == true, "{s} {v}");
    ensure!(control.devices(&carol).await?.is_empty());

    // The invitee cannot act as an owner: 403 not_owner. A stranger still gets 404.
    for (method, path, body) in [
        (Method::DELETE, dev_path.clone(), None),
        (
            Method::PATCH,
            dev_path.clone(),
            Some(json!({"device_name": "mine now"})),
        ),
        (
            Method::POST,
            shares_path.clone(),
            Some(json!({"email": "carol@example.com", "role": "viewer"})),
        ),
        (Method::GET, shares_path.clone(), None),
        (Method::DELETE, format!("{shares_path}/{bob_share}"), None),
    ] {
        let got = status_of(&control, method.clone(), &path, &bob, body.clone()).await?;
        ensure!(
            got == (StatusCode::FORBIDDEN, "not_owner".into()),
            "bob {method} {path}: {got:?}"
        );
        let got = status_of(&control, method.clone(), &path, &carol, body).await?;
        ensure!(
            got.0 == StatusCode::NOT_FOUND,
            "carol {method} {path}: {got:?}"
        );
    }
    ensure!(control.listed(&alice, dev).await?["device_name"] == "CAM-SHARED");
    // Registering the same uid in its own account gives Bob his own entry; Alice's camera
    // stays hers (a uid moves nothing without the camera's secret, issue 11 #8).
    let ob = control.onboard(&bob, "taken over").await?;
    let (s, v) = control
        .activate(ob["device_token"].as_str().context("token")?, "CAM-SHARED")
        .await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    ensure!(control.listed(&alice, dev).await?["device_name"] == "CAM-SHARED");
    // The owner can rename it.
    let (s, v) = control
        .call(
            Method::PATCH,
            &dev_path,
            Some(&alice),
            Some(json!({"device_name": "Porch"})),
        )
        .await?;
    ensure!(
        s == StatusCode::OK && v["device_name"] == "Porch",
        "{s} {v}"
    );
    ensure!(control.listed(&bob, dev).await?["device_name"] == "Porch");

    // A stranger gets no ticket; the invitee does, and watches through the relay.
    let (s, _) = status_of(
        &control,
        Method::POST,
        "/api/relay/ticket",
        &carol,
        Some(json!({"device_id": dev})),
    )
    .await?;
    ensure!(s == StatusCode::NOT_FOUND, "stranger ticket {s}");
    let ct = control.camera_ticket(dev, &dev_secret).await?;
    let mut cam = ws_connect(&format!("{ws_base}?token={}", ct.signaling.token)).await?;
    ensure!(matches!(
        recv(&mut cam).await?,
        ServerMessage::Welcome { .. }
    ));
    control.wait_status(&bob, dev, "online").await?;
    let bob_ticket = control.viewer_ticket(&bob, dev).await?;
    let mut v1 = viewer(&ws_base, &bob_ticket.signaling.token).await?;
    send(&mut v1, &ClientMessage::Connect { device_id: dev }).await?;
    let session = match recv(&mut v1).await? {
        ServerMessage::Session {
            session_id,
            device_id,
        } if device_id == dev => session_id,
        other => bail!("expected session, got {other:?}"),
    };
    send(
        &mut v1,
        &ClientMessage::Offer {
            session_id: session,
            sdp: "v=0 shared-offer".into(),
        },
    )
    .await?;
    let got = recv(&mut cam).await?;
    ensure!(
        got == ServerMessage::Offer {
            session_id: session,
            sdp: "v=0 shared-offer".into()
        },
        "{got:?}"
    );

    // Share limit (3 here): bob, nobody and one more; a fourth is refused, for known and
    // unknown addresses alike. Inviting bob again is idempotent and not counted.
    let (s, _) = control.share(&alice, dev, "carol@example.com").await?;
    ensure!(s == StatusCode::ACCEPTED, "third share {s}");
    for email in ["dave@example.com", "alice2@example.com"] {
        let (s, v) = control.share(&alice, dev, email).await?;
        ensure!(
            s == StatusCode::CONFLICT && code(&v) == "share_limit",
            "{email}: {s} {v}"
        );
    }
    let (s, v) = control.share(&alice, dev, "bob@example.com").await?;
    ensure!(
        s == StatusCode::ACCEPTED && v["share"]["id"] == bob_share.as_str(),
        "{s} {v}"
    );
    // Inviting oneself is refused.
    let (s, v) = control.share(&alice, dev, "alice@example.com").await?;
    ensure!(
        s == StatusCode::UNPROCESSABLE_ENTITY && code(&v) == "share_with_self",
        "{s} {v}"
    );
    let (s, v) = control.get(&shares_path, Some(&alice)).await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    let listed = v.as_array().context("shares")?;
    let mut emails: Vec<&str> = listed.iter().filter_map(|s| s["email"].as_str()).collect();
    emails.sort_unstable();
    ensure!(
        emails == ["bob@example.com", "carol@example.com", "nobody@example.com"],
        "{emails:?}"
    );
    // Known and pending invitations look alike to the owner too.
    ensure!(listed.iter().all(|s| shape(s) == shape(&listed[0])), "{v}");

    // Revocation: the viewer socket closes within 2 s, the ticket endpoint refuses, and the
    // old (unexpired, correctly signed) ticket no longer reaches the camera.
    let t0 = Instant::now();
    let (s, v) = control
        .call(
            Method::DELETE,
            &format!("{shares_path}/{bob_share}"),
            Some(&alice),
            None,
        )
        .await?;
    ensure!(s == StatusCode::NO_CONTENT, "revoke {s} {v}");
    let (close_code, reason) = closed(&mut v1).await?;
    let took = t0.elapsed();
    ensure!(
        took < Duration::from_secs(2),
        "viewer closed after {took:?}"
    );
    ensure!(close_code == 4005, "closed with {close_code} {reason}");
    let (s, v) = control
        .post("/api/relay/ticket", Some(&bob), json!({"device_id": dev}))
        .await?;
    ensure!(s == StatusCode::NOT_FOUND, "ticket after revoke {s} {v}");
    match tokio::time::timeout(
        STEP,
        tokio_tungstenite::connect_async(format!("{ws_base}?token={}", bob_ticket.signaling.token)),
    )
    .await?
    {
        Err(WsError::Http(resp)) => ensure!(resp.status().as_u16() == 401, "{}", resp.status()),
        Err(e) => bail!("old ticket: upgrade failed without an HTTP status: {e}"),
        Ok((mut ws, _)) => {
            ensure!(matches!(
                recv(&mut ws).await?,
                ServerMessage::Welcome { .. }
            ));
            send(&mut ws, &ClientMessage::Connect { device_id: dev }).await?;
            expect_error(recv(&mut ws).await?, ErrorCode::Forbidden)?;
        }
    }
    // The camera itself is untouched, the invitee no longer lists it, the revoke is audited.
    ensure!(control.listed(&alice, dev).await?["status"] == "online");
    ensure!(control
        .devices(&bob)
        .await?
        .iter()
        .all(|d| d["id"] != dev.to_string()));
    let (s, _) = control.get(&dev_path, Some(&bob)).await?;
    ensure!(s == StatusCode::NOT_FOUND, "bob reads revoked camera: {s}");
    let revoked = control
        .sql("SELECT client_ip FROM audit_log WHERE action = 'share_revoked'")
        .await?;
    ensure!(revoked == "127.0.0.1", "{revoked}");
    // Revoking twice: the share is gone.
    let (s, _) = control
        .call(
            Method::DELETE,
            &format!("{shares_path}/{bob_share}"),
            Some(&alice),
            None,
        )
        .await?;
    ensure!(s == StatusCode::NOT_FOUND, "second revoke {s}");

    // A share dies with its camera.
    let (s, _) = control
        .call(Method::DELETE, &dev_path, Some(&alice), None)
        .await?;
    ensure!(s == StatusCode::NO_CONTENT, "delete {s}");
    let left = control.sql("SELECT COUNT(*) FROM device_shares").await?;
    ensure!(left == "0", "{left} shares left after delete");

    drop(cam);
    relay.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn sharing_sqlite() -> Result<()> {
    sharing(Db::Sqlite).await
}

#[tokio::test]
async fn sharing_postgres() -> Result<()> {
    sharing(Db::Postgres).await
}

/// Walks the list `limit` at a time; returns the ids in order and how many pages it took.
async fn walk(c: &Control, jwt: &str, limit: u32) -> Result<(Vec<String>, usize)> {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut query = format!("limit={limit}");
    loop {
        let page = c.devices_page(jwt, &query).await?;
        ensure!(
            page.status == StatusCode::OK,
            "{query}: {} {}",
            page.status,
            page.body
        );
        ensure!(page.devices.len() <= limit as usize);
        pages += 1;
        ids.extend(
            page.devices
                .iter()
                .filter_map(|d| d["id"].as_str().map(str::to_owned)),
        );
        match page.next {
            Some(next) => {
                let link = page.link.context("x-next-cursor without Link")?;
                ensure!(
                    link.contains(&format!("after={next}")) && link.ends_with("rel=\"next\""),
                    "{link}"
                );
                query = format!("after={next}&limit={limit}");
            }
            None => return Ok((ids, pages)),
        }
    }
}

async fn pagination(db: Db) -> Result<()> {
    let c = Control::start(db, SECRET, &[]).await?;
    let alice = c.user("alice@example.com").await?;
    let bob = c.user("bob@example.com").await?;
    // One of bob's cameras shared with alice is part of her list: the oldest (a second
    // before hers), so the page ends tested below are alice's own.
    let (shared, _) = c.camera(&bob, "BOB-CAM").await?;
    let (s, _) = c.share(&bob, shared, "alice@example.com").await?;
    ensure!(s == StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Onboarded within a second or two, so the id tie-break orders most of them.
    for i in 0..11 {
        c.onboard(&alice, &format!("cam {i}")).await?;
    }

    let all = c.devices(&alice).await?;
    ensure!(all.len() == 12, "{} devices", all.len());
    let everything: Vec<String> = all
        .iter()
        .filter_map(|d| d["id"].as_str().map(str::to_owned))
        .collect();
    for limit in [1, 5, 12, 500] {
        let (ids, pages) = walk(&c, &alice, limit).await?;
        ensure!(ids == everything, "limit {limit}: {ids:?}");
        ensure!(
            pages == 12usize.div_ceil(limit as usize),
            "limit {limit}: {pages} pages"
        );
    }
    ensure!(everything.last() == Some(&shared.to_string()));
    let unique: HashSet<&String> = everything.iter().collect();
    ensure!(unique.len() == 12);

    // A cursor stays valid when the device it points after is deleted meanwhile.
    let first = c.devices_page(&alice, "limit=4").await?;
    let last = first.devices[3]["id"].as_str().context("id")?;
    let (s, _) = c
        .call(
            Method::DELETE,
            &format!("/api/camera/devices/{last}"),
            Some(&alice),
            None,
        )
        .await?;
    ensure!(s == StatusCode::NO_CONTENT);
    let next = first.next.context("next cursor")?;
    let rest = c
        .devices_page(&alice, &format!("after={next}&limit=500"))
        .await?;
    let rest: Vec<&str> = rest
        .devices
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    ensure!(
        rest == everything[4..]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "{rest:?}"
    );

    // Bad parameters: 400 with a code; another user's list is not reachable by a cursor.
    for (q, want) in [
        ("limit=0", "invalid_limit"),
        ("limit=501", "invalid_limit"),
        ("after=xyz", "invalid_cursor"),
    ] {
        let page = c.devices_page(&alice, q).await?;
        ensure!(
            page.status == StatusCode::BAD_REQUEST && code(&page.body) == want,
            "{q}: {} {}",
            page.status,
            page.body
        );
    }
    let theirs = c.devices_page(&bob, &format!("after={next}")).await?;
    let theirs: Vec<&str> = theirs
        .devices
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    ensure!(
        theirs.iter().all(|id| *id == shared.to_string()),
        "{theirs:?}"
    );
    Ok(())
}

#[tokio::test]
async fn device_list_pages_sqlite() -> Result<()> {
    pagination(Db::Sqlite).await
}

#[tokio::test]
async fn device_list_pages_postgres() -> Result<()> {
    pagination(Db::Postgres).await
}

/// The web app's Share dialog and "Shared with me" marker in headless Chromium
/// (tests/e2e/sharing.mjs): invite, the invitee's watch-only card, revoke, gone.
#[tokio::test]
async fn share_dialog_in_the_browser() -> Result<()> {
    vc_tests::browser::require_browser_kit()?;
    let c = Control::start(Db::Sqlite, SECRET, &[]).await?;
    c.user("owner@example.com").await?;
    let owner = {
        let (s, v) = c
            .post(
                "/api/login",
                None,
                json!({"email": "owner@example.com", "password": "password123"}),
            )
            .await?;
        ensure!(s == StatusCode::OK, "{s} {v}");
        v["access_token"].as_str().context("jwt")?.to_owned()
    };
    c.user("viewer@example.com").await?;
    let (dev, _) = c.camera(&owner, "CAM-BROWSER").await?;
    let root = vc_tests::browser::repo_root();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("node")
            .arg(root.join("tests/e2e/sharing.mjs"))
            .args(["--base-url", &c.base])
            .args(["--owner", "owner@example.com"])
            .args(["--invitee", "viewer@example.com"])
            .args(["--device", &dev.to_string()])
            .arg("--artifacts")
            .arg(root.join("tests/e2e/artifacts"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("sharing.mjs did not finish within 120 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Its check log, shown with the test's output.
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let result = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .context("no RESULT line")?;
    let result: Value = serde_json::from_str(result)?;
    ensure!(
        out.status.success(),
        "sharing.mjs failed ({}): {result}",
        out.status
    );
    let checks = result["checks"].as_array().context("checks")?;
    ensure!(
        checks.len() >= 9 && checks.iter().all(|c| c["ok"] == true),
        "{result}"
    );
    // What the browser did is what the API holds: the share was revoked.
    ensure!(
        c.get(&format!("/api/camera/devices/{dev}/shares"), Some(&owner))
            .await?
            .1
            == json!([])
    );
    Ok(())
}

/// An invitation to an address without an account grants nothing, not even once someone
/// registers that address (emails are unverified); inviting it again then binds it. And the
/// share limit holds under concurrent invitations (the camera's row serialises them).
async fn pending_and_concurrent(db: Db) -> Result<()> {
    let c = Control::start(db, SECRET, &[("VC_MAX_SHARES_PER_DEVICE", "3")]).await?;
    let alice = c.user("alice@example.com").await?;
    let (dev, _) = c.camera(&alice, "CAM-PENDING").await?;
    let (s, _) = c.share(&alice, dev, "later@example.com").await?;
    ensure!(s == StatusCode::ACCEPTED);
    let later = c.user("later@example.com").await?;
    ensure!(
        c.devices(&later).await?.is_empty(),
        "registration bound a pending invite"
    );
    let (s, _) = c
        .post("/api/relay/ticket", Some(&later), json!({"device_id": dev}))
        .await?;
    ensure!(
        s == StatusCode::NOT_FOUND,
        "pending invite got a ticket: {s}"
    );
    let (s, _) = c.share(&alice, dev, "later@example.com").await?;
    ensure!(s == StatusCode::ACCEPTED);
    ensure!(c.listed(&later, dev).await?["shared"] == true);
    c.viewer_ticket(&later, dev).await?;

    // 12 invitations at once, 2 slots left: exactly 2 succeed, the rest are share_limit.
    let invites = (0..12).map(|i| {
        let (c, alice) = (&c, &alice);
        async move { c.share(alice, dev, &format!("racer{i}@example.com")).await }
    });
    let answers = futures_util::future::try_join_all(invites).await?;
    let ok = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .count();
    let limited = answers
        .iter()
        .filter(|(s, v)| *s == StatusCode::CONFLICT && code(v) == "share_limit")
        .count();
    ensure!((ok, limited) == (2, 10), "{answers:?}");
    let stored = c
        .sql(&format!(
            "SELECT COUNT(*) FROM device_shares WHERE device_id = '{dev}'"
        ))
        .await?;
    ensure!(stored == "3", "{stored} shares stored");
    Ok(())
}

#[tokio::test]
async fn pending_and_concurrent_sqlite() -> Result<()> {
    pending_and_concurrent(Db::Sqlite).await
}

#[tokio::test]
async fn pending_and_concurrent_postgres() -> Result<()> {
    pending_and_concurrent(Db::Postgres).await
}
