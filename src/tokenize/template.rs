//! The EchoCLIP-R "template" tokenizer, id for id as the published EchoCLIP-R checkpoint was
//! trained (Christensen et al., *Nature Medicine* 2024; reference: github echonet/echo_CLIP,
//! whose files may not be redistributed — the vocabulary is read from a path the user gives).
//! A report becomes the ids of the known report phrases it contains, each followed by the values
//! (numbers, severities) that filled the phrase's slots.
//!
//! **Vocabulary file.** One phrase per line; a line is everything before its newline (`\n`,
//! `\r\n` or `\r`), trailing spaces included (every line of the published file ends with a
//! space); `<#>` marks a slot.
//!
//! **Ids.** `T = 5 + P`, P the number of distinct non-empty lines.
//! - 0 `[UNK]` (also the padding id), 1–4 `[CLS] [SEP] [PAD] [MASK]`.
//! - Phrases 5 … T−1 in file order (a line equal to an earlier line or to a special gets no id).
//! - Values, each offset by T: 0–4 the specials; 5–105 `"0"` … `"100"`; 106 the separator `‡`;
//!   107–111 `MILD`, `MODERATE`, `SEVERE`, `MILD/MODERATE`, `MODERATE/SEVERE`; 112–121 `.0` …
//!   `.9`; 122–131 `00` … `09` (132 value ids).
//! - start = T + 132, end = T + 133 (the largest id: the text tower pools there). For the
//!   published 770-line vocabulary: T = 775, start 907, end 908.
//!
//! **Matching** is the `tokenizers` crate's added-token matching (leftmost-longest) over a
//! WordPiece model whose vocabulary is the five specials (unk `[UNK]`, prefix `##`, at most 500
//! characters a word, no normalizer, no pre-tokenizer), with the phrases — or the value strings
//! — added as tokens. Every stretch of text no added token covers becomes one `[UNK]`.
//!
//! **Steps** for a report:
//! 1. Clean ([`super::report_clean::clean_report`]; only texts longer than one character), in
//!    order: upper-case; trim; backtick → apostrophe; delete `^`, `CRLF` and `‡`; a period
//!    preceded by a non-digit or followed by a non-digit becomes `". "`; delete `[` and `]`;
//!    whole words `WAS`→`IS`, `WERE`→`ARE`, `AND/OR`→`AND`; anywhere `NORMALLY`→`NORMAL`,
//!    `MILDLY`→`MILD`, `MODERATELY`→`MODERATE`, `SEVERELY`→`SEVERE`, `PULMONARY ARTERY`→`PA`;
//!    delete dates `dd/dd/dddd` and `dd.dd.dddd`; delete an upper-case letter followed by
//!    `digits.digits*` up to a word boundary (ICD codes); delete whitespace before `MMHG`,
//!    `MM`, `CM` or `%`; `" ."` → `"."`; collapse whitespace runs; `" + "` → `"+"`;
//!    `+CVPMMHG` → `MMHG`; trim; append one space; add a period after each of twenty fixed
//!    phrases (`<#>` = a number) not already followed by one; collapse runs of periods.
//! 2. Variables: every number `\d+\.?\d*` and every severity (`MODERATE/SEVERE`,
//!    `MILD/MODERATE`, `MILD`, `MODERATE`, `SEVERE`, `VERY SEVERE`, in that order, not preceded
//!    by a letter) is taken out, in order, into a list and replaced by `<#>`.
//! 3. Two fixed rewrites (the inferior vena cava sentence, `ANALYSIS.:`).
//! 4. Encode with the phrase tokenizer. A phrase with k `<#>` claims the next k variables; an
//!    `[UNK]` stretch with k `<#>` in its source text discards the next k. `[UNK]` ids are dropped.
//! 5. Per phrase: its id, then its claimed variables joined with `‡` and encoded with the value
//!    tokenizer (`150` → `"15","0"`; `37.5` → `"37",".5"`; `2005` → `"20","05"`; `VERY SEVERE` →
//!    `[UNK]`,`"SEVERE"`), each value id + T.
//! 6. `[start, …, end]`; longer than the context (77) → the first 77 with the end id last;
//!    shorter → padded with 0.
//!
//! A text whose placeholders outnumber its variables (a literal `<#>` in it) is an error.

