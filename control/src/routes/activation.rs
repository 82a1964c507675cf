//! `POST /api/camera/activate` (called by the camera) and
//! `GET /api/camera/check-status/{device_token}` (the app waiting for it).

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use shared::api::{ActivateRequest, ActivateResponse};
use sqlx::Row;
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::{
    authorization, body, instrument, json_response, now_secs, parse_json, respond, with_ctx, Ctx,
};
use crate::db::is_unique_violation;
use crate::domain::{DeviceSecret, DeviceToken, DeviceUid};
use crate::error::ApiError;

/// How often a long poll re-reads the database even without a wake-up, so an activation
/// handled by another vc-control instance (shared Postgres) is noticed too.
const LONG_POLL_RECHECK: Duration = Duration::from_secs(2);

/// Whether the camera behind a device token has activated.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckStatus {
    pub activated: bool,
    /// `pending`, `offline` or `online`.
    pub status: String,
    pub device_id: Uuid,
}

pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let activate = warp::path!("api" / "camera" / "activate")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(body(ctx.config.max_body_bytes))
        .then(|ctx: Ctx, body| async move { respond(activate(ctx, body).await) });
    let check = warp::path!("api" / "camera" / "check-status" / String)
        .and(warp::get())
        .and(with_ctx(ctx))
        .and(authorization())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .then(
            |token: String, ctx: Ctx, auth: Option<String>, query: String| async move {
                respond(check_status(ctx, auth, token, query).await)
            },
        );
    instrument("/api/camera/activate", activate)
        .or(instrument("/api/camera/check-status/{device_token}", check))
        .unify()
        .boxed()
}

