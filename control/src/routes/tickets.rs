//! `POST /api/relay/ticket`: short-lived relay credentials, verified by vc-relay with the
//! ticket secret alone. A viewer authenticates with its JWT and must own `device_id` or
//! have it shared with it (an active share, see [`super::shares`]); a camera authenticates with `device_id` + `device_secret` (then no JWT is needed).

use bytes::Bytes;
use shared::api::{SignalingTicket, TicketRequest, TicketResponse, TurnTicket};
use shared::ticket::Role;
use sqlx::Row;
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::{authorization, body, instrument, json_response, parse_json, respond, with_ctx, Ctx};
use crate::domain::DeviceSecret;
use crate::error::ApiError;

pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let ticket = warp::path!("api" / "relay" / "ticket")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(authorization())
        .and(body(ctx.config.max_body_bytes))
        .then(|ctx: Ctx, auth: Option<String>, body| async move {
            respond(ticket(ctx, auth, body).await)
        });
    instrument("/api/relay/ticket", ticket)
}

/// Issues TURN REST credentials and a signaling token.
#[utoipa::path(post, path = "/api/relay/ticket", tag = "relay",
    request_body = super::docs::TicketRequestDoc,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Ticket", body = super::docs::TicketResponseDoc),
        (status = 400, description = "Malformed JSON", body = super::docs::ErrorBodyDoc),
        (status = 401, description = "No JWT, bad JWT, or wrong device secret (`invalid_device_credentials`)", body = super::docs::ErrorBodyDoc),
        (status = 404, description = "Viewer: no such device for this user (not owned, not shared, or the share was revoked)", body = super::docs::ErrorBodyDoc),
        (status = 409, description = "Viewer: the camera has not activated yet (`device_not_activated`)", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn ticket(
    ctx: Ctx,
    auth: Option<String>,
    body: Result<Bytes, ApiError>,
) -> Result<Response, ApiError> {
    let req: TicketRequest = parse_json(&body?)?;
    // The subject stays what signaling expects (the device id for a camera, the user id for
    // a viewer); the owning account rides along so the relay's TURN quota counts per
    // account, not per device id.
    let (subject, account, role) = match req.device_secret.as_deref() {
        Some(raw) => {
            let owner = authenticate_camera(&ctx, req.device_id, raw).await?;
            (req.device_id.to_string(), owner, Role::Camera)
        }
        None => {
            let user = crate::auth::authenticate(&ctx, auth.as_deref()).await?.user;
            authorize_viewer(&ctx, user, req.device_id).await?;
            (user.to_string(), user.to_string(), Role::Viewer)
        }
    };
    let now = shared::ticket::unix_now();
    let ttl = ctx.config.ticket_ttl_secs;
    let (username, credential) = ctx
        .tickets
        .turn_credentials_for_account(&subject, &account, now, ttl);
    let (token, _) = ctx.tickets.mint_signaling_for_account(
        &subject,
        Some(&account),
        role,
        vec![req.device_id],
        now,
        ttl,
    );
    metrics::counter!("tickets_issued_total", "role" => role.as_str()).increment(1);
    Ok(json_response(
        StatusCode::OK,
        &TicketResponse {
            turn: TurnTicket {
                username,
                credential,
                ttl,
                uris: ctx.config.relay.turn_uris.clone(),
            },
            signaling: SignalingTicket {
                url: ctx.config.relay.signaling_url.clone(),
                token,
                // Only cameras hold the persistent link QUIC is for; viewers stay on WebSocket.
                quic_url: (role == Role::Camera && !ctx.config.relay.quic_url.is_empty())
                    .then(|| ctx.config.relay.quic_url.clone()),
            },
        },
    ))
}

/// The owner's account id of a device whose secret matches.
async fn authenticate_camera(
    ctx: &Ctx,
    device: Uuid,
    raw_secret: &str,
) -> Result<String, ApiError> {
    let denied = || {
        ApiError::unauthorized(
            "invalid_device_credentials",
            "unknown device or wrong device secret",
        )
    };
    let secret = DeviceSecret::parse(raw_secret).ok_or_else(denied)?;
    let row = sqlx::query("SELECT secret_hash, owner_id FROM devices WHERE id = $1")
        .bind(device.to_string())
        .fetch_optional(&ctx.db.pool)
        .await?;
    let (stored, owner): (Option<String>, String) = match row {
        Some(row) => (row.try_get("secret_hash")?, row.try_get("owner_id")?),
        None => (None, String::new()),
    };
    match stored {
        Some(hash) if secret.matches(&hash) => {
            // From now on an activation retry must present the secret (see activation).
            sqlx::query(
                "UPDATE devices SET secret_used_at = $1 WHERE id = $2 AND secret_used_at IS NULL",
            )
            .bind(super::now_secs())
            .bind(device.to_string())
            .execute(&ctx.db.pool)
            .await?;
            Ok(owner)
        }
        _ => Err(denied()),
    }
}

async fn authorize_viewer(ctx: &Ctx, user: Uuid, device: Uuid) -> Result<(), ApiError> {
    // Checked at every ticket: a revoked share stops getting tickets at once.
    let row = sqlx::query(
        "SELECT d.status FROM devices d WHERE d.id = $1 AND (d.owner_id = $2 OR EXISTS ( \
             SELECT 1 FROM device_shares s WHERE s.device_id = d.id AND s.user_id = $2))",
    )
    .bind(device.to_string())
    .bind(user.to_string())
    .fetch_optional(&ctx.db.pool)
    .await?
    .ok_or(ApiError::NotFound("device"))?;
    let status: String = row.try_get("status")?;
    if status == "pending" {
        return Err(ApiError::conflict(
            "device_not_activated",
            "the camera has not activated yet",
        ));
    }
    Ok(())
}
