//! A secret string that never prints: `Debug` and `Display` show `[redacted]`.

use serde::{Deserialize, Serialize};

use crate::Error;

/// Shortest secret accepted as key material (ticket and JWT secrets), bytes: 256 bits when
/// random, and an operator's guessable word is refused outright.
pub const MIN_SECRET_BYTES: usize = 32;

/// A secret value (password, signing key). Deliberately not `Display`; `Debug` is redacted
/// so a secret cannot end up in a log line or an error message by accident.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value, for the one place that needs it (signing, hashing).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Refuses a secret shorter than [`MIN_SECRET_BYTES`], naming `setting` (the config key,
    /// env variable or file it came from) so the operator knows what to fix.
    pub fn check_strength(&self, setting: &str) -> Result<(), Error> {
        let len = self.0.len();
        if len < MIN_SECRET_BYTES {
            return Err(Error::Config(format!(
                "{setting} is {len} bytes long; at least {MIN_SECRET_BYTES} are required \
                 (generate one: head -c 32 /dev/urandom | base64)"
            )));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("hunter22");
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(s.expose(), "hunter22");
    }

    #[test]
    fn short_secrets_refused_naming_the_setting() {
        let err = Secret::new("x".repeat(31))
            .check_strength("ticket_secret (VC_TICKET_SECRET)")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ticket_secret (VC_TICKET_SECRET)"), "{err}");
        assert!(err.contains("31 bytes"), "{err}");
        assert!(Secret::new("x".repeat(32)).check_strength("s").is_ok());
        assert!(Secret::default().check_strength("s").is_err());
    }
}
