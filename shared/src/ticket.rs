//! Relay tickets: stateless, short-lived credentials signed by `vc-control` and verified by
//! `vc-relay` with the shared ticket secret alone (no database on the relay).
//!
//! Two kinds, both minted by `POST /api/relay/ticket`:
//! * **TURN REST credentials** (draft-uberti-behave-turn-rest, what coturn calls
//!   `use-auth-secret`): username `<unix expiry>:<subject>`, or
//!   `<unix expiry>:<subject>:<account>` when the subject belongs to an account,
//!   credential `base64(HMAC-SHA1(turn key, username))`. Every WebRTC stack accepts these.
//! * **Signaling tokens**: an HS256 JWT with audience [`SIGNALING_AUDIENCE`] whose claims scope
//!   the holder to a role and a set of device ids ([`SignalingClaims`]).
//!
//! The shared secret keys nothing itself: each use gets its own key, derived here once with
//! HKDF-SHA256 (RFC 5869, empty salt, info [`TURN_CREDENTIAL_INFO`], [`PRESENCE_INFO`],
//! [`TICKET_INFO`]), so both daemons derive the same keys and a key recovered or misused in
//! one scheme (HMAC-SHA1 over attacker-chosen usernames, say) says nothing about the others.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::{hkdf, hmac};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Error, Secret};

/// JWT audience of signaling tokens, so a user's login JWT can never be used as one
/// (and vice versa: the control plane signs those with a different secret anyway).
pub const SIGNALING_AUDIENCE: &str = "vc-signaling";

/// Who holds a signaling token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A camera: holds a persistent connection for exactly one device id.
    Camera,
    /// A viewer app acting for a user: may open sessions to the devices listed.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Camera => "camera",
            Role::Viewer => "viewer",
        }
    }
}

/// Claims of a signaling token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalingClaims {
    /// Subject: the user id (viewer) or the device id (camera).
    pub sub: String,
    pub role: Role,
    /// The devices this token may reach (viewer) or speak for (camera: exactly one).
    pub devices: Vec<Uuid>,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expiry, unix seconds.
    pub exp: u64,
    pub aud: String,
    /// Unique id of this ticket, for logs and revocation lists.
    pub jti: String,
    /// The account the subject belongs to (viewer: the user; camera: the device's owner),
    /// so per-account limits hold however many devices an account has. Absent in tickets
    /// from older vc-control versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// HKDF info of the TURN REST credential key (HMAC-SHA1 over usernames).
pub const TURN_CREDENTIAL_INFO: &str = "vc/turn-credential/v1";
/// HKDF info of the key of relay -> control presence signatures (HMAC-SHA256).
pub const PRESENCE_INFO: &str = "vc/presence/v1";
/// HKDF info of the key of signaling tokens (HS256 JWTs).
pub const TICKET_INFO: &str = "vc/ticket/v1";

/// 32 bytes of HKDF-SHA256 output for `info` from `secret`.
fn derive(secret: &Secret, info: &str) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(secret.expose().as_bytes());
    let mut out = [0u8; 32];
    // Invariant: 32 bytes is far below HKDF-SHA256's limit of 255 * 32, so neither the
    // expansion nor the fill can fail.
    prk.expand(&[info.as_bytes()], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes of HKDF-SHA256 output");
    out
}

/// The TURN REST secret derived from the ticket secret, as text: lowercase hex of the HKDF
/// output, whose ASCII bytes are the HMAC-SHA1 key. Text so that coturn-style tools can use
/// it as their `static-auth-secret` (e.g. `turnutils_uclient -W`); treat it like the ticket
/// secret itself.
pub fn turn_rest_secret(secret: &Secret) -> Secret {
    let mut hex = String::with_capacity(64);
    for b in derive(secret, TURN_CREDENTIAL_INFO) {
        hex.push_str(&format!("{b:02x}"));
    }
    Secret::new(hex)
}

/// Signs and verifies relay tickets with keys derived from one shared secret.
#[derive(Clone)]
pub struct TicketKey {
    /// TURN REST credentials (key: [`turn_rest_secret`]).
    hmac_sha1: hmac::Key,
    /// Presence reports (key: HKDF [`PRESENCE_INFO`]).
    hmac_sha256: hmac::Key,
    /// Signaling tokens (key: HKDF [`TICKET_INFO`]).
    jwt_encoding: EncodingKey,
    jwt_decoding: DecodingKey,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey([redacted])")
    }
}

