//! User authentication: argon2id password hashes and HS256 login JWTs (the failed-login
//! limit is in [`crate::limiter`]).

use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordVerifier, Version};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
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

/// Claims of a login JWT.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoginClaims {
    sub: Uuid,
    iat: u64,
    exp: u64,
    aud: String,
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
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
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

    pub fn issue(&self, user: Uuid, now: u64) -> Result<String, ApiError> {
        let claims = LoginClaims {
            sub: user,
            iat: now,
            exp: now + self.ttl,
            aud: LOGIN_AUDIENCE.into(),
        };
        jsonwebtoken::encode(
            &Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &self.encoding,
        )
        .map_err(internal)
    }

    /// The user id of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Result<Uuid, ApiError> {
        jsonwebtoken::decode::<LoginClaims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims.sub)
            .map_err(|e| {
                let message = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired",
                    _ => "invalid token",
                };
                ApiError::unauthorized("invalid_token", message)
            })
    }

    /// The user id from an `Authorization: Bearer <jwt>` header value.
    pub fn user_from_header(&self, header: Option<&str>) -> Result<Uuid, ApiError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_roundtrip_and_rejections() {
        let jwt = Jwt::new(&shared::Secret::new("k1"), 100);
        let user = Uuid::new_v4();
        let now = shared::ticket::unix_now();
        let t = jwt.issue(user, now).unwrap();
        assert_eq!(jwt.verify(&t).unwrap(), user);
        assert_eq!(
            jwt.user_from_header(Some(&format!("Bearer {t}"))).unwrap(),
            user
        );
        assert!(jwt.user_from_header(None).is_err());
        assert!(jwt.user_from_header(Some(&t)).is_err());
        let other = Jwt::new(&shared::Secret::new("k2"), 100);
        assert!(other.verify(&t).is_err());
        let expired = jwt.issue(user, now - 1000).unwrap();
        assert!(jwt.verify(&expired).is_err());
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