/// Activates a camera with the one-time token from its QR code.
///
/// A retry from the same camera (same token and `device_uid`) before the token expires
/// succeeds again with the same `device_id` and a new secret replacing the old one, but
/// only if it proves to be that camera: it presents the secret it was issued, or it comes
/// within `activation_retry_window_secs` of the first success while that secret was never
/// used (a camera whose answer got lost). Otherwise anyone holding the QR code could
/// replace the real camera's secret until the token expires. If the same owner had
/// registered this camera before, that older registration is replaced.
///
/// `device_uid` is unique per owner only: another account's registration of the same uid
/// neither blocks this activation nor shows in its answer (a uid is a claim anyone can make).
/// A first activation that presents the `device_secret` of an activated registration of the
/// same uid in another account proves it is that camera, reset and moved: the older
/// registration is deleted, its relay connection closed and its tickets refused (audited as
/// `device_transferred`).
#[utoipa::path(post, path = "/api/camera/activate", tag = "onboarding",
    request_body = super::docs::ActivateRequestDoc,
    responses(
        (status = 200, description = "Activated; keep device_secret", body = super::docs::ActivateResponseDoc),
        (status = 400, description = "Malformed JSON", body = super::docs::ErrorBodyDoc),
        (status = 401, description = "A retry presented the wrong device_secret (`invalid_device_credentials`)", body = super::docs::ErrorBodyDoc),
        (status = 404, description = "Unknown token (`unknown_token`)", body = super::docs::ErrorBodyDoc),
        (status = 409, description = "`model_mismatch`, or `activation_locked` (a retry after the retry window, or after the secret was used, without the device_secret)", body = super::docs::ErrorBodyDoc),
        (status = 410, description = "`token_expired`, or `token_used` by another camera", body = super::docs::ErrorBodyDoc),
        (status = 422, description = "Invalid device_uid or local_ip", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn activate(ctx: Ctx, body: Result<Bytes, ApiError>) -> Result<Response, ApiError> {
    let outcome = activate_inner(&ctx, body).await;
    let label = match &outcome {
        Ok(_) => "activated",
        Err(e) => e.code(),
    };
    metrics::counter!("activations_total", "outcome" => label).increment(1);
    outcome
}

async fn activate_inner(ctx: &Ctx, body: Result<Bytes, ApiError>) -> Result<Response, ApiError> {
    let req: ActivateRequest = parse_json(&body?)?;
    let token = DeviceToken::parse(&req.device_token).ok_or_else(unknown_token)?;
    let uid = DeviceUid::parse(&req.device_uid)?;
    let local_ip = match req
        .local_ip
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(ip) => Some(
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| {
                    ApiError::validation("invalid_local_ip", "local_ip is not an IP address")
                })?
                .to_string(),
        ),
        None => None,
    };
    let secret = DeviceSecret::generate(&ctx.rng)?;
    let token_hash = token.hash();
    let now = now_secs();
    let presented = req.device_secret.as_deref().map(DeviceSecret::parse);
    let proven_hash = match &presented {
        Some(Some(s)) => proven_secret_hash(ctx, &token_hash, uid.as_str(), s).await?,
        _ => None,
    };
    let window = i64::try_from(ctx.config.activation_retry_window_secs).unwrap_or(i64::MAX);

    let update = ActivationUpdate {
        uid: uid.as_str(),
        secret_hash: secret.hash(),
        local_ip,
        now,
        token_hash: &token_hash,
        camera_model: &req.camera_model,
        retry_after: now.saturating_sub(window),
        proven_hash,
    };
    // Common case: one atomic statement. Only when the camera's uid is already taken do we
    // need the transaction that first removes the same owner's older registration.
    let id = match update.run(&ctx.db.pool).await {
        Err(e) if is_unique_violation(&e) => {
            let mut tx = ctx.db.begin_write().await?;
            // The same owner re-onboarding a camera (after a reset) replaces its old
            // registration (the index is per owner, so only the same owner collides).
            sqlx::query(
                "DELETE FROM devices WHERE device_uid = $1 AND token_hash <> $2 \
                 AND owner_id = (SELECT owner_id FROM devices WHERE token_hash = $2)",
            )
            .bind(uid.as_str())
            .bind(&token_hash)
            .execute(&mut *tx)
            .await?;
            match update.run(&mut *tx).await {
                Ok(id) => {
                    tx.commit().await?;
                    id
                }
                // Only a concurrent re-registration by the same owner can collide now.
                Err(e) if is_unique_violation(&e) => {
                    return Err(ApiError::conflict(
                        "activation_conflict",
                        "this account registered the camera concurrently; retry",
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        }
        other => other?,
    };
    let Some(id) = id else {
        let attempt = Attempt {
            token_hash: &token_hash,
            uid: uid.as_str(),
            model: &req.camera_model,
            presented_secret: presented.is_some(),
            now,
        };
        return Err(classify_failure(ctx, &attempt).await);
    };
    let device_id = Uuid::parse_str(&id).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let (Some(Some(old_secret)), None) = (&presented, &update.proven_hash) {
        transfer(ctx, device_id, uid.as_str(), old_secret).await?;
    }
    // Nobody waiting is fine.
    let _ = ctx.activations.send(device_id);
    Ok(json_response(
        StatusCode::OK,
        &ActivateResponse {
            device_id,
            device_secret: secret.into_inner(),
            signaling_url: ctx.config.relay.signaling_url.clone(),
            turn_uris: ctx.config.relay.turn_uris.clone(),
        },
    ))
}

/// The conditional update that activates a token: it matches only an unexpired token of
/// the right model that no other camera has claimed, so of concurrent activations exactly
/// one camera's update matches (the row lock / SQLite's single writer serialise them).
/// A retry after a success matches only with the proven secret still stored, or inside
/// the retry window while the secret is unused.
struct ActivationUpdate<'a> {
    uid: &'a str,
    secret_hash: String,
    local_ip: Option<String>,
    now: i64,
    token_hash: &'a str,
    camera_model: &'a str,
    /// A first success after this (unix seconds) is inside the retry window.
    retry_after: i64,
    /// The stored secret hash the request proved it knows.
    proven_hash: Option<String>,
}

impl ActivationUpdate<'_> {
    /// The activated device's id, or `None` when no row matched.
    async fn run<'e, E>(&self, executor: E) -> Result<Option<String>, sqlx::Error>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let row = sqlx::query(
            "UPDATE devices SET device_uid = $1, secret_hash = $2, local_ip = $3, \
             status = CASE WHEN status = 'pending' THEN 'offline' ELSE status END, \
             activated_at = COALESCE(activated_at, $4) \
             WHERE token_hash = $5 AND token_expires_at > $4 AND camera_model = $6 \
             AND (device_uid IS NULL OR device_uid = $1) \
             AND (activated_at IS NULL OR secret_hash = $8 \
             OR (activated_at > $7 AND secret_used_at IS NULL)) RETURNING id",
        )
        .bind(self.uid)
        .bind(&self.secret_hash)
        .bind(self.local_ip.as_deref())
        .bind(self.now)
        .bind(self.token_hash)
        .bind(self.camera_model)
        .bind(self.retry_after)
        .bind(self.proven_hash.as_deref())
        .fetch_optional(executor)
        .await?;
        row.map(|r| r.try_get::<String, _>("id")).transpose()
    }
}

