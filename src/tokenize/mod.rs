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

/// A model directory holding this file tokenises with it (EchoCLIP-R's phrase templates)
/// instead of its `tokenizer.json` (CLIP BPE).
pub const TEMPLATE_VOCAB_FILE: &str = "template_vocab.txt";

impl TextTokenizer {
    /// The tokenizer of a model snapshot: `vocab` when given, else the directory's
    /// [`TEMPLATE_VOCAB_FILE`] when present, else its CLIP BPE `tokenizer.json` (`model_dir` may
    /// also name a `tokenizer.json` directly). `vocab_size` is the text tower's: a template
    /// vocabulary whose ids would not fit is refused here, not at the first report.
    pub fn for_model(
        model_dir: &std::path::Path,
        vocab: Option<&std::path::Path>,
        context_length: usize,
        vocab_size: Option<i64>,
    ) -> Result<Self, crate::Error> {
        let in_dir = model_dir.join(TEMPLATE_VOCAB_FILE);
        let vocab = vocab.map(std::path::Path::to_owned).or_else(|| in_dir.is_file().then_some(in_dir));
        let Some(v) = vocab else {
            return Ok(TextTokenizer::Bpe(Box::new(ClipBpe::load(model_dir, context_length)?)));
        };
        let t = TemplateTokenizer::load(&v, context_length)?;
        if let Some(n) = vocab_size.filter(|&n| t.vocab_size() > n) {
            return Err(crate::Error::Tokenizer {
                path: v,
                reason: format!(
                    "template vocabulary needs {} token ids but the model's text tower has vocab_size {n}: it is not this model's vocabulary",
                    t.vocab_size()
                ),
            });
        }
        Ok(TextTokenizer::Template(t))
    }

    /// `"template"` or `"clip-bpe"`.
    pub fn kind(&self) -> &'static str {
        match self {
            TextTokenizer::Bpe(_) => "clip-bpe",
            TextTokenizer::Template(_) => "template",
        }
    }

    /// The ids the text tower sees for `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, crate::Error> {
        match self {
            TextTokenizer::Bpe(t) => t.encode(text),
            TextTokenizer::Template(t) => Ok(t.encode(text)),
        }
    }
}
