//! The EchoCLIP-R "template" tokenizer: report text → ids of known report phrases, each followed
//! by the values of its slots. The vocabulary is a user-supplied file of report phrases, one per
//! line, where `<#>` marks a slot for a number or a severity word (the reference's vocabulary
//! may not be redistributed: echovault reads it from a path the user gives).
//!
//! The algorithm, exactly (an independent Python implementation in
//! `tools/parity/template_ref.py` must give the same ids):
//!
//! 1. **Clean** (text and vocabulary lines alike): upper-case; collapse whitespace runs to one
//!    space; `MM HG` → `MMHG`; `PERCENT` → `%`.
//! 2. **Split** into tokens: numbers `\d+(\.\d+)?`, words `[A-Z]+(-[A-Z]+)*`, `<#>`, and any other
//!    single non-space character (punctuation).
//! 3. **Slots**: a number, a severity word or `<#>` is a slot. Severity words: `TRACE`/`TRIVIAL`,
//!    `MILD[LY]`, `MODERATE[LY]`, `SEVERE[LY]`, and the hyphenated ranges `MILD[LY]-MODERATE[LY]`
//!    and `MODERATE[LY]-SEVERE[LY]`; a severity, `TO` or `-`, then the next severity up the
//!    same range also join into one range slot. In the text a slot carries its value; in a phrase
//!    it matches any value; a literal `<#>` in a text is ignored. (So a vocabulary line with a literal
//!    severity is the same phrase as with `<#>`; when two lines clean to the same phrase, the
//!    first keeps its id.)
//! 4. **Match** leftmost-longest: from the first token, take the longest phrase that matches here
//!    (ties: the lower id), emit it and jump past it; where none matches, drop one token.
//! 5. **Emit** per matched phrase its id, then one value per slot: a severity as its own id; a
//!    number as the id of its integer part (clamped to 0..=999) followed, when it has a
//!    fractional part, by the id of its first decimal digit.
//! 6. **Ids**: 0 = padding, 1–4 reserved, phrases 5.. in file order; then the number vocabulary
//!    (6 severities, integers 0–999, decimals .0–.9); then start; then end = the largest id (the
//!    text tower pools at the largest id). `[start, …, end]`, truncated to the context length
//!    with the end id kept last, zero-padded.

use crate::error::Error;
use std::path::{Path, PathBuf};

/// First phrase id.
pub const FIRST_PHRASE_ID: i64 = 5;
/// Canonical severities, in id order.
pub const SEVERITIES: [&str; 6] = ["TRACE", "MILD", "MILD-MODERATE", "MODERATE", "MODERATE-SEVERE", "SEVERE"];
/// Largest integer with its own id; larger values are clamped to it.
pub const MAX_INT: u32 = 999;
/// Size of the number vocabulary: severities, integers 0..=MAX_INT, ten decimal digits.
pub const NUMBER_VOCAB: i64 = SEVERITIES.len() as i64 + MAX_INT as i64 + 1 + 10;

/// A token after cleaning.
#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    /// A slot; `None` in vocabulary phrases (matches any value).
    Slot(Option<Value>),
}

/// A slot value.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Severity(usize),
    /// Integer part (clamped) and first decimal digit.
    Number(u32, Option<u8>),
}

fn severity(word: &str) -> Option<usize> {
    let single = |w: &str| -> Option<usize> {
        Some(match w {
            "TRACE" | "TRIVIAL" => 0,
            "MILD" | "MILDLY" => 1,
            "MODERATE" | "MODERATELY" => 3,
            "SEVERE" | "SEVERELY" => 5,
            _ => return None,
        })
    };
    match word.split_once('-') {
        None => single(word),
        Some((a, b)) => match (single(a)?, single(b)?) {
            (1, 3) => Some(2),
            (3, 5) => Some(4),
            _ => None,
        },
    }
}

/// Step 1: upper-case, collapse whitespace, normalise units and wording.
fn clean(text: &str) -> String {
    let up = text.to_uppercase();
    let s = up.split_whitespace().collect::<Vec<_>>().join(" ");
    s.replace("MM HG", "MMHG").replace("PERCENT", "%")
}

