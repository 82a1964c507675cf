//! User authentication: argon2id password hashes and HS256 login JWTs (the failed-login
//! limit is in [`crate::limiter`]).

use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordVerifier, Version};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tokio::sync::Semaphore;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::Argon2Config;
use crate::error::{ApiError, StartError};

/// Audience of login JWTs (signaling tokens use another audience and another key).
const LOGIN_AUDIENCE: &str = "vc-api";

/// Hashes and verifies passwords with argon2id on the blocking pool, at most one per core
/// at a time so a burst of logins cannot exhaust memory.
#[derive(Clone)]
pub struct Passwords {
    argon2: Argon2<'static>,
    permits: Arc<Semaphore>,
    /// Hash of a random password, verified when the email is unknown so both cases cost the same.
    dummy_hash: Arc<str>,
}

impl Passwords {
    pub fn new(cfg: &Argon2Config) -> Result<Self, StartError> {
        let params = Params::new(cfg.memory_kib, cfg.iterations, cfg.parallelism, None)
            .map_err(|e| StartError::Config(format!("argon2 parameters: {e}")))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut OsRng);
        let dummy_hash = argon2
            .hash_password(Uuid::new_v4().to_string().as_bytes(), &salt)
            .map_err(|e| StartError::Config(format!("argon2: {e}")))?
            .to_string();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Self {
            argon2,
            permits: Arc::new(Semaphore::new(cores)),
            dummy_hash: dummy_hash.into(),
        })
    }

    /// PHC string of an argon2id hash of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let _permit = self.permits.acquire().await.map_err(internal)?;
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(internal)
        })
        .await
        .map_err(internal)?
    }

    /// Verifies `password` against a stored PHC hash (or the dummy hash when `None`).
    /// The parameters stored in the hash are used, so changing the config keeps old
    /// hashes verifiable.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, ApiError> {
        let _permit = self.permits.acquire().await.map_err(internal)?;
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let argon2 = self.argon2.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&stored).map_err(internal)?;
            Ok::<_, ApiError>(argon2.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .map_err(internal)??;
        Ok(ok && known)
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// Claims of a login JWT. `role` is informational for clients: the server reads the role
/// from the database on every request, so a demotion takes effect at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoginClaims {
    sub: Uuid,
    iat: u64,
    exp: u64,
    aud: String,
    /// Unique per token, so one token can be logged out (`revoked_jwts`).
    jti: Uuid,
    role: Role,
}

/// An account's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// The stored value; anything unknown is the least privileged role.
    pub fn parse(stored: &str) -> Self {
        if stored == "admin" {
            Role::Admin
        } else {
            Role::User
        }
    }
}

/// What a valid login JWT says (before the per-request database check).
#[derive(Debug, Clone)]
pub struct TokenClaims {
    pub user: Uuid,
    pub iat: u64,
    pub exp: u64,
    pub jti: Uuid,
}

/// The caller of an authenticated request, as of the database now.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: Uuid,
    pub role: Role,
    pub jti: Uuid,
    /// Unix seconds when the presented token expires.
    pub exp: u64,
}

impl Principal {
    /// 403 `forbidden` unless an admin (the same answer whatever the route, so a
    /// non-admin learns nothing about what exists).
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(ApiError::forbidden("forbidden", "admin role required"))
        }
    }
}

/// Signs and verifies login JWTs (HS256).
#[derive(Clone)]
pub struct Jwt {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: u64,
}

impl Jwt {
    pub fn new(secret: &shared::Secret, ttl: u64) -> Self {
        let raw = secret.expose().as_bytes();
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_audience(&[LOGIN_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud", "sub", "iat", "jti"]);
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(raw),
            decoding: DecodingKey::from_secret(raw),
            validation,
            ttl,
        }
    }

    pub fn ttl(&self) -> u64 {
        self.ttl
    }

    /// A token issued at `iat` (unix seconds; see [`issue_time`] for why it may be a little
    /// after now).
    pub fn issue(&self, user: Uuid, role: Role, iat: u64) -> Result<String, ApiError> {
        let claims = LoginClaims {
            sub: user,
            iat,
            exp: iat + self.ttl,
            aud: LOGIN_AUDIENCE.into(),
            jti: Uuid::new_v4(),
            role,
        };
        jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &self.encoding,
        )
        .map_err(internal)
    }

