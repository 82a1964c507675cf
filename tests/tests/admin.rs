//! Admin and account lifecycle (issue 12), against the real vc-control (and vc-relay where
//! connections must close).
//!
//! * `admin_routes_cli_and_pagination_*` (SQLite, Postgres): a non-admin gets 403 `forbidden` (and nothing else) on
//!   every admin route; `vc-control admin create` (password on stdin) makes an admin who logs
//!   in and lists users; paging by cursor returns every user exactly once; device filters and
//!   counts; promoting an existing account.
//! * `disable_and_revoke_*` (SQLite, Postgres), with a vc-relay reporting presence: disabling
//!   a user fails its JWT at once, closes its viewer and camera WebSockets within 2 s and
//!   refuses their earlier tickets; enabling lets it back in; revoking a device closes its
//!   camera within 2 s and its secret gets no tickets.
//! * `account_self_service_*` (SQLite, Postgres): rename (owner only), password change ends
//!   other sessions, logout revokes the token, deleting the account removes its cameras; the
//!   audit log (paged newest first) holds each action with actor, target and client address,
//!   and no email of the deleted account, password, device secret or JWT.
//! * `login_limit_audited_once_sqlite`: a flood of wrong passwords past the login limit leaves
//!   one `login_limited` record for the account and client, not one per refused attempt.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;
use vc_tests::control::{code, USER_PASSWORD};
use vc_tests::signaling_client::{closed, recv, refused, ws_connect, Ws};
use vc_tests::stack::{start_relay, Control, Db};

const SECRET: &str = "admin-test-ticket-secret-at-least-32-bytes";
const ADMIN_EMAIL: &str = "root@admin.test";
const ADMIN_PASSWORD: &str = "root-Pass-0f-the-Admin";

/// Every admin route, with a method and a path (ids need not exist: the role is checked first).
fn admin_routes() -> Vec<(Method, String)> {
    let id = Uuid::new_v4();
    vec![
        (Method::GET, "/api/admin/users".into()),
        (Method::GET, format!("/api/admin/users/{id}")),
        (Method::POST, format!("/api/admin/users/{id}/disable")),
        (Method::POST, format!("/api/admin/users/{id}/enable")),
        (Method::DELETE, format!("/api/admin/users/{id}")),
        (Method::GET, "/api/admin/devices?status=online".into()),
        (Method::GET, "/api/admin/devices/counts".into()),
        (Method::GET, format!("/api/admin/devices/{id}")),
        (Method::POST, format!("/api/admin/devices/{id}/revoke")),
        (Method::GET, "/api/admin/audit".into()),
    ]
}