/// Transfer on reset: deletes and revokes the other accounts' activated registrations of
/// `uid` whose secret `old_secret` is (compared in constant time), now that `new_device`
/// holds the camera. A registration whose secret was not presented is left alone: without
/// it, a uid proves nothing.
async fn transfer(
    ctx: &Ctx,
    new_device: Uuid,
    uid: &str,
    old_secret: &DeviceSecret,
) -> Result<(), ApiError> {
    let new_id = new_device.to_string();
    let rows = sqlx::query(
        "SELECT id, owner_id, secret_hash FROM devices WHERE device_uid = $1 AND id <> $2 \
         AND activated_at IS NOT NULL AND secret_hash IS NOT NULL \
         AND owner_id <> (SELECT owner_id FROM devices WHERE id = $2)",
    )
    .bind(uid)
    .bind(&new_id)
    .fetch_all(&ctx.db.pool)
    .await?;
    for row in rows {
        let hash: String = row.try_get("secret_hash")?;
        if !old_secret.matches(&hash) {
            continue;
        }
        let old_id: String = row.try_get("id")?;
        let old_owner: String = row.try_get("owner_id")?;
        let old = Uuid::parse_str(&old_id).map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut tx = ctx.db.begin_write().await?;
        sqlx::query("DELETE FROM devices WHERE id = $1 AND secret_hash = $2")
            .bind(&old_id)
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
        let now = u64::try_from(super::now_ms()).unwrap_or(0);
        crate::presence::revoke(&mut tx, crate::presence::Revoke::Device(old), now).await?;
        crate::audit::record(
            &mut *tx,
            crate::audit::Record {
                actor: None,
                action: crate::audit::Action::DeviceTransferred,
                target: Some(&old_id),
                client_ip: None,
                detail: serde_json::json!({ "to_device": new_id, "from_owner": old_owner }),
            },
        )
        .await?;
        tx.commit().await?;
        tracing::info!(from = %old, to = %new_device, "camera transferred to another account on reset");
    }
    Ok(())
}

fn unknown_token() -> ApiError {
    ApiError::NotFound("device token")
}

/// The stored secret hash of this token's device when `secret` matches it (compared in
/// constant time), so the update can require that exact secret to still be in place.
async fn proven_secret_hash(
    ctx: &Ctx,
    token_hash: &str,
    uid: &str,
    secret: &DeviceSecret,
) -> Result<Option<String>, ApiError> {
    let row =
        sqlx::query("SELECT secret_hash FROM devices WHERE token_hash = $1 AND device_uid = $2")
            .bind(token_hash)
            .bind(uid)
            .fetch_optional(&ctx.db.pool)
            .await?;
    let stored: Option<String> = match row {
        Some(row) => row.try_get("secret_hash")?,
        None => None,
    };
    Ok(stored.filter(|hash| secret.matches(hash)))
}

/// What an activation that matched no row asked for.
struct Attempt<'a> {
    token_hash: &'a str,
    uid: &'a str,
    model: &'a str,
    /// A `device_secret` was sent (and did not prove anything, or the update would match).
    presented_secret: bool,
    now: i64,
}

