//! echovault: search echocardiograms by meaning.
//!
//! EchoCLIP / EchoCLIP-R (a ConvNeXt image tower and a CLIP text transformer) run through
//! LibTorch (`tch`); vectors and metadata live in an embedded index (`echovault-index`:
//! RocksDB + HNSW). This crate holds the model, tokenizers, media decoding, the ingest
//! pipeline and the search engine; `cli/` parses arguments and calls into it.
//!
//! Table of contents:
//! - [`model`]: EchoCLIP in tch (config, ConvNeXt, text transformer, checkpoint loading).
//! - [`tokenize`]: CLIP BPE through the `tokenizers` crate.
//! - [`media`]: video decoding (video-rs / FFmpeg), frame sampling, preprocessing.
//! - [`ingest`]: files → embeddings → index.
//! - [`engine`]: searches by text, video file or indexed item.
//! - [`dicomweb`]: DICOMweb sources: QIDO-RS searches and WADO-RS retrieval (`dicomweb:URL`).
//! - [`hub`]: `hf:OWNER/NAME[@REV]` models from the Hugging Face hub and its cache.
//! - [`exchange`]: Parquet export and import of an index's items and vectors.
//! - [`info`]: what an index holds (`info --json`, `GET /v1/info`).
//! - [`serve`]: `echovault serve`, the HTTP JSON API over the same library calls as the CLI.
//! - [`phantom`]: synthetic echocardiograms with ground truth, for tests and training.

pub mod dicomweb;
pub mod engine;
mod error;
pub mod exchange;
pub mod hub;
pub mod info;
pub mod ingest;
pub mod media;
pub mod model;
pub mod phantom;
pub mod pseudonym;
pub mod repair;
pub mod serve;
pub mod tasks;
pub mod tokenize;

pub use echovault_index as index;
pub use engine::Engine;
pub use error::Error;

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
