//! CLIP BPE as open_clip's `SimpleTokenizer` applies it: lower-cased, byte-level BPE with `</w>`
//! word ends, wrapped in start (49406) / end (49407) ids, zero-padded to the context length, and
//! truncated so that the end id stays last.
//!
//! The BPE runs through the `tokenizers` crate. A snapshot's `tokenizer.json` is used when it has
//! one: ours (`tools/make_samples.py`) or the Hugging Face `CLIPTokenizerFast` file an open_clip
//! hub upload carries. Otherwise CLIP's BPE built into echovault: the vocabulary open_clip bundles
//! (`bpe_simple_vocab_16e6.txt.gz`, MIT, OpenAI CLIP; provenance in `README.md` beside it), built
//! once per process the way `tools/make_samples.py` builds `tokenizer.json`. The framing is ours
//! whichever file it is: a file's own padding, truncation and post-processor (the Hugging Face
//! file pads with the end id and adds `<|startoftext|>`/`<|endoftext|>` itself) are not applied.

use crate::error::Error;
use flate2::read::GzDecoder;
use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// CLIP's start-of-text id.
pub const START_ID: i64 = 49406;
/// CLIP's end-of-text id.
pub const END_ID: i64 = 49407;
/// The file a snapshot directory may hold its BPE in.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// CLIP's vocabulary as `open_clip_torch` 3.3.0 bundles it (gzip; line 0 a header, then merges).
const VOCAB_GZ: &[u8] = include_bytes!("bpe_simple_vocab_16e6.txt.gz");
/// The merges `SimpleTokenizer` reads: `lines[1:49152-256-2+1]`.
const MERGES: usize = 49152 - 256 - 2;
/// 256 byte symbols, the same with `</w>`, one per merge, two specials.
const VOCAB_SIZE: usize = 2 * 256 + MERGES + 2;
/// open_clip's special tokens (the Hugging Face file names them `<|startoftext|>`/`<|endoftext|>`).
const START_TOKEN: &str = "<start_of_text>";
const END_TOKEN: &str = "<end_of_text>";
/// `SimpleTokenizer.pat`: specials, contractions, letter runs, single digits, other symbol runs.
const SPLIT_PATTERN: &str = r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// What errors and [`ClipBpe::source`] name instead of a file for the built-in tokenizer.
const BUILTIN_NAME: &str = "<built-in CLIP BPE>";

/// A CLIP BPE tokenizer with open_clip's framing.
pub struct ClipBpe {
    inner: Cow<'static, Tokenizer>,
    source: PathBuf,
    context_length: usize,
}

impl std::fmt::Debug for ClipBpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the tokenizer itself: its vocabulary is 49,408 entries.
        f.debug_struct("ClipBpe").field("source", &self.source).field("context_length", &self.context_length).finish_non_exhaustive()
    }
}

impl ClipBpe {
    /// Loads `path`: a `tokenizer.json`, or a snapshot directory, which tokenises with its
    /// [`TOKENIZER_FILE`] when it has one and with [`ClipBpe::builtin`] when it has none.
    pub fn load(path: &Path, context_length: usize) -> Result<Self, Error> {
        if path.is_dir() {
            let file = path.join(TOKENIZER_FILE);
            if !file.exists() {
                tracing::debug!("{} has no {TOKENIZER_FILE}: CLIP BPE built into echovault", path.display());
                return Self::builtin(context_length);
            }
            return Self::from_file(&file, context_length);
        }
        Self::from_file(path, context_length)
    }

    /// CLIP's BPE built into echovault (built on first use, then shared by the process).
    pub fn builtin(context_length: usize) -> Result<Self, Error> {
        static BUILTIN: OnceLock<Result<Tokenizer, String>> = OnceLock::new();
        match BUILTIN.get_or_init(build_builtin) {
            Ok(t) => Ok(ClipBpe { inner: Cow::Borrowed(t), source: PathBuf::from(BUILTIN_NAME), context_length }),
            Err(reason) => Err(Error::Tokenizer { path: PathBuf::from(BUILTIN_NAME), reason: reason.clone() }),
        }
    }

    fn from_file(path: &Path, context_length: usize) -> Result<Self, Error> {
        let err = |reason: String| Error::Tokenizer { path: path.to_owned(), reason };
        let mut inner = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        // A Hugging Face CLIP file may pad to 77 with the end id and truncate to 77 (as a
        // transformers call leaves it): both would land inside our framing, so neither applies.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| err(e.to_string()))?;
        let id = |tokens: [&str; 2]| tokens.iter().find_map(|t| inner.token_to_id(t)).map(i64::from);
        for (tokens, want, what) in [([START_TOKEN, "<|startoftext|>"], START_ID, "start"), ([END_TOKEN, "<|endoftext|>"], END_ID, "end")] {
            if id(tokens) != Some(want) {
                return Err(err(format!("not a CLIP BPE tokenizer: its {what} token is not id {want}")));
            }
        }
        Ok(ClipBpe { inner: Cow::Owned(inner), source: path.to_owned(), context_length })
    }

    /// The `tokenizer.json` in use, or `<built-in CLIP BPE>`.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Whether this is the built-in tokenizer rather than a file's.
    pub fn is_builtin(&self) -> bool {
        matches!(self.inner, Cow::Borrowed(_))
    }

