//! `POST /v1/search`: the CLI's search options as JSON fields (`text`, `like`, `vector`,
//! `kind`, `k`, `patient`, `study`, `since`, `until`, `group_by`, `group_size`, `exact`), or a
//! multipart form with the video as its `video` file part and the same options as text parts.
//! The answer is what `echovault search --json` prints for the same question.

use super::super::body;
use super::super::error::ApiError;
use super::super::limit::BodyCap;
use super::super::state::AppState;
use super::super::upload::read_form;
use crate::tasks::search::{search_with, SearchRequest, VideoQuery};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::Json;
use echovault_index::{IndexError, ItemId};

/// The fields a search request may name (for errors that name one).
const FIELDS: [&str; 13] =
    ["text", "like", "vector", "video", "kind", "k", "patient", "study", "since", "until", "group_by", "group_size", "exact"];

/// Whether the request's body is a multipart form.
pub fn is_multipart(req: &Request) -> bool {
    req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("multipart/form-data"))
}

/// A JSON body, refused with 413 above the JSON limit (the route admits uploads' size).
pub async fn json_body(st: &AppState, req: Request) -> Result<axum::body::Bytes, ApiError> {
    let cap = req.extensions().get::<BodyCap>().cloned();
    let bytes = axum::body::Bytes::from_request(req, &()).await.map_err(|e| match cap.as_ref().filter(|c| c.exceeded()) {
        Some(c) => c.refusal(None),
        None => ApiError::new(e.status(), e.body_text()),
    })?;
    if bytes.len() > st.config.max_body {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the JSON body has {} bytes, more than this server's limit of {} (--max-body)", bytes.len(), st.config.max_body),
        ));
    }
    Ok(bytes)
}

/// The search.
pub async fn search(State(st): State<AppState>, req: Request) -> Result<Json<serde_json::Value>, ApiError> {
    let (request, upload) = if is_multipart(&req) {
        let cap = req.extensions().get::<BodyCap>().cloned();
        let mp = Multipart::from_request(req, &()).await.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        let mut form = read_form(mp, cap.as_ref(), &["video"]).await?;
        let upload = form
            .take_file("video")
            .ok_or_else(|| ApiError::field("video", "a multipart search needs the video as its 'video' file part"))?;
        form.finish()?;
        (body::from_form::<SearchRequest>(std::mem::take(&mut form.texts))?, Some(upload))
    } else {
        (body::from_json::<SearchRequest>(&json_body(&st, req).await?)?, None)
    };
    let res = st
        .blocking(move |st| {
            let mut request = request;
            if let Some(u) = &upload {
                request.video = Some(VideoQuery { name: u.name.clone(), vector: embed_upload(st, u.path())? });
            }
            if let Some(id) = &request.like {
                if st.engine.index.get_item(&ItemId::from(id.as_str()))?.is_none() {
                    return Err(ApiError::not_found("like", format!("like: no item '{id}' in the index")));
                }
            }
            let res = search_with(&st.engine, &request, &|t| st.embed_text(t)).map_err(|e| search_error(e, &request))?;
            serde_json::to_value(&res).map_err(|e| ApiError::internal(format!("search result as JSON: {e}")))
        })
        .await?;
    Ok(Json(res))
}

/// The uploaded video's embedding with the primary model.
#[cfg(feature = "video")]
fn embed_upload(st: &AppState, path: &std::path::Path) -> Result<Vec<f32>, ApiError> {
    Ok(st.engine.embed_video_file(path).map_err(|e| ApiError::from_lib("video", e))?.1.video)
}

#[cfg(not(feature = "video"))]
fn embed_upload(_: &AppState, _: &std::path::Path) -> Result<Vec<f32>, ApiError> {
    Err(ApiError::field("video", "this echovault was built without the `video` feature (FFmpeg): search by an uploaded video is off"))
}

/// A search's library error, with the field at fault named where the message starts with it
/// (`k: must be at least 1`) or the index refused the query vector.
fn search_error(e: crate::Error, req: &SearchRequest) -> ApiError {
    if let crate::Error::Index(IndexError::DimensionMismatch { .. } | IndexError::BadVector { .. }) = &e {
        let field = if req.video.is_some() { "video" } else { "vector" };
        return ApiError::field(field, e.to_string());
    }
    let msg = e.to_string();
    let named = msg.split_once(':').map(|(f, _)| f.trim()).filter(|f| FIELDS.contains(f)).map(str::to_owned);
    match named {
        Some(f) => ApiError::from_lib(&f, e),
        None => ApiError::from(e),
    }
}
