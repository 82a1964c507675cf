//! `/api/admin/...` (issue 12): users and devices fleet-wide, and the audit log. Every route
//! authenticates and checks the admin role on the server ([`Principal::require_admin`]);
//! a non-admin gets the same 403 `forbidden` on every route before anything is read.
//! Every action writes an audit record with the admin, the target and the client address.
//! Lists page by cursor: `after` is the last id of the previous page (`next_after`).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::account::{delete_user, revoke_user_everywhere, row_id};
use super::{
    authorization, client_ip, instrument, json_response, now_ms, respond, rfc3339, with_ctx, Ctx,
};
use crate::audit::{self, Action, Record};
use crate::auth::{authenticate, Principal};
use crate::error::ApiError;
use crate::presence::{self, Revoke};

/// Page size when `limit` is not given, and the largest allowed.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// `GET /api/admin/users` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    /// Only emails starting with this (case-insensitive).
    pub email_prefix: Option<String>,
    /// The `next_after` of the previous page.
    pub after: Option<Uuid>,
    /// 1-500, default 50.
    pub limit: Option<i64>,
}

/// `GET /api/admin/devices` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceQuery {
    /// `pending`, `offline` or `online` (derived as in the owner's list).
    pub status: Option<String>,
    /// Camera model code.
    pub model: Option<String>,
    /// Owner's user id.
    pub owner: Option<Uuid>,
    /// The relay node that last reported the camera.
    pub node: Option<String>,
    pub after: Option<Uuid>,
    /// 1-500, default 50.
    pub limit: Option<i64>,
}

/// `GET /api/admin/audit` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// The `next_after` of the previous page (entries older than it follow).
    pub after: Option<Uuid>,
    /// 1-500, default 50.
    pub limit: Option<i64>,
}

/// A user as an admin sees it (never the password hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminUser {
    pub id: Uuid,
    pub email: String,
    /// `user` or `admin`.
    pub role: String,
    /// How many cameras the user owns.
    pub devices: i64,
    /// RFC 3339.
    pub created_at: String,
    pub last_login_at: Option<String>,
    /// When an admin disabled the account; `null` when enabled.
    pub disabled_at: Option<String>,
}

/// A page of users.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    pub users: Vec<AdminUser>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<Uuid>,
}

/// A camera as an admin sees it (never secrets or token hashes).
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminDevice {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub device_name: String,
    pub camera_model: String,
    /// `pending`, `offline` or `online`.
    pub status: String,
    pub device_uid: Option<String>,
    pub local_ip: Option<String>,
    /// The relay node that last reported it.
    pub node: Option<String>,
    /// Whether a device secret is set (false once revoked or before activation).
    pub has_secret: bool,
    /// RFC 3339.
    pub created_at: String,
    pub activated_at: Option<String>,
    pub last_seen: Option<String>,
}

/// A page of devices.
#[derive(Debug, Serialize, ToSchema)]
pub struct DevicePage {
    pub devices: Vec<AdminDevice>,
    pub next_after: Option<Uuid>,
}

/// One group's count.
#[derive(Debug, Serialize, ToSchema)]
pub struct Count {
    pub key: String,
    pub count: i64,
}

/// Devices counted by derived status and by model.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceCounts {
    pub total: i64,
    pub by_status: Vec<Count>,
    pub by_model: Vec<Count>,
}

/// One audit record.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: Uuid,
    /// RFC 3339 (the record's time is kept in ms; `at_ms`).
    pub at: String,
    pub at_ms: i64,
    pub actor_id: Option<String>,
    pub action: String,
    pub target_id: Option<String>,
    pub client_ip: Option<String>,
    /// Non-secret facts about the action.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// A page of audit records, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next_after: Option<Uuid>,
}

/// A bound value of a query built from optional filters.
enum Bind {
    Text(String),
    Int(i64),
}

/// A `WHERE` clause built from the filters given, with `$n` placeholders in order.
#[derive(Default)]
struct Filters {
    conds: Vec<String>,
    binds: Vec<Bind>,
}

