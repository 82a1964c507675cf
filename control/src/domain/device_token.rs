//! Random bearer values handed to cameras: the one-time device token (in the QR code) and the
//! long-lived device secret. Only their SHA-256 is stored: both carry 256 random bits, so a
//! fast hash is as strong as a slow one and keeps activation and ticket issue cheap.

use base64::Engine as _;
use ring::rand::SecureRandom;

use crate::error::ApiError;

fn random_b64(rng: &ring::rand::SystemRandom) -> Result<String, ApiError> {
    let mut raw = [0u8; 32];
    rng.fill(&mut raw)
        .map_err(|_| ApiError::Internal("system randomness unavailable".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// Hex SHA-256 of a bearer value, as stored.
pub fn sha256_hex(value: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        value.as_bytes(),
    ))
}

fn well_formed(raw: &str) -> bool {
    (16..=128).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A one-time device token: 256 random bits, base64url (43 chars). `Debug` is redacted.
pub struct DeviceToken(String);

impl DeviceToken {
    pub fn generate(rng: &ring::rand::SystemRandom) -> Result<Self, ApiError> {
        random_b64(rng).map(Self)
    }

    /// A token as presented by a client; `None` when it cannot be one of ours (callers
    /// answer that like an unknown token).
    pub fn parse(raw: &str) -> Option<Self> {
        well_formed(raw).then(|| Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> String {
        sha256_hex(&self.0)
    }
}

impl std::fmt::Debug for DeviceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceToken([redacted])")
    }
}

/// A camera's long-lived secret: 256 random bits, base64url. `Debug` is redacted.
pub struct DeviceSecret(String);

impl DeviceSecret {
    pub fn generate(rng: &ring::rand::SystemRandom) -> Result<Self, ApiError> {
        random_b64(rng).map(Self)
    }

    pub fn parse(raw: &str) -> Option<Self> {
        well_formed(raw).then(|| Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }

    pub fn hash(&self) -> String {
        sha256_hex(&self.0)
    }

    /// Constant-time comparison of this secret's hash with a stored hash.
    pub fn matches(&self, stored_hash: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.hash().as_bytes().ct_eq(stored_hash.as_bytes()).into()
    }
}

impl std::fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceSecret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_urlsafe_and_redacted() {
        let rng = ring::rand::SystemRandom::new();
        let a = DeviceToken::generate(&rng).unwrap();
        let b = DeviceToken::generate(&rng).unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 43);
        assert!(DeviceToken::parse(a.expose()).is_some());
        assert!(DeviceToken::parse("short").is_none());
        assert!(DeviceToken::parse("has spaces in it and is long").is_none());
        assert!(!format!("{a:?}").contains(a.expose()));
        let s = DeviceSecret::generate(&rng).unwrap();
        assert!(s.matches(&sha256_hex(s.expose())));
        assert!(!s.matches(&sha256_hex("other")));
    }
}
