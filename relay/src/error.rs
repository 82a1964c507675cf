/// Errors of the relay crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Binding or using a socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration is unusable.
    #[error("config: {0}")]
    Config(String),
    /// Shared-crate failure (tickets, config loading).
    #[error(transparent)]
    Shared(#[from] shared::Error),
}
