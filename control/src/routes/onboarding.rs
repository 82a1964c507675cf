//! `GET /api/camera/models`, `POST /api/camera/onboard`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shared::api::{QrPayload, QR_PAYLOAD_VERSION};
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::{
    authorization, body, instrument, json_response, now_secs, parse_json, respond, rfc3339,
    with_ctx, Ctx,
};
use crate::db::is_foreign_key_violation;
use crate::domain::{DeviceName, DeviceToken, WifiPassword, WifiSsid};
use crate::error::ApiError;

/// A supported camera model.
#[derive(Debug, Serialize, ToSchema)]
pub struct CameraModel {
    /// Stable code, e.g. `CP_PLUS_WIFI_V2`.
    pub code: String,
    pub display_name: String,
    pub capabilities: Capabilities,
}

/// What a camera model can do.
#[derive(Debug, Serialize, ToSchema)]
pub struct Capabilities {
    pub audio: bool,
    pub ptz: bool,
    pub night_vision: bool,
    /// `WIDTHxHEIGHT`.
    pub max_resolution: String,
}

/// Onboarding request. The Wi-Fi password goes into the QR code only; it is never stored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct OnboardRequest {
    pub camera_model: String,
    /// 1-32 bytes.
    pub wifi_ssid: String,
    /// 8-63 characters, or empty for an open network.
    #[serde(default)]
    pub wifi_password: String,
    /// 1-64 characters; defaults to the model's display name.
    #[serde(default)]
    pub device_name: Option<String>,
}

/// A pending camera and the QR code that activates it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OnboardResponse {
    pub device_id: Uuid,
    /// One-time token (256 random bits, base64url), also inside the QR code.
    pub device_token: String,
    /// RFC 3339 expiry of the token.
    pub expires_at: String,
    /// The exact compact JSON the QR code encodes (see README "QR payload").
    pub qr_payload: String,
    /// `data:image/png;base64,...`
    pub qr_code: String,
    /// The same code as an SVG document.
    pub qr_svg: String,
}

pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let models = warp::path!("api" / "camera" / "models")
        .and(warp::get())
        .and(with_ctx(ctx))
        .then(|ctx: Ctx| async move { respond(models(ctx).await) });
    let onboard = warp::path!("api" / "camera" / "onboard")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(authorization())
        .and(body(ctx.config.max_body_bytes))
        .then(|ctx: Ctx, auth: Option<String>, body| async move {
            respond(onboard(ctx, auth, body).await)
        });
    instrument("/api/camera/models", models)
        .or(instrument("/api/camera/onboard", onboard))
        .unify()
        .boxed()
}

/// Reads the camera models (seeded by migrations; they change only with a new release,
/// so they are read once at start).
pub async fn load_models(db: &crate::db::Db) -> Result<Vec<CameraModel>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT code, display_name, audio, ptz, night_vision, max_resolution \
         FROM camera_models ORDER BY sort_order, code",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(CameraModel {
                code: r.try_get("code")?,
                display_name: r.try_get("display_name")?,
                capabilities: Capabilities {
                    audio: r.try_get::<i64, _>("audio")? != 0,
                    ptz: r.try_get::<i64, _>("ptz")? != 0,
                    night_vision: r.try_get::<i64, _>("night_vision")? != 0,
                    max_resolution: r.try_get("max_resolution")?,
                },
            })
        })
        .collect()
}

/// Lists the supported camera models.
#[utoipa::path(get, path = "/api/camera/models", tag = "onboarding",
    responses((status = 200, description = "Camera models", body = Vec<CameraModel>)))]
pub async fn models(ctx: Ctx) -> Result<Response, ApiError> {
    Ok(json_response(StatusCode::OK, &ctx.models))
}

