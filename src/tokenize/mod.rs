//! Tokenizers: CLIP BPE (EchoCLIP) through the HF `tokenizers` crate, read from a snapshot's
//! `tokenizer.json`.

mod clip_bpe;

pub use clip_bpe::ClipBpe;
