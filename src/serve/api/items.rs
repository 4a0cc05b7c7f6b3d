//! Items by id and by study, the patients of the index: `GET /v1/items/{id}`,
//! `GET /v1/studies/{id}` (every item of a study, through the index's study keys), and
//! `GET /v1/patients` (the pseudonymous patient keys).

use super::super::auth::{hide_paths, may_see_paths};
use super::super::error::ApiError;
use super::super::state::AppState;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use echovault_index::{ItemId, ItemRecord};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// One item's record: `id`, `kind`, `source`, `study`, `patient`, `date`, `text`, `frames`,
/// `fps`, `extra`.
#[derive(Debug, Serialize)]
pub struct ItemView {
    id: String,
    kind: &'static str,
    source: String,
    study: Option<String>,
    patient: Option<String>,
    date: Option<String>,
    text: Option<String>,
    frames: Option<u32>,
    fps: Option<f64>,
    extra: BTreeMap<String, String>,
}

impl From<ItemRecord> for ItemView {
    fn from(r: ItemRecord) -> ItemView {
        ItemView {
            id: r.id.0,
            kind: r.kind.as_str(),
            source: r.source,
            study: r.study,
            patient: r.patient,
            date: r.date.map(|d| d.to_string()),
            text: r.text,
            frames: r.frames,
            fps: r.fps,
            extra: r.extra,
        }
    }
}

/// `GET /v1/items/{id}`: 404 when the index holds no such item. `source` only for the admin
/// token or with `--show-paths` (as in every answer).
pub async fn item(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let item = ItemId::from(id.as_str());
    let rec = st.blocking(move |st| Ok(st.engine.index.get_item(&item)?)).await?;
    let rec = rec.ok_or_else(|| ApiError::not_found("id", format!("no item '{id}' in the index")))?;
    let mut v = serde_json::to_value(ItemView::from(rec)).map_err(|e| ApiError::internal(format!("the record as JSON: {e}")))?;
    if !may_see_paths(&st, &headers) {
        hide_paths(&mut v);
    }
    Ok(Json(v))
}

/// `GET /v1/studies/{id}`: `{"study": id, "items": [...]}`, the study's videos, report and
/// study record by id; 404 when the index holds nothing of that study.
pub async fn study(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let study = id.clone();
    let recs = st.blocking(move |st| Ok(st.engine.index.items_by_study(&study)?)).await?;
    if recs.is_empty() {
        return Err(ApiError::not_found("id", format!("no study '{id}' in the index")));
    }
    let items: Vec<ItemView> = recs.into_iter().map(ItemView::from).collect();
    let mut v = json!({ "study": id, "items": items });
    if !may_see_paths(&st, &headers) {
        hide_paths(&mut v);
    }
    Ok(Json(v))
}

/// `GET /v1/patients`: `{"patients": [key, ...]}`, sorted.
pub async fn patients(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let keys = st.blocking(|st| Ok(st.engine.index.patients()?)).await?;
    Ok(Json(json!({ "patients": keys })))
}
