//! `GET /api/camera/devices`, `GET|PATCH|DELETE /api/camera/devices/{id}`: the caller's
//! cameras and those shared with it (`shared: true`, see [`super::shares`]). Another owner's
//! device is answered like a missing one (404); a shared one refuses owner actions with 403
//! `not_owner`. Secrets and token hashes are never selected.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{
    authorization, body, instrument, json_response, parse_json, respond, rfc3339, with_ctx, Ctx,
};
use crate::domain::DeviceName;
use crate::error::ApiError;

/// Device list page size without `?limit=`, and the largest one accepted.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 500;

/// The selected columns, status and last_seen derived as of bound parameter `now_param`
/// (unix ms; [`crate::presence::derived_columns`]), from [`crate::presence::DEVICES_WITH_LEASES`];
/// `shared` is 1 unless the caller (`user_param`) owns the device.
fn columns(now_param: &str, user_param: &str) -> String {
    format!(
        "d.id, d.device_name, d.camera_model, d.device_uid, d.local_ip, d.created_at, \
         d.activated_at, CASE WHEN d.owner_id = {user_param} THEN 0 ELSE 1 END AS shared, {}",
        crate::presence::derived_columns(now_param)
    )
}

/// Rows the caller (`user_param`) may see: its own and those actively shared with it.
/// One id set from two indexed lookups: written as `owner_id = $u OR id IN (shares)`,
/// Postgres cannot combine the two and scans every device of the fleet per request.
fn visible(user_param: &str) -> String {
    format!(
        "d.id IN (SELECT o.id FROM devices o WHERE o.owner_id = {user_param} \
         UNION ALL SELECT s.device_id FROM device_shares s WHERE s.user_id = {user_param})"
    )
}

/// A camera as its owner, or a viewer it is shared with, sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Device {
    pub id: Uuid,
    pub device_name: String,
    pub camera_model: String,
    /// `pending` (onboarded, not activated), `offline` (activated, not connected) or `online`.
    pub status: String,
    /// Shared with the caller by its owner: viewing only (no rename, delete or share).
    pub shared: bool,
    /// Owner only (`null` on a shared camera).
    pub device_uid: Option<String>,
    /// Owner only (`null` on a shared camera): the owner's network is not the viewer's business.
    pub local_ip: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub activated_at: Option<String>,
    pub last_seen: Option<String>,
}

impl Device {
    fn from_row(r: &AnyRow) -> Result<Self, ApiError> {
        let id: String = r.try_get("id")?;
        let shared = r.try_get::<i64, _>("shared")? != 0;
        let owner_only = |col: &str| -> Result<Option<String>, ApiError> {
            Ok(if shared { None } else { r.try_get(col)? })
        };
        Ok(Self {
            id: Uuid::parse_str(&id).map_err(|e| ApiError::Internal(e.to_string()))?,
            device_name: r.try_get("device_name")?,
            camera_model: r.try_get("camera_model")?,
            status: r.try_get("status")?,
            shared,
            device_uid: owner_only("device_uid")?,
            local_ip: owner_only("local_ip")?,
            created_at: rfc3339(r.try_get("created_at")?),
            activated_at: r.try_get::<Option<i64>, _>("activated_at")?.map(rfc3339),
            last_seen: r.try_get::<Option<i64>, _>("last_seen")?.map(rfc3339),
        })
    }
}

pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let list = warp::path!("api" / "camera" / "devices")
        .and(warp::get())
        .and(with_ctx(ctx))
        .and(authorization())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .then(|ctx: Ctx, auth: Option<String>, query: String| async move {
            respond(list(ctx, auth, query).await)
        });
    let get = warp::path!("api" / "camera" / "devices" / String)
        .and(warp::get())
        .and(with_ctx(ctx))
        .and(authorization())
        .then(|id: String, ctx: Ctx, auth: Option<String>| async move {
            respond(get(ctx, auth, id).await)
        });
    let delete = warp::path!("api" / "camera" / "devices" / String)
        .and(warp::delete())
        .and(with_ctx(ctx))
        .and(authorization())
        .then(|id: String, ctx: Ctx, auth: Option<String>| async move {
            respond(delete(ctx, auth, id).await)
        });
    let rename = warp::path!("api" / "camera" / "devices" / String)
        .and(warp::patch())
        .and(with_ctx(ctx))
        .and(authorization())
        .and(body(ctx.config.max_body_bytes))
        .then(
            |id: String, ctx: Ctx, auth: Option<String>, body| async move {
                respond(rename(ctx, auth, id, body).await)
            },
        );
    instrument("/api/camera/devices", list)
        .or(instrument("/api/camera/devices/{id}", get))
        .unify()
        .or(instrument("/api/camera/devices/{id}", rename))
        .unify()
        .or(instrument("/api/camera/devices/{id}", delete))
        .unify()
        .boxed()
}