impl Filters {
    /// Adds `cond`, whose `?` stands for the next placeholder.
    fn add(&mut self, cond: &str, value: Bind) {
        self.binds.push(value);
        self.conds
            .push(cond.replace('?', &format!("${}", self.binds.len())));
    }

    /// The next placeholder, for a value bound by [`Filters::bind_all`] after the filters.
    fn next(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    fn clause(&self) -> String {
        if self.conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.conds.join(" AND "))
        }
    }

    fn bind_all<'q>(
        &'q self,
        mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        for b in &self.binds {
            q = match b {
                Bind::Text(s) => q.bind(s.as_str()),
                Bind::Int(n) => q.bind(*n),
            };
        }
        q
    }
}

fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            "bad_limit",
            format!("limit must be 1-{MAX_LIMIT}"),
        )),
    }
}

/// A query string parsed into `T` (400 `bad_query` naming the problem).
fn query<T: serde::de::DeserializeOwned + Default>(raw: &str) -> Result<T, ApiError> {
    if raw.is_empty() {
        return Ok(T::default());
    }
    serde_urlencoded::from_str(raw)
        .map_err(|e| ApiError::bad_request("bad_query", format!("query string: {e}")))
}

/// The admin making the request, or 401/403.
async fn admin(ctx: &Ctx, auth: Option<&str>) -> Result<Principal, ApiError> {
    let me = authenticate(ctx, auth).await?;
    me.require_admin()?;
    Ok(me)
}

/// Wraps an admin handler taking `(ctx, auth, ip, path segment, raw query)`.
macro_rules! admin_route {
    ($ctx:expr, $filter:expr, $handler:path) => {
        $filter
            .and(with_ctx($ctx))
            .and(authorization())
            .and(client_ip($ctx))
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .then(
                |seg: String, ctx: Ctx, auth: Option<String>, ip: IpAddr, q: String| async move {
                    respond($handler(ctx, auth, ip, seg, q).await)
                },
            )
    };
}

pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    // Routes without a path parameter get an empty one, so every handler has one shape.
    let none = || warp::any().map(String::new);
    let users = admin_route!(
        ctx,
        warp::path!("api" / "admin" / "users")
            .and(warp::get())
            .and(none()),
        list_users
    );
    let user = admin_route!(
        ctx,
        warp::path!("api" / "admin" / "users" / String).and(warp::get()),
        get_user
    );
    let disable = admin_route!(
        ctx,
        warp::path!("api" / "admin" / "users" / String / "disable").and(warp::post()),
        disable_user
    );
    let enable = admin_route!(
        ctx,
        warp::path!("api" / "admin" / "users" / String / "enable").and(warp::post()),
        enable_user
    );
    let delete = admin_route!(
        ctx,
        warp::path!("api" / "admin" / "users" / String).and(warp::delete()),
        delete_user_route
    );
    let devices = admin_route!(
        ctx,
        warp::path!("api" / "admin" / "devices")
            .and(warp::get())
            .and(none()),
        list_devices
    );
    let counts = admin_route!(
        ctx,
        warp::path!("api" / "admin" / "devices" / "counts")
            .and(warp::get())
            .and(none()),
        device_counts
    );
    let device = admin_route!(
        ctx,
        warp::path!("api" / "admin" / "devices" / String).and(warp::get()),
        get_device
    );
    let revoke = admin_route!(
        ctx,
        warp::path!("api" / "admin" / "devices" / String / "revoke").and(warp::post()),
        revoke_device
    );
    let audit_log = admin_route!(
        ctx,
        warp::path!("api" / "admin" / "audit")
            .and(warp::get())
            .and(none()),
        list_audit
    );
    instrument("/api/admin/users", users)
        .or(instrument("/api/admin/users/{id}", user))
        .unify()
        .or(instrument("/api/admin/users/{id}/disable", disable))
        .unify()
        .or(instrument("/api/admin/users/{id}/enable", enable))
        .unify()
        .or(instrument("/api/admin/users/{id}", delete))
        .unify()
        .or(instrument("/api/admin/devices", devices))
        .unify()
        .or(instrument("/api/admin/devices/counts", counts))
        .unify()
        .or(instrument("/api/admin/devices/{id}", device))
        .unify()
        .or(instrument("/api/admin/devices/{id}/revoke", revoke))
        .unify()
        .or(instrument("/api/admin/audit", audit_log))
        .unify()
        .boxed()
}

