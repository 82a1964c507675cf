//! `GET /healthz` (database reachable; public and admin listeners) and `GET /metrics`
//! (Prometheus text; admin listener only, `admin_listen`: what it counts is for operators,
//! not for the internet).
//!
//! Metrics (labels are fixed sets, never ids or raw paths): `http_requests_total{route,status}`,
//! `http_request_duration_seconds{route}` (histogram), `logins_failed_total`,
//! `registrations_total`, `onboardings_total`, `activations_total{outcome}`,
//! `tickets_issued_total{role}`, `presence_events_total`, `devices{status}` (read at scrape).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;
use warp::filters::BoxedFilter;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::Filter;

use super::{instrument, json_response, respond, with_ctx, Ctx};
use crate::error::ApiError;

/// Health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// `sqlite` or `postgres`.
    pub database: String,
}

/// The process-wide Prometheus recorder's handle (installed on first use; the recorder is
/// global, so in-process test servers share it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = builder
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 30.0, 60.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            handle
        })
        .clone()
}

/// `/healthz` for the public API listener.
pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let health = warp::path!("healthz")
        .and(warp::get())
        .and(with_ctx(ctx))
        .then(|ctx: Ctx| async move { respond(healthz(ctx).await) });
    instrument("/healthz", health)
}

/// `/metrics` and `/healthz` for the admin listener.
pub fn admin_routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_ctx(ctx))
        .then(|ctx: Ctx| async move { respond(metrics(ctx).await) });
    instrument("/metrics", metrics)
        .or(routes(ctx))
        .unify()
        .boxed()
}

/// 200 when the database answers, 503 otherwise.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "Database unreachable", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn healthz(ctx: Ctx) -> Result<Response, ApiError> {
    if !ctx.db.healthy().await {
        return Err(ApiError::Unavailable);
    }
    let database = match ctx.db.backend {
        crate::db::Backend::Sqlite => "sqlite",
        crate::db::Backend::Postgres => "postgres",
    };
    Ok(json_response(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
            database: database.into(),
        },
    ))
}

/// Prometheus text exposition (admin listener; not part of the public API document).
pub async fn metrics(ctx: Ctx) -> Result<Response, ApiError> {
    // Derived status (node leases), as the device list shows it.
    let rows = sqlx::query(&format!(
        "SELECT status, COUNT(*) AS n FROM (SELECT {} FROM {}) s GROUP BY status",
        crate::presence::derived_columns("$1"),
        crate::presence::DEVICES_WITH_LEASES
    ))
    .bind(super::now_ms())
    .fetch_all(&ctx.db.pool)
    .await?;
    for status in ["pending", "offline", "online"] {
        let n = rows
            .iter()
            .find(|r| r.try_get::<String, _>("status").is_ok_and(|s| s == status))
            .and_then(|r| r.try_get::<i64, _>("n").ok())
            .unwrap_or(0);
        metrics::gauge!("devices", "status" => status).set(n as f64);
    }
    ctx.metrics.run_upkeep();
    let mut res = Response::new(ctx.metrics.render().into());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(res)
}