    /// The `context_length` ids the text tower sees for `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, Error> {
        let cleaned = super::clean::basic_clean(text);
        // Without special tokens: a file's post-processor (RobertaProcessing in Hugging Face's)
        // adds nothing; the start and end ids are added here.
        let enc = self
            .inner
            .encode(cleaned.as_str(), false)
            .map_err(|e| Error::Tokenizer { path: self.source.clone(), reason: e.to_string() })?;
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

/// GPT-2's byte-to-symbol table in open_clip's order (`bytes_to_unicode().values()`): printable
/// bytes as themselves, then the others, in byte order, as U+0100 onwards.
fn byte_symbols() -> Vec<char> {
    let printable = |b: &u8| matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    let mut out: Vec<char> = (0..=255u8).filter(printable).map(char::from).collect();
    let others = 256 - out.len() as u32;
    out.extend((256..256 + others).filter_map(char::from_u32));
    out
}

/// Builds the tokenizer `tools/make_samples.py` writes as `tokenizer.json`, from [`VOCAB_GZ`].
fn build_builtin() -> Result<Tokenizer, String> {
    let mut text = String::new();
    GzDecoder::new(VOCAB_GZ).read_to_string(&mut text).map_err(|e| format!("cannot decompress the vocabulary: {e}"))?;
    let merges: Vec<(String, String)> = text
        .split('\n')
        .skip(1)
        .take(MERGES)
        .map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
            [a, b] => Ok((a.to_owned(), b.to_owned())),
            _ => Err(format!("vocabulary line {line:?} is not a merge of two symbols")),
        })
        .collect::<Result<_, _>>()?;
    let symbols: Vec<String> = byte_symbols().into_iter().map(String::from).collect();
    let words = symbols.iter().map(|s| format!("{s}</w>"));
    let merged = merges.iter().map(|(a, b)| format!("{a}{b}"));
    let tokens: Vec<String> =
        symbols.iter().cloned().chain(words).chain(merged).chain([START_TOKEN.to_owned(), END_TOKEN.to_owned()]).collect();
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    if merges.len() != MERGES || tokens.len() != VOCAB_SIZE || vocab.len() != VOCAB_SIZE {
        return Err(format!(
            "the vocabulary gives {} merges and {} distinct tokens, not {MERGES} and {VOCAB_SIZE}",
            merges.len(),
            vocab.len()
        ));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .end_of_word_suffix("</w>".to_owned())
        .continuing_subword_prefix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| e.to_string())?;
    let collapse = Replace::new(ReplacePattern::Regex(r"\s+".to_owned()), " ").map_err(|e| e.to_string())?;
    let normalizer =
        tokenizers::normalizers::Sequence::new(vec![NFC.into(), NormalizerWrapper::from(collapse), NormalizerWrapper::from(Lowercase)]);
    let split =
        Split::new(SplitPattern::Regex(SPLIT_PATTERN.to_owned()), SplitDelimiterBehavior::Removed, true).map_err(|e| e.to_string())?;
    let pre = tokenizers::pre_tokenizers::sequence::Sequence::new(vec![
        PreTokenizerWrapper::from(split),
        PreTokenizerWrapper::from(ByteLevel::new(false, true, false)),
    ]);
    let mut tok = Tokenizer::new(bpe);
    tok.with_normalizer(Some(normalizer));
    tok.with_pre_tokenizer(Some(pre));
    tok.add_special_tokens(&[AddedToken::from(START_TOKEN, true), AddedToken::from(END_TOKEN, true)]);
    if tok.token_to_id(START_TOKEN).map(i64::from) != Some(START_ID) || tok.token_to_id(END_TOKEN).map(i64::from) != Some(END_ID) {
        return Err(format!("the special tokens are not ids {START_ID} and {END_ID}"));
    }
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data-samples/echovault-tiny")
    }

    #[test]
    fn the_builtin_vocabulary_has_clips_shape() {
        let t = ClipBpe::builtin(77).unwrap();
        assert!(t.is_builtin());
        assert_eq!(t.inner.get_vocab_size(true), VOCAB_SIZE);
        // Byte symbols first (`!` is byte 0x21, U+0100 stands for byte 0x00), then their `</w>`
        // forms, then merges in file order (the file's first merge is `i n`).
        assert_eq!(t.inner.token_to_id("!"), Some(0));
        assert_eq!(t.inner.token_to_id("\u{100}"), Some(188));
        assert_eq!(t.inner.token_to_id("!</w>"), Some(256));
        assert_eq!(t.inner.token_to_id("in"), Some(512));
        // Built once: a second handle shares the first's tokenizer.
        let again = ClipBpe::builtin(16).unwrap();
        assert!(std::ptr::eq(&*t.inner, &*again.inner));
    }

    #[test]
    fn a_directory_without_tokenizer_json_uses_the_builtin_one() {
        let tmp = tempfile::tempdir().unwrap();
        let t = ClipBpe::load(tmp.path(), 77).unwrap();
        assert!(t.is_builtin());
        assert_eq!(t.source(), Path::new(BUILTIN_NAME));
        let file = ClipBpe::load(&sample_dir(), 77).unwrap();
        assert!(!file.is_builtin());
        let text = "Severely reduced LV function; EF 25 %. It's \u{201c}unchanged\u{201d} & stable.";
        assert_eq!(t.encode(text).ok(), file.encode(text).ok());
        // A named file that is not there is still an error, not a fallback.
        assert!(ClipBpe::load(&tmp.path().join(TOKENIZER_FILE), 77).is_err());
    }

    #[test]
    fn framing_truncates_with_the_end_id_last_and_pads_with_zeros() {
        let t = ClipBpe::builtin(8).unwrap();
        let short = t.encode("ef").unwrap();
        let end = short.iter().position(|&i| i == END_ID).unwrap();
        assert!(short[0] == START_ID && end > 1 && end < 7, "{short:?}");
        assert!(short[end + 1..].iter().all(|&i| i == 0), "{short:?}");
        let long = t.encode(&"normal ".repeat(20)).unwrap();
        assert_eq!(long.len(), 8);
        assert_eq!((long[0], long[7]), (START_ID, END_ID));
    }
}
