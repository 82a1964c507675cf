//! Long-term credentials (RFC 8489 §9.2) for TURN: static users from config and TURN REST
//! tickets (`<expiry>:<subject>` / `base64(HMAC-SHA1(ticket secret, username))`, minted by
//! vc-control). Nonces are stateless: `<issue time hex><HMAC-SHA256(nonce key, time) hex>`,
//! so the server keeps nothing per source before a request has authenticated.

use std::collections::HashMap;

use ring::hmac;
use shared::ticket::TicketKey;

use crate::stun::{attr, integrity, Message};

/// Length of a nonce: 16 hex digits of time, 16 of MAC.
pub const NONCE_LEN: usize = 32;

/// Why a request did not authenticate, with the error the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No MESSAGE-INTEGRITY: the first leg of the exchange (401 with REALM and NONCE).
    #[error("no credentials")]
    Challenge,
    /// MESSAGE-INTEGRITY without USERNAME, REALM or NONCE (400).
    #[error("incomplete credentials")]
    Incomplete,
    /// Nonce not ours or too old (438 with a fresh NONCE).
    #[error("stale nonce")]
    StaleNonce,
    /// Unknown user, expired or malformed ticket, wrong realm or MAC mismatch (401).
    #[error("bad credentials")]
    Rejected,
}

/// An authenticated request's user and key.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub username: &'a [u8],
    pub key: [u8; 16],
}

/// Verifies long-term credentials and mints nonces. Shared read-only by all shards.
pub struct Authenticator {
    realm: String,
    nonce_key: hmac::Key,
    nonce_lifetime: u64,
    /// Static users: username -> long-term key.
    users: HashMap<Vec<u8>, [u8; 16]>,
    rest: Option<TicketKey>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .field("rest", &self.rest.is_some())
            .finish()
    }
}

impl Authenticator {
    /// `users` are `name:password` strings; `nonce_secret` keys the nonce MAC (random per
    /// process: a restart makes clients re-authenticate once, via 438).
    pub fn new(
        realm: &str,
        users: &[String],
        rest: Option<TicketKey>,
        nonce_secret: &[u8],
        nonce_lifetime: u64,
    ) -> Result<Self, crate::Error> {
        let mut map = HashMap::new();
        for u in users {
            let (name, pass) = u.split_once(':').ok_or_else(|| {
                crate::Error::Config(format!("turn user {u:?} is not name:password"))
            })?;
            map.insert(
                name.as_bytes().to_vec(),
                integrity::long_term_key(name.as_bytes(), realm.as_bytes(), pass.as_bytes()),
            );
        }
        Ok(Self {
            realm: realm.to_owned(),
            nonce_key: hmac::Key::new(hmac::HMAC_SHA256, nonce_secret),
            nonce_lifetime: nonce_lifetime.max(1),
            users: map,
            rest,
        })
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// A fresh nonce for time `unix`.
    pub fn nonce(&self, unix: u64) -> [u8; NONCE_LEN] {
        let mut out = [0u8; NONCE_LEN];
        hex_into(&unix.to_be_bytes(), &mut out[..16]);
        let tag = hmac::sign(&self.nonce_key, &unix.to_be_bytes());
        hex_into(&tag.as_ref()[..8], &mut out[16..]);
        out
    }

    /// Whether `nonce` was minted by this process less than the nonce lifetime ago.
    pub fn nonce_valid(&self, nonce: &[u8], unix: u64) -> bool {
        if nonce.len() != NONCE_LEN {
            return false;
        }
        let Some(t) = unhex_u64(&nonce[..16]) else {
            return false;
        };
        let mut mac = [0u8; 8];
        for (i, m) in mac.iter_mut().enumerate() {
            match unhex_u8(&nonce[16 + 2 * i..18 + 2 * i]) {
                Some(b) => *m = b,
                None => return false,
            }
        }
        let tag = hmac::sign(&self.nonce_key, &t.to_be_bytes());
        integrity::constant_time_eq(&tag.as_ref()[..8], &mac)
            && t <= unix
            && unix - t < self.nonce_lifetime
    }

    /// The long-term key of `username`, if it is a static user or a valid, unexpired ticket.
    pub fn key_for(&self, username: &[u8], unix: u64) -> Option<[u8; 16]> {
        if let Some(k) = self.users.get(username) {
            return Some(*k);
        }
        let rest = self.rest.as_ref()?;
        let name = std::str::from_utf8(username).ok()?;
        let password = rest.turn_password_for(name, unix).ok()?;
        Some(integrity::long_term_key(
            username,
            self.realm.as_bytes(),
            password.as_bytes(),
        ))
    }

    /// Authenticates a request (RFC 8489 §9.2.4). `cached` is the key of an existing
    /// allocation with its username, which skips the key derivation.
    pub fn check<'m>(
        &self,
        msg: &Message<'m>,
        unix: u64,
        cached: Option<(&[u8], [u8; 16])>,
    ) -> Result<Credentials<'m>, AuthError> {
        if !msg.has_integrity() {
            return Err(AuthError::Challenge);
        }
        let (Some(username), Some(realm), Some(nonce)) = (
            msg.attribute(attr::USERNAME),
            msg.attribute(attr::REALM),
            msg.attribute(attr::NONCE),
        ) else {
            return Err(AuthError::Incomplete);
        };
        if !self.nonce_valid(nonce, unix) {
            return Err(AuthError::StaleNonce);
        }
        if realm != self.realm.as_bytes() {
            return Err(AuthError::Rejected);
        }
        let key = match cached {
            Some((user, key)) if user == username => {
                // A REST ticket may expire while its allocation lives: refreshing then needs
                // a fresh ticket, as with coturn.
                if !self.users.contains_key(username) && self.key_for(username, unix).is_none() {
                    return Err(AuthError::Rejected);
                }
                key
            }
            _ => self.key_for(username, unix).ok_or(AuthError::Rejected)?,
        };
        if !msg.verify_integrity(hmac_sha1(&key)) {
            return Err(AuthError::Rejected);
        }
        Ok(Credentials { username, key })
    }
}

