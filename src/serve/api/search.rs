//! `POST /v1/search`: the CLI's search options as JSON fields (`text`, `like`, `vector`,
//! `kind`, `k`, `patient`, `study`, `since`, `until`, `group_by`, `group_size`, `exact`), or a
//! multipart form with the video as its `video` file part and the same options as text parts.
//! The answer is what `echovault search --json` prints for the same question, without the hits'
//! `source` paths unless the request carries the admin token or the server runs with
//! `--show-paths`.

use super::super::body;
use super::super::error::ApiError;
use super::super::state::AppState;
use super::super::upload::{read_request, Incoming};
use crate::tasks::search::{search_with, SearchRequest, VideoQuery};
use axum::extract::{Request, State};
use axum::Json;
use echovault_index::{IndexError, ItemId};

/// The fields a search request may name (for errors that name one).
const FIELDS: [&str; 13] =
    ["text", "like", "vector", "video", "kind", "k", "patient", "study", "since", "until", "group_by", "group_size", "exact"];

/// The search.
pub async fn search(State(st): State<AppState>, req: Request) -> Result<Json<serde_json::Value>, ApiError> {
    let see_paths = super::super::auth::may_see_paths(&st, req.headers());
    let (request, upload) = match read_request(&st, req, &["video"]).await? {
        Incoming::Form(mut form) => {
            let upload = form
                .take_file("video")
                .ok_or_else(|| ApiError::field("video", "a multipart search needs the video as its 'video' file part"))?;
            form.finish()?;
            (body::from_form::<SearchRequest>(std::mem::take(&mut form.texts))?, Some(upload))
        }
        Incoming::Json(bytes) => (body::from_json::<SearchRequest>(&bytes)?, None),
    };
    let res = st
        .blocking(move |st| {
            let mut request = request;
            if let Some(u) = &upload {
                // An error names the upload by its file name, never by where the server kept it.
                let vector = embed_upload(st, u.path()).map_err(|mut e| {
                    e.message = e.message.replace(&u.path().display().to_string(), &u.name);
                    e
                })?;
                request.video = Some(VideoQuery { name: u.name.clone(), vector });
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
    let mut res = res;
    if !see_paths {
        super::super::auth::hide_paths(&mut res);
    }
    Ok(Json(res))
}

/// The uploaded video's embedding with the primary model: a DICOM cine or any video FFmpeg
/// reads, decoded as ingest decodes it.
fn embed_upload(st: &AppState, path: &std::path::Path) -> Result<Vec<f32>, ApiError> {
    Ok(st.engine.embed_video_file(path).map_err(|e| ApiError::from_lib("video", e))?.1.video)
}

/// A search's library error, with the field at fault named where the message starts with it
/// (`k: must be at least 1`) or the index refused the query vector.
fn search_error(e: crate::Error, req: &SearchRequest) -> ApiError {
    if let crate::Error::Index(IndexError::DimensionMismatch { .. } | IndexError::BadVector { .. }) = &e {
        let field = if req.video.is_some() { "video" } else { "vector" };
        return ApiError::field(field, e.to_string());
    }
    ApiError::from_task(e, &FIELDS, "like")
}
