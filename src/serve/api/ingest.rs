//! Admin: `POST /v1/ingest` starts an ingest job on server-side paths (the options of
//! `echovault ingest` as JSON fields: `paths`, `reports`, `crop_region`, `since`, `workers`,
//! `queue`), `GET /v1/ingest` lists the jobs, `GET /v1/ingest/{job}` shows one: its state,
//! progress, and once it ended its summary (failed inputs with reasons) or its error.

use super::super::body;
use super::super::error::ApiError;
use super::super::jobs::{Job, JobSpec};
use super::super::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

/// Queues a job: 202 with the job and its URL in `Location`.
pub async fn submit(State(st): State<AppState>, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let spec: JobSpec = body::from_json(&body)?;
    let job = st.blocking(move |st| st.jobs.submit(spec)).await?;
    let location = format!("/v1/ingest/{}", job.id);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(job)))
}

/// Every job the server remembers, oldest first.
pub async fn list(State(st): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "jobs": st.jobs.list() }))
}

/// One job; 404 for an id the server does not know.
pub async fn get(State(st): State<AppState>, Path(job): Path<String>) -> Result<Json<Job>, ApiError> {
    let id: u64 = job.parse().map_err(|_| ApiError::field("job", format!("job id '{job}' is not a number")))?;
    st.jobs.get(id).map(Json).ok_or_else(|| ApiError::not_found("job", format!("no ingest job {id} on this server")))
}