/// Steps 2 and 3: split a cleaned string into tokens, mark slots, join severity ranges.
fn split(s: &str) -> Vec<Tok> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let int: String = chars[start..i].iter().collect();
            let mut dec = None;
            if i + 1 < chars.len() && chars[i] == '.' && chars[i + 1].is_ascii_digit() {
                dec = chars[i + 1].to_digit(10).map(|d| d as u8);
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let v = int.parse::<u64>().map_or(MAX_INT, |n| n.min(u64::from(MAX_INT)) as u32);
            out.push(Tok::Slot(Some(Value::Number(v, dec))));
        } else if c.is_ascii_uppercase() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_uppercase() {
                i += 1;
                if i + 1 < chars.len() && chars[i] == '-' && chars[i + 1].is_ascii_uppercase() {
                    i += 1;
                }
            }
            let w: String = chars[start..i].iter().collect();
            out.push(match severity(&w) {
                Some(sev) => Tok::Slot(Some(Value::Severity(sev))),
                None => Tok::Word(w),
            });
        } else if c == '<' && chars.get(i + 1) == Some(&'#') && chars.get(i + 2) == Some(&'>') {
            out.push(Tok::Slot(None));
            i += 3;
        } else {
            out.push(Tok::Word(c.to_string()));
            i += 1;
        }
    }
    join_ranges(out)
}

/// `MILD TO MODERATE`, `MILD - MODERATE` (and the MODERATE/SEVERE pair) → one compound slot.
fn join_ranges(toks: Vec<Tok>) -> Vec<Tok> {
    let mut out: Vec<Tok> = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        if i + 2 < toks.len() {
            if let (Tok::Slot(Some(Value::Severity(a))), Tok::Word(w), Tok::Slot(Some(Value::Severity(b)))) =
                (&toks[i], &toks[i + 1], &toks[i + 2])
            {
                if (w == "TO" || w == "-") && matches!((a, b), (1, 3) | (3, 5)) {
                    out.push(Tok::Slot(Some(Value::Severity(a + 1))));
                    i += 3;
                    continue;
                }
            }
        }
        out.push(toks[i].clone());
        i += 1;
    }
    out
}

/// A loaded template vocabulary.
#[derive(Debug, Clone)]
pub struct TemplateTokenizer {
    path: PathBuf,
    /// Phrases as slot patterns, by id − 5; `None` for duplicates of an earlier line.
    phrases: Vec<Option<Vec<Tok>>>,
    context_length: usize,
}

