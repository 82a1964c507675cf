//! The caller's own account (issue 12): `POST /api/logout`, `POST /api/account/password`,
//! `DELETE /api/account` (renaming a camera is in `devices.rs`).
//! Changing the password and deleting the account need the current password, so a stolen
//! JWT alone cannot lock the owner out.

use std::net::IpAddr;

use bytes::Bytes;
use serde::Deserialize;
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::accounts::LoginResponse;
use super::{
    authorization, body, client_ip, instrument, json_response, now_ms, now_secs, parse_json,
    respond, with_ctx, Ctx,
};
use crate::audit::{self, Action, Record};
use crate::auth::{authenticate, Principal};
use crate::domain::Password;
use crate::error::ApiError;
use crate::limiter::Limit;
use crate::presence::{self, Revoke};

/// `POST /api/account/password` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangePassword {
    pub current_password: String,
    /// At least `password_min_len` (8) characters.
    pub new_password: String,
}

/// `DELETE /api/account` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DeleteAccount {
    pub password: String,
}

pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let limit = ctx.config.max_body_bytes;
    let logout = warp::path!("api" / "logout")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(authorization())
        .then(|ctx: Ctx, auth: Option<String>| async move { respond(logout(ctx, auth).await) });
    let password = warp::path!("api" / "account" / "password")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(authorization())
        .and(client_ip(ctx))
        .and(body(limit))
        .then(|ctx: Ctx, auth: Option<String>, ip, body| async move {
            respond(change_password(ctx, auth, ip, body).await)
        });
    let delete = warp::path!("api" / "account")
        .and(warp::delete())
        .and(with_ctx(ctx))
        .and(authorization())
        .and(client_ip(ctx))
        .and(body(limit))
        .then(|ctx: Ctx, auth: Option<String>, ip, body| async move {
            respond(delete_account(ctx, auth, ip, body).await)
        });
    instrument("/api/logout", logout)
        .or(instrument("/api/account/password", password))
        .unify()
        .or(instrument("/api/account", delete))
        .unify()
        .boxed()
}

