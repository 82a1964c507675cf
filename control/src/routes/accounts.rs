//! `POST /api/register`, `POST /api/login`.

use std::net::IpAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::{
    body, client_ip, instrument, json_response, now_secs, parse_json, respond, rfc3339, with_ctx,
    Ctx,
};
use crate::audit::{self, Action, Record};
use crate::db::is_unique_violation;
use crate::domain::{Email, Password};
use crate::error::ApiError;
use crate::limiter::{client_key, email_key, Limit, Reservation};

/// Registration and login body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Credentials {
    pub email: String,
    /// At least `password_min_len` (8) characters.
    pub password: String,
}

/// A registered account.
#[derive(Debug, Serialize, ToSchema)]
pub struct Account {
    pub id: Uuid,
    pub email: String,
    /// RFC 3339.
    pub created_at: String,
}

/// A login JWT.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let limit = ctx.config.max_body_bytes;
    let register = warp::path!("api" / "register")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(client_ip(ctx))
        .and(body(limit))
        .then(|ctx: Ctx, ip, body| async move { respond(register(ctx, ip, body).await) });
    let login = warp::path!("api" / "login")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(client_ip(ctx))
        .and(body(limit))
        .then(|ctx: Ctx, ip, body| async move { respond(login(ctx, ip, body).await) });
    instrument("/api/register", register)
        .or(instrument("/api/login", login))
        .unify()
        .boxed()
}

