//! Admin: `POST /v1/repair` — `{"check": true}` verifies the index and changes nothing,
//! `{}` repairs it (graphs rebuilt from the stored vectors, tombstoned vectors dropped, fresh
//! snapshots) while it goes on serving. The answer is what `repair --json` prints; `ok` false
//! still answers 200 (the request succeeded, the index has problems).
//!
//! A table file that fails its checksums needs a salvage (its column family rewritten from what
//! reads back, the ingest log audited), which needs the index to itself: a repair then answers
//! 409 naming the damaged tables and saying to stop the server and run `echovault repair`;
//! nothing is changed. The check still answers (200, `ok` false, the damaged tables listed).

use super::super::body;
use super::super::error::ApiError;
use super::super::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
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
    Ok(Json(
        st.blocking(move |st| {
            if !req.check {
                let damaged = st.engine.index.check_tables().map_err(crate::error::Error::from)?;
                if !damaged.is_empty() {
                    let tables: Vec<String> = damaged.iter().map(|d| d.describe()).collect();
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!(
                            "the index needs a salvage, which a running server cannot do: stop the server and run `echovault \
                             repair` (nothing was changed). {}",
                            tables.join("; ")
                        ),
                    ));
                }
            }
            Ok(crate::info::repair(&st.engine.index, req.check)?)
        })
        .await?,
    ))
}
