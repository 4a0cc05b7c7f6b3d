//! The web viewer: one page (`index.html`, with `app.js` and `style.css`) embedded in the
//! binary and served at `/`, `/study/{id}` and `/ingest` (the script routes on the path), the
//! settings it reads (`GET /v1/viewer`), and cine thumbnails (`GET /v1/items/{id}/thumb`, see
//! [`thumbs`]).
//!
//! Pages and assets hold no archive data, so they need no token even off loopback; everything
//! they show comes through `/v1/`, where the token rules apply (the script sends the token the
//! user typed). Every page answer carries a strict Content-Security-Policy: scripts, styles and
//! images from this server only (and `blob:` images, the thumbnails).

pub mod thumbs;

use super::error::ApiError;
use super::state::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use echovault_index::ItemId;
use serde_json::{json, Value};
use thumbs::ThumbError;

/// The embedded assets: name, content type, bytes.
const ASSETS: [(&str, &str, &[u8]); 4] = [
    ("index.html", "text/html; charset=utf-8", include_bytes!("assets/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("assets/app.js")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("assets/style.css")),
    ("placeholder.svg", "image/svg+xml", include_bytes!("assets/placeholder.svg")),
];

/// What pages may load: this server's scripts, styles, images and API; thumbnails as `blob:`.
const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; \
                   object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The viewer's pages and assets (no token needed: they hold no data).
pub fn pages() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/study/{*id}", get(page))
        .route("/ingest", get(page))
        .route("/assets/{name}", get(asset))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
}

/// The viewer's API routes (under the token rules of `/v1/`).
pub fn api() -> Router<AppState> {
    Router::new().route("/v1/viewer", get(settings)).route("/v1/items/{id}/thumb", get(thumb))
}

fn found(name: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS.iter().find(|a| a.0 == name).map(|a| (a.1, a.2))
}

/// Headers every page and asset answer carries.
fn page_headers(content_type: &'static str) -> [(header::HeaderName, &'static str); 5] {
    [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // Assets change only with the binary; a page reload revalidates.
        (header::CACHE_CONTROL, "no-cache"),
    ]
}

/// `index.html`, whatever the page: the script reads the path.
async fn page() -> Response {
    let (ct, body) = found("index.html").unwrap_or(("text/plain", b"index.html missing from the build"));
    (page_headers(ct), body).into_response()
}

/// `/assets/{name}`.
async fn asset(Path(name): Path<String>) -> Response {
    match found(&name) {
        Some((ct, body)) if name != "index.html" => (page_headers(ct), body).into_response(),
        _ => ApiError::not_found("name", format!("no asset '{name}'")).into_response(),
    }
}

/// `GET /v1/viewer`: what the page needs to know about this server.
async fn settings(State(st): State<AppState>) -> Json<Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "space": st.engine.space_name,
        "show_paths": st.config.show_paths,
        "token_needed": !st.config.listen.ip().is_loopback(),
        "admin": st.config.token.is_some(),
        "kinds": ["video", "study", "report"],
        "thumb": { "cell_width": thumbs::CELL_W, "cell_height": thumbs::CELL_H, "max_frames": thumbs::MAX_FRAMES },
    }))
}

/// `GET /v1/items/{id}/thumb`: the item's cine as a JPEG frame strip. Headers
/// `x-echovault-frames` (cells), `x-echovault-duration-ms` (one loop), `x-echovault-cache`
/// (`hit` | `miss`); an `ETag` answered with 304 when the client has it. A missing source is 404
/// with `reason: "missing-source"`; an undecodable one 422 with `reason: "undecodable"`.
async fn thumb(State(st): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let item = ItemId::from(id.as_str());
    let rec = st.blocking(move |st| Ok(st.engine.index.get_item(&item)?)).await?;
    let rec = rec.ok_or_else(|| ApiError::not_found("id", format!("no item '{id}' in the index")))?;
    // A client that holds the thumbnail is answered before anything is read or decoded.
    let (rec, known) = tokio::task::spawn_blocking(move || {
        let k = thumbs::Thumbs::key(&rec);
        (rec, k)
    })
    .await
    .map_err(|e| ApiError::internal(format!("the thumbnail worker failed: {e}")))?;
    if let Ok(k) = &known {
        let etag = format!("\"{k}\"");
        if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.split(',').any(|t| t.trim() == etag)) {
            let etag = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
            return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
        }
    }
    let permit = st.thumb_slots.clone().acquire_owned().await.map_err(|_| ApiError::internal("the server is shutting down"))?;
    let cache = st.thumbs.clone();
    let made = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        cache.get(&rec)
    })
    .await
    .map_err(|e| ApiError::internal(format!("the thumbnail worker failed: {e}")))?;
    let sprite = match made {
        Ok(s) => s,
        Err(e) => return Ok(thumb_error(&id, e, st.config.show_paths)),
    };
    let mut out = HeaderMap::new();
    let hv = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("0"));
    out.insert(header::ETAG, hv(format!("\"{}\"", sprite.key)));
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=300"));
    out.insert("x-echovault-frames", hv(sprite.frames.to_string()));
    out.insert("x-echovault-duration-ms", hv(sprite.duration_ms.to_string()));
    out.insert("x-echovault-cache", HeaderValue::from_static(if sprite.cached { "hit" } else { "miss" }));
    out.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("x-echovault-frames, x-echovault-duration-ms, x-echovault-cache"),
    );
    out.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    Ok((out, sprite.jpeg).into_response())
}

/// A thumbnail failure as JSON: `{"error", "field", "reason"}`. The decoder's reason (which names
/// the source file) only with `--show-paths`; the server's debug log has it.
fn thumb_error(id: &str, e: ThumbError, show_paths: bool) -> Response {
    let (status, reason, message) = match e {
        ThumbError::NotVideo => (StatusCode::BAD_REQUEST, "not-video", format!("item '{id}' is not a video: it has no cine")),
        ThumbError::MissingSource => (
            StatusCode::NOT_FOUND,
            "missing-source",
            format!("the source file of item '{id}' is not where it was indexed (moved or deleted)"),
        ),
        ThumbError::Undecodable(why) => {
            tracing::debug!(target: "echovault::serve", "thumbnail of {id}: {why}");
            let why = if show_paths { format!(": {why}") } else { String::new() };
            (StatusCode::UNPROCESSABLE_ENTITY, "undecodable", format!("the source of item '{id}' cannot be decoded{why}"))
        }
        ThumbError::Cache(why) => {
            tracing::warn!(target: "echovault::serve", "thumbnail cache: {why}");
            (StatusCode::INTERNAL_SERVER_ERROR, "cache", "the thumbnail cache cannot be written; see the server's log".to_owned())
        }
    };
    let field = if matches!(status, StatusCode::INTERNAL_SERVER_ERROR) { Value::Null } else { json!("source") };
    let field = if reason == "not-video" { json!("id") } else { field };
    (status, Json(json!({ "error": message, "field": field, "reason": reason }))).into_response()
}