/// Revokes the presented JWT (other sessions stay logged in).
#[utoipa::path(post, path = "/api/logout", tag = "accounts", security(("bearer" = [])),
    responses(
        (status = 204, description = "This token no longer works"),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn logout(ctx: Ctx, auth: Option<String>) -> Result<Response, ApiError> {
    let me = authenticate(&ctx, auth.as_deref()).await?;
    // Kept until the token would have expired anyway; the sweeper prunes it then.
    sqlx::query(
        "INSERT INTO revoked_jwts (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
    )
    .bind(me.jti.to_string())
    .bind(i64::try_from(me.exp).unwrap_or(i64::MAX))
    .execute(&ctx.db.pool)
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Checks `password` against the caller's stored hash, counting failures like logins (per
/// account), so a stolen JWT cannot be used to guess the password quickly.
async fn check_password(ctx: &Ctx, me: &Principal, password: String) -> Result<(), ApiError> {
    let bucket = format!("password:{}", me.user);
    let limit = Limit {
        max: ctx.config.login_max_failures,
        window_secs: ctx.config.login_window_secs,
    };
    ctx.limiter.reserve(&bucket, limit, now_secs()).await?;
    let stored: Option<String> =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
            .bind(me.user.to_string())
            .fetch_optional(&ctx.db.pool)
            .await?;
    if !ctx.passwords.verify(password, stored).await? {
        return Err(ApiError::unauthorized(
            "invalid_credentials",
            "wrong password",
        ));
    }
    ctx.limiter.release(&bucket, limit).await
}

/// Changes the caller's password and ends every other session; answers a fresh JWT for
/// this one.
#[utoipa::path(post, path = "/api/account/password", tag = "accounts", security(("bearer" = [])),
    request_body = ChangePassword,
    responses(
        (status = 200, description = "Changed; every earlier JWT of this account stops working", body = LoginResponse),
        (status = 401, description = "Missing or invalid JWT, or wrong current password (`invalid_credentials`)", body = super::docs::ErrorBodyDoc),
        (status = 422, description = "New password too short", body = super::docs::ErrorBodyDoc),
        (status = 429, description = "Too many wrong current passwords (`rate_limited`)", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn change_password(
    ctx: Ctx,
    auth: Option<String>,
    ip: IpAddr,
    body: Result<Bytes, ApiError>,
) -> Result<Response, ApiError> {
    let me = authenticate(&ctx, auth.as_deref()).await?;
    let req: ChangePassword = parse_json(&body?)?;
    let new = Password::parse(req.new_password, ctx.config.password_min_len)?;
    check_password(&ctx, &me, req.current_password).await?;
    let hash = ctx.passwords.hash(new.expose().to_owned()).await?;
    let cutoff = crate::auth::cutoff_now();
    let mut tx = ctx.db.begin_write().await?;
    sqlx::query("UPDATE users SET password_hash = $1, tokens_valid_after = $2 WHERE id = $3")
        .bind(hash)
        .bind(cutoff)
        .bind(me.user.to_string())
        .execute(&mut *tx)
        .await?;
    let target = me.user.to_string();
    audit::record(
        &mut *tx,
        Record {
            actor: Some(me.user),
            action: Action::PasswordChanged,
            target: Some(&target),
            client_ip: Some(ip),
            detail: serde_json::json!({}),
        },
    )
    .await?;
    tx.commit().await?;
    let iat = crate::auth::issue_time(shared::ticket::unix_now(), cutoff);
    let token = ctx.jwt.issue(me.user, me.role, iat)?;
    Ok(json_response(
        StatusCode::OK,
        &LoginResponse {
            access_token: token,
            token_type: "bearer".into(),
            expires_in: ctx.jwt.ttl(),
        },
    ))
}

/// Deletes the caller's account and cameras.
#[utoipa::path(delete, path = "/api/account", tag = "accounts", security(("bearer" = [])),
    request_body = DeleteAccount,
    responses(
        (status = 204, description = "Deleted: cameras removed, their and the account's relay connections closed"),
        (status = 401, description = "Missing or invalid JWT, or wrong password (`invalid_credentials`)", body = super::docs::ErrorBodyDoc),
        (status = 429, description = "Too many wrong passwords (`rate_limited`)", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn delete_account(
    ctx: Ctx,
    auth: Option<String>,
    ip: IpAddr,
    body: Result<Bytes, ApiError>,
) -> Result<Response, ApiError> {
    let me = authenticate(&ctx, auth.as_deref()).await?;
    let req: DeleteAccount = parse_json(&body?)?;
    check_password(&ctx, &me, req.password).await?;
    let mut tx = ctx.db.begin_write().await?;
    let devices = delete_user(&mut tx, me.user).await?;
    let target = me.user.to_string();
    // The email is personal data and goes with the row; the trail keeps the id only.
    audit::record(
        &mut *tx,
        Record {
            actor: Some(me.user),
            action: Action::AccountDeleted,
            target: Some(&target),
            client_ip: Some(ip),
            detail: serde_json::json!({"devices": devices}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Ends everything a user holds at the relays: the user's viewer connections and tickets,
/// and each of its cameras' connections and tickets. Returns the user's device ids.
pub(crate) async fn revoke_user_everywhere(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    user: Uuid,
) -> Result<Vec<Uuid>, ApiError> {
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM devices WHERE owner_id = $1")
        .bind(user.to_string())
        .fetch_all(&mut **tx)
        .await?;
    let at = u64::try_from(now_ms()).unwrap_or(0);
    let user_id = user.to_string();
    presence::revoke(tx, Revoke::User(&user_id), at).await?;
    let mut devices = Vec::with_capacity(ids.len());
    for id in ids {
        let id = Uuid::parse_str(&id).map_err(|e| ApiError::Internal(e.to_string()))?;
        presence::revoke(tx, Revoke::Device(id), at).await?;
        devices.push(id);
    }
    Ok(devices)
}

/// Deletes a user and its cameras, revoking both at the relays. Returns how many cameras
/// went; 404 if no such user.
pub(crate) async fn delete_user(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    user: Uuid,
) -> Result<usize, ApiError> {
    let devices = revoke_user_everywhere(tx, user).await?;
    sqlx::query("DELETE FROM devices WHERE owner_id = $1")
        .bind(user.to_string())
        .execute(&mut **tx)
        .await?;
    let done = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(user.to_string())
        .execute(&mut **tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::NotFound("user"));
    }
    Ok(devices.len())
}

/// Deletes logged-out tokens' rows once the tokens expired (they fail verification then).
pub async fn prune_revoked_jwts(db: &crate::db::Db) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM revoked_jwts WHERE expires_at < $1")
        .bind(now_secs())
        .execute(&db.pool)
        .await?;
    Ok(done.rows_affected())
}

/// Reads a row's id column as a Uuid.
pub(crate) fn row_id(r: &sqlx::any::AnyRow, col: &str) -> Result<Uuid, ApiError> {
    let id: String = r.try_get(col)?;
    Uuid::parse_str(&id).map_err(|e| ApiError::Internal(e.to_string()))
}
