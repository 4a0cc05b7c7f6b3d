//! Parquet interchange: `echovault export --format parquet` writes an index's items with their
//! vectors (and optionally their frame embeddings) as one Parquet file; `echovault import`
//! builds or extends an index from such files without loading a model (vectors embedded on
//! other machines, e.g. one shard each, `ingest --shard I/N`).
//!
//! **The file.** One row per item and embedding space, written collection by collection (space,
//! then kind: video, report, study) in the index's slot order, in row groups of bounded size:
//!
//! | column | type | |
//! |---|---|---|
//! | `id` | utf8 | the item id as the index defines it (a video's content id, `report:STUDY`, `study:STUDY`) |
//! | `kind` | utf8 | `video`, `report` or `study` |
//! | `space` | utf8 | the embedding space |
//! | `model` | utf8, null | sha256 of the checkpoint that filled the space, where the index remembers it |
//! | `study` | utf8, null | study id (StudyInstanceUID) |
//! | `patient` | utf8, null | pseudonymous patient key (`p-…`, see below) |
//! | `date` | date32, null | study date |
//! | `num_frames`, `fps` | uint32, float64, null | a video's frame count and rate |
//! | `text` | utf8, null | a report's text |
//! | `extra` | map<utf8, utf8> | further metadata (size, transfer syntax, series/SOP UIDs, sampling…) |
//! | `vector` | fixed_size_list<float32 or float16, DIM> | the stored unit vector |
//! | `frame_embeddings` | list<fixed_size_list<…, DIM>>, null | `--frames`: a video's per-frame embeddings |
//! | `source` | utf8 | `--with-paths` only: the ingested path (PHI: PACS paths carry names) |
//!
//! Without `--with-paths` neither `source` nor the `url` / `wado_url` extras are written.
//!
//! **Key-value metadata** (`echovault.*`): the format, each space's name, dimension and model
//! identity (its probe embeddings — a fixed text and image, as the index keeps them to refuse
//! another model's vectors — and the model directory with its checkpoint's sha256), the vector
//! type, the fingerprint of the patient-key secret (HMAC of a constant: tells two secrets
//! apart, cannot make or test keys), the row count and how many rows carry a patient key.
//!
//! **Import** checks every file before it changes anything: its columns and metadata, each
//! space against the index's space of that name (dimension; probe embeddings as ingest checks a
//! model: cosine ≥ 0.999), and patient keys made under another secret than the index's (refused
//! unless asked for: such keys cannot be reproduced from an MRN by this index). Rows are then
//! written in batches; a row equal to what the index holds (record, vector within rounding,
//! frames) changes nothing, so importing a file twice leaves the index as the first time.

mod export;
mod import;

pub use export::{export, ExportOptions, ExportSummary, VectorType};
pub use import::{import, ImportOptions, ImportSummary};

use crate::engine::ModelOrigin;
use serde::{Deserialize, Serialize};

/// `echovault.format`: the layout above.
pub const FORMAT: &str = "echovault-export/1";

/// Key-value metadata keys.
pub(crate) mod keys {
    pub const FORMAT: &str = "echovault.format";
    pub const SPACES: &str = "echovault.spaces";
    pub const SECRET: &str = "echovault.secret_fingerprint";
    pub const VECTOR_TYPE: &str = "echovault.vector_type";
    pub const WITH_PATHS: &str = "echovault.with_paths";
    pub const ROWS: &str = "echovault.rows";
    pub const PATIENT_KEYS: &str = "echovault.patient_keys";
}

/// Column names.
pub(crate) mod col {
    pub const ID: &str = "id";
    pub const KIND: &str = "kind";
    pub const SPACE: &str = "space";
    pub const MODEL: &str = "model";
    pub const STUDY: &str = "study";
    pub const PATIENT: &str = "patient";
    pub const DATE: &str = "date";
    pub const NUM_FRAMES: &str = "num_frames";
    pub const FPS: &str = "fps";
    pub const TEXT: &str = "text";
    pub const EXTRA: &str = "extra";
    pub const VECTOR: &str = "vector";
    pub const FRAMES: &str = "frame_embeddings";
    pub const SOURCE: &str = "source";
}

/// Record extras that hold a path or URL (left out without `--with-paths`, as `search --json`
/// leaves them out).
pub(crate) const PATH_EXTRAS: [&str; 2] = ["url", "wado_url"];

/// One embedding space of a file: what an import creates or checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpaceMeta {
    /// Space name.
    pub name: String,
    /// Vector dimension.
    pub dim: usize,
    /// The model probe the exporting index keeps for the space (`{"text": [...], "image":
    /// [...]}`): the embeddings of a fixed text and image, which identify the model.
    pub probe: Option<serde_json::Value>,
    /// The model directory that filled the space, with its checkpoint's sha256.
    pub model: Option<ModelOrigin>,
}

/// Cosines of two model probes' text and image embeddings (-1 where a part is missing or the
/// dimensions differ).
pub(crate) fn probe_cosines(a: &serde_json::Value, b: &serde_json::Value) -> (f32, f32) {
    let vec = |v: &serde_json::Value, k: &str| -> Vec<f32> {
        v[k].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).map(|x| x as f32).collect()).unwrap_or_default()
    };
    let cos = |x: &[f32], y: &[f32]| {
        if x.len() == y.len() && !x.is_empty() {
            x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>()
        } else {
            -1.0
        }
    };
    (cos(&vec(a, "text"), &vec(b, "text")), cos(&vec(a, "image"), &vec(b, "image")))
}

/// A model identity in words, for errors: its checkpoint's hash and directory, or that none is
/// known.
pub(crate) fn identity(model: Option<&ModelOrigin>) -> String {
    match model {
        Some(m) => format!("checkpoint sha256 {}… in {}", m.checkpoint.chars().take(12).collect::<String>(), m.path.display()),
        None => "model not recorded".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_cosines_are_one_for_the_same_probe_and_low_for_another() {
        let a = serde_json::json!({"text": [0.6, 0.8], "image": [1.0, 0.0]});
        let b = serde_json::json!({"text": [0.8, 0.6], "image": [0.0, 1.0]});
        let (t, i) = probe_cosines(&a, &a);
        assert!((t - 1.0).abs() < 1e-6 && (i - 1.0).abs() < 1e-6);
        let (t, i) = probe_cosines(&a, &b);
        assert!(t < 0.99 && i.abs() < 1e-6);
        assert_eq!(probe_cosines(&a, &serde_json::json!({})), (-1.0, -1.0));
    }
}