const USER_COLUMNS: &str = "u.id, u.email, u.role, u.created_at, u.last_login_at, u.disabled_at, \
     (SELECT COUNT(*) FROM devices d WHERE d.owner_id = u.id) AS devices";

fn user_from_row(r: &AnyRow) -> Result<AdminUser, ApiError> {
    Ok(AdminUser {
        id: row_id(r, "id")?,
        email: r.try_get("email")?,
        role: r.try_get("role")?,
        devices: r.try_get("devices")?,
        created_at: rfc3339(r.try_get("created_at")?),
        last_login_at: r.try_get::<Option<i64>, _>("last_login_at")?.map(rfc3339),
        disabled_at: r.try_get::<Option<i64>, _>("disabled_at")?.map(rfc3339),
    })
}

/// A path segment that must be an id; anything else is answered like a missing one.
fn path_id(seg: &str, what: &'static str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(seg).map_err(|_| ApiError::NotFound(what))
}

/// `LIKE` pattern matching strings that start with `prefix` literally.
fn like_prefix(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Lists users by id, optionally by email prefix.
#[utoipa::path(get, path = "/api/admin/users", tag = "admin", security(("bearer" = [])),
    params(UserQuery),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        (status = 400, description = "Bad query (`bad_query`, `bad_limit`)", body = super::docs::ErrorBodyDoc),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 403, description = "Not an admin (`forbidden`)", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn list_users(
    ctx: Ctx,
    auth: Option<String>,
    _ip: IpAddr,
    _seg: String,
    raw: String,
) -> Result<Response, ApiError> {
    admin(&ctx, auth.as_deref()).await?;
    let q: UserQuery = query(&raw)?;
    let limit = page_limit(q.limit)?;
    let mut f = Filters::default();
    if let Some(prefix) = q.email_prefix.filter(|p| !p.is_empty()) {
        // Emails are stored lower-cased.
        f.add(
            "u.email LIKE ? ESCAPE '\\'",
            Bind::Text(like_prefix(&prefix.trim().to_lowercase())),
        );
    }
    if let Some(after) = q.after {
        f.add("u.id > ?", Bind::Text(after.to_string()));
    }
    let lim = f.next(Bind::Int(limit));
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users u {} ORDER BY u.id LIMIT {lim}",
        f.clause()
    );
    let rows = f
        .bind_all(sqlx::query(&sql))
        .fetch_all(&ctx.db.pool)
        .await?;
    let users = rows
        .iter()
        .map(user_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next_after = next_cursor(users.len(), limit, users.last().map(|u| u.id));
    Ok(json_response(
        StatusCode::OK,
        &UserPage { users, next_after },
    ))
}

/// The cursor for the next page: the last id when the page is full.
fn next_cursor(len: usize, limit: i64, last: Option<Uuid>) -> Option<Uuid> {
    (i64::try_from(len).unwrap_or(i64::MAX) >= limit)
        .then_some(last)
        .flatten()
}

async fn load_user(ctx: &Ctx, id: Uuid) -> Result<AdminUser, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(&ctx.db.pool)
    .await?
    .ok_or(ApiError::NotFound("user"))?;
    user_from_row(&row)
}