/// Creates an account.
#[utoipa::path(post, path = "/api/register", tag = "accounts", request_body = Credentials,
    responses(
        (status = 201, description = "Account created", body = Account),
        (status = 400, description = "Malformed JSON", body = super::docs::ErrorBodyDoc),
        (status = 409, description = "Email already registered (`email_taken`)", body = super::docs::ErrorBodyDoc),
        (status = 422, description = "Invalid email or password too short", body = super::docs::ErrorBodyDoc),
        (status = 429, description = "Too many registrations from this client (`rate_limited`); see Retry-After", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn register(
    ctx: Ctx,
    ip: IpAddr,
    body: Result<Bytes, ApiError>,
) -> Result<Response, ApiError> {
    let req: Credentials = parse_json(&body?)?;
    // Counted before hashing: every attempt costs an argon2 hash and may create a row.
    let limit = Limit {
        max: ctx.config.register_max_per_client,
        window_secs: ctx.config.register_window_secs,
    };
    ctx.limiter
        .reserve(&format!("register:{}", client_key(ip)), limit, now_secs())
        .await?;
    let email = Email::parse(&req.email)?;
    let password = Password::parse(req.password, ctx.config.password_min_len)?;
    let hash = ctx.passwords.hash(password.expose().to_owned()).await?;
    let id = Uuid::new_v4();
    let now = now_secs();
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(id.to_string())
    .bind(email.as_str())
    .bind(hash)
    .bind(now)
    .execute(&ctx.db.pool)
    .await;
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {
            return Err(ApiError::conflict(
                "email_taken",
                "email is already registered",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    metrics::counter!("registrations_total").increment(1);
    Ok(json_response(
        StatusCode::CREATED,
        &Account {
            id,
            email: email.as_str().to_owned(),
            created_at: rfc3339(now),
        },
    ))
}

/// Exchanges email and password for a JWT.
#[utoipa::path(post, path = "/api/login", tag = "accounts", request_body = Credentials,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 400, description = "Malformed JSON", body = super::docs::ErrorBodyDoc),
        (status = 401, description = "Wrong email or password (`invalid_credentials`)", body = super::docs::ErrorBodyDoc),
        (status = 403, description = "Right password, but an admin disabled the account (`account_disabled`)", body = super::docs::ErrorBodyDoc),
        (status = 429, description = "Too many failed logins for this email from this client, for this email, or from this client (`rate_limited`); see Retry-After", body = super::docs::ErrorBodyDoc),
    ))]
pub async fn login(
    ctx: Ctx,
    ip: IpAddr,
    body: Result<Bytes, ApiError>,
) -> Result<Response, ApiError> {
    let req: Credentials = parse_json(&body?)?;
    let invalid = || ApiError::unauthorized("invalid_credentials", "wrong email or password");
    // A malformed email cannot belong to an account: same answer as a wrong one.
    let email = Email::parse(&req.email)
        .map(|e| e.as_str().to_owned())
        .unwrap_or_else(|_| req.email.trim().to_lowercase());
    let buckets = reserve_login(&ctx, &email, ip).await?;
    let row = sqlx::query(
        "SELECT id, password_hash, role, disabled_at, tokens_valid_after FROM users \
         WHERE email = $1",
    )
    .bind(&email)
    .fetch_optional(&ctx.db.pool)
    .await?;
    let (user, stored) = match &row {
        Some(row) => (
            Some(row.try_get::<String, _>("id")?),
            Some(row.try_get::<String, _>("password_hash")?),
        ),
        None => (None, None),
    };
    let ok = ctx.passwords.verify(req.password, stored).await?;
    let user = match (ok, user) {
        (true, Some(id)) => Uuid::parse_str(&id).map_err(|e| ApiError::Internal(e.to_string()))?,
        _ => {
            // The reservations stay: they are this failure's count.
            metrics::counter!("logins_failed_total").increment(1);
            return Err(invalid());
        }
    };
    // A correct password is no failure: give the reservations back.
    for (bucket, limit) in &buckets {
        ctx.limiter.release(bucket, *limit).await?;
    }
    let row = row.ok_or_else(invalid)?;
    // Told only to someone who knows the password.
    if row.try_get::<Option<i64>, _>("disabled_at")?.is_some() {
        return Err(ApiError::forbidden(
            "account_disabled",
            "this account is disabled",
        ));
    }
    let role = crate::auth::Role::parse(&row.try_get::<String, _>("role")?);
    let iat = crate::auth::issue_time(
        shared::ticket::unix_now(),
        row.try_get("tokens_valid_after")?,
    );
    sqlx::query("UPDATE users SET last_login_at = $1 WHERE id = $2")
        .bind(now_secs())
        .bind(user.to_string())
        .execute(&ctx.db.pool)
        .await?;
    let token = ctx.jwt.issue(user, role, iat)?;
    Ok(json_response(
        StatusCode::OK,
        &LoginResponse {
            access_token: token,
            token_type: "bearer".into(),
            expires_in: ctx.jwt.ttl(),
        },
    ))
}

/// Reserves one failed-login attempt in each bucket (per client, per email + client, per
/// email), before the password is verified, so concurrent guesses cannot all slip in
/// before the first failure is recorded. Returns the buckets reserved, for the release
/// on success. Stops at the first full bucket, so attempts refused for one client do not
/// eat the account's budget, and gives back what it had reserved before it. A bucket's
/// first refusal in a window goes in the audit log (once: a flood of refused attempts
/// cannot fill the table).
async fn reserve_login(
    ctx: &Ctx,
    email: &str,
    ip: IpAddr,
) -> Result<Vec<(String, Limit)>, ApiError> {
    let client = client_key(ip);
    let email_bucket = email_key(email);
    let window_secs = ctx.config.login_window_secs;
    let limits = [
        (
            format!("login:client:{client}"),
            ctx.config.login_client_max_failures,
            "client",
        ),
        (
            format!("login:pair:{email_bucket}|{client}"),
            ctx.config.login_max_failures,
            "account_client",
        ),
        (
            format!("login:account:{email_bucket}"),
            ctx.config.login_account_max_failures,
            "account",
        ),
    ];
    let now = now_secs();
    let mut reserved: Vec<(String, Limit)> = Vec::with_capacity(limits.len());
    for (bucket, max, kind) in limits {
        let limit = Limit { max, window_secs };
        let Reservation::Refused {
            retry_after,
            first_in_window,
        } = ctx.limiter.try_reserve(&bucket, limit, now).await?
        else {
            reserved.push((bucket, limit));
            continue;
        };
        // The attempt never reaches the password check, so it is no failure for the
        // buckets before: a client refused for one locked account keeps its budget
        // for the others.
        for (earlier, limit) in &reserved {
            ctx.limiter.release(earlier, *limit).await?;
        }
        if first_in_window {
            record_limited(ctx, email, ip, kind).await;
        }
        return Err(ApiError::RateLimited(retry_after));
    }
    Ok(reserved)
}

/// Audits that logins hit the `kind` limit. The account is named by its id (when the email
/// belongs to one), never by the email. A failure to write it is logged: the refusal stands.
async fn record_limited(ctx: &Ctx, email: &str, ip: IpAddr, kind: &str) {
    let write = async {
        let target: Option<String> = if kind == "client" {
            None
        } else {
            sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
                .bind(email)
                .fetch_optional(&ctx.db.pool)
                .await?
        };
        audit::record(
            &ctx.db.pool,
            Record {
                actor: None,
                action: Action::LoginLimited,
                target: target.as_deref(),
                client_ip: Some(ip),
                detail: serde_json::json!({ "limit": kind }),
            },
        )
        .await
    };
    if let Err(e) = write.await {
        tracing::warn!(error = %e, "could not audit a login limit");
    }
}
