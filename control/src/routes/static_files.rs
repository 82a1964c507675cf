//! The viewer web app from `control/static/`, embedded in the binary: `GET /` serves
//! `index.html`, every other file its own path. Paths under `/api/` never fall back here.

use rust_embed::RustEmbed;
use warp::filters::BoxedFilter;
use warp::http::{header, Method, StatusCode};
use warp::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::instrument;
use crate::error::ApiError;

#[derive(RustEmbed)]
#[folder = "static/"]
struct Assets;

pub fn routes() -> BoxedFilter<(Response,)> {
    let files = warp::method()
        .and(warp::path::full())
        .and_then(|method: Method, path: FullPath| async move { serve(method, path.as_str()) });
    instrument("static", files)
}

fn serve(method: Method, path: &str) -> Result<Response, Rejection> {
    if path.starts_with("/api/") || path == "/api" {
        // Let the router answer 404/405 for API paths.
        return Err(warp::reject::not_found());
    }
    let name = match path.trim_start_matches('/') {
        "" => "index.html",
        other => other,
    };
    let Some(file) = Assets::get(name) else {
        return Ok(ApiError::NotFound("file").into_response());
    };
    if method != Method::GET && method != Method::HEAD {
        return Ok(ApiError::MethodNotAllowed.into_response());
    }
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let mut res = Response::new(file.data.into_owned().into());
    *res.status_mut() = StatusCode::OK;
    let headers = res.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(mime.as_ref()) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    Ok(res)
}
