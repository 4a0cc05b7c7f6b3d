//! Tokenizers: CLIP BPE (EchoCLIP) through the HF `tokenizers` crate, read from a snapshot's
//! `tokenizer.json` or, when it has none, built into echovault; and the EchoCLIP-R template
//! tokenizer over a user-supplied phrase vocabulary.

mod clean;
mod clip_bpe;
mod report_clean;
mod template;

pub use clip_bpe::{ClipBpe, END_ID as CLIP_BPE_END_ID};
pub use report_clean::{clean_report, extract_variables};
pub use template::TemplateTokenizer;

/// Either tokenizer, as a model's text tower needs it.
#[derive(Debug)]
pub enum TextTokenizer {
    /// CLIP BPE (EchoCLIP).
    Bpe(Box<ClipBpe>),
    /// Phrase templates (EchoCLIP-R).
    Template(Box<TemplateTokenizer>),
}

/// A model directory holding this file tokenises with it (EchoCLIP-R's phrase templates)
/// instead of CLIP BPE.
pub const TEMPLATE_VOCAB_FILE: &str = "template_vocab.txt";

impl TextTokenizer {
    /// The tokenizer of a model snapshot: `vocab` when given, else the directory's
    /// [`TEMPLATE_VOCAB_FILE`] when present, else CLIP BPE: its `tokenizer.json`, or the built-in
    /// one when it has none (`model_dir` may also name a `tokenizer.json` directly; see
    /// [`ClipBpe::load`]). `vocab_size` is the text tower's: a template
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
            let bpe_ids = clip_bpe::END_ID + 1;
            if let Some(n) = vocab_size.filter(|&n| n < bpe_ids) {
                return Err(crate::Error::Tokenizer {
                    path: model_dir.to_owned(),
                    reason: format!(
                        "the model's text tower has vocab_size {n}, too small for CLIP BPE ({bpe_ids} ids): it is an EchoCLIP-R-style model; put its template vocabulary in the directory as {TEMPLATE_VOCAB_FILE} or pass --template-vocab FILE"
                    ),
                });
            }
            return Ok(TextTokenizer::Bpe(Box::new(ClipBpe::load(model_dir, context_length)?)));
        };
        let t = TemplateTokenizer::load(&v, context_length)?;
        if let Some(n) = vocab_size.filter(|&n| t.vocab_size() > n) {
            return Err(crate::Error::Tokenizer {
                path: v,
                reason: format!(
                    "template vocabulary's end id {} does not fit the model's text tower (vocab_size {n}, ids 0..{}): it is not this model's vocabulary",
                    t.end_id(),
                    n - 1
                ),
            });
        }
        Ok(TextTokenizer::Template(Box::new(t)))
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
            TextTokenizer::Template(t) => t.encode(text),
        }
    }
}
