//! Multipart request bodies: file parts (a video, a manifest) streamed into temporary files,
//! text parts kept as strings for [`super::body::from_form`]. The body limit of the route
//! ([`super::limit`]) bounds both; the part that goes beyond it is refused with 413.

use super::error::ApiError;
use super::limit::BodyCap;
use axum::extract::multipart::{Field, Multipart, MultipartError};
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

/// A multipart form: its files and its text parts.
#[derive(Debug, Default)]
pub struct Form {
    /// File parts, in order.
    pub files: Vec<Upload>,
    /// Text parts, in order.
    pub texts: Vec<(String, String)>,
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

fn refused(cap: Option<&BodyCap>, field: &str, e: MultipartError) -> ApiError {
    match cap.filter(|c| c.exceeded()) {
        Some(c) => c.refusal(Some(field)),
        None => ApiError { status: e.status(), message: format!("{field}: {}", e.body_text()), field: Some(field.to_owned()) },
    }
}

/// Reads a whole form. Parts with a file name, or named in `file_fields`, are files. `cap` is
/// the route's body limit (see [`super::limit`]).
pub async fn read_form(mut mp: Multipart, cap: Option<&BodyCap>, file_fields: &[&str]) -> Result<Form, ApiError> {
    let mut form = Form::default();
    loop {
        let field = match mp.next_field().await {
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
            let text = field.text().await.map_err(|e| refused(cap, &name, e))?;
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