/// Why the activation update matched no row.
async fn classify_failure(ctx: &Ctx, a: &Attempt<'_>) -> ApiError {
    let (uid, model, now) = (a.uid, a.model, a.now);
    let row = sqlx::query(
        "SELECT token_expires_at, camera_model, device_uid, activated_at FROM devices \
         WHERE token_hash = $1",
    )
    .bind(a.token_hash)
    .fetch_optional(&ctx.db.pool)
    .await;
    let row = match row {
        Ok(Some(row)) => row,
        Ok(None) => return unknown_token(),
        Err(e) => return e.into(),
    };
    let expires: i64 = row.try_get("token_expires_at").unwrap_or(0);
    let stored_model: String = row.try_get("camera_model").unwrap_or_default();
    let stored_uid: Option<String> = row.try_get("device_uid").unwrap_or(None);
    let activated_at: Option<i64> = row.try_get("activated_at").unwrap_or(None);
    if expires <= now {
        ApiError::gone("token_expired", "device token expired")
    } else if stored_uid.as_deref().is_some_and(|u| u != uid) {
        ApiError::gone(
            "token_used",
            "device token was already used by another camera",
        )
    } else if stored_model != model {
        ApiError::conflict(
            "model_mismatch",
            "camera_model does not match the onboarded model",
        )
    } else if stored_uid.as_deref() == Some(uid) && activated_at.is_some() {
        // A retry by this uid that could not prove it is the camera that activated.
        if a.presented_secret {
            ApiError::unauthorized(
                "invalid_device_credentials",
                "device_secret does not match this camera's activation",
            )
        } else {
            ApiError::conflict(
                "activation_locked",
                "this camera already activated; a retry must present its device_secret",
            )
        }
    } else {
        // Lost a race with a concurrent activation by another camera.
        ApiError::gone(
            "token_used",
            "device token was already used by another camera",
        )
    }
}

/// Reports whether the camera activated; `?wait=N` long-polls up to N seconds.
#[utoipa::path(get, path = "/api/camera/check-status/{device_token}", tag = "onboarding",
    security(("bearer" = [])),
    params(
        ("device_token" = String, Path, description = "The token from onboarding"),
        ("wait" = Option<u64>, Query, description = "Long-poll up to this many seconds (capped by check_status_max_wait_secs)"),
    ),
    responses(
        (status = 200, description = "Status", body = CheckStatus),
        (status = 400, description = "Bad `wait`", body = super::docs::ErrorBodyDoc),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 404, description = "No such token for this user", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn check_status(
    ctx: Ctx,
    auth: Option<String>,
    token: String,
    query: String,
) -> Result<Response, ApiError> {
    let user = crate::auth::authenticate(&ctx, auth.as_deref()).await?.user;
    let mut wait = 0u64;
    for (key, value) in form_pairs(&query) {
        if key == "wait" {
            wait = value.parse::<u64>().map_err(|_| {
                ApiError::bad_request("invalid_wait", "wait must be a whole number of seconds")
            })?;
        }
    }
    let wait = Duration::from_secs(wait.min(ctx.config.check_status_max_wait_secs));
    let token = DeviceToken::parse(&token).ok_or_else(unknown_token)?;
    let token_hash = token.hash();
    // Subscribe before the first read so an activation in between is not missed.
    let mut wakeups = ctx.activations.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let status = read_status(&ctx, &token_hash, user).await?;
        if status.activated || tokio::time::Instant::now() >= deadline {
            return Ok(json_response(StatusCode::OK, &status));
        }
        let recheck = (tokio::time::Instant::now() + LONG_POLL_RECHECK).min(deadline);
        loop {
            match tokio::time::timeout_at(recheck, wakeups.recv()).await {
                Ok(Ok(id)) if id == status.device_id => break,
                Ok(Ok(_)) => continue,
                Ok(Err(RecvError::Lagged(_))) | Err(_) => break,
                Ok(Err(RecvError::Closed)) => {
                    tokio::time::sleep_until(recheck).await;
                    break;
                }
            }
        }
    }
}

async fn read_status(ctx: &Ctx, token_hash: &str, user: Uuid) -> Result<CheckStatus, ApiError> {
    let row = sqlx::query(&format!(
        "SELECT d.id, {} FROM {} WHERE d.token_hash = $1 AND d.owner_id = $2",
        crate::presence::derived_columns("$3"),
        crate::presence::DEVICES_WITH_LEASES
    ))
    .bind(token_hash)
    .bind(user.to_string())
    .bind(super::now_ms())
    .fetch_optional(&ctx.db.pool)
    .await?
    .ok_or_else(unknown_token)?;
    let id: String = row.try_get("id")?;
    let status: String = row.try_get("status")?;
    Ok(CheckStatus {
        activated: status != "pending",
        status,
        device_id: Uuid::parse_str(&id).map_err(|e| ApiError::Internal(e.to_string()))?,
    })
}

/// `a=1&b=2` -> pairs (no percent-decoding: the parameters read with it, numbers and device
/// list cursors, are plain ASCII).
pub(crate) fn form_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}
