//! Admin: `POST /v1/repair` — `{"check": true}` verifies the index and changes nothing,
//! `{}` repairs it (graphs rebuilt from the stored vectors, tombstoned vectors dropped, fresh
//! snapshots) while it goes on serving. The answer is what `repair --json` prints; `ok` false
//! still answers 200 (the request succeeded, the index has problems).

use super::super::body;
use super::super::error::ApiError;
use super::super::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;

/// The request: the CLI's `--check`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepairRequest {
    /// Only check.
    pub check: bool,
}

/// Checks or repairs.
pub async fn repair(State(st): State<AppState>, body: Bytes) -> Result<Json<crate::info::RepairReport>, ApiError> {
    let req: RepairRequest = body::from_json(&body)?;
    Ok(Json(st.blocking(move |st| Ok(crate::info::repair(&st.engine.index, req.check)?)).await?))
}
