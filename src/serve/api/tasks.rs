//! The clinical tasks, each the library call its command makes, answering what the command's
//! `--json` prints: `POST /v1/zero-shot`, `POST /v1/reid`, `POST /v1/timeline` and
//! `GET /v1/patients/{key}` (a patient's timeline), `POST /v1/eval`. Each takes a JSON body
//! whose fields are named as the command's flags (paths are the server's), or a multipart form
//! with the files uploaded (`video`; `manifest`, `studies`, `prompts`) and the other fields as
//! text parts; an answer names an upload by its file name, never by where the server kept it.
//! Each task uses the model its command would ([`crate::serve::TaskModels`]).

use super::super::auth;
use super::super::body;
use super::super::error::ApiError;
use super::super::state::AppState;
use super::super::upload::{read_request, Form, Incoming, TextParts, Upload};
use crate::error::Error;
use crate::tasks::context::TaskContext;
use crate::tasks::eval::{self, EvalReidRequest, EvalRetrievalRequest, EvalTransitionsRequest, EvalZeroShotRequest};
use crate::tasks::manifest;
use crate::tasks::readings::{self, ZeroShotRequest};
use crate::tasks::reid::{self, ReidRequest};
use crate::tasks::timeline::{self, TimelineRequest};
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{Map, Value};

const ZERO_SHOT_FIELDS: [&str; 8] = ["videos", "ids", "id", "all_indexed", "task", "prompts", "frames", "store"];
const REID_FIELDS: [&str; 5] = ["video", "video_id", "study_id", "k", "same_date"];
const TIMELINE_FIELDS: [&str; 5] = ["patient", "patient_id", "event", "window", "drop"];
const EVAL_FIELDS: [&str; 11] =
    ["eval", "manifest", "split", "prompts", "task", "frames", "resamples", "seed", "max_pairs", "studies", "window"];

/// Runs `f` on the blocking pool with the uploads alive, and answers its result as JSON with
/// the uploads' temporary paths replaced by their file names.
async fn answer<T, F>(st: &AppState, uploads: Vec<Upload>, f: F) -> Result<Json<Value>, ApiError>
where
    T: Serialize,
    F: FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
{
    let names: Vec<(String, String)> = uploads.iter().map(|u| (u.path().display().to_string(), u.name.clone())).collect();
    let (mut v, uploads) = st
        .blocking(move |st| {
            let r = f(st)?;
            let v = serde_json::to_value(&r).map_err(|e| ApiError::internal(format!("the answer as JSON: {e}")))?;
            Ok((v, uploads))
        })
        .await
        .map_err(|mut e| {
            // An error names an upload by its file name too.
            for (tmp, name) in &names {
                e.message = e.message.replace(tmp, name);
            }
            e
        })?;
    rename_uploads(&mut v, &uploads);
    Ok(Json(v))
}

