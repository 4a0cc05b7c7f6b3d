//! Report manifests: JSON Lines, one `{"study": ID, "text": TEXT, "date": "YYYY-MM-DD"?}` per line.

use crate::error::Error;
use serde::Deserialize;
use std::path::Path;

/// One report of a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ReportEntry {
    /// Study id the report belongs to.
    pub study: String,
    /// Report text.
    pub text: String,
    /// Study date.
    #[serde(default)]
    pub date: Option<String>,
}

/// Reads a JSONL report manifest; a malformed line is an error naming the line.
pub fn read_reports(path: &Path) -> Result<Vec<ReportEntry>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e: ReportEntry = serde_json::from_str(line).map_err(|e| Error::media(path, format!("line {}: {e}", i + 1)))?;
        out.push(e);
    }
    Ok(out)
}