use super::report_clean::{clean_report, extract_variables, fixed_rewrites, PLACEHOLDER};
use crate::error::Error;
use std::path::{Path, PathBuf};
use tokenizers::{AddedToken, Tokenizer};

/// The specials of the blank WordPiece model, in id order.
pub const SPECIALS: [&str; 5] = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"];
/// The unknown (and padding) id.
pub const UNK_ID: i64 = 0;
/// Value separator between the variables of one phrase.
pub const SEPARATOR: &str = "‡";
/// Number of value ids (specials included).
pub const VALUE_VOCAB: i64 = 132;

/// The value strings added to the blank WordPiece model, in id order from 5.
fn value_strings() -> Vec<String> {
    let mut v: Vec<String> = (0..=100).map(|i| i.to_string()).collect();
    v.push(SEPARATOR.into());
    v.extend(["MILD", "MODERATE", "SEVERE", "MILD/MODERATE", "MODERATE/SEVERE"].map(String::from));
    v.extend((0..10).map(|i| format!(".{i}")));
    v.extend((0..10).map(|i| format!("0{i}")));
    v
}

/// A WordPiece model knowing only the specials, with `tokens` added (leftmost-longest).
fn blank_with(tokens: &[String]) -> Result<Tokenizer, String> {
    // Built through the crate's own serialised form: its builder wants a map type it does not
    // export.
    let vocab: serde_json::Map<String, serde_json::Value> =
        SPECIALS.iter().enumerate().map(|(i, s)| ((*s).to_owned(), serde_json::Value::from(i))).collect();
    let spec = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "WordPiece", "unk_token": SPECIALS[0], "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 500, "vocab": vocab},
    });
    let mut t: Tokenizer = spec.to_string().parse().map_err(|e: tokenizers::Error| e.to_string())?;
    let specials: Vec<AddedToken> = SPECIALS.iter().map(|s| AddedToken::from(*s, true).normalized(false)).collect();
    t.add_special_tokens(&specials);
    let added: Vec<AddedToken> = tokens.iter().map(|s| AddedToken::from(s.clone(), false)).collect();
    t.add_tokens(&added);
    Ok(t)
}

/// The lines of a vocabulary file as Python's text mode reads them (universal newlines, the
/// newline itself removed, everything else kept).
fn vocab_lines(text: &str) -> Vec<String> {
    let unified = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines: Vec<String> = unified.split('\n').map(str::to_owned).collect();
    if unified.ends_with('\n') || unified.is_empty() {
        lines.pop();
    }
    lines
}

/// A loaded template vocabulary.
#[derive(Debug, Clone)]
pub struct TemplateTokenizer {
    path: PathBuf,
    phrases: Tokenizer,
    values: Tokenizer,
    /// `<#>` slots per phrase-tokenizer id (0 for the specials).
    slots: Vec<usize>,
    /// T: size of the phrase vocabulary, specials included.
    phrase_vocab: i64,
    context_length: usize,
}