/// Every string of `v` that holds an upload's temporary path names the upload instead.
fn rename_uploads(v: &mut Value, uploads: &[Upload]) {
    match v {
        Value::String(s) => {
            for u in uploads {
                let tmp = u.path().display().to_string();
                if s.contains(&tmp) {
                    *s = s.replace(&tmp, &u.name);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rename_uploads(x, uploads)),
        Value::Object(o) => o.values_mut().for_each(|x| rename_uploads(x, uploads)),
        _ => {}
    }
}

/// Whether a form's text parts give a server-side path in one of `fields` (uploads are not
/// among the text parts yet).
fn names_server_path(texts: &TextParts, fields: &[&str]) -> bool {
    texts.iter().any(|(n, v)| fields.contains(&n.as_str()) && !v.trim().is_empty())
}

/// Every file of field `name` in the form.
fn take_files(form: &mut Form, name: &str) -> Vec<Upload> {
    std::iter::from_fn(|| form.take_file(name)).collect()
}

/// A form's text parts plus `(field, temporary path)` for each upload of `fields` (at most one
/// each), for [`body::from_form`]; the uploads are returned to be kept alive.
fn with_uploaded_paths(form: &mut Form, fields: &[&str]) -> Result<(TextParts, Vec<Upload>), ApiError> {
    let mut uploads = Vec::new();
    let mut texts = std::mem::take(&mut form.texts);
    for f in fields {
        if let Some(u) = form.take_file(f) {
            if texts.iter().any(|(n, _)| n == f) {
                return Err(ApiError::field(f, format!("'{f}' given both as a file and as a server path")));
            }
            texts.push(((*f).to_owned(), u.path().display().to_string()));
            uploads.push(u);
        }
    }
    form.finish()?;
    Ok((texts, uploads))
}

/// `POST /v1/zero-shot`: readings of server-side videos (`videos`), indexed ones (`ids`,
/// `all_indexed`) and uploaded ones (form files `video`, repeatable); `prompts` may be uploaded.
/// `store` writes the readings into the index: an admin request. Without `prompts`, the
/// server's prompt file (`serve --prompts`) or the built-in one.
pub async fn zero_shot(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let refusal = auth::admin_refusal(&st, &req);
    let (request, uploads, server_paths) = match read_request(&st, req, &["video", "prompts"]).await? {
        Incoming::Json(bytes) => {
            let r = body::from_json::<ZeroShotRequest>(&bytes)?;
            let server_paths = !r.videos.is_empty() || r.prompts.is_some();
            (r, Vec::new(), server_paths)
        }
        Incoming::Form(mut form) => {
            let server_paths = names_server_path(&form.texts, &["videos", "prompts"]);
            let videos = take_files(&mut form, "video");
            let (texts, uploads) = with_uploaded_paths(&mut form, &["prompts"])?;
            let mut r: ZeroShotRequest = body::from_form(texts)?;
            r.videos.extend(videos.iter().map(|u| u.path().to_owned()));
            (r, videos.into_iter().chain(uploads).collect(), server_paths)
        }
    };
    if let (true, Some(refusal)) = (request.store || server_paths, refusal) {
        return Ok(refusal);
    }
    let model = st.config.models.zero_shot;
    let mut request = request;
    if request.prompts.is_none() {
        request.prompts.clone_from(&st.config.prompts);
    }
    let json = answer(&st, uploads, move |st| {
        let ctx = TaskContext::of_engine(&st.engine, model);
        readings::zero_shot(&ctx, &request).map_err(|e| task_error(e, &ZERO_SHOT_FIELDS, "ids"))
    })
    .await?;
    Ok(json.into_response())
}

/// `POST /v1/reid`: the studies of other dates most like a server-side or uploaded (`video`)
/// video, an indexed video (`video_id`) or study (`study_id`).
pub async fn reid(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let refusal = auth::admin_refusal(&st, &req);
    let (request, uploads, server_path) = match read_request(&st, req, &["video"]).await? {
        Incoming::Json(bytes) => {
            let r = body::from_json::<ReidRequest>(&bytes)?;
            let server_path = r.video.is_some();
            (r, Vec::new(), server_path)
        }
        Incoming::Form(mut form) => {
            let server_path = names_server_path(&form.texts, &["video"]);
            let (texts, uploads) = with_uploaded_paths(&mut form, &["video"])?;
            (body::from_form::<ReidRequest>(texts)?, uploads, server_path)
        }
    };
    if let (true, Some(refusal)) = (server_path, refusal) {
        return Ok(refusal);
    }
    let id_field = if request.study_id.is_some() { "study_id" } else { "video_id" };
    let model = st.config.models.similarity;
    answer(&st, uploads, move |st| {
        let ctx = TaskContext::of_engine(&st.engine, model);
        reid::reid(&ctx, &request).map_err(|e| match e {
            Error::Media { .. } => ApiError::from_lib("video", e),
            e => task_error(e, &REID_FIELDS, id_field),
        })
    })
    .await
    .map(IntoResponse::into_response)
}

/// `POST /v1/timeline`: a patient's timeline by key (`patient`) or by their own id
/// (`patient_id`, kept out of URLs and logs).
pub async fn timeline(State(st): State<AppState>, req: Request) -> Result<Json<Value>, ApiError> {
    let request = match read_request(&st, req, &[]).await? {
        Incoming::Json(bytes) => body::from_json::<TimelineRequest>(&bytes)?,
        Incoming::Form(mut form) => {
            let (texts, _) = with_uploaded_paths(&mut form, &[])?;
            body::from_form::<TimelineRequest>(texts)?
        }
    };
    run_timeline(&st, request).await
}

/// `GET /v1/patients/{key}?event=DAY&window=DAYS&drop=X`: the timeline of the patient `key`.
pub async fn patient(
    State(st): State<AppState>,
    Path(key): Path<String>,
    Query(mut params): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    if let Some((name, _)) = params.iter().find(|(n, _)| n == "patient" || n == "patient_id") {
        return Err(ApiError::field(name, format!("{name}: the patient is the path's key here; use POST /v1/timeline for patient_id")));
    }
    params.push(("patient".into(), key));
    run_timeline(&st, body::from_form::<TimelineRequest>(params)?).await
}

async fn run_timeline(st: &AppState, request: TimelineRequest) -> Result<Json<Value>, ApiError> {
    let who = if request.patient_id.is_some() { "patient_id" } else { "patient" };
    let model = st.config.models.similarity;
    answer(st, Vec::new(), move |st| {
        let ctx = TaskContext::of_engine(&st.engine, model);
        timeline::timeline(&ctx, &request).map_err(|e| match e {
            Error::Invalid(m) if m.starts_with("no dated studies of this patient") => ApiError::not_found(who, m),
            e => task_error(e, &TIMELINE_FIELDS, who),
        })
    })
    .await
}

/// Which evaluation a `POST /v1/eval` asks for (its `eval` field, as the answer's).
#[derive(Debug)]
enum EvalRequest {
    ZeroShot(EvalZeroShotRequest),
    Reid(EvalReidRequest),
    Transitions(EvalTransitionsRequest),
    Retrieval(EvalRetrievalRequest),
}

/// A request's fields before the evaluation they are for is known.
enum EvalFields {
    Json(Map<String, Value>),
    Form(TextParts),
}

impl EvalFields {
    /// Takes the `eval` field (a string).
    fn take_eval(&mut self) -> Result<String, ApiError> {
        let what = match self {
            EvalFields::Json(m) => m.remove("eval"),
            EvalFields::Form(p) => p.iter().position(|(n, _)| n == "eval").map(|i| Value::String(p.remove(i).1)),
        };
        match what {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(ApiError::field("eval", "eval: give zero-shot, reid, transitions or retrieval")),
            None => Err(ApiError::field("eval", "missing field 'eval' (zero-shot, reid, transitions or retrieval)")),
        }
    }

    fn read<T: serde::de::DeserializeOwned>(self) -> Result<T, ApiError> {
        match self {
            EvalFields::Json(m) => body::from_map(m),
            EvalFields::Form(p) => body::from_form(p),
        }
    }

    /// `eval` names the evaluation; the other fields are its request's.
    fn parse(mut self) -> Result<EvalRequest, ApiError> {
        Ok(match self.take_eval()?.as_str() {
            "zero-shot" => EvalRequest::ZeroShot(self.read()?),
            "reid" => EvalRequest::Reid(self.read()?),
            "transitions" => EvalRequest::Transitions(self.read()?),
            "retrieval" => EvalRequest::Retrieval(self.read()?),
            other => {
                return Err(ApiError::field(
                    "eval",
                    format!("eval: unknown evaluation '{other}' (zero-shot, reid, transitions or retrieval)"),
                ))
            }
        })
    }
}

/// `POST /v1/eval`: `{"eval": "zero-shot" | "reid" | "transitions" | "retrieval", …}` with the
/// fields of `echovault eval WHAT`; the label manifest (and `studies`, `prompts`) as server
/// paths or uploads. An uploaded manifest's rows must name indexed ids or absolute server
/// paths (relative paths are resolved beside the manifest, and an upload has no such place).
pub async fn eval(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    const PATHS: [&str; 3] = ["manifest", "studies", "prompts"];
    let refusal = auth::admin_refusal(&st, &req);
    let (fields, uploads, server_paths) = match read_request(&st, req, &PATHS).await? {
        Incoming::Json(bytes) => {
            let m = body::from_json::<Map<String, Value>>(&bytes)?;
            let server_paths = PATHS.iter().any(|f| m.get(*f).is_some_and(|v| !v.is_null()));
            (EvalFields::Json(m), Vec::new(), server_paths)
        }
        Incoming::Form(mut form) => {
            let server_paths = names_server_path(&form.texts, &PATHS);
            let (texts, uploads) = with_uploaded_paths(&mut form, &PATHS)?;
            (EvalFields::Form(texts), uploads, server_paths)
        }
    };
    // Without the admin token an uploaded manifest's rows may name indexed ids only, never
    // server files.
    let request = fields.parse()?;
    let row_refusal = match (server_paths, refusal) {
        (true, Some(refusal)) => return Ok(refusal),
        (_, r) => r.map(|r| r.status()),
    };
    let models = st.config.models;
    answer(&st, uploads, move |st| {
        if let Some(status) = row_refusal {
            let manifests = match &request {
                EvalRequest::ZeroShot(r) => vec![Some(&r.manifest)],
                EvalRequest::Reid(r) => vec![Some(&r.manifest)],
                EvalRequest::Transitions(r) => vec![r.studies.as_ref()],
                EvalRequest::Retrieval(r) => vec![r.manifest.as_ref()],
            };
            for p in manifests.into_iter().flatten() {
                let m = manifest::read(p).map_err(|e| task_error(e, &EVAL_FIELDS, "manifest"))?;
                if m.rows.iter().any(|r| r.text(&manifest::FILE_COLUMNS).is_some()) {
                    return Err(ApiError::new(
                        status,
                        "an uploaded manifest whose rows name server files needs the server's admin token: name indexed ids instead",
                    ));
                }
            }
        }
        let err = |e| task_error(e, &EVAL_FIELDS, "manifest");
        let ctx = |m| TaskContext::of_engine(&st.engine, m);
        match &request {
            EvalRequest::ZeroShot(r) => eval::eval_zero_shot(&ctx(models.zero_shot), r).map_err(err),
            EvalRequest::Reid(r) => eval::eval_reid(&ctx(models.similarity), r).map_err(err),
            EvalRequest::Transitions(r) => eval::eval_transitions(&ctx(models.similarity), r).map_err(err),
            EvalRequest::Retrieval(r) => eval::eval_retrieval(&ctx(models.similarity), r).map_err(err),
        }
    })
    .await
    .map(IntoResponse::into_response)
}

/// A task's error: 404 for an unknown id, the field named where the message starts with one.
fn task_error(e: Error, fields: &[&str], id_field: &str) -> ApiError {
    ApiError::from_task(e, fields, id_field)
}