/// One user.
#[utoipa::path(get, path = "/api/admin/users/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = AdminUser),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 403, description = "Not an admin (`forbidden`)", body = super::docs::ErrorBodyDoc),
        (status = 404, description = "No such user", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn get_user(
    ctx: Ctx,
    auth: Option<String>,
    _ip: IpAddr,
    seg: String,
    _raw: String,
) -> Result<Response, ApiError> {
    admin(&ctx, auth.as_deref()).await?;
    let id = path_id(&seg, "user")?;
    Ok(json_response(StatusCode::OK, &load_user(&ctx, id).await?))
}

fn audit_record<'a>(
    me: &Principal,
    action: Action,
    target: &'a str,
    ip: IpAddr,
    detail: serde_json::Value,
) -> Record<'a> {
    Record {
        actor: Some(me.user),
        action,
        target: Some(target),
        client_ip: Some(ip),
        detail,
    }
}

/// Disables a user: its JWTs stop working at once, and the relays close its viewer
/// connections and its cameras' connections and refuse their earlier tickets (about a second).
#[utoipa::path(post, path = "/api/admin/users/{id}/disable", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "Disabled", body = AdminUser),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 403, description = "Not an admin (`forbidden`)", body = super::docs::ErrorBodyDoc),
        (status = 404, description = "No such user", body = super::docs::ErrorBodyDoc),
        (status = 409, description = "An admin cannot disable their own account (`own_account`)", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn disable_user(
    ctx: Ctx,
    auth: Option<String>,
    ip: IpAddr,
    seg: String,
    _raw: String,
) -> Result<Response, ApiError> {
    let me = admin(&ctx, auth.as_deref()).await?;
    let id = path_id(&seg, "user")?;
    if id == me.user {
        // Would lock out the last admin as easily as any other.
        return Err(ApiError::conflict(
            "own_account",
            "an admin cannot disable their own account",
        ));
    }
    let mut tx = ctx.db.begin_write().await?;
    let done = sqlx::query(
        "UPDATE users SET disabled_at = COALESCE(disabled_at, $1), tokens_valid_after = $2 \
         WHERE id = $3",
    )
    .bind(super::now_secs())
    .bind(crate::auth::cutoff_now())
    .bind(id.to_string())
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::NotFound("user"));
    }
    let devices = revoke_user_everywhere(&mut tx, id).await?;
    let target = id.to_string();
    audit::record(
        &mut *tx,
        audit_record(
            &me,
            Action::AccountDisabled,
            &target,
            ip,
            serde_json::json!({"devices": devices.len()}),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(json_response(StatusCode::OK, &load_user(&ctx, id).await?))
}

/// Enables a disabled user (the flag only: revoked sessions and tickets stay revoked).
#[utoipa::path(post, path = "/api/admin/users/{id}/enable", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "Enabled", body = AdminUser),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 403, description = "Not an admin (`forbidden`)", body = super::docs::ErrorBodyDoc),
        (status = 404, description = "No such user", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn enable_user(
    ctx: Ctx,
    auth: Option<String>,
    ip: IpAddr,
    seg: String,
    _raw: String,
) -> Result<Response, ApiError> {
    let me = admin(&ctx, auth.as_deref()).await?;
    let id = path_id(&seg, "user")?;
    let mut tx = ctx.db.begin_write().await?;
    let done = sqlx::query("UPDATE users SET disabled_at = NULL WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::NotFound("user"));
    }
    let target = id.to_string();
    audit::record(
        &mut *tx,
        audit_record(
            &me,
            Action::AccountEnabled,
            &target,
            ip,
            serde_json::json!({}),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(json_response(StatusCode::OK, &load_user(&ctx, id).await?))
}

/// Deletes a user and its cameras (revoked at the relays first).
#[utoipa::path(delete, path = "/api/admin/users/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 403, description = "Not an admin (`forbidden`)", body = super::docs::ErrorBodyDoc),
        (status = 404, description = "No such user", body = super::docs::ErrorBodyDoc),
        (status = 409, description = "An admin cannot delete their own account here (`own_account`)", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn delete_user_route(
    ctx: Ctx,
    auth: Option<String>,
    ip: IpAddr,
    seg: String,
    _raw: String,
) -> Result<Response, ApiError> {
    let me = admin(&ctx, auth.as_deref()).await?;
    let id = path_id(&seg, "user")?;
    if id == me.user {
        return Err(ApiError::conflict(
            "own_account",
            "use DELETE /api/account for your own account",
        ));
    }
    let mut tx = ctx.db.begin_write().await?;
    let devices = delete_user(&mut tx, id).await?;
    let target = id.to_string();
    audit::record(
        &mut *tx,
        audit_record(
            &me,
            Action::AccountDeleted,
            &target,
            ip,
            serde_json::json!({"devices": devices}),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The device columns as routes/devices.rs derives them, plus what an admin needs.
fn device_select(now_param: &str) -> String {
    format!(
        "SELECT d.id, d.owner_id, d.device_name, d.camera_model, d.device_uid, d.local_ip, \
             d.created_at, d.activated_at, d.presence_node, \
             CAST(CASE WHEN d.secret_hash IS NULL THEN 0 ELSE 1 END AS BIGINT) AS has_secret, {} \
         FROM {}",
        presence::derived_columns(now_param),
        presence::DEVICES_WITH_LEASES
    )
}

fn device_from_row(r: &AnyRow) -> Result<AdminDevice, ApiError> {
    Ok(AdminDevice {
        id: row_id(r, "id")?,
        owner_id: row_id(r, "owner_id")?,
        device_name: r.try_get("device_name")?,
        camera_model: r.try_get("camera_model")?,
        status: r.try_get("status")?,
        device_uid: r.try_get("device_uid")?,
        local_ip: r.try_get("local_ip")?,
        node: r.try_get("presence_node")?,
        has_secret: r.try_get::<i64, _>("has_secret")? != 0,
        created_at: rfc3339(r.try_get("created_at")?),
        activated_at: r.try_get::<Option<i64>, _>("activated_at")?.map(rfc3339),
        last_seen: r.try_get::<Option<i64>, _>("last_seen")?.map(rfc3339),
    })
}

/// Lists devices fleet-wide by id, filtered by derived status, model, owner or node.
#[utoipa::path(get, path = "/api/admin/devices", tag = "admin", security(("bearer" = [])),
    params(DeviceQuery),
    responses(
        (status = 200, description = "A page of devices", body = DevicePage),
        (status = 400, description = "Bad query (`bad_query`, `bad_limit`, `bad_status`)", body = super::docs::ErrorBodyDoc),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 403, description = "Not an admin (`forbidden`)", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn list_devices(
    ctx: Ctx,
    auth: Option<String>,
    _ip: IpAddr,
    _seg: String,
    raw: String,
) -> Result<Response, ApiError> {
    admin(&ctx, auth.as_deref()).await?;
    let q: DeviceQuery = query(&raw)?;
    let limit = page_limit(q.limit)?;
    let mut f = Filters::default();
    let now = f.next(Bind::Int(now_ms()));
    if let Some(status) = q.status {
        if !matches!(status.as_str(), "pending" | "offline" | "online") {
            return Err(ApiError::bad_request(
                "bad_status",
                "status must be pending, offline or online",
            ));
        }
        f.add("x.status = ?", Bind::Text(status));
    }
    if let Some(model) = q.model {
        f.add("x.camera_model = ?", Bind::Text(model));
    }
    if let Some(owner) = q.owner {
        f.add("x.owner_id = ?", Bind::Text(owner.to_string()));
    }
    if let Some(node) = q.node {
        f.add("x.presence_node = ?", Bind::Text(node));
    }
    if let Some(after) = q.after {
        f.add("x.id > ?", Bind::Text(after.to_string()));
    }
    let lim = f.next(Bind::Int(limit));
    // The derived status can only be filtered on outside the select that derives it.
    let sql = format!(
        "SELECT * FROM ({}) x {} ORDER BY x.id LIMIT {lim}",
        device_select(&now),
        f.clause()
    );
    let rows = f
        .bind_all(sqlx::query(&sql))
        .fetch_all(&ctx.db.pool)
        .await?;
    let devices = rows
        .iter()
        .map(device_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next_after = next_cursor(devices.len(), limit, devices.last().map(|d| d.id));
    Ok(json_response(
        StatusCode::OK,
        &DevicePage {
            devices,
            next_after,
        },
    ))
}

/// Devices counted by derived status and by model.
#[utoipa::path(get, path = "/api/admin/devices/counts", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "Counts", body = DeviceCounts),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 403, description = "Not an admin (`forbidden`)", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn device_counts(
    ctx: Ctx,
    auth: Option<String>,
    _ip: IpAddr,
    _seg: String,
    _raw: String,
) -> Result<Response, ApiError> {
    admin(&ctx, auth.as_deref()).await?;
    let counts = |rows: Vec<AnyRow>| {
        rows.iter()
            .map(|r| {
                Ok(Count {
                    key: r.try_get("k")?,
                    count: r.try_get("n")?,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()
    };
    let by_status = counts(
        sqlx::query(&format!(
            "SELECT x.status AS k, COUNT(*) AS n FROM ({}) x GROUP BY x.status ORDER BY x.status",
            device_select("$1")
        ))
        .bind(now_ms())
        .fetch_all(&ctx.db.pool)
        .await?,
    )?;
    let by_model = counts(
        sqlx::query(
            "SELECT camera_model AS k, COUNT(*) AS n FROM devices GROUP BY camera_model \
             ORDER BY camera_model",
        )
        .fetch_all(&ctx.db.pool)
        .await?,
    )?;
    let total = by_model.iter().map(|c| c.count).sum();
    Ok(json_response(
        StatusCode::OK,
        &DeviceCounts {
            total,
            by_status,
            by_model,
        },
    ))
}

/// One device.
#[utoipa::path(get, path = "/api/admin/devices/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Device id")),
    responses(
        (status = 200, description = "The device", body = AdminDevice),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 403, description = "Not an admin (`forbidden`)", body = super::docs::ErrorBodyDoc),
        (status = 404, description = "No such device", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn get_device(
    ctx: Ctx,
    auth: Option<String>,
    _ip: IpAddr,
    seg: String,
    _raw: String,
) -> Result<Response, ApiError> {
    admin(&ctx, auth.as_deref()).await?;
    let id = path_id(&seg, "device")?;
    Ok(json_response(StatusCode::OK, &load_device(&ctx, id).await?))
}

async fn load_device(ctx: &Ctx, id: Uuid) -> Result<AdminDevice, ApiError> {
    let row = sqlx::query(&format!("{} WHERE d.id = $2", device_select("$1")))
        .bind(now_ms())
        .bind(id.to_string())
        .fetch_optional(&ctx.db.pool)
        .await?
        .ok_or(ApiError::NotFound("device"))?;
    device_from_row(&row)
}

/// Revokes a device: its secret stops getting tickets (the owner re-onboards the camera to
/// use it again), its relay connection is closed and its earlier tickets refused (about a
/// second).
#[utoipa::path(post, path = "/api/admin/devices/{id}/revoke", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Device id")),
    responses(
        (status = 200, description = "Revoked", body = AdminDevice),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 403, description = "Not an admin (`forbidden`)", body = super::docs::ErrorBodyDoc),
        (status = 404, description = "No such device", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn revoke_device(
    ctx: Ctx,
    auth: Option<String>,
    ip: IpAddr,
    seg: String,
    _raw: String,
) -> Result<Response, ApiError> {
    let me = admin(&ctx, auth.as_deref()).await?;
    let id = path_id(&seg, "device")?;
    let mut tx = ctx.db.begin_write().await?;
    // No secret matches a NULL hash; the expired token closes the activation retry path too.
    let done =
        sqlx::query("UPDATE devices SET secret_hash = NULL, token_expires_at = 0 WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::NotFound("device"));
    }
    presence::revoke(
        &mut tx,
        Revoke::Device(id),
        u64::try_from(now_ms()).unwrap_or(0),
    )
    .await?;
    let target = id.to_string();
    audit::record(
        &mut *tx,
        audit_record(
            &me,
            Action::DeviceRevoked,
            &target,
            ip,
            serde_json::json!({}),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(json_response(StatusCode::OK, &load_device(&ctx, id).await?))
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/api/admin/audit", tag = "admin", security(("bearer" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of audit records", body = AuditPage),
        (status = 400, description = "Bad query (`bad_query`, `bad_limit`, `bad_cursor`: no such record)", body = super::docs::ErrorBodyDoc),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 403, description = "Not an admin (`forbidden`)", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn list_audit(
    ctx: Ctx,
    auth: Option<String>,
    _ip: IpAddr,
    _seg: String,
    raw: String,
) -> Result<Response, ApiError> {
    admin(&ctx, auth.as_deref()).await?;
    let q: AuditQuery = query(&raw)?;
    let limit = page_limit(q.limit)?;
    let mut f = Filters::default();
    if let Some(after) = q.after {
        // Ordered by (at, id) descending; the cursor row gives the position.
        let at: i64 = sqlx::query_scalar("SELECT at FROM audit_log WHERE id = $1")
            .bind(after.to_string())
            .fetch_optional(&ctx.db.pool)
            .await?
            .ok_or_else(|| ApiError::bad_request("bad_cursor", "no such audit record"))?;
        let a = f.next(Bind::Int(at));
        let b = f.next(Bind::Text(after.to_string()));
        f.conds
            .push(format!("(at < {a} OR (at = {a} AND id < {b}))"));
    }
    let lim = f.next(Bind::Int(limit));
    let sql = format!(
        "SELECT id, at, actor_id, action, target_id, client_ip, detail FROM audit_log {} \
         ORDER BY at DESC, id DESC LIMIT {lim}",
        f.clause()
    );
    let rows = f
        .bind_all(sqlx::query(&sql))
        .fetch_all(&ctx.db.pool)
        .await?;
    let entries = rows
        .iter()
        .map(|r| {
            let at: i64 = r.try_get("at")?;
            let detail: String = r.try_get("detail")?;
            Ok(AuditEntry {
                id: row_id(r, "id")?,
                at: rfc3339(at / 1000),
                at_ms: at,
                actor_id: r.try_get("actor_id")?,
                action: r.try_get("action")?,
                target_id: r.try_get("target_id")?,
                client_ip: r.try_get("client_ip")?,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let next_after = next_cursor(entries.len(), limit, entries.last().map(|e| e.id));
    Ok(json_response(
        StatusCode::OK,
        &AuditPage {
            entries,
            next_after,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_prefix_is_literal() {
        assert_eq!(like_prefix("a_b%c\\"), "a\\_b\\%c\\\\%");
        assert_eq!(like_prefix(""), "%");
    }

    #[test]
    fn filters_number_placeholders_in_bind_order() {
        let mut f = Filters::default();
        let now = f.next(Bind::Int(1));
        f.add("x.status = ?", Bind::Text("online".into()));
        f.add("x.id > ?", Bind::Text("a".into()));
        let lim = f.next(Bind::Int(5));
        assert_eq!((now.as_str(), lim.as_str()), ("$1", "$4"));
        assert_eq!(f.clause(), "WHERE x.status = $2 AND x.id > $3");
        assert_eq!(f.binds.len(), 4);
        assert_eq!(Filters::default().clause(), "");
    }

    #[test]
    fn limits_and_cursors() {
        assert_eq!(page_limit(None).unwrap(), 50);
        assert_eq!(page_limit(Some(500)).unwrap(), 500);
        assert!(page_limit(Some(501)).is_err());
        assert!(page_limit(Some(0)).is_err());
        let id = Uuid::new_v4();
        assert_eq!(next_cursor(3, 3, Some(id)), Some(id));
        assert_eq!(next_cursor(2, 3, Some(id)), None);
        let q: UserQuery = query("email_prefix=al&limit=3").unwrap();
        assert_eq!((q.email_prefix.as_deref(), q.limit), (Some("al"), Some(3)));
        assert!(query::<UserQuery>("limit=x").is_err());
    }
}