impl TemplateTokenizer {
    /// Reads a vocabulary file.
    pub fn load(path: &Path, context_length: usize) -> Result<Self, Error> {
        let err = |reason: String| Error::Tokenizer { path: path.to_owned(), reason };
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read template vocabulary: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|e| err(format!("template vocabulary is not UTF-8 text: {e}")))?;
        Self::from_lines(path, &vocab_lines(&text), context_length)
    }

    /// A tokenizer over these vocabulary lines (`path` names them in errors).
    pub fn from_lines(path: &Path, lines: &[String], context_length: usize) -> Result<Self, Error> {
        let err = |reason: String| Error::Tokenizer { path: path.to_owned(), reason };
        let phrases = blank_with(lines).map_err(err)?;
        let mut value_list = vec![SPECIALS[0].to_owned()];
        value_list.extend(value_strings());
        let values = blank_with(&value_list).map_err(err)?;
        let phrase_vocab = phrases.get_vocab(true).len();
        if phrase_vocab <= SPECIALS.len() {
            return Err(err("template vocabulary has no phrases".into()));
        }
        if values.get_vocab(true).len() as i64 != VALUE_VOCAB {
            return Err(err(format!("value vocabulary has {} ids, not {VALUE_VOCAB}", values.get_vocab(true).len())));
        }
        let mut slots = vec![0; phrase_vocab];
        for (token, id) in phrases.get_vocab(true) {
            let Some(s) = slots.get_mut(id as usize) else {
                return Err(err(format!("phrase id {id} outside the vocabulary of {phrase_vocab}")));
            };
            *s = token.matches(PLACEHOLDER).count();
        }
        Ok(TemplateTokenizer { path: path.to_owned(), phrases, values, slots, phrase_vocab: phrase_vocab as i64, context_length })
    }

    /// T: phrase ids end here; value ids start here.
    pub fn phrase_vocab(&self) -> i64 {
        self.phrase_vocab
    }

    /// The start id (T + 132).
    pub fn start_id(&self) -> i64 {
        self.phrase_vocab + VALUE_VOCAB
    }

    /// The end id (T + 133), the largest id.
    pub fn end_id(&self) -> i64 {
        self.start_id() + 1
    }

    /// Vocabulary size the text tower needs (end id + 1).
    pub fn vocab_size(&self) -> i64 {
        self.end_id() + 1
    }

    /// The vocabulary file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn encode_with(&self, tok: &Tokenizer, text: &str) -> Result<tokenizers::Encoding, Error> {
        tok.encode(text, false).map_err(|e| Error::Tokenizer { path: self.path.clone(), reason: e.to_string() })
    }

    /// Phrase and value ids of `text` (steps 1–5), without start/end framing.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<i64>, Error> {
        self.encode_explained(text).map(|(ids, _)| ids)
    }

    /// [`Self::encode_raw`], and the stretches of the cleaned text no phrase covered (what the
    /// text tower never sees; `<#>` marks the variables they swallowed).
    pub fn encode_explained(&self, text: &str) -> Result<(Vec<i64>, Vec<String>), Error> {
        let (vars, templated) = extract_variables(&clean_report(text));
        let templated = fixed_rewrites(&templated);
        let placeholders = templated.matches(PLACEHOLDER).count();
        if placeholders > vars.len() {
            return Err(Error::Tokenizer {
                path: self.path.clone(),
                reason: format!(
                    "the text holds {placeholders} `<#>` placeholders for {} values (a literal `<#>` in a report cannot be tokenised)",
                    vars.len()
                ),
            });
        }
        let enc = self.encode_with(&self.phrases, &templated)?;
        let mut vars = vars.into_iter();
        let mut out = Vec::new();
        let mut unknown = Vec::new();
        for (&id, &(start, end)) in enc.get_ids().iter().zip(enc.get_offsets()) {
            if i64::from(id) == UNK_ID {
                // An unknown stretch swallows the variables it held.
                let stretch = templated.get(start..end).unwrap_or_default();
                vars.by_ref().take(stretch.matches(PLACEHOLDER).count()).for_each(drop);
                unknown.push(stretch.to_owned());
                continue;
            }
            out.push(i64::from(id));
            let k = self.slots.get(id as usize).copied().unwrap_or(0);
            let claimed: Vec<String> = vars.by_ref().take(k).collect();
            if claimed.is_empty() {
                continue;
            }
            let value = self.encode_with(&self.values, &claimed.join(SEPARATOR))?;
            out.extend(value.get_ids().iter().map(|&v| i64::from(v) + self.phrase_vocab));
        }
        Ok((out, unknown))
    }

    /// The `context_length` ids the text tower sees (step 6).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, Error> {
        let mut ids = Vec::with_capacity(self.context_length);
        ids.push(self.start_id());
        ids.extend(self.encode_raw(text)?);
        ids.push(self.end_id());
        if ids.len() > self.context_length {
            ids.truncate(self.context_length);
            if let Some(last) = ids.last_mut() {
                *last = self.end_id();
            }
        }
        ids.resize(self.context_length, 0);
        Ok(ids)
    }

    /// The token strings behind `ids` (`[START]`, `[END]`, phrases, values as `<VALUE>`), for
    /// `tokenize --json`: a way to see what the text tower is told.
    pub fn describe(&self, ids: &[i64]) -> Vec<String> {
        ids.iter()
            .map(|&id| {
                if id == self.start_id() {
                    "[START]".to_owned()
                } else if id == self.end_id() {
                    "[END]".to_owned()
                } else if id >= self.phrase_vocab {
                    let v = self.values.id_to_token((id - self.phrase_vocab) as u32).unwrap_or_default();
                    format!("<{v}>")
                } else {
                    self.phrases.id_to_token(id as u32).unwrap_or_default()
                }
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
