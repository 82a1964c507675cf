/// Errors of the `shared` crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A TURN REST username is not `<unix expiry>:<subject>`.
    #[error("malformed TURN REST username")]
    MalformedUsername,
    /// The credential's expiry lies in the past.
    #[error("credential expired")]
    Expired,
    /// The signature does not match: forged, tampered or signed with another secret.
    #[error("bad signature")]
    BadSignature,
    /// A signaling token could not be decoded or has the wrong audience/shape.
    #[error("invalid signaling token: {0}")]
    InvalidToken(String),
    /// The ticket was issued before its access was revoked (camera deleted, user disabled,
    /// share revoked).
    #[error("access revoked")]
    Revoked,
    /// A config file or environment override could not be read or parsed.
    #[error("configuration: {0}")]
    Config(String),
    /// A TLS certificate or key could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
}