impl TemplateTokenizer {
    /// Reads a vocabulary file (one phrase per line; empty lines are ignored).
    pub fn load(path: &Path, context_length: usize) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Tokenizer { path: path.to_owned(), reason: format!("cannot read template vocabulary: {e}") })?;
        let mut phrases: Vec<Option<Vec<Tok>>> = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            // In a phrase every slot is a wildcard, whether written `<#>` or as a literal value.
            let toks: Vec<Tok> = split(&clean(line)).into_iter().map(|t| if let Tok::Slot(_) = t { Tok::Slot(None) } else { t }).collect();
            let dup = toks.is_empty() || phrases.iter().flatten().any(|p| *p == toks);
            phrases.push(if dup { None } else { Some(toks) });
        }
        if phrases.iter().all(Option::is_none) {
            return Err(Error::Tokenizer { path: path.to_owned(), reason: "template vocabulary has no phrases".into() });
        }
        Ok(TemplateTokenizer { path: path.to_owned(), phrases, context_length })
    }

    /// Number of phrase lines (ids 5..5+n).
    pub fn phrase_count(&self) -> i64 {
        self.phrases.len() as i64
    }

    /// The start id.
    pub fn start_id(&self) -> i64 {
        FIRST_PHRASE_ID + self.phrase_count() + NUMBER_VOCAB
    }

    /// The end id (the largest id).
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

    fn value_ids(&self, v: &Value, out: &mut Vec<i64>) {
        let base = FIRST_PHRASE_ID + self.phrase_count();
        match v {
            Value::Severity(s) => out.push(base + *s as i64),
            Value::Number(n, dec) => {
                out.push(base + SEVERITIES.len() as i64 + i64::from(*n));
                if let Some(d) = dec {
                    out.push(base + SEVERITIES.len() as i64 + i64::from(MAX_INT) + 1 + i64::from(*d));
                }
            }
        }
    }

    /// Phrase and value ids of `text`, without start/end framing.
    pub fn encode_raw(&self, text: &str) -> Vec<i64> {
        // A literal `<#>` in a text carries no value: ignore it.
        let toks: Vec<Tok> = split(&clean(text)).into_iter().filter(|t| *t != Tok::Slot(None)).collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            let mut best: Option<(usize, usize)> = None; // (phrase index, length)
            for (pi, p) in self.phrases.iter().enumerate() {
                let Some(p) = p else { continue };
                if p.len() > toks.len() - i || best.is_some_and(|(_, l)| p.len() <= l) {
                    continue;
                }
                let hit = p.iter().zip(&toks[i..]).all(|(a, b)| match (a, b) {
                    (Tok::Slot(None), Tok::Slot(Some(_))) => true,
                    (Tok::Word(x), Tok::Word(y)) => x == y,
                    _ => false,
                });
                if hit {
                    best = Some((pi, p.len()));
                }
            }
            match best {
                Some((pi, len)) => {
                    out.push(FIRST_PHRASE_ID + pi as i64);
                    for t in &toks[i..i + len] {
                        if let Tok::Slot(Some(v)) = t {
                            self.value_ids(v, &mut out);
                        }
                    }
                    i += len;
                }
                None => i += 1,
            }
        }
        out
    }

    /// The `context_length` ids the text tower sees.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut ids = Vec::with_capacity(self.context_length);
        ids.push(self.start_id());
        ids.extend(self.encode_raw(text));
        ids.push(self.end_id());
        if ids.len() > self.context_length {
            ids.truncate(self.context_length);
            if let Some(last) = ids.last_mut() {
                *last = self.end_id();
            }
        }
        ids.resize(self.context_length, 0);
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(lines: &str) -> TemplateTokenizer {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.txt");
        std::fs::write(&p, lines).unwrap();
        TemplateTokenizer::load(&p, 77).unwrap()
    }

    #[test]
    fn phrases_slots_and_framing() {
        let t = vocab("NORMAL LEFT VENTRICULAR SIZE.\nLEFT VENTRICULAR EJECTION FRACTION IS <#> %.\n<#> MITRAL REGURGITATION.\nLEFT VENTRICULAR SIZE.\n");
        let base = 5 + 4;
        let ids = t.encode_raw("Normal left ventricular size. LV is big. Left ventricular ejection fraction is 55 percent. Moderate to severe mitral regurgitation.");
        assert_eq!(ids, vec![5, 6, base + 6 + 55, 7, base + 4]);
        assert_eq!(t.encode_raw("left ventricular ejection fraction is 37.5 %."), vec![6, base + 6 + 37, base + 6 + 1000 + 5]);
        assert_eq!(t.encode_raw("nothing matches here"), Vec::<i64>::new());
        let full = t.encode("mild mitral regurgitation.");
        assert_eq!(&full[..4], &[t.start_id(), 7, base + 1, t.end_id()]);
        assert_eq!(t.end_id(), 5 + 4 + NUMBER_VOCAB + 1);
        assert!(full[4..].iter().all(|&x| x == 0));
        let long = "mild mitral regurgitation. ".repeat(40);
        let ids = t.encode(&long);
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[76], t.end_id());
    }

    #[test]
    fn cleaning_normalises_units_and_ranges() {
        assert_eq!(clean("PA pressure 35 mm  Hg, mildly reduced"), "PA PRESSURE 35 MMHG, MILDLY REDUCED");
        assert_eq!(clean("ef 40 percent"), "EF 40 %");
        let sev = |s: &str| split(&clean(s));
        let one = |v| vec![Tok::Slot(Some(Value::Severity(v)))];
        assert_eq!(sev("mildly-moderately"), one(2));
        assert_eq!(sev("moderate to severe"), one(4));
        assert_eq!(sev("Moderate - Severely"), one(4));
        assert_eq!(sev("trivial"), one(0));
        assert_eq!(sev("mild to severe").len(), 3, "not a recognised range");
    }
}