    /// The claims of a correctly signed, unexpired token (not yet checked against the
    /// account: see [`authenticate`]).
    pub fn verify(&self, token: &str) -> Result<TokenClaims, ApiError> {
        jsonwebtoken::decode::<LoginClaims>(token, &self.decoding, &self.validation)
            .map(|d| TokenClaims {
                user: d.claims.sub,
                iat: d.claims.iat,
                exp: d.claims.exp,
                jti: d.claims.jti,
            })
            .map_err(|e| {
                let message = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired",
                    _ => "invalid token",
                };
                ApiError::unauthorized("invalid_token", message)
            })
    }

    /// The claims from an `Authorization: Bearer <jwt>` header value.
    pub fn claims_from_header(&self, header: Option<&str>) -> Result<TokenClaims, ApiError> {
        let value = header.ok_or_else(|| {
            ApiError::unauthorized("missing_token", "Authorization: Bearer token required")
        })?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("invalid_token", "expected a Bearer token"))?;
        self.verify(token.trim())
    }
}

/// The `iat` for a token issued now to an account cut off at `tokens_valid_after`.
/// A cut-off is stored as the second after the one it happened in ([`cutoff_now`]), so
/// tokens issued earlier in that same second are refused; a token issued during that
/// second is dated to the cut-off so it stays valid (its expiry moves by under a second).
pub fn issue_time(now: u64, tokens_valid_after: i64) -> u64 {
    now.max(u64::try_from(tokens_valid_after).unwrap_or(0))
}

/// The `tokens_valid_after` that ends every token issued up to now.
pub fn cutoff_now() -> i64 {
    crate::routes::now_secs() + 1
}

/// Authenticates a request: a valid login JWT whose account exists, is not disabled, was
/// not cut off after the token was issued, and whose token was not logged out. One query by
/// primary key per request. Every authenticated route goes through here.
pub async fn authenticate(app: &crate::App, header: Option<&str>) -> Result<Principal, ApiError> {
    let claims = app.jwt.claims_from_header(header)?;
    let row = sqlx::query(
        "SELECT u.role, u.disabled_at, u.tokens_valid_after, \
             (SELECT COUNT(*) FROM revoked_jwts r WHERE r.jti = $2) AS revoked \
         FROM users u WHERE u.id = $1",
    )
    .bind(claims.user.to_string())
    .bind(claims.jti.to_string())
    .fetch_optional(&app.db.pool)
    .await?;
    let revoked = || ApiError::unauthorized("invalid_token", "token revoked");
    let row = row.ok_or_else(revoked)?;
    let disabled: Option<i64> = row.try_get("disabled_at")?;
    let valid_after: i64 = row.try_get("tokens_valid_after")?;
    let logged_out: i64 = row.try_get("revoked")?;
    let iat = i64::try_from(claims.iat).unwrap_or(i64::MAX);
    if disabled.is_some() || iat < valid_after || logged_out > 0 {
        return Err(revoked());
    }
    Ok(Principal {
        user: claims.user,
        role: Role::parse(&row.try_get::<String, _>("role")?),
        jti: claims.jti,
        exp: claims.exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_roundtrip_and_rejections() {
        let jwt = Jwt::new(&shared::Secret::new("k1"), 100);
        let user = Uuid::new_v4();
        let now = shared::ticket::unix_now();
        let t = jwt.issue(user, Role::Admin, now).unwrap();
        let claims = jwt.verify(&t).unwrap();
        assert_eq!(
            (claims.user, claims.iat, claims.exp),
            (user, now, now + 100)
        );
        let again = jwt
            .claims_from_header(Some(&format!("Bearer {t}")))
            .unwrap();
        assert_eq!((again.user, again.jti), (user, claims.jti));
        // Each token has its own jti, so logging one out leaves the others.
        let t2 = jwt.issue(user, Role::User, now).unwrap();
        assert_ne!(jwt.verify(&t2).unwrap().jti, claims.jti);
        assert!(jwt.claims_from_header(None).is_err());
        assert!(jwt.claims_from_header(Some(&t)).is_err());
        let other = Jwt::new(&shared::Secret::new("k2"), 100);
        assert!(other.verify(&t).is_err());
        let expired = jwt.issue(user, Role::User, now - 1000).unwrap();
        assert!(jwt.verify(&expired).is_err());
    }

    #[test]
    fn cutoff_dates_new_tokens_after_old_ones() {
        let cut = 1_000_i64;
        // Issued in the cut-off's own second (before it): refused; issued then: dated to it.
        assert!(999 < cut);
        assert_eq!(issue_time(999, cut), 1_000);
        assert_eq!(issue_time(5_000, cut), 5_000);
        assert_eq!(issue_time(5_000, 0), 5_000);
        assert_eq!(Role::parse("admin"), Role::Admin);
        assert_eq!(Role::parse("root"), Role::User);
    }

    #[tokio::test]
    async fn argon2id_hash_and_verify() {
        let p = Passwords::new(&Argon2Config {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        })
        .unwrap();
        let h = p.hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(p
            .verify("correct horse".into(), Some(h.clone()))
            .await
            .unwrap());
        assert!(!p.verify("wrong horse".into(), Some(h)).await.unwrap());
        assert!(!p.verify("anything".into(), None).await.unwrap());
    }
}
