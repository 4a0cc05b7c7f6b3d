//! What a request that fails gets back: an HTTP status and `{"error": "...", "field": "..."}`,
//! `field` naming the request field at fault (null when no one field is).

use crate::error::Error;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// A failed request: status, message, and the field at fault.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status (4xx: the request; 5xx: the server).
    pub status: StatusCode,
    /// What is wrong and, where there is something to do, what.
    pub message: String,
    /// The request field at fault.
    pub field: Option<String>,
}

impl ApiError {
    /// 400 naming `field`.
    pub fn field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), field: Some(field.to_owned()) }
    }

    /// 400 about the request as a whole (malformed JSON, not an object).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), field: None }
    }

    /// 404: an id the index does not hold, named by `field`.
    pub fn not_found(field: &str, message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, message: message.into(), field: Some(field.to_owned()) }
    }

    /// Any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), field: None }
    }

    /// A library error met while answering a request about `field`: the user's value when the
    /// library refused it (400; 422 for an uploaded file it could not decode), else the server's
    /// fault (500).
    pub fn from_lib(field: &str, e: Error) -> ApiError {
        let mut out = ApiError::from(e);
        if out.status.is_client_error() {
            out.field = Some(field.to_owned());
        }
        out
    }

    /// A task's library error: 404 (naming `id_field`) for an id the index does not hold;
    /// otherwise the field the message starts with (`k: must be at least 1`) when it is one of
    /// `fields`.
    pub fn from_task(e: Error, fields: &[&str], id_field: &str) -> ApiError {
        let msg = e.to_string();
        if let Error::Invalid(m) = &e {
            if m.starts_with("no item '") || m.contains(": no item '") {
                return ApiError::not_found(id_field, msg);
            }
        }
        match msg.split_once(':').map(|(f, _)| f.trim()).filter(|f| fields.contains(f)) {
            Some(f) => ApiError::from_lib(f, e),
            None => ApiError::from(e),
        }
    }

    /// The server failed (a worker panicked, the index failed).
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into(), field: None }
    }
}

impl From<Error> for ApiError {
    /// A library error with no one field at fault: a value the library refused is 400, a file
    /// it could not decode 422, anything else the server's fault (500).
    fn from(e: Error) -> ApiError {
        let status = match &e {
            Error::Invalid(_) | Error::Tokenizer { .. } => StatusCode::BAD_REQUEST,
            Error::Media { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError { status, message: e.to_string(), field: None }
    }
}

impl From<echovault_index::IndexError> for ApiError {
    fn from(e: echovault_index::IndexError) -> ApiError {
        ApiError::internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message, "field": self.field }))).into_response()
    }
}
