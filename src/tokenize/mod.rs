//! Tokenizers: CLIP BPE (EchoCLIP) through the HF `tokenizers` crate, read from a snapshot's
//! `tokenizer.json`, and the EchoCLIP-R template tokenizer over a user-supplied phrase
//! vocabulary.

mod clean;
mod clip_bpe;
mod template;

pub use clip_bpe::ClipBpe;
pub use template::TemplateTokenizer;

/// Either tokenizer, as a model's text tower needs it.
#[derive(Debug)]
pub enum TextTokenizer {
    /// CLIP BPE (EchoCLIP).
    Bpe(Box<ClipBpe>),
    /// Phrase templates (EchoCLIP-R).
    Template(TemplateTokenizer),
}

impl TextTokenizer {
    /// The ids the text tower sees for `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, crate::Error> {
        match self {
            TextTokenizer::Bpe(t) => t.encode(text),
            TextTokenizer::Template(t) => Ok(t.encode(text)),
        }
    }
}