/// Where a device list page starts: after the device created at `created_at` with `id`
/// (the order is newest first, ties by id). Opaque to clients; it stays valid when that
/// device is deleted meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    created_at: i64,
    id: Uuid,
}

impl Cursor {
    fn parse(raw: &str) -> Option<Self> {
        let (at, id) = raw.split_once('_')?;
        Some(Self {
            created_at: at.parse().ok()?,
            id: Uuid::parse_str(id).ok()?,
        })
    }

    fn encode(&self) -> String {
        format!("{}_{}", self.created_at, self.id.simple())
    }
}

/// `?after=` and `?limit=` of the device list.
fn page_params(query: &str) -> Result<(Option<Cursor>, u32), ApiError> {
    let mut after = None;
    let mut limit = DEFAULT_PAGE;
    for (key, value) in super::activation::form_pairs(query) {
        match key {
            "after" => {
                after = Some(Cursor::parse(value).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_cursor",
                        "after must be an x-next-cursor value from an earlier page",
                    )
                })?)
            }
            "limit" => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_limit",
                            format!("limit must be 1-{MAX_PAGE}"),
                        )
                    })?
            }
            _ => {}
        }
    }
    Ok((after, limit))
}

/// Lists the caller's cameras and those shared with it, newest first, a page at a time.
/// The body stays a JSON array; when more follow, `x-next-cursor` carries the next page's
/// `after` and `Link` its URL (`rel="next"`).
#[utoipa::path(get, path = "/api/camera/devices", tag = "devices", security(("bearer" = [])),
    params(
        ("after" = Option<String>, Query, description = "`x-next-cursor` of the previous page"),
        ("limit" = Option<u32>, Query, description = "Page size, 1-500 (default 100)"),
    ),
    responses(
        (status = 200, description = "One page of the caller's devices", body = Vec<Device>,
            headers(
                ("x-next-cursor" = String, description = "Present when more devices follow: pass it as `after`"),
                ("link" = String, description = "`<next page URL>; rel=\"next\"` when more follow"),
            )),
        (status = 400, description = "`invalid_cursor` or `invalid_limit`", body = super::docs::ErrorBodyDoc),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn list(ctx: Ctx, auth: Option<String>, query: String) -> Result<Response, ApiError> {
    let user = crate::auth::authenticate(&ctx, auth.as_deref()).await?.user;
    let (after, limit) = page_params(&query)?;
    let mut sql = format!(
        "SELECT {} FROM {} WHERE {}",
        columns("$2", "$1"),
        crate::presence::DEVICES_WITH_LEASES,
        visible("$1"),
    );
    if after.is_some() {
        sql.push_str(" AND (d.created_at < $4 OR (d.created_at = $4 AND d.id > $5))");
    }
    sql.push_str(" ORDER BY d.created_at DESC, d.id LIMIT $3");
    // One more than the page: whether another page follows.
    let mut q = sqlx::query(&sql)
        .bind(user.to_string())
        .bind(super::now_ms())
        .bind(i64::from(limit) + 1);
    if let Some(c) = &after {
        q = q.bind(c.created_at).bind(c.id.to_string());
    }
    let rows = q.fetch_all(&ctx.db.pool).await?;
    let more = rows.len() > limit as usize;
    let mut cursor = None;
    let mut devices = Vec::with_capacity(rows.len().min(limit as usize));
    for r in rows.iter().take(limit as usize) {
        let d = Device::from_row(r)?;
        cursor = Some(Cursor {
            created_at: r.try_get("created_at")?,
            id: d.id,
        });
        devices.push(d);
    }
    let mut res = json_response(StatusCode::OK, &devices);
    if let (true, Some(c)) = (more, cursor) {
        let next = c.encode();
        let link = format!("</api/camera/devices?after={next}&limit={limit}>; rel=\"next\"");
        for (name, value) in [("x-next-cursor", next), ("link", link)] {
            if let Ok(v) = warp::http::HeaderValue::from_str(&value) {
                res.headers_mut().insert(name, v);
            }
        }
    }
    Ok(res)
}

/// One of the caller's cameras, or one shared with it.
#[utoipa::path(get, path = "/api/camera/devices/{id}", tag = "devices", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Device id")),
    responses(
        (status = 200, description = "The device", body = Device),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 404, description = "No such device for this user", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn get(ctx: Ctx, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let user = crate::auth::authenticate(&ctx, auth.as_deref()).await?.user;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound("device"))?;
    let row = sqlx::query(&format!(
        "SELECT {} FROM {} WHERE d.id = $1 AND {}",
        columns("$3", "$2"),
        crate::presence::DEVICES_WITH_LEASES,
        visible("$2"),
    ))
    .bind(id.to_string())
    .bind(user.to_string())
    .bind(super::now_ms())
    .fetch_optional(&ctx.db.pool)
    .await?
    .ok_or(ApiError::NotFound("device"))?;
    Ok(json_response(StatusCode::OK, &Device::from_row(&row)?))
}

/// Deletes one of the caller's cameras; its device secret stops working at once and its relay
/// connection is closed within about a second.
#[utoipa::path(delete, path = "/api/camera/devices/{id}", tag = "devices", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Device id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 403, description = "Shared with the caller, who is not its owner (`not_owner`)", body = super::docs::ErrorBodyDoc),
        (status = 404, description = "No such device for this user", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn delete(ctx: Ctx, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let user = crate::auth::authenticate(&ctx, auth.as_deref()).await?.user;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound("device"))?;
    let mut tx = ctx.db.begin_write().await?;
    let done = sqlx::query("DELETE FROM devices WHERE id = $1 AND owner_id = $2")
        .bind(id.to_string())
        .bind(user.to_string())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        // A viewer of a shared camera is told why; anyone else learns nothing.
        super::shares::require_owner(&mut *tx, user, id).await?;
        return Err(ApiError::NotFound("device"));
    }
    // Its relay connection is closed when the camera's node next reports (about a second).
    crate::presence::revoke(
        &mut tx,
        crate::presence::Revoke::Device(id),
        u64::try_from(super::now_ms()).unwrap_or(0),
    )
    .await?;
    let target = id.to_string();
    crate::audit::record(
        &mut *tx,
        crate::audit::Record {
            actor: Some(user),
            action: crate::audit::Action::DeviceDeleted,
            target: Some(&target),
            client_ip: None,
            detail: serde_json::json!({}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PATCH /api/camera/devices/{id}` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RenameRequest {
    /// 1-64 characters without control characters.
    pub device_name: String,
}

/// Renames one of the caller's cameras.
#[utoipa::path(patch, path = "/api/camera/devices/{id}", tag = "devices", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Device id")),
    request_body = RenameRequest,
    responses(
        (status = 200, description = "The renamed device", body = Device),
        (status = 400, description = "Malformed JSON", body = super::docs::ErrorBodyDoc),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 403, description = "Shared with the caller, who is not its owner (`not_owner`)", body = super::docs::ErrorBodyDoc),
        (status = 404, description = "No such device for this user", body = super::docs::ErrorBodyDoc),
        (status = 422, description = "Invalid device_name (`invalid_device_name`)", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn rename(
    ctx: Ctx,
    auth: Option<String>,
    id: String,
    body: Result<Bytes, ApiError>,
) -> Result<Response, ApiError> {
    let user = crate::auth::authenticate(&ctx, auth.as_deref()).await?.user;
    let device = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound("device"))?;
    super::shares::require_owner(&ctx.db.pool, user, device).await?;
    let req: RenameRequest = parse_json(&body?)?;
    let name = DeviceName::parse(&req.device_name)?;
    sqlx::query("UPDATE devices SET device_name = $1 WHERE id = $2 AND owner_id = $3")
        .bind(name.into_inner())
        .bind(device.to_string())
        .bind(user.to_string())
        .execute(&ctx.db.pool)
        .await?;
    get(ctx, auth, id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_params_are_refused() {
        let c = Cursor {
            created_at: 1_700_000_000,
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::parse(&c.encode()), Some(c.clone()));
        let (after, limit) = page_params(&format!("limit=7&after={}", c.encode())).unwrap();
        assert_eq!((after, limit), (Some(c), 7));
        assert_eq!(page_params("").unwrap(), (None, DEFAULT_PAGE));
        for bad in [
            "limit=0",
            "limit=501",
            "limit=x",
            "after=nope",
            "after=1_zz",
        ] {
            assert!(page_params(bad).is_err(), "{bad}");
        }
    }
}
