//! `GET /api/camera/devices`, `GET|DELETE /api/camera/devices/{id}`: the caller's cameras.
//! Another owner's device is answered like a missing one (404). Secrets and token hashes
//! are never selected.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{authorization, instrument, json_response, respond, rfc3339, with_ctx, Ctx};
use crate::error::ApiError;

/// The selected columns, status and last_seen derived as of bound parameter `now_param`
/// (unix ms; [`crate::presence::derived_columns`]), from [`crate::presence::DEVICES_WITH_LEASES`].
fn columns(now_param: &str) -> String {
    format!(
        "d.id, d.device_name, d.camera_model, d.device_uid, d.local_ip, d.created_at, \
         d.activated_at, {}",
        crate::presence::derived_columns(now_param)
    )
}

/// A camera as its owner sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Device {
    pub id: Uuid,
    pub device_name: String,
    pub camera_model: String,
    /// `pending` (onboarded, not activated), `offline` (activated, not connected) or `online`.
    pub status: String,
    pub device_uid: Option<String>,
    pub local_ip: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub activated_at: Option<String>,
    pub last_seen: Option<String>,
}

impl Device {
    fn from_row(r: &AnyRow) -> Result<Self, ApiError> {
        let id: String = r.try_get("id")?;
        Ok(Self {
            id: Uuid::parse_str(&id).map_err(|e| ApiError::Internal(e.to_string()))?,
            device_name: r.try_get("device_name")?,
            camera_model: r.try_get("camera_model")?,
            status: r.try_get("status")?,
            device_uid: r.try_get("device_uid")?,
            local_ip: r.try_get("local_ip")?,
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
        .then(|ctx: Ctx, auth: Option<String>| async move { respond(list(ctx, auth).await) });
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
    instrument("/api/camera/devices", list)
        .or(instrument("/api/camera/devices/{id}", get))
        .unify()
        .or(instrument("/api/camera/devices/{id}", delete))
        .unify()
        .boxed()
}

/// Lists the caller's cameras, newest first.
#[utoipa::path(get, path = "/api/camera/devices", tag = "devices", security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's devices", body = Vec<Device>),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn list(ctx: Ctx, auth: Option<String>) -> Result<Response, ApiError> {
    let user = crate::auth::authenticate(&ctx, auth.as_deref()).await?.user;
    let rows = sqlx::query(&format!(
        "SELECT {} FROM {} WHERE d.owner_id = $1 ORDER BY d.created_at DESC, d.id",
        columns("$2"),
        crate::presence::DEVICES_WITH_LEASES
    ))
    .bind(user.to_string())
    .bind(super::now_ms())
    .fetch_all(&ctx.db.pool)
    .await?;
    let devices = rows
        .iter()
        .map(Device::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json_response(StatusCode::OK, &devices))
}

/// One of the caller's cameras.
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
        "SELECT {} FROM {} WHERE d.id = $1 AND d.owner_id = $2",
        columns("$3"),
        crate::presence::DEVICES_WITH_LEASES
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