impl TicketKey {
    /// Derives the per-use keys from the shared ticket secret. (Its length is checked where
    /// it is configured, [`Secret::check_strength`]; tests may use short ones.)
    pub fn new(secret: &Secret) -> Self {
        let turn = turn_rest_secret(secret);
        let ticket = derive(secret, TICKET_INFO);
        Self {
            hmac_sha1: hmac::Key::new(
                hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                turn.expose().as_bytes(),
            ),
            hmac_sha256: hmac::Key::new(hmac::HMAC_SHA256, &derive(secret, PRESENCE_INFO)),
            jwt_encoding: EncodingKey::from_secret(&ticket),
            jwt_decoding: DecodingKey::from_secret(&ticket),
        }
    }

    /// TURN REST credentials for `subject`, valid until `now + ttl` (unix seconds).
    /// Returns `(username, credential)`.
    pub fn turn_credentials(&self, subject: &str, now: u64, ttl: u64) -> (String, String) {
        let username = format!("{}:{}", now.saturating_add(ttl), subject);
        let credential = self.turn_password(&username);
        (username, credential)
    }

    /// Like [`Self::turn_credentials`], naming the account that owns `subject` in the
    /// username (`<expiry>:<subject>:<account>`), which the relay's quota counts by.
    /// Neither may contain `:`.
    pub fn turn_credentials_for_account(
        &self,
        subject: &str,
        account: &str,
        now: u64,
        ttl: u64,
    ) -> (String, String) {
        self.turn_credentials(&format!("{subject}:{account}"), now, ttl)
    }

    /// The TURN password belonging to a REST username:
    /// `base64(HMAC-SHA1(turn_rest_secret, username))`.
    /// The relay derives the long-term key from this; it never needs to store anything.
    pub fn turn_password(&self, username: &str) -> String {
        let tag = hmac::sign(&self.hmac_sha1, username.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    }

    /// Checks that a TURN REST username is well formed and not expired at `now`,
    /// and returns its password. (The password itself is checked by the TURN
    /// MESSAGE-INTEGRITY computed from it.)
    pub fn turn_password_for(&self, username: &str, now: u64) -> Result<String, Error> {
        let expiry = turn_username_expiry(username)?;
        if expiry <= now {
            return Err(Error::Expired);
        }
        Ok(self.turn_password(username))
    }

    /// Verifies a `(username, credential)` pair in constant time.
    pub fn verify_turn_credentials(
        &self,
        username: &str,
        credential: &str,
        now: u64,
    ) -> Result<(), Error> {
        let expiry = turn_username_expiry(username)?;
        if expiry <= now {
            return Err(Error::Expired);
        }
        let tag = base64::engine::general_purpose::STANDARD
            .decode(credential)
            .map_err(|_| Error::BadSignature)?;
        hmac::verify(&self.hmac_sha1, username.as_bytes(), &tag).map_err(|_| Error::BadSignature)
    }

    /// Signature of an internal relay -> control request body (base64url HMAC-SHA256).
    pub fn sign_internal(&self, body: &[u8]) -> String {
        let tag = hmac::sign(&self.hmac_sha256, body);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// Constant-time check of [`Self::sign_internal`].
    pub fn verify_internal(&self, body: &[u8], signature: &str) -> Result<(), Error> {
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| Error::BadSignature)?;
        hmac::verify(&self.hmac_sha256, body, &tag).map_err(|_| Error::BadSignature)
    }

    /// Signs a signaling token.
    pub fn sign_signaling(&self, claims: &SignalingClaims) -> String {
        // Invariant: HS256 signing with an HMAC key and serialisable claims cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.jwt_encoding)
            .expect("HS256 signing of plain claims is infallible")
    }

    /// Mints a signaling token for `role` over `devices`, valid `ttl` seconds from `now`.
    pub fn mint_signaling(
        &self,
        subject: &str,
        role: Role,
        devices: Vec<Uuid>,
        now: u64,
        ttl: u64,
    ) -> (String, SignalingClaims) {
        self.mint_signaling_for_account(subject, None, role, devices, now, ttl)
    }

    /// Like [`Self::mint_signaling`] with the `account` claim.
    pub fn mint_signaling_for_account(
        &self,
        subject: &str,
        account: Option<&str>,
        role: Role,
        devices: Vec<Uuid>,
        now: u64,
        ttl: u64,
    ) -> (String, SignalingClaims) {
        let claims = SignalingClaims {
            sub: subject.to_owned(),
            role,
            devices,
            iat: now,
            exp: now.saturating_add(ttl),
            aud: SIGNALING_AUDIENCE.to_owned(),
            jti: Uuid::new_v4().simple().to_string(),
            account: account.map(str::to_owned),
        };
        (self.sign_signaling(&claims), claims)
    }

    /// Verifies a signaling token's signature, audience and expiry against `now`.
    pub fn verify_signaling(&self, token: &str, now: u64) -> Result<SignalingClaims, Error> {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked below against the caller's clock, so tests can pass time in.
        validation.validate_exp = false;
        validation.set_audience(&[SIGNALING_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        let data = jsonwebtoken::decode::<SignalingClaims>(token, &self.jwt_decoding, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => Error::BadSignature,
                _ => Error::InvalidToken(e.to_string()),
            })?;
        if data.claims.exp <= now {
            return Err(Error::Expired);
        }
        if data.claims.role == Role::Camera && data.claims.devices.len() != 1 {
            return Err(Error::InvalidToken(
                "a camera token names exactly one device".into(),
            ));
        }
        Ok(data.claims)
    }
}

/// The expiry (unix seconds) encoded in a TURN REST username `<expiry>:<subject>`.
/// A username without a subject (`<expiry>` alone) is accepted, as coturn does.
pub fn turn_username_expiry(username: &str) -> Result<u64, Error> {
    let digits = username.split(':').next().unwrap_or_default();
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::MalformedUsername);
    }
    digits.parse().map_err(|_| Error::MalformedUsername)
}

