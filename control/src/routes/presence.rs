//! `POST /api/internal/presence`: vc-relay reports cameras going online/offline. The body is
//! authenticated by `x-vc-signature` = HMAC-SHA256 with the ticket secret
//! ([`shared::ticket::TicketKey::sign_internal`]), and `sent_at` must lie within
//! `presence_max_skew_secs` of our clock so a captured report cannot be replayed later.

use bytes::Bytes;
use shared::api::{PresenceAck, PresenceReport, PRESENCE_SIGNATURE_HEADER};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::{body, instrument, json_response, parse_json, respond, with_ctx, Ctx};
use crate::error::ApiError;

pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let presence = warp::path!("api" / "internal" / "presence")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(
            warp::header::optional::<String>(PRESENCE_SIGNATURE_HEADER)
                .or(warp::any().map(|| None))
                .unify(),
        )
        .and(body(ctx.config.max_body_bytes))
        .then(|ctx: Ctx, sig: Option<String>, body| async move {
            respond(presence(ctx, sig, body).await)
        });
    instrument("/api/internal/presence", presence)
}

/// Applies a signed presence report; answers the device ids it does not know.
#[utoipa::path(post, path = "/api/internal/presence", tag = "relay",
    request_body = super::docs::PresenceReportDoc,
    params(("x-vc-signature" = String, Header, description = "base64url HMAC-SHA256 of the body with the ticket secret")),
    responses(
        (status = 200, description = "Applied", body = super::docs::PresenceAckDoc),
        (status = 400, description = "Malformed JSON", body = super::docs::ErrorBodyDoc),
        (status = 401, description = "`bad_signature`, or `stale_report` (sent_at outside the replay window)", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn presence(
    ctx: Ctx,
    signature: Option<String>,
    body: Result<Bytes, ApiError>,
) -> Result<Response, ApiError> {
    let body = body?;
    let bad_sig = || ApiError::unauthorized("bad_signature", "missing or invalid x-vc-signature");
    let signature = signature.ok_or_else(bad_sig)?;
    ctx.tickets
        .verify_internal(&body, signature.trim())
        .map_err(|_| bad_sig())?;
    let report: PresenceReport = parse_json(&body)?;
    let now = shared::ticket::unix_now();
    if now.abs_diff(report.sent_at) > ctx.config.presence_max_skew_secs {
        return Err(ApiError::unauthorized(
            "stale_report",
            "sent_at is outside the accepted window",
        ));
    }

    let mut unknown = Vec::new();
    let mut tx = ctx.db.begin_write().await?;
    for event in &report.events {
        let at_ms = i64::try_from(event.at_ms).unwrap_or(i64::MAX);
        let status = if event.online { "online" } else { "offline" };
        // Reports can arrive out of order: an older event never overwrites a newer one.
        let done = sqlx::query(
            "UPDATE devices SET status = $1, last_seen = $2, presence_at_ms = $3 \
             WHERE id = $4 AND status <> 'pending' \
             AND (presence_at_ms IS NULL OR presence_at_ms <= $3)",
        )
        .bind(status)
        .bind(at_ms / 1000)
        .bind(at_ms)
        .bind(event.device_id.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            let exists = sqlx::query("SELECT 1 FROM devices WHERE id = $1 AND status <> 'pending'")
                .bind(event.device_id.to_string())
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !exists && !unknown.contains(&event.device_id) {
                unknown.push(event.device_id);
            }
        }
    }
    tx.commit().await?;
    metrics::counter!("presence_events_total").increment(report.events.len() as u64);
    Ok(json_response(
        StatusCode::OK,
        &PresenceAck {
            unknown_devices: unknown,
        },
    ))
}
