//! Multipart request bodies: file parts (a video, a manifest) streamed into temporary files,
//! text parts kept as strings for [`super::body::from_form`]. The body limit of the route
//! ([`super::limit`]) bounds both; the part that goes beyond it is refused with 413.

use super::error::ApiError;
use super::limit::BodyCap;
use super::state::AppState;
use axum::body::Bytes;
use axum::extract::multipart::{Field, Multipart, MultipartError};
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use std::io::Write;
use std::path::Path;
use tempfile::NamedTempFile;

/// An uploaded file, deleted when dropped.
#[derive(Debug)]
pub struct Upload {
    /// The form field it came in.
    pub field: String,
    /// The file name the client gave (or the field's name).
    pub name: String,
    /// Where it is now.
    pub file: NamedTempFile,
}

impl Upload {
    /// Its path on the server.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

/// A form's text parts, (name, value), in order.
pub type TextParts = Vec<(String, String)>;

/// A multipart form: its files and its text parts.
#[derive(Debug, Default)]
pub struct Form {
    /// File parts, in order.
    pub files: Vec<Upload>,
    /// Text parts, in order.
    pub texts: TextParts,
}

impl Form {
    /// The file of field `name`, if one was sent.
    pub fn take_file(&mut self, name: &str) -> Option<Upload> {
        let i = self.files.iter().position(|u| u.field == name)?;
        Some(self.files.remove(i))
    }

    /// Refuses file parts no one took.
    pub fn finish(&self) -> Result<(), ApiError> {
        match self.files.first() {
            None => Ok(()),
            Some(u) => Err(ApiError::field(&u.field, format!("unexpected file part '{}'", u.field))),
        }
    }
}

/// A request's body: JSON, or a multipart form.
#[derive(Debug)]
pub enum Incoming {
    /// A JSON body (not yet parsed), at most `--max-body` bytes.
    Json(Bytes),
    /// A form: files and text parts.
    Form(Form),
}

/// Reads a request's body: a multipart form (its parts named in `file_fields` or carrying a
/// file name are files) when its content type says so, else JSON, refused with 413 above the
/// JSON limit (routes that take uploads admit bodies up to the upload limit).
pub async fn read_request(st: &AppState, req: Request, file_fields: &[&str]) -> Result<Incoming, ApiError> {
    let cap = req.extensions().get::<BodyCap>().cloned();
    let multipart =
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("multipart/form-data"));
    if multipart {
        let mp = Multipart::from_request(req, &()).await.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        return Ok(Incoming::Form(read_form(mp, cap.as_ref(), file_fields, st.config.max_body).await?));
    }
    let bytes = Bytes::from_request(req, &()).await.map_err(|e| match cap.as_ref().filter(|c| c.exceeded()) {
        Some(c) => c.refusal(None),
        None => ApiError::new(e.status(), e.body_text()),
    })?;
    if bytes.len() > st.config.max_body {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the JSON body has {} bytes, more than this server's limit of {} (--max-body)", bytes.len(), st.config.max_body),
        ));
    }
    Ok(Incoming::Json(bytes))
}

fn refused(cap: Option<&BodyCap>, field: &str, e: MultipartError) -> ApiError {
    match cap.filter(|c| c.exceeded()) {
        Some(c) => c.refusal(Some(field)),
        None => ApiError { status: e.status(), message: format!("{field}: {}", e.body_text()), field: Some(field.to_owned()) },
    }
}