/// What a per-user limit counts a TURN username by: the account of a REST username that
/// names one (`<expiry>:<subject>:<account>`), else its subject (`<expiry>:<subject>`, so a
/// fresh ticket does not get a fresh quota), else the whole name (a static user).
pub fn turn_quota_key(username: &str) -> &str {
    match username.split_once(':') {
        Some((exp, rest)) if !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit()) => {
            match rest.split_once(':') {
                Some((_subject, account)) if !account.is_empty() => account,
                _ => rest,
            }
        }
        _ => username,
    }
}

/// Seconds since the unix epoch, for callers at the edge (drivers, handlers).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "visionconnect-test-ticket-secret-32b";

    fn key() -> TicketKey {
        TicketKey::new(&Secret::new(SECRET))
    }

    // HKDF outputs computed independently with OpenSSL 3:
    // `openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt key:$SECRET -kdfopt info:$INFO HKDF`.
    const TURN_KEY_HEX: &str = "f2b6fc14823dfec35d0750216f62d6103993daf90de8d72ca29cafa3d823461e";
    const PRESENCE_KEY_HEX: &str =
        "3051238da2f6cbab70cf8d24b74170739bd19e83056979eed67ed60b3a50a910";
    const TICKET_KEY_HEX: &str = "8ad0eac443f39ce5b1711a90b083f8b5585438bf14709f42c390504a163c7cf2";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn turn_rest_matches_coturn_scheme_with_the_derived_secret() {
        assert_eq!(
            turn_rest_secret(&Secret::new(SECRET)).expose(),
            TURN_KEY_HEX
        );
        // `printf %s 1700000000:bench | openssl dgst -sha1 -hmac $TURN_KEY_HEX -binary | base64`:
        // what coturn computes with `static-auth-secret = <turn_rest_secret>`.
        let k = key();
        assert_eq!(
            k.turn_password("1700000000:bench"),
            "PjuSSkkXlYuByFJk+CDT5ZNcM0Y="
        );
        // No longer keyed by the raw ticket secret (`openssl dgst -sha1 -hmac $SECRET`).
        assert_ne!(
            k.turn_password("1700000000:bench"),
            "e/nE4efCLenMHJGf6WhNNgFqUSw="
        );
    }

    #[test]
    fn each_use_has_its_own_derived_key() {
        let k = key();
        // Presence: HMAC-SHA256 with the `vc/presence/v1` key (openssl dgst -sha256 -mac HMAC
        // -macopt hexkey:$PRESENCE_KEY_HEX, base64url).
        assert_eq!(
            k.sign_internal(b"{\"a\":1}"),
            "N8tda7K_8g38WeyDcZrMttrItO3QGFbgaOYnPdi3IxI"
        );
        let raw = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
        let raw_sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(hmac::sign(&raw, b"{\"a\":1}").as_ref());
        assert!(k.verify_internal(b"{\"a\":1}", &raw_sig).is_err());

        // Signaling tokens: HS256 with the `vc/ticket/v1` key, and with nothing else.
        let (token, claims) = k.mint_signaling("u", Role::Viewer, vec![], 1_000, 600);
        let verify_with = |key: &[u8]| {
            let mut v = Validation::new(Algorithm::HS256);
            v.validate_exp = false;
            v.set_audience(&[SIGNALING_AUDIENCE]);
            jsonwebtoken::decode::<SignalingClaims>(&token, &DecodingKey::from_secret(key), &v)
        };
        assert_eq!(verify_with(&unhex(TICKET_KEY_HEX)).unwrap().claims, claims);
        for other in [
            SECRET.as_bytes().to_vec(),
            unhex(TURN_KEY_HEX),
            TURN_KEY_HEX.as_bytes().to_vec(),
            unhex(PRESENCE_KEY_HEX),
        ] {
            assert!(verify_with(&other).is_err());
        }
        // A token signed with the raw secret (the old scheme) is refused.
        let old = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            k.verify_signaling(&old, 1_100),
            Err(Error::BadSignature)
        ));
    }

    #[test]
    fn turn_credentials_roundtrip_and_expiry() {
        let k = key();
        let (user, pass) = k.turn_credentials("dev-1", 1_000, 600);
        assert_eq!(user, "1600:dev-1");
        assert!(k.verify_turn_credentials(&user, &pass, 1_000).is_ok());
        assert!(k.verify_turn_credentials(&user, &pass, 1_599).is_ok());
        assert!(matches!(
            k.verify_turn_credentials(&user, &pass, 1_600),
            Err(Error::Expired)
        ));
        assert_eq!(k.turn_password_for(&user, 1_000).unwrap(), pass);
    }

    #[test]
    fn turn_credentials_tampering_rejected() {
        let k = key();
        let (user, pass) = k.turn_credentials("dev-1", 1_000, 600);
        let tampered_user = user.replace("dev-1", "dev-2");
        assert!(matches!(
            k.verify_turn_credentials(&tampered_user, &pass, 1_000),
            Err(Error::BadSignature)
        ));
        // A longer expiry written into the username invalidates the credential.
        assert!(k
            .verify_turn_credentials("9999999999:dev-1", &pass, 1_000)
            .is_err());
        // Another secret's credential.
        let other = TicketKey::new(&Secret::new("other"));
        assert!(other.verify_turn_credentials(&user, &pass, 1_000).is_err());
        assert!(k
            .verify_turn_credentials(&user, "not base64!", 1_000)
            .is_err());
    }

    #[test]
    fn malformed_usernames() {
        for bad in ["", ":x", "abc:x", "12a:x", "99999999999999999999999:x"] {
            assert!(turn_username_expiry(bad).is_err(), "{bad}");
        }
        assert_eq!(turn_username_expiry("42").unwrap(), 42);
        assert_eq!(turn_username_expiry("42:a:b").unwrap(), 42);
    }

    #[test]
    fn signaling_roundtrip() {
        let k = key();
        let dev = Uuid::new_v4();
        let (token, claims) = k.mint_signaling("user-1", Role::Viewer, vec![dev], 1_000, 600);
        let got = k.verify_signaling(&token, 1_100).unwrap();
        assert_eq!(got, claims);
        assert_eq!(got.devices, vec![dev]);
        assert_eq!(got.role, Role::Viewer);
    }

    #[test]
    fn signaling_expired_rejected() {
        let k = key();
        let (token, _) = k.mint_signaling("u", Role::Viewer, vec![], 1_000, 600);
        assert!(matches!(
            k.verify_signaling(&token, 1_600),
            Err(Error::Expired)
        ));
    }

    #[test]
    fn signaling_tampered_or_forged_rejected() {
        let k = key();
        let dev = Uuid::new_v4();
        let (token, _) = k.mint_signaling("u", Role::Viewer, vec![dev], 1_000, 600);
        // Swap the payload for one naming another device, keep the signature.
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = SignalingClaims {
            sub: "u".into(),
            role: Role::Viewer,
            devices: vec![Uuid::new_v4()],
            iat: 1_000,
            exp: 1_600,
            aud: SIGNALING_AUDIENCE.into(),
            jti: "x".into(),
            account: None,
        };
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&forged_claims).unwrap());
        let forged = format!("{}.{}.{}", parts[0], payload, parts[2]);
        assert!(matches!(
            k.verify_signaling(&forged, 1_100),
            Err(Error::BadSignature)
        ));
        // Signed with another secret.
        let other = TicketKey::new(&Secret::new("other"));
        let (token2, _) = other.mint_signaling("u", Role::Viewer, vec![dev], 1_000, 600);
        assert!(k.verify_signaling(&token2, 1_100).is_err());
        assert!(k.verify_signaling("garbage", 1_100).is_err());
    }

    #[test]
    fn signaling_wrong_audience_rejected() {
        let k = key();
        let mut claims = k.mint_signaling("u", Role::Viewer, vec![], 1_000, 600).1;
        claims.aud = "vc-login".into();
        let token = k.sign_signaling(&claims);
        assert!(k.verify_signaling(&token, 1_100).is_err());
    }

    #[test]
    fn internal_signature() {
        let k = key();
        let sig = k.sign_internal(b"{\"a\":1}");
        assert!(k.verify_internal(b"{\"a\":1}", &sig).is_ok());
        assert!(k.verify_internal(b"{\"a\":2}", &sig).is_err());
        assert!(k.verify_internal(b"{\"a\":1}", "!!").is_err());
    }

    #[test]
    fn camera_token_names_one_device() {
        let k = key();
        let (token, _) = k.mint_signaling(
            "d",
            Role::Camera,
            vec![Uuid::new_v4(), Uuid::new_v4()],
            1_000,
            600,
        );
        assert!(k.verify_signaling(&token, 1_100).is_err());
    }

    #[test]
    fn account_in_turn_username_and_signaling_claims() {
        let k = key();
        let (user, pass) = k.turn_credentials_for_account("dev-1", "acct-9", 1_000, 600);
        assert_eq!(user, "1600:dev-1:acct-9");
        assert!(k.verify_turn_credentials(&user, &pass, 1_000).is_ok());
        assert_eq!(turn_quota_key(&user), "acct-9");
        assert_eq!(turn_quota_key("1600:dev-1"), "dev-1");
        assert_eq!(turn_quota_key("1600:dev-1:"), "dev-1:");
        assert_eq!(turn_quota_key("alice"), "alice");
        assert_eq!(turn_quota_key("x1:alice"), "x1:alice");

        let dev = Uuid::new_v4();
        let (token, _) = k.mint_signaling_for_account(
            &dev.to_string(),
            Some("acct-9"),
            Role::Camera,
            vec![dev],
            1_000,
            600,
        );
        let claims = k.verify_signaling(&token, 1_100).unwrap();
        assert_eq!(claims.sub, dev.to_string(), "the subject stays the device");
        assert_eq!(claims.account.as_deref(), Some("acct-9"));
        // A token without the claim (older vc-control) still verifies.
        let (old, _) = k.mint_signaling("u", Role::Viewer, vec![dev], 1_000, 600);
        assert!(!old.is_empty());
        let old_claims = k.verify_signaling(&old, 1_100).unwrap();
        assert_eq!(old_claims.account, None);
        let payload = old.split('.').nth(1).unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        assert!(!String::from_utf8(json).unwrap().contains("account"));
    }
}
