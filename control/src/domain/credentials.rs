//! Account credentials.

use crate::error::ApiError;

/// A syntactically valid, lower-cased email address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Trims, lower-cases and checks `local@domain.tld` shape (no spaces, one `@`,
    /// a dot in the domain, at most 254 bytes).
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let email = raw.trim().to_lowercase();
        let bad = || ApiError::validation("invalid_email", "email is not a valid address");
        if email.is_empty() || email.len() > 254 {
            return Err(bad());
        }
        let (local, domain) = email.split_once('@').ok_or_else(bad)?;
        let domain_ok = !domain.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '.' || c == '-');
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && local
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != '@' && c != ',');
        if !(domain_ok && local_ok) {
            return Err(bad());
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password long enough to accept. `Debug` is redacted.
pub struct Password(String);

impl Password {
    /// At least `min_len` characters, at most 1024 bytes (hashing cost is bounded).
    pub fn parse(raw: String, min_len: usize) -> Result<Self, ApiError> {
        if raw.chars().count() < min_len {
            return Err(ApiError::validation(
                "weak_password",
                format!("password must be at least {min_len} characters"),
            ));
        }
        if raw.len() > 1024 {
            return Err(ApiError::validation(
                "weak_password",
                "password must be at most 1024 bytes",
            ));
        }
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            Email::parse(" Alice@Example.COM ").unwrap().as_str(),
            "alice@example.com"
        );
        for bad in [
            "", "a", "a@", "@b.c", "a@b", "a b@c.d", "a@b..c", "a@.b.c", "a@b.c.", "a@@b.c",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords() {
        assert!(Password::parse("1234567".into(), 8).is_err());
        assert!(Password::parse("12345678".into(), 8).is_ok());
        assert!(Password::parse("x".repeat(1025), 8).is_err());
        assert_eq!(
            format!("{:?}", Password::parse("secret-pass".into(), 8).unwrap()),
            "Password([redacted])"
        );
    }
}