/// Creates a pending camera and its one-time activation QR code.
#[utoipa::path(post, path = "/api/camera/onboard", tag = "onboarding", request_body = OnboardRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Pending camera and QR code", body = OnboardResponse),
        (status = 400, description = "Malformed JSON", body = super::docs::ErrorBodyDoc),
        (status = 401, description = "Missing or invalid JWT", body = super::docs::ErrorBodyDoc),
        (status = 409, description = "The account has `max_cameras_per_account` cameras (`camera_limit`)", body = super::docs::ErrorBodyDoc),
        (status = 422, description = "Unknown model, bad SSID/password/name", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn onboard(
    ctx: Ctx,
    auth: Option<String>,
    body: Result<Bytes, ApiError>,
) -> Result<Response, ApiError> {
    let user = crate::auth::authenticate(&ctx, auth.as_deref()).await?.user;
    let req: OnboardRequest = parse_json(&body?)?;
    let ssid = WifiSsid::parse(req.wifi_ssid)?;
    let wifi_password = WifiPassword::parse(req.wifi_password)?;
    let model = ctx
        .models
        .iter()
        .find(|m| m.code == req.camera_model)
        .ok_or_else(|| {
            ApiError::validation("unknown_model", "camera_model is not a supported model")
        })?;
    let name = DeviceName::parse(req.device_name.as_deref().unwrap_or(&model.display_name))?;

    let token = DeviceToken::generate(&ctx.rng)?;
    let device_id = Uuid::new_v4();
    let now = now_secs();
    let ttl = i64::try_from(ctx.config.device_token_ttl_secs).unwrap_or(i64::MAX);
    let expires_at = now.saturating_add(ttl);
    let payload = QrPayload {
        v: QR_PAYLOAD_VERSION,
        wifi_ssid: ssid.into_inner(),
        wifi_password: wifi_password.into_inner(),
        server_url: ctx.config.server_url.clone(),
        device_token: token.expose().to_owned(),
        camera_model: req.camera_model.clone(),
        expires_at,
    };
    let qr_payload =
        serde_json::to_string(&payload).map_err(|e| ApiError::Internal(e.to_string()))?;
    let images = crate::qr::render(&payload)?;

    insert_pending(
        &ctx,
        user,
        PendingDevice {
            id: device_id,
            name: name.into_inner(),
            model: &req.camera_model,
            token_hash: token.hash(),
            expires_at,
            now,
        },
    )
    .await?;
    metrics::counter!("onboardings_total").increment(1);
    Ok(json_response(
        StatusCode::CREATED,
        &OnboardResponse {
            device_id,
            device_token: token.expose().to_owned(),
            expires_at: rfc3339(expires_at),
            qr_payload,
            qr_code: images.png_data_url,
            qr_svg: images.svg,
        },
    ))
}

/// A pending camera row about to be inserted.
struct PendingDevice<'a> {
    id: Uuid,
    name: String,
    model: &'a str,
    token_hash: String,
    expires_at: i64,
    now: i64,
}

/// Inserts a pending camera unless the account already has `max_cameras_per_account`
/// (pending ones count: they are what a scripted onboarding loop would pile up).
/// Touching the user row first serialises one account's onboardings (a row lock on
/// Postgres, the write lock on SQLite), so concurrent requests cannot all pass the count.
async fn insert_pending(ctx: &Ctx, user: Uuid, d: PendingDevice<'_>) -> Result<(), ApiError> {
    let mut tx = ctx.db.begin_write().await?;
    let locked = sqlx::query("UPDATE users SET email = email WHERE id = $1")
        .bind(user.to_string())
        .execute(&mut *tx)
        .await?;
    if locked.rows_affected() == 0 {
        // The JWT is genuine but its account no longer exists.
        return Err(ApiError::unauthorized(
            "invalid_token",
            "account no longer exists",
        ));
    }
    let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM devices WHERE owner_id = $1")
        .bind(user.to_string())
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
    let max = i64::from(ctx.config.max_cameras_per_account);
    if count >= max {
        return Err(ApiError::conflict(
            "camera_limit",
            format!("this account already has {max} cameras"),
        ));
    }
    let inserted = sqlx::query(
        "INSERT INTO devices (id, owner_id, device_name, camera_model, status, token_hash, \
         token_expires_at, created_at) VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7)",
    )
    .bind(d.id.to_string())
    .bind(user.to_string())
    .bind(d.name)
    .bind(d.model)
    .bind(d.token_hash)
    .bind(d.expires_at)
    .bind(d.now)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_foreign_key_violation(&e) => {
            return Err(ApiError::unauthorized(
                "invalid_token",
                "account no longer exists",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    Ok(())
}