/// Walks `path` (a list route taking `after` and `limit`) page by page; returns every item
/// of `field` in order and the number of pages.
async fn walk(
    c: &Control,
    jwt: &str,
    path: &str,
    field: &str,
    limit: usize,
) -> Result<(Vec<Value>, usize)> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut after: Option<String> = None;
    let (mut items, mut pages) = (Vec::new(), 0);
    loop {
        let url = match &after {
            Some(a) => format!("{path}{sep}limit={limit}&after={a}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let (s, v) = c.get(&url, Some(jwt)).await?;
        ensure!(s == StatusCode::OK, "{url}: {s} {v}");
        let page = v[field].as_array().context("page items")?;
        ensure!(page.len() <= limit, "{url}: page of {} > limit", page.len());
        pages += 1;
        items.extend(page.iter().cloned());
        match v["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return Ok((items, pages)),
        }
        ensure!(pages < 100, "paging does not end");
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The id of `email` in an admin user list.
fn user_id(c_users: &[Value], email: &str) -> Result<String> {
    c_users
        .iter()
        .find(|u| u["email"] == email)
        .and_then(|u| u["id"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("{email} not listed"))
}

async fn all_users(c: &Control, admin: &str) -> Result<Vec<Value>> {
    Ok(walk(c, admin, "/api/admin/users", "users", 500).await?.0)
}

/// The whole audit log, newest first, checked to be ordered and without repeats.
async fn audit(c: &Control, admin: &str) -> Result<Vec<Value>> {
    let (entries, _) = walk(c, admin, "/api/admin/audit", "entries", 3).await?;
    let unique: HashSet<String> = ids(&entries).into_iter().collect();
    ensure!(unique.len() == entries.len(), "audit page overlap");
    for w in entries.windows(2) {
        ensure!(
            w[0]["at_ms"].as_i64() >= w[1]["at_ms"].as_i64(),
            "audit not newest first"
        );
    }
    Ok(entries)
}

/// The audit entry of `action` on `target`, checked to name the actor and the client address.
fn entry<'a>(
    log: &'a [Value],
    action: &str,
    target: &str,
    actor: Option<&str>,
) -> Result<&'a Value> {
    let e = log
        .iter()
        .find(|e| e["action"] == action && e["target_id"] == target)
        .with_context(|| format!("no {action} on {target} in {log:?}"))?;
    if let Some(actor) = actor {
        ensure!(e["actor_id"] == actor, "{action}: actor {}", e["actor_id"]);
        ensure!(
            e["client_ip"] == "127.0.0.1",
            "{action}: client_ip {}",
            e["client_ip"]
        );
    }
    Ok(e)
}

/// Fails if the serialised audit log contains any of `secrets`.
fn no_secrets(log: &[Value], secrets: &[&str]) -> Result<()> {
    let text = serde_json::to_string(log)?;
    for s in secrets {
        ensure!(!text.contains(s), "audit log contains {s:?}");
    }
    Ok(())
}

#[tokio::test]
async fn admin_routes_cli_and_pagination_sqlite() -> Result<()> {
    admin_routes_cli_and_pagination(Db::Sqlite).await
}

#[tokio::test]
async fn admin_routes_cli_and_pagination_postgres() -> Result<()> {
    admin_routes_cli_and_pagination(Db::Postgres).await
}

async fn admin_routes_cli_and_pagination(db: Db) -> Result<()> {
    let c = Control::start(db, SECRET, &[("VC_REGISTER_MAX_PER_CLIENT", "1000")]).await?;
    let alice = c.user("alice@users.test").await?;
    for (method, path) in admin_routes() {
        let (s, v) = c.call(method.clone(), &path, Some(&alice), None).await?;
        ensure!(
            s == StatusCode::FORBIDDEN && code(&v) == "forbidden",
            "{method} {path}: {s} {v}"
        );
        // Only the error: no data, no hint whether the id exists.
        ensure!(
            v.as_object().map(|o| o.len()) == Some(1),
            "{method} {path} leaked {v}"
        );
        let (s, _) = c.call(method.clone(), &path, None, None).await?;
        ensure!(
            s == StatusCode::UNAUTHORIZED,
            "{method} {path} without JWT: {s}"
        );
    }

    // The CLI reads the password from stdin and makes an admin who can log in.
    let (ok, out) = c.admin_create(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    ensure!(ok && out.contains("created admin"), "admin create: {out}");
    ensure!(
        !out.contains(ADMIN_PASSWORD),
        "CLI echoed the password: {out}"
    );
    let (ok, out) = c.admin_create("short@admin.test", "short").await?;
    ensure!(!ok, "a too short password was accepted: {out}");
    let root = c.jwt(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    let users = all_users(&c, &root).await?;
    let root_row = users
        .iter()
        .find(|u| u["email"] == ADMIN_EMAIL)
        .context("admin listed")?;
    ensure!(
        root_row["role"] == "admin" && root_row["last_login_at"].is_string(),
        "{root_row}"
    );
    let alice_row = users
        .iter()
        .find(|u| u["email"] == "alice@users.test")
        .context("alice")?;
    ensure!(
        alice_row["role"] == "user" && alice_row["disabled_at"].is_null(),
        "{alice_row}"
    );

    // Paging: every user exactly once, in id order, whatever the page size.
    let mut made = HashSet::new();
    for i in 0..11 {
        c.user(&format!("page{i:02}@users.test")).await?;
        made.insert(format!("page{i:02}@users.test"));
    }
    for limit in [1, 4, 13, 14] {
        let (items, pages) = walk(&c, &root, "/api/admin/users", "users", limit).await?;
        let got = ids(&items);
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        ensure!(got == sorted && got.len() == 13, "limit {limit}: {got:?}");
        // A full last page is followed by an empty one (the cursor cannot know it was last).
        ensure!(pages == 13 / limit + 1, "limit {limit}: {pages} pages");
    }
    let (prefixed, pages) =
        walk(&c, &root, "/api/admin/users?email_prefix=PAGE", "users", 4).await?;
    let emails: HashSet<String> = prefixed
        .iter()
        .map(|u| u["email"].as_str().unwrap_or("").to_owned())
        .collect();
    ensure!(
        emails == made && prefixed.len() == 11 && pages == 3,
        "prefix walk {emails:?} {pages}"
    );
    // LIKE wildcards in the prefix are literal.
    let (s, v) = c
        .get("/api/admin/users?email_prefix=%25", Some(&root))
        .await?;
    ensure!(
        s == StatusCode::OK && v["users"].as_array().map(Vec::len) == Some(0),
        "{s} {v}"
    );
    for bad in ["limit=0", "limit=501", "limit=x", "after=not-an-id"] {
        let (s, v) = c
            .get(&format!("/api/admin/users?{bad}"), Some(&root))
            .await?;
        ensure!(s == StatusCode::BAD_REQUEST, "{bad}: {s} {v}");
    }
    let (s, v) = c.get("/api/admin/users?limit=500", Some(&root)).await?;
    ensure!(
        s == StatusCode::OK && v["users"].as_array().map(Vec::len) == Some(13),
        "{s} {v}"
    );

    // Devices fleet-wide: filters and counts, with the owner's devices count.
    let alice_id = user_id(&users, "alice@users.test")?;
    let (dev, _secret) = c.camera(&alice, "cam-admin-1").await?;
    c.onboard(&alice, "pending-one").await?;
    let (s, v) = c
        .get(&format!("/api/admin/users/{alice_id}"), Some(&root))
        .await?;
    ensure!(s == StatusCode::OK && v["devices"] == 2, "{s} {v}");
    let (mine, _) = walk(
        &c,
        &root,
        &format!("/api/admin/devices?owner={alice_id}"),
        "devices",
        1,
    )
    .await?;
    ensure!(mine.len() == 2, "owner filter {mine:?}");
    let (offline, _) = walk(
        &c,
        &root,
        "/api/admin/devices?status=offline",
        "devices",
        10,
    )
    .await?;
    ensure!(
        ids(&offline) == vec![dev.to_string()],
        "status filter {offline:?}"
    );
    ensure!(
        offline[0]["has_secret"] == true && offline[0].get("secret_hash").is_none(),
        "{}",
        offline[0]
    );
    let (online, _) = walk(&c, &root, "/api/admin/devices?status=online", "devices", 10).await?;
    ensure!(online.is_empty(), "nothing is online: {online:?}");
    let (by_model, _) = walk(
        &c,
        &root,
        "/api/admin/devices?model=CP_PLUS_WIFI_V2",
        "devices",
        10,
    )
    .await?;
    ensure!(by_model.len() == 2, "{by_model:?}");
    let (none, _) = walk(
        &c,
        &root,
        "/api/admin/devices?node=no-such-node",
        "devices",
        10,
    )
    .await?;
    ensure!(none.is_empty(), "{none:?}");
    let (s, v) = c
        .get("/api/admin/devices?status=bogus", Some(&root))
        .await?;
    ensure!(
        s == StatusCode::BAD_REQUEST && code(&v) == "bad_status",
        "{s} {v}"
    );
    let (s, v) = c.get("/api/admin/devices/counts", Some(&root)).await?;
    ensure!(s == StatusCode::OK && v["total"] == 2, "{s} {v}");
    ensure!(
        v["by_status"] == json!([{"key": "offline", "count": 1}, {"key": "pending", "count": 1}])
            && v["by_model"] == json!([{"key": "CP_PLUS_WIFI_V2", "count": 2}]),
        "{v}"
    );
    let (s, v) = c
        .get(&format!("/api/admin/devices/{dev}"), Some(&root))
        .await?;
    ensure!(
        s == StatusCode::OK && v["owner_id"] == alice_id.as_str(),
        "{s} {v}"
    );
    let (s, _) = c
        .get(
            &format!("/api/admin/devices/{}", Uuid::new_v4()),
            Some(&root),
        )
        .await?;
    ensure!(s == StatusCode::NOT_FOUND, "unknown device {s}");

    // An admin cannot lock itself out.
    let root_id = user_id(&users, ADMIN_EMAIL)?;
    let (s, v) = c
        .post(
            &format!("/api/admin/users/{root_id}/disable"),
            Some(&root),
            json!({}),
        )
        .await?;
    ensure!(
        s == StatusCode::CONFLICT && code(&v) == "own_account",
        "{s} {v}"
    );

    // Promoting an existing account: it becomes admin with the given password, and its
    // earlier sessions end (the password changed).
    let (ok, out) = c
        .admin_create("alice@users.test", "alice-Admin-Password")
        .await?;
    ensure!(ok && out.contains("promoted"), "{out}");
    let (s, _) = c.get("/api/camera/devices", Some(&alice)).await?;
    ensure!(
        s == StatusCode::UNAUTHORIZED,
        "old session after promotion: {s}"
    );
    let alice_admin = c.jwt("alice@users.test", "alice-Admin-Password").await?;
    let (s, v) = c
        .get("/api/admin/users?limit=1", Some(&alice_admin))
        .await?;
    ensure!(s == StatusCode::OK, "promoted admin {s} {v}");

    let log = audit(&c, &root).await?;
    ensure!(
        log.iter()
            .filter(|e| e["action"] == "admin_created")
            .count()
            == 2,
        "{log:?}"
    );
    entry(&log, "admin_created", &root_id, None)?;
    no_secrets(
        &log,
        &[ADMIN_PASSWORD, "alice-Admin-Password", &root, &alice],
    )?;
    Ok(())
}

/// A camera WebSocket of `dev` (secret `secret`), welcomed; returns it and its ticket token.
async fn camera_ws(c: &Control, ws_base: &str, dev: Uuid, secret: &str) -> Result<(Ws, String)> {
    let t = c.camera_ticket(dev, secret).await?;
    let mut ws = ws_connect(&format!("{ws_base}?token={}", t.signaling.token)).await?;
    recv(&mut ws).await?;
    Ok((ws, t.signaling.token))
}

/// A viewer WebSocket of `jwt` for `dev`, welcomed; returns it and its ticket token.
async fn viewer_ws(c: &Control, ws_base: &str, jwt: &str, dev: Uuid) -> Result<(Ws, String)> {
    let t = c.viewer_ticket(jwt, dev).await?;
    let mut ws = ws_connect(&format!("{ws_base}?token={}", t.signaling.token)).await?;
    recv(&mut ws).await?;
    Ok((ws, t.signaling.token))
}

/// Waits for `ws` to be closed by the relay; fails if it takes 2 s or more after `since`.
async fn closed_within_2s(ws: &mut Ws, since: Instant, what: &str) -> Result<()> {
    closed(ws)
        .await
        .with_context(|| format!("{what} not closed"))?;
    let took = since.elapsed();
    ensure!(
        took < Duration::from_secs(2),
        "{what} closed after {took:?}"
    );
    Ok(())
}

async fn disable_and_revoke(db: Db) -> Result<()> {
    let c = Control::start(db, SECRET, &[]).await?;
    let relay = start_relay(SECRET, &c.base, &[]).await?;
    let ws_base = format!("ws://{}/ws", relay.addr("signaling"));
    let root = c.admin(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    let bob = c.user("bob@users.test").await?;
    let (dev, secret) = c.camera(&bob, "cam-bob-1").await?;
    let (mut cam, cam_token) = camera_ws(&c, &ws_base, dev, &secret).await?;
    c.wait_status(&bob, dev, "online").await?;
    let (mut viewer, viewer_token) = viewer_ws(&c, &ws_base, &bob, dev).await?;
    let users = all_users(&c, &root).await?;
    let bob_id = user_id(&users, "bob@users.test")?;

    // Disable: the JWT fails at once; both connections close within 2 s; old tickets refused.
    let t0 = Instant::now();
    let (s, v) = c
        .post(
            &format!("/api/admin/users/{bob_id}/disable"),
            Some(&root),
            json!({}),
        )
        .await?;
    ensure!(
        s == StatusCode::OK && v["disabled_at"].is_string(),
        "disable {s} {v}"
    );
    let (s, v) = c.get("/api/camera/devices", Some(&bob)).await?;
    ensure!(
        s == StatusCode::UNAUTHORIZED,
        "disabled user's JWT: {s} {v}"
    );
    closed_within_2s(&mut viewer, t0, "viewer").await?;
    closed_within_2s(&mut cam, t0, "camera").await?;
    for (what, token) in [("viewer", &viewer_token), ("camera", &cam_token)] {
        let status = refused(&format!("{ws_base}?token={token}")).await?;
        ensure!(status == 401, "{what}'s old ticket got {status}");
    }
    let (s, v) = c.login("bob@users.test", USER_PASSWORD).await?;
    ensure!(
        s == StatusCode::FORBIDDEN && code(&v) == "account_disabled",
        "login while disabled {s} {v}"
    );
    let (s, v) = c
        .post(
            "/api/relay/ticket",
            None,
            json!({"device_id": dev, "device_secret": secret}),
        )
        .await?;
    ensure!(
        s == StatusCode::OK,
        "the camera's secret itself was not revoked by a disable: {s} {v}"
    );

    // Enable: the flag only; logging in works again, old JWTs stay dead.
    let (s, v) = c
        .post(
            &format!("/api/admin/users/{bob_id}/enable"),
            Some(&root),
            json!({}),
        )
        .await?;
    ensure!(
        s == StatusCode::OK && v["disabled_at"].is_null(),
        "enable {s} {v}"
    );
    let (s, _) = c.get("/api/camera/devices", Some(&bob)).await?;
    ensure!(
        s == StatusCode::UNAUTHORIZED,
        "pre-disable JWT after enable: {s}"
    );
    let bob2 = c.jwt("bob@users.test", USER_PASSWORD).await?;
    // Tickets are dated in whole seconds; the relay refuses those of the revocation's second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (mut cam, _) = camera_ws(&c, &ws_base, dev, &secret).await?;
    c.wait_status(&bob2, dev, "online").await?;

    // Revoke the device: its connection closes within 2 s; its secret gets no ticket.
    let t0 = Instant::now();
    let (s, v) = c
        .post(
            &format!("/api/admin/devices/{dev}/revoke"),
            Some(&root),
            json!({}),
        )
        .await?;
    ensure!(
        s == StatusCode::OK && v["has_secret"] == false,
        "revoke {s} {v}"
    );
    closed_within_2s(&mut cam, t0, "revoked camera").await?;
    let (s, v) = c
        .post(
            "/api/relay/ticket",
            None,
            json!({"device_id": dev, "device_secret": secret}),
        )
        .await?;
    ensure!(
        s == StatusCode::UNAUTHORIZED && code(&v) == "invalid_device_credentials",
        "revoked secret: {s} {v}"
    );
    let (s, _) = c
        .post(
            &format!("/api/admin/devices/{}/revoke", Uuid::new_v4()),
            Some(&root),
            json!({}),
        )
        .await?;
    ensure!(s == StatusCode::NOT_FOUND, "revoke unknown: {s}");

    let root_id = user_id(&users, ADMIN_EMAIL)?;
    let log = audit(&c, &root).await?;
    let disabled = entry(&log, "account_disabled", &bob_id, Some(&root_id))?;
    ensure!(disabled["detail"] == json!({"devices": 1}), "{disabled}");
    entry(&log, "account_enabled", &bob_id, Some(&root_id))?;
    entry(&log, "device_revoked", &dev.to_string(), Some(&root_id))?;
    no_secrets(
        &log,
        &[
            &secret,
            ADMIN_PASSWORD,
            USER_PASSWORD,
            &bob,
            &root,
            &cam_token,
            &viewer_token,
        ],
    )?;
    relay.terminate().await?;
    Ok(())
}

#[tokio::test]
async fn disable_and_revoke_sqlite() -> Result<()> {
    disable_and_revoke(Db::Sqlite).await
}

#[tokio::test]
async fn disable_and_revoke_postgres() -> Result<()> {
    disable_and_revoke(Db::Postgres).await
}

async fn account_self_service(db: Db) -> Result<()> {
    let c = Control::start(db, SECRET, &[]).await?;
    let root = c.admin(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    let carol_email = "carol@users.test";
    let carol = c.user(carol_email).await?;
    let carol_other = c.jwt(carol_email, USER_PASSWORD).await?;
    let dave = c.user("dave@users.test").await?;
    let (dev, secret) = c.camera(&carol, "cam-carol-1").await?;

    // Rename: the owner only; someone else's camera is a 404.
    let path = format!("/api/camera/devices/{dev}");
    let (s, v) = c
        .call(
            Method::PATCH,
            &path,
            Some(&carol),
            Some(json!({"device_name": "Porch"})),
        )
        .await?;
    ensure!(
        s == StatusCode::OK && v["device_name"] == "Porch",
        "rename {s} {v}"
    );
    let (s, v) = c
        .call(
            Method::PATCH,
            &path,
            Some(&dave),
            Some(json!({"device_name": "Mine"})),
        )
        .await?;
    ensure!(s == StatusCode::NOT_FOUND, "rename by another {s} {v}");
    ensure!(
        c.listed(&carol, dev).await?["device_name"] == "Porch",
        "renamed by another"
    );
    let (s, _) = c
        .call(
            Method::PATCH,
            &path,
            Some(&carol),
            Some(json!({"device_name": ""})),
        )
        .await?;
    ensure!(s == StatusCode::UNPROCESSABLE_ENTITY, "empty name {s}");

    // Password change: needs the current one; ends every other session at once.
    let new_password = "carol-New-Passw0rd";
    let (s, v) = c
        .post(
            "/api/account/password",
            Some(&carol),
            json!({"current_password": "wrong-password", "new_password": new_password}),
        )
        .await?;
    ensure!(
        s == StatusCode::UNAUTHORIZED && code(&v) == "invalid_credentials",
        "wrong current {s} {v}"
    );
    let (s, v) = c
        .post(
            "/api/account/password",
            Some(&carol),
            json!({"current_password": USER_PASSWORD, "new_password": new_password}),
        )
        .await?;
    ensure!(s == StatusCode::OK, "change password {s} {v}");
    let fresh = v["access_token"].as_str().context("fresh jwt")?.to_owned();
    for (what, jwt) in [
        ("other session", &carol_other),
        ("this session's old token", &carol),
    ] {
        let (s, _) = c.get("/api/camera/devices", Some(jwt)).await?;
        ensure!(
            s == StatusCode::UNAUTHORIZED,
            "{what} after password change: {s}"
        );
    }
    ensure!(c.devices(&fresh).await?.len() == 1, "fresh token works");
    let (s, _) = c.login(carol_email, USER_PASSWORD).await?;
    ensure!(s == StatusCode::UNAUTHORIZED, "old password {s}");
    let later = c.jwt(carol_email, new_password).await?;
    ensure!(
        c.devices(&later).await?.len() == 1,
        "login right after the change works"
    );

    // Logout: that token stops, others stay.
    let (s, v) = c.post("/api/logout", Some(&fresh), json!({})).await?;
    ensure!(s == StatusCode::NO_CONTENT, "logout {s} {v}");
    let (s, _) = c.get("/api/camera/devices", Some(&fresh)).await?;
    ensure!(s == StatusCode::UNAUTHORIZED, "logged-out token {s}");
    let (s, _) = c.post("/api/logout", Some(&fresh), json!({})).await?;
    ensure!(s == StatusCode::UNAUTHORIZED, "logout twice {s}");
    ensure!(
        c.devices(&later).await?.len() == 1,
        "another session survives a logout"
    );

    // Delete the account: the password is required; cameras go with it.
    let users = all_users(&c, &root).await?;
    let carol_id = user_id(&users, carol_email)?;
    let (s, v) = c
        .call(
            Method::DELETE,
            "/api/account",
            Some(&later),
            Some(json!({"password": "nope-nope"})),
        )
        .await?;
    ensure!(
        s == StatusCode::UNAUTHORIZED,
        "delete with a wrong password {s} {v}"
    );
    let (s, v) = c
        .call(
            Method::DELETE,
            "/api/account",
            Some(&later),
            Some(json!({"password": new_password})),
        )
        .await?;
    ensure!(s == StatusCode::NO_CONTENT, "delete {s} {v}");
    let (s, _) = c.get("/api/camera/devices", Some(&later)).await?;
    ensure!(s == StatusCode::UNAUTHORIZED, "deleted account's JWT {s}");
    let (s, _) = c.login(carol_email, new_password).await?;
    ensure!(s == StatusCode::UNAUTHORIZED, "deleted account's login {s}");
    let (s, _) = c
        .get(&format!("/api/admin/users/{carol_id}"), Some(&root))
        .await?;
    ensure!(s == StatusCode::NOT_FOUND, "deleted user shown: {s}");
    let (s, _) = c
        .get(&format!("/api/admin/devices/{dev}"), Some(&root))
        .await?;
    ensure!(
        s == StatusCode::NOT_FOUND,
        "deleted account's camera shown: {s}"
    );
    let (s, _) = c
        .post(
            "/api/relay/ticket",
            None,
            json!({"device_id": dev, "device_secret": secret}),
        )
        .await?;
    ensure!(s == StatusCode::UNAUTHORIZED, "deleted camera's secret {s}");

    // An admin deletes dave the same way.
    let dave_id = user_id(&users, "dave@users.test")?;
    let (s, _) = c
        .call(
            Method::DELETE,
            &format!("/api/admin/users/{dave_id}"),
            Some(&root),
            None,
        )
        .await?;
    ensure!(s == StatusCode::NO_CONTENT, "admin delete {s}");
    let (s, _) = c.get("/api/camera/devices", Some(&dave)).await?;
    ensure!(s == StatusCode::UNAUTHORIZED, "deleted by admin: {s}");

    let root_id = user_id(&users, ADMIN_EMAIL)?;
    let log = audit(&c, &root).await?;
    entry(&log, "password_changed", &carol_id, Some(&carol_id))?;
    let deleted = entry(&log, "account_deleted", &carol_id, Some(&carol_id))?;
    ensure!(deleted["detail"] == json!({"devices": 1}), "{deleted}");
    entry(&log, "account_deleted", &dave_id, Some(&root_id))?;
    no_secrets(
        &log,
        &[
            carol_email,
            "dave@users.test",
            USER_PASSWORD,
            new_password,
            ADMIN_PASSWORD,
            &secret,
            &carol,
            &fresh,
            &later,
        ],
    )?;
    Ok(())
}

#[tokio::test]
async fn account_self_service_sqlite() -> Result<()> {
    account_self_service(Db::Sqlite).await
}

#[tokio::test]
async fn account_self_service_postgres() -> Result<()> {
    account_self_service(Db::Postgres).await
}

/// Many refused logins, one audit record: the first refusal of the window is recorded, the
/// rest (and another window's worth for another account) add nothing beyond their own one.
#[tokio::test]
async fn login_limit_audited_once_sqlite() -> Result<()> {
    let c = Control::start(Db::Sqlite, SECRET, &[("VC_LOGIN_MAX_FAILURES", "3")]).await?;
    let admin = c.admin(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
    c.user("victim@example.com").await?;
    let mut refused = 0;
    for i in 0..20 {
        let (s, _) = c.login("victim@example.com", &format!("guess-{i}")).await?;
        if s == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
        }
    }
    ensure!(
        refused == 17,
        "{refused} of 20 refused, want 17 past a limit of 3"
    );
    let victim = user_id(&all_users(&c, &admin).await?, "victim@example.com")?;
    let log = audit(&c, &admin).await?;
    let limited: Vec<&Value> = log
        .iter()
        .filter(|e| e["action"] == "login_limited")
        .collect();
    ensure!(
        limited.len() == 1,
        "want one login_limited, got {limited:?}"
    );
    let e = entry(&log, "login_limited", &victim, None)?;
    ensure!(
        e["client_ip"] == "127.0.0.1",
        "client_ip {}",
        e["client_ip"]
    );
    ensure!(
        e["detail"]["limit"] == "account_client",
        "detail {}",
        e["detail"]
    );
    ensure!(e["actor_id"].is_null(), "actor {}", e["actor_id"]);
    no_secrets(&log, &["victim@example.com", "guess-"])?;
    Ok(())
}