/// HMAC-SHA1 keyed with `key`, as the codec's integrity closure.
pub fn hmac_sha1(key: &[u8]) -> impl FnOnce(&[&[u8]]) -> [u8; 20] + '_ {
    move |chunks| {
        let k = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
        let mut ctx = hmac::Context::with_key(&k);
        for c in chunks {
            ctx.update(c);
        }
        let mut out = [0u8; 20];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
}

fn unhex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn unhex_u8(s: &[u8]) -> Option<u8> {
    Some(unhex_digit(s[0])? << 4 | unhex_digit(s[1])?)
}

fn unhex_u64(s: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &c in s {
        v = v << 4 | u64::from(unhex_digit(c)?);
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(
            "vc.test",
            &["bench:bench".into()],
            Some(TicketKey::new(&shared::Secret::new("benchsecret"))),
            b"nonce-secret",
            600,
        )
        .unwrap()
    }

    #[test]
    fn nonces_are_stateless_and_expire() {
        let a = auth();
        let n = a.nonce(1_000);
        assert!(a.nonce_valid(&n, 1_000));
        assert!(a.nonce_valid(&n, 1_599));
        assert!(!a.nonce_valid(&n, 1_600));
        assert!(!a.nonce_valid(&n, 999));
        let mut forged = n;
        forged[15] = if forged[15] == b'0' { b'1' } else { b'0' };
        assert!(!a.nonce_valid(&forged, 1_000));
        assert!(!a.nonce_valid(b"short", 1_000));
    }

    #[test]
    fn keys_for_static_and_rest_users() {
        let a = auth();
        assert_eq!(
            a.key_for(b"bench", 0),
            Some(integrity::long_term_key(b"bench", b"vc.test", b"bench"))
        );
        let tk = TicketKey::new(&shared::Secret::new("benchsecret"));
        let (user, pass) = tk.turn_credentials("dev", 1_000, 600);
        assert_eq!(
            a.key_for(user.as_bytes(), 1_000),
            Some(integrity::long_term_key(
                user.as_bytes(),
                b"vc.test",
                pass.as_bytes()
            ))
        );
        assert_eq!(a.key_for(user.as_bytes(), 1_600), None, "expired");
        assert_eq!(a.key_for(b"nobody", 1_000), None);
    }
}
