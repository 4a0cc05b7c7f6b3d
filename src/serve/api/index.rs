//! `GET /v1/health`, `GET /v1/info` (= `info --json`), `GET /v1/metrics`, and the JSON answers
//! for unknown routes and methods.

use super::super::error::ApiError;
use super::super::state::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

/// Liveness, and what the server serves.
pub async fn health(State(st): State<AppState>) -> Json<Value> {
    let (queued, running) = st.jobs.pending();
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "index": st.engine.index.path().display().to_string(),
        "space": st.engine.space_name,
        "spaces": st.engine.embedders.iter().map(|e| e.space_name.as_str()).collect::<Vec<_>>(),
        "uptime_s": st.started.elapsed().as_secs_f64(),
        "jobs": { "queued": queued, "running": running },
    }))
}

/// What `echovault info --json` prints.
pub async fn info(State(st): State<AppState>) -> Result<Json<crate::info::IndexInfo>, ApiError> {
    Ok(Json(st.blocking(|st| Ok(crate::info::index_info(&st.engine.index)?)).await?))
}

/// Prometheus text exposition.
pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    let (queued, running) = st.jobs.pending();
    let gauges = [
        ("echovault_uptime_seconds", "Seconds since the server started.", st.started.elapsed().as_secs_f64()),
        ("echovault_ingest_jobs_queued", "Ingest jobs waiting.", queued as f64),
        ("echovault_ingest_jobs_running", "Ingest jobs running.", running as f64),
        ("echovault_text_cache_entries", "Query texts whose embedding is cached.", st.text_cache.len() as f64),
        (
            "echovault_engine_calls_running",
            "Engine calls (searches, embeddings, tasks) running now.",
            st.config.engine_threads.saturating_sub(st.engine_slots.available_permits()) as f64,
        ),
        ("echovault_thumb_cache_bytes", "Bytes the viewer's thumbnail cache holds.", st.thumbs.size() as f64),
    ];
    let t = &st.thumbs.counters;
    let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let thumbs = [
        ("echovault_thumb_cache_hits_total", "Viewer thumbnails served from the disk cache.", n(&t.hits)),
        ("echovault_thumb_cache_misses_total", "Viewer thumbnails made from their source.", n(&t.misses)),
        ("echovault_thumb_failures_total", "Viewer thumbnails not made (source missing or undecodable).", n(&t.failures)),
        ("echovault_thumb_frames_total", "Frames decoded, scaled and encoded into thumbnails made.", n(&t.frames)),
        ("echovault_thumb_evicted_total", "Thumbnail cache files removed to keep within the budget.", n(&t.evicted)),
    ];
    let mut text = st.metrics.render(&gauges);
    text.push_str(&super::super::metrics::render_counters(&thumbs));
    text.push_str(&format!(
        "# HELP echovault_thumb_seconds_total Seconds spent making thumbnails.\n# TYPE echovault_thumb_seconds_total counter\n\
         echovault_thumb_seconds_total {}\n",
        n(&t.micros) as f64 / 1e6
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}

/// Any path no route matches.
pub async fn no_route(uri: Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no endpoint {}: see GET /v1/health and the README's list", uri.path()))
}

/// A known path with another method.
pub async fn wrong_method(uri: Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{} does not take this method", uri.path()))
}
