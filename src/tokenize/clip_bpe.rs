//! CLIP BPE as open_clip's `SimpleTokenizer` applies it: lower-cased, byte-level BPE with `</w>`
//! word ends, wrapped in start (49406) / end (49407) ids, zero-padded to the context length, and
//! truncated so that the end id stays last. The BPE itself is a `tokenizer.json` loaded through
//! the `tokenizers` crate (HF snapshots ship one; `tools/make_samples.py` writes ours from the
//! vocabulary bundled with `open_clip_torch`).

use crate::error::Error;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// CLIP's start-of-text id.
pub const START_ID: i64 = 49406;
/// CLIP's end-of-text id.
pub const END_ID: i64 = 49407;

/// A CLIP BPE tokenizer with open_clip's framing.
#[derive(Debug)]
pub struct ClipBpe {
    inner: Tokenizer,
    path: PathBuf,
    context_length: usize,
}

impl ClipBpe {
    /// Loads `tokenizer.json` from `path` (a file, or a snapshot directory containing it).
    pub fn load(path: &Path, context_length: usize) -> Result<Self, Error> {
        let path = if path.is_dir() { path.join("tokenizer.json") } else { path.to_owned() };
        let inner = Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer { path: path.clone(), reason: e.to_string() })?;
        let check = |tok: &str, id: i64| inner.token_to_id(tok).map(i64::from) == Some(id);
        if !(check("<start_of_text>", START_ID) || check("<|startoftext|>", START_ID)) {
            return Err(Error::Tokenizer { path, reason: format!("not a CLIP BPE tokenizer: start token is not id {START_ID}") });
        }
        Ok(ClipBpe { inner, path, context_length })
    }

    /// The `context_length` ids the text tower sees for `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, Error> {
        let cleaned = super::clean::basic_clean(text);
        let enc =
            self.inner.encode(cleaned.as_str(), false).map_err(|e| Error::Tokenizer { path: self.path.clone(), reason: e.to_string() })?;
        let mut ids = Vec::with_capacity(self.context_length);
        ids.push(START_ID);
        ids.extend(enc.get_ids().iter().map(|&i| i64::from(i)));
        ids.push(END_ID);
        if ids.len() > self.context_length {
            ids.truncate(self.context_length);
            if let Some(last) = ids.last_mut() {
                *last = END_ID;
            }
        }
        ids.resize(self.context_length, 0);
        Ok(ids)
    }
}
