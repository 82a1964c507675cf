//! Errors: [`ApiError`] is what a handler can fail with; each variant maps to one HTTP status
//! and a stable JSON `code`. Database errors are logged and answered as a bare `internal`, so
//! SQL text never reaches a client. [`StartError`] is what can stop the server from starting.

use shared::api::{ErrorBody, ErrorDetail};
use warp::http::{header, StatusCode};
use warp::reply::Response;

/// A failed request, answered as `{"error": {"code", "message"}}` with the variant's status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 400: the body is not JSON or a field has the wrong type; the message names the field.
    #[error("{0}")]
    MalformedJson(String),
    /// 400: a query parameter or path segment is not what the route expects.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 401: missing, expired or forged credentials.
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    /// 403: authenticated but not allowed (a non-admin on an admin route, a disabled account,
    /// a shared camera's viewer trying an owner's action).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// 404: no such resource (or it belongs to someone else).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 405: the path exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the request conflicts with the current state.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 410: the resource existed but is used up or expired.
    #[error("{message}")]
    Gone { code: &'static str, message: String },
    /// 413: the body exceeds `max_body_bytes`.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 422: well-formed JSON whose values are not acceptable.
    #[error("{message}")]
    Validation { code: &'static str, message: String },
    /// 429: too many failed attempts; retry after the given seconds.
    #[error("too many failed attempts, retry in {0} s")]
    RateLimited(u64),
    /// 503: the database is unreachable.
    #[error("service unavailable")]
    Unavailable,
    /// 500: a database error (details are logged, never sent).
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// 500: any other internal failure (details are logged, never sent).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unauthorized {
            code,
            message: message.into(),
        }
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::Forbidden {
            code,
            message: message.into(),
        }
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }
    pub fn gone(code: &'static str, message: impl Into<String>) -> Self {
        Self::Gone {
            code,
            message: message.into(),
        }
    }
    pub fn validation(code: &'static str, message: impl Into<String>) -> Self {
        Self::Validation {
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Gone { .. } => StatusCode::GONE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code clients switch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::BadRequest { code, .. }
            | Self::Unauthorized { code, .. }
            | Self::Forbidden { code, .. }
            | Self::Conflict { code, .. }
            | Self::Gone { code, .. }
            | Self::Validation { code, .. } => code,
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::RateLimited(_) => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Database(_) | Self::Internal(_) => "internal",
        }
    }

    /// The message sent to the client: internal details stay in the log.
    fn public_message(&self) -> String {
        match self {
            Self::Database(_) | Self::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }

    pub fn into_response(self) -> Response {
        if matches!(self, Self::Database(_) | Self::Internal(_)) {
            tracing::error!(error = %self, detail = ?self, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().into(),
                message: self.public_message(),
            },
        };
        let mut res = crate::routes::json_response(self.status(), &body);
        if let Self::RateLimited(secs) = self {
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        res
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The database could not be opened or reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The `[tls]` certificate or key could not be loaded, or the SIGHUP handler installed.
    #[error("{0}")]
    Tls(#[from] shared::Error),
    /// A secret file could not be read or created, or a setting is invalid.
    #[error("{0}")]
    Config(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_errors_do_not_leak() {
        let e = ApiError::Database(sqlx::Error::Protocol("SELECT secret FROM x".into()));
        assert_eq!(e.code(), "internal");
        assert_eq!(e.public_message(), "internal error");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
