//! `POST /api/internal/presence`: vc-relay reports cameras going online/offline. The body is
//! authenticated by `x-vc-signature` = HMAC-SHA256 with the ticket secret
//! ([`shared::ticket::TicketKey::sign_internal`]), and `sent_at` must lie within
//! `presence_max_skew_secs` of our clock so a captured report cannot be replayed later.
//! What a report means is in [`crate::presence`].

use bytes::Bytes;
use shared::api::{PresenceReport, PRESENCE_SIGNATURE_HEADER};
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
        (status = 409, description = "`stale_epoch`: a newer process of this node holds its lease; nothing applied", body = super::docs::ErrorBodyDoc),
        (status = 422, description = "`bad_node_id`", body = super::docs::ErrorBodyDoc),
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

    let now_ms = u64::try_from(super::now_ms()).unwrap_or(0);
    let ack = crate::presence::apply_report(&ctx.db, &report, now_ms).await?;
    metrics::counter!("presence_events_total").increment(report.events.len() as u64);
    Ok(json_response(StatusCode::OK, &ack))
}
