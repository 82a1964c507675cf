//! HTTP routes, one module per resource. Handlers never reject: each returns a complete
//! [`Response`] (errors via [`ApiError::into_response`]); only unmatched paths fall through to
//! [`recover`], which answers 404/405 in the same JSON shape.

pub mod account;
pub mod accounts;
pub mod activation;
pub mod admin;
pub mod devices;
pub mod docs;
pub mod health;
pub mod onboarding;
pub mod presence;
pub mod shares;
pub mod static_files;
pub mod tickets;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use warp::filters::BoxedFilter;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::error::ApiError;
use crate::App;

/// Shared state handed to every handler.
pub type Ctx = Arc<App>;

/// All routes, instrumented, with the JSON fallback for unmatched requests.
pub fn all(app: Ctx) -> BoxedFilter<(Response,)> {
    let api = accounts::routes(&app)
        .or(onboarding::routes(&app))
        .unify()
        .or(activation::routes(&app))
        .unify()
        .or(shares::routes(&app))
        .unify()
        .or(devices::routes(&app))
        .unify()
        .or(account::routes(&app))
        .unify()
        .or(admin::routes(&app))
        .unify()
        .or(tickets::routes(&app))
        .unify()
        .or(presence::routes(&app))
        .unify()
        .or(health::routes(&app))
        .unify()
        .or(docs::routes())
        .unify()
        .or(static_files::routes())
        .unify()
        .boxed();
    api.recover(recover).unify().boxed()
}

/// The admin listener's routes (`/metrics`, `/healthz`), with the same JSON fallback.
pub fn admin(app: Ctx) -> BoxedFilter<(Response,)> {
    health::admin_routes(&app).recover(recover).unify().boxed()
}

/// Unmatched requests: 405 when some route had the path but not the method, else 404.
async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let err = if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else {
        ApiError::NotFound("route")
    };
    metrics::counter!("http_requests_total", "route" => "unmatched", "status" => err.status().as_u16().to_string())
        .increment(1);
    Ok(err.into_response())
}

/// Wraps a route so it counts requests by route and status and times them.
/// `label` is the route template (`/api/camera/devices/{id}`), never the raw path.
pub fn instrument<F>(label: &'static str, route: F) -> BoxedFilter<(Response,)>
where
    F: Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
{
    warp::any()
        .map(Instant::now)
        .and(route)
        .map(move |start: Instant, res: Response| {
            let status = res.status().as_u16().to_string();
            metrics::counter!("http_requests_total", "route" => label, "status" => status)
                .increment(1);
            metrics::histogram!("http_request_duration_seconds", "route" => label)
                .record(start.elapsed().as_secs_f64());
            res
        })
        .boxed()
}

/// Makes the shared state available to a handler.
pub fn with_ctx(ctx: &Ctx) -> impl Filter<Extract = (Ctx,), Error = Infallible> + Clone {
    let ctx = ctx.clone();
    warp::any().map(move || ctx.clone())
}

/// The `Authorization` header, if any.
pub fn authorization() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::header::optional::<String>("authorization")
        .or_else(|_| async { Ok::<_, Infallible>((None,)) })
}

/// The client's IP address: the TCP peer, or what a trusted proxy forwarded
/// (see [`crate::limiter::client_ip`]).
pub fn client_ip(ctx: &Ctx) -> impl Filter<Extract = (IpAddr,), Error = Infallible> + Clone {
    let ctx = ctx.clone();
    warp::ext::optional::<crate::http::PeerAddr>()
        .and(warp::header::headers_cloned())
        .map(
            move |addr: Option<crate::http::PeerAddr>, headers: warp::http::HeaderMap| {
                let peer = addr.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.0.ip());
                if ctx.config.trusted_proxies.is_empty() {
                    return peer;
                }
                let forwarded: Vec<&str> = headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                crate::limiter::client_ip(peer, &forwarded, &ctx.config.trusted_proxies)
            },
        )
}

/// The request body, read up to `limit` bytes (larger -> 413). A body somewhat over the
/// limit is drained first so the client reliably reads the 413 before the connection closes.
pub fn body(
    limit: usize,
) -> impl Filter<Extract = (Result<Bytes, ApiError>,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .or_else(|_| async { Ok::<_, Rejection>((None,)) })
        .and(warp::body::stream())
        .then(move |len: Option<u64>, stream| read_limited(len, stream, limit))
}

async fn read_limited<S, B>(len: Option<u64>, stream: S, limit: usize) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    const DRAIN_CAP: usize = 1024 * 1024;
    if len.is_some_and(|n| n > DRAIN_CAP as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut stream = std::pin::pin!(stream);
    let mut buf = BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let mut chunk =
            chunk.map_err(|_| ApiError::bad_request("body_read", "could not read request body"))?;
        seen += chunk.remaining();
        if seen > DRAIN_CAP {
            break;
        }
        if seen <= limit {
            while chunk.has_remaining() {
                let part = chunk.chunk();
                let n = part.len();
                buf.extend_from_slice(part);
                chunk.advance(n);
            }
        }
    }
    if seen > limit {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    Ok(buf.freeze())
}

/// Parses a JSON body; on failure the message names the offending field.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." || path.is_empty() {
            format!("invalid JSON body: {inner}")
        } else {
            format!("field `{path}`: {inner}")
        };
        ApiError::MalformedJson(message)
    })
}

/// A JSON response with `status`.
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut res = Response::new(body.into());
            *res.status_mut() = status;
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            res
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Turns a handler result into a response.
pub fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

/// Unix seconds as RFC 3339 (UTC, seconds precision): how the API writes timestamps.
/// Clamped to 0000..=9999-12-31T23:59:59Z, the range RFC 3339 can write (no panic on any
/// stored value).
pub fn rfc3339(unix_secs: i64) -> String {
    const MAX: i64 = 253_402_300_799;
    let secs = unix_secs.clamp(0, MAX) as u64;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Current unix time in seconds, as stored in the database.
pub fn now_secs() -> i64 {
    shared::ticket::unix_now() as i64
}

/// Current unix time in milliseconds (presence events and node leases).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct R {
            email: String,
            n: u32,
        }
        let e = parse_json::<R>(br#"{"email": 5, "n": 1}"#).unwrap_err();
        assert!(e.to_string().contains("email"), "{e}");
        let e = parse_json::<R>(br#"{"email": "x"}"#).unwrap_err();
        assert!(e.to_string().contains("n"), "{e}");
        let e = parse_json::<R>(b"{not json").unwrap_err();
        assert_eq!(e.code(), "malformed_json");
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
    }

    #[tokio::test]
    async fn body_limit() {
        let chunks = |n: usize| {
            futures_util::stream::iter(vec![Ok::<_, warp::Error>(Bytes::from(vec![b'x'; n]))])
        };
        assert_eq!(read_limited(None, chunks(10), 10).await.unwrap().len(), 10);
        assert!(matches!(
            read_limited(None, chunks(11), 10).await,
            Err(ApiError::PayloadTooLarge(10))
        ));
        assert!(matches!(
            read_limited(Some(10 << 20), chunks(1), 10).await,
            Err(ApiError::PayloadTooLarge(_))
        ));
    }
}