/// Reads a whole form. Parts with a file name, or named in `file_fields`, are files. `cap` is
/// the route's body limit (see [`super::limit`]); the text parts together hold at most
/// `max_text` bytes (`--max-body`, as a JSON body), refused with 413 beyond.
async fn read_form(mut mp: Multipart, cap: Option<&BodyCap>, file_fields: &[&str], max_text: usize) -> Result<Form, ApiError> {
    let mut form = Form::default();
    let mut text_bytes = 0usize;
    loop {
        let mut field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(refused(cap, "body", e)),
        };
        let name = field.name().unwrap_or("").to_owned();
        if name.is_empty() {
            return Err(ApiError::bad_request("a multipart part without a name"));
        }
        if field.file_name().is_some() || file_fields.contains(&name.as_str()) {
            form.files.push(save(field, name, cap).await?);
        } else {
            let mut buf = Vec::new();
            loop {
                match field.chunk().await {
                    Ok(Some(bytes)) => {
                        text_bytes = text_bytes.saturating_add(bytes.len());
                        if text_bytes > max_text {
                            return Err(ApiError {
                                status: StatusCode::PAYLOAD_TOO_LARGE,
                                message: format!(
                                    "{name}: the form's text parts hold more than this server's limit of {max_text} bytes (--max-body); upload files as file parts"
                                ),
                                field: Some(name),
                            });
                        }
                        buf.extend_from_slice(&bytes);
                    }
                    Ok(None) => break,
                    Err(e) => return Err(refused(cap, &name, e)),
                }
            }
            let text = String::from_utf8(buf).map_err(|_| ApiError::field(&name, format!("{name}: not UTF-8 text")))?;
            form.texts.push((name, text));
        }
    }
    Ok(form)
}

async fn save(mut field: Field<'_>, name: String, cap: Option<&BodyCap>) -> Result<Upload, ApiError> {
    let client_name = field.file_name().map(str::to_owned).unwrap_or_else(|| name.clone());
    // Keep the extension: decoders look at it.
    let suffix = Path::new(&client_name).extension().and_then(|e| e.to_str()).map(|e| format!(".{e}")).unwrap_or_default();
    let mut file = tempfile::Builder::new()
        .prefix("echovault-upload-")
        .suffix(&suffix)
        .tempfile()
        .map_err(|e| ApiError::internal(format!("cannot store the upload: {e}")))?;
    loop {
        match field.chunk().await {
            Ok(Some(bytes)) => file.write_all(&bytes).map_err(|e| ApiError::internal(format!("cannot store the upload: {e}")))?,
            Ok(None) => break,
            Err(e) => return Err(refused(cap, &name, e)),
        }
    }
    file.flush().map_err(|e| ApiError::internal(format!("cannot store the upload: {e}")))?;
    Ok(Upload { field: name, name: client_name, file })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn form(parts: &[(&str, Option<&str>, &str)]) -> Multipart {
        let mut body = String::new();
        for (name, file, value) in parts {
            body.push_str("--XyZ\r\n");
            match file {
                Some(f) => body.push_str(&format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\r\n")),
                None => body.push_str(&format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n")),
            }
            body.push_str(value);
            body.push_str("\r\n");
        }
        body.push_str("--XyZ--\r\n");
        let req = Request::builder()
            .method("POST")
            .header(header::CONTENT_TYPE, "multipart/form-data; boundary=XyZ")
            .body(Body::from(body))
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(Multipart::from_request(req, &())).unwrap()
    }

    fn read(mp: Multipart, max_text: usize) -> Result<Form, ApiError> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(read_form(mp, None, &["video"], max_text))
    }

    #[test]
    fn text_parts_are_bounded_by_the_body_limit_files_are_not() {
        let big = "x".repeat(3000);
        let e = read(form(&[("k", None, "3"), ("task", None, &big)]), 2000).unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (StatusCode::PAYLOAD_TOO_LARGE, Some("task")), "{}", e.message);
        // The limit holds for the text parts together.
        let half = "y".repeat(1200);
        let e = read(form(&[("a", None, &half), ("b", None, &half)]), 2000).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let f = read(form(&[("video", Some("v.avi"), &big), ("k", None, "3")]), 2000).unwrap();
        assert_eq!((f.files.len(), f.texts.clone()), (1, vec![("k".to_owned(), "3".to_owned())]));
    }
}
