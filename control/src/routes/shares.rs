//! Camera sharing (issue 12): `POST|GET /api/camera/devices/{id}/shares` and
//! `DELETE /api/camera/devices/{id}/shares/{share_id}`. The owner invites an account by email;
//! it gets viewer access (the device list, relay tickets), never an owner's rights.
//!
//! Inviting an address with no account answers exactly like inviting one with an account
//! (202, same body) and stores a pending row that grants nothing, so the endpoint cannot be
//! used to enumerate accounts; see migrations/0006_shares.sql.

use std::net::IpAddr;

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
    authorization, body, client_ip, instrument, json_response, now_ms, now_secs, parse_json,
    respond, rfc3339, with_ctx, Ctx,
};
use crate::audit::{self, Action, Record};
use crate::db::is_unique_violation;
use crate::domain::Email;
use crate::error::ApiError;

/// How the caller may use a camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Owner,
    /// An active share: viewer rights only.
    Viewer,
}

/// The caller's access to `device`, if any (a pending invitation grants none).
pub async fn access<'e, E>(exec: E, user: Uuid, device: Uuid) -> Result<Option<Access>, ApiError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT CASE WHEN d.owner_id = $2 THEN 'owner' ELSE 'viewer' END AS access \
         FROM devices d WHERE d.id = $1 AND (d.owner_id = $2 OR EXISTS ( \
             SELECT 1 FROM device_shares s WHERE s.device_id = d.id AND s.user_id = $2))",
    )
    .bind(device.to_string())
    .bind(user.to_string())
    .fetch_optional(exec)
    .await?;
    Ok(match row {
        None => None,
        Some(r) if r.try_get::<String, _>("access")? == "owner" => Some(Access::Owner),
        Some(_) => Some(Access::Viewer),
    })
}

/// Ok for the owner; a viewer of a shared camera gets 403 `not_owner` (it knows the camera
/// exists), anyone else 404 as if it did not.
pub async fn require_owner<'e, E>(exec: E, user: Uuid, device: Uuid) -> Result<(), ApiError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    match access(exec, user, device).await? {
        Some(Access::Owner) => Ok(()),
        Some(Access::Viewer) => Err(not_owner()),
        None => Err(ApiError::NotFound("device")),
    }
}

pub fn not_owner() -> ApiError {
    ApiError::forbidden(
        "not_owner",
        "this camera is shared with you: only its owner may do this",
    )
}

/// `POST .../shares` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ShareRequest {
    /// The invitee's account email.
    pub email: String,
    /// Only `viewer` (watch live video) exists.
    pub role: String,
}

/// A share as the owner sees it. Whether the email has an account is deliberately not shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct Share {
    pub id: Uuid,
    pub email: String,
    pub role: String,
    /// RFC 3339.
    pub created_at: String,
}

impl Share {
    fn from_row(r: &AnyRow) -> Result<Self, ApiError> {
        let id: String = r.try_get("id")?;
        Ok(Self {
            id: Uuid::parse_str(&id).map_err(|e| ApiError::Internal(e.to_string()))?,
            email: r.try_get("email")?,
            role: r.try_get("role")?,
            created_at: rfc3339(r.try_get("created_at")?),
        })
    }
}

/// `POST .../shares` answer: the same for every email.
#[derive(Debug, Serialize, ToSchema)]
pub struct Invited {
    /// Always `invited`.
    pub status: String,
    pub share: Share,
}

pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let create = warp::path!("api" / "camera" / "devices" / String / "shares")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(authorization())
        .and(client_ip(ctx))
        .and(body(ctx.config.max_body_bytes))
        .then(
            |id: String, ctx: Ctx, auth: Option<String>, ip: IpAddr, body| async move {
                respond(create(ctx, auth, ip, id, body).await)
            },
        );
    let list = warp::path!("api" / "camera" / "devices" / String / "shares")
        .and(warp::get())
        .and(with_ctx(ctx))
        .and(authorization())
        .then(|id: String, ctx: Ctx, auth: Option<String>| async move {
            respond(list(ctx, auth, id).await)
        });
    let revoke = warp::path!("api" / "camera" / "devices" / String / "shares" / String)
        .and(warp::delete())
        .and(with_ctx(ctx))
        .and(authorization())
        .and(client_ip(ctx))
        .then(
            |id: String, share: String, ctx: Ctx, auth: Option<String>, ip: IpAddr| async move {
                respond(revoke(ctx, auth, ip, id, share).await)
            },
        );
    instrument("/api/camera/devices/{id}/shares", create)
        .or(instrument("/api/camera/devices/{id}/shares", list))
        .unify()
        .or(instrument(
            "/api/camera/devices/{id}/shares/{share_id}",
            revoke,
        ))
        .unify()
        .boxed()
}

fn device_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound("device"))
}

/// Invites `email` to watch the camera. An address with or without an account gets the
/// same answer; inviting an address again is idempotent (and binds it if it has an account
/// by now).
#[utoipa::path(post, path = "/api/camera/devices/{id}/shares", tag = "shares", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Device id")),
    request_body = ShareRequest,
    responses(
        (status = 202, description = "Invited (the same answer whether or not the email has an account)", body = Invited),
        (status = 400, description = "Malformed JSON", body = super::docs::ErrorBodyDoc),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 403, description = "The camera is shared with the caller, who is not its owner (`not_owner`)", body = super::docs::ErrorBodyDoc),
        (status = 404, description = "No such device for this user", body = super::docs::ErrorBodyDoc),
        (status = 409, description = "The camera has `max_shares_per_device` shares (`share_limit`)", body = super::docs::ErrorBodyDoc),
        (status = 422, description = "`invalid_email`, `invalid_role` (only `viewer`), or the owner's own email (`share_with_self`)", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn create(
    ctx: Ctx,
    auth: Option<String>,
    ip: IpAddr,
    id: String,
    body: Result<Bytes, ApiError>,
) -> Result<Response, ApiError> {
    let user = crate::auth::authenticate(&ctx, auth.as_deref()).await?.user;
    let device = device_id(&id)?;
    require_owner(&ctx.db.pool, user, device).await?;
    let req: ShareRequest = parse_json(&body?)?;
    let email = Email::parse(&req.email)?;
    if req.role != "viewer" {
        return Err(ApiError::validation(
            "invalid_role",
            "role must be `viewer`",
        ));
    }
    let mut tx = ctx.db.begin_write().await?;
    // Lock the camera's row (Postgres; SQLite holds the write lock already): invitations to
    // one camera are serialised, so the share count cannot pass the limit by a race.
    sqlx::query("UPDATE devices SET device_name = device_name WHERE id = $1")
        .bind(device.to_string())
        .execute(&mut *tx)
        .await?;
    let owner_email: Option<String> = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(user.to_string())
        .fetch_optional(&mut *tx)
        .await?;
    if owner_email.as_deref() == Some(email.as_str()) {
        return Err(ApiError::validation(
            "share_with_self",
            "you own this camera already",
        ));
    }
    let invitee: Option<String> = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(email.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    let existing = sqlx::query(
        "SELECT id, email, role, created_at, user_id FROM device_shares \
         WHERE device_id = $1 AND email = $2",
    )
    .bind(device.to_string())
    .bind(email.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let share = match existing {
        Some(row) => {
            // Invited before: bind the account if the address has one by now.
            let bound: Option<String> = row.try_get("user_id")?;
            let share = Share::from_row(&row)?;
            if bound.is_none() && invitee.is_some() {
                sqlx::query("UPDATE device_shares SET user_id = $1 WHERE id = $2")
                    .bind(invitee.as_deref())
                    .bind(share.id.to_string())
                    .execute(&mut *tx)
                    .await?;
                granted(&mut tx, user, ip, device, &share, invitee.as_deref()).await?;
            }
            share
        }
        None => {
            let count: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM device_shares WHERE device_id = $1")
                    .bind(device.to_string())
                    .fetch_one(&mut *tx)
                    .await?;
            if count >= i64::from(ctx.config.max_shares_per_device) {
                return Err(ApiError::conflict(
                    "share_limit",
                    format!(
                        "a camera can be shared with at most {} people",
                        ctx.config.max_shares_per_device
                    ),
                ));
            }
            let share = Share {
                id: Uuid::new_v4(),
                email: email.as_str().to_owned(),
                role: req.role,
                created_at: rfc3339(now_secs()),
            };
            let inserted = sqlx::query(
                "INSERT INTO device_shares (id, device_id, email, user_id, role, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(share.id.to_string())
            .bind(device.to_string())
            .bind(email.as_str())
            .bind(invitee.as_deref())
            .bind(&share.role)
            .bind(now_secs())
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {}
                // The same invitation sent twice at once: the other request stored it.
                Err(e) if is_unique_violation(&e) => {
                    return Err(ApiError::conflict(
                        "share_in_progress",
                        "the same invitation is being stored; retry",
                    ))
                }
                Err(e) => return Err(e.into()),
            }
            granted(&mut tx, user, ip, device, &share, invitee.as_deref()).await?;
            share
        }
    };
    tx.commit().await?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &Invited {
            status: "invited".into(),
            share,
        },
    ))
}

/// Audits a share stored or bound to an account. The invitee's id (not its email) is
/// recorded, `null` for a pending invitation.
async fn granted(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    user: Uuid,
    ip: IpAddr,
    device: Uuid,
    share: &Share,
    invitee: Option<&str>,
) -> Result<(), sqlx::Error> {
    let target = device.to_string();
    audit::record(
        &mut **tx,
        Record {
            actor: Some(user),
            action: Action::ShareGranted,
            target: Some(&target),
            client_ip: Some(ip),
            detail: serde_json::json!({
                "share_id": share.id,
                "role": share.role,
                "invitee": invitee,
            }),
        },
    )
    .await
}

/// The camera's shares and pending invitations, oldest first.
#[utoipa::path(get, path = "/api/camera/devices/{id}/shares", tag = "shares", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Device id")),
    responses(
        (status = 200, description = "The shares", body = Vec<Share>),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 403, description = "Not the owner (`not_owner`)", body = super::docs::ErrorBodyDoc),
        (status = 404, description = "No such device for this user", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn list(ctx: Ctx, auth: Option<String>, id: String) -> Result<Response, ApiError> {
    let user = crate::auth::authenticate(&ctx, auth.as_deref()).await?.user;
    let device = device_id(&id)?;
    require_owner(&ctx.db.pool, user, device).await?;
    let rows = sqlx::query(
        "SELECT id, email, role, created_at FROM device_shares WHERE device_id = $1 \
         ORDER BY created_at, id",
    )
    .bind(device.to_string())
    .fetch_all(&ctx.db.pool)
    .await?;
    let shares = rows
        .iter()
        .map(Share::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json_response(StatusCode::OK, &shares))
}

/// Revokes a share: the invitee's tickets for the camera stop at once, its open viewer
/// connections are closed and its older tickets refused by every relay within about a second.
#[utoipa::path(delete, path = "/api/camera/devices/{id}/shares/{share_id}", tag = "shares", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Device id"), ("share_id" = Uuid, Path, description = "Share id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 403, description = "Not the owner (`not_owner`)", body = super::docs::ErrorBodyDoc),
        (status = 404, description = "No such device for this user, or no such share of it", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn revoke(
    ctx: Ctx,
    auth: Option<String>,
    ip: IpAddr,
    id: String,
    share: String,
) -> Result<Response, ApiError> {
    let user = crate::auth::authenticate(&ctx, auth.as_deref()).await?.user;
    let device = device_id(&id)?;
    let mut tx = ctx.db.begin_write().await?;
    require_owner(&mut *tx, user, device).await?;
    let share = Uuid::parse_str(&share).map_err(|_| ApiError::NotFound("share"))?;
    let row = sqlx::query("SELECT user_id FROM device_shares WHERE id = $1 AND device_id = $2")
        .bind(share.to_string())
        .bind(device.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(ApiError::NotFound("share"))?;
    let invitee: Option<String> = row.try_get("user_id")?;
    sqlx::query("DELETE FROM device_shares WHERE id = $1")
        .bind(share.to_string())
        .execute(&mut *tx)
        .await?;
    if let Some(invitee) = invitee.as_deref() {
        crate::presence::revoke(
            &mut tx,
            crate::presence::Revoke::Access {
                user: invitee,
                device,
            },
            u64::try_from(now_ms()).unwrap_or(0),
        )
        .await?;
    }
    let target = device.to_string();
    audit::record(
        &mut *tx,
        Record {
            actor: Some(user),
            action: Action::ShareRevoked,
            target: Some(&target),
            client_ip: Some(ip),
            detail: serde_json::json!({"share_id": share, "invitee": invitee}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
