//! EchoCLIP-R's report cleaning and variable extraction: steps 1 and 2 of the template tokenizer
//! (see [`super::template`] for the whole specification). The published checkpoint was trained
//! on text cleaned exactly this way, so every rule is reproduced with the semantics of Python's
//! `re` module, where the reference runs it:
//! - `\d` is a Unicode decimal digit (`\p{Nd}`, as in the `regex` crate);
//! - `\s` is a character for which `str.isspace()` holds: Unicode White_Space plus the
//!   separators U+001C–U+001F ([`PY_SPACE`]);
//! - `\b` is a boundary between a word character (`str.isalnum()` or `_`: letters and numbers
//!   of every script, [`PY_WORD`]) and anything else, written out as look-arounds;
//! - alternations are leftmost-first, substitutions non-overlapping, left to right.
//!
//! The look-arounds need `fancy-regex` (the engine `tokenizers` itself uses); every regex is
//! compiled once per process.

use std::borrow::Cow;
use std::sync::OnceLock;

use fancy_regex::Regex;

/// Python's `\s` for `str` patterns.
const PY_SPACE: &str = r"[\s\x1C-\x1F]";
/// Python's `\w` for `str` patterns.
const PY_WORD: &str = r"[\p{L}\p{N}_]";
/// A number as the reference's patterns write it: `\d+\.?\d*`.
const NUMBER: &str = r"\d+\.?\d*";
/// The placeholder a variable leaves behind (and a vocabulary phrase's slot).
pub const PLACEHOLDER: &str = "<#>";

/// Phrases after which cleaning adds a period when none follows (`<#>` stands for a number).
const ADD_PERIOD_AFTER: [&str; 20] = [
    "THE PEAK TRANSAORTIC GRADIENT IS <#>MMHG",
    "THE MEAN TRANSAORTIC GRADIENT IS <#>MMHG",
    "LV EJECTION FRACTION IS <#>%",
    "ESTIMATED PA PRESSURE IS <#>MMHG",
    "RESTING SEGMENTAL WALL MOTION ANALYSIS",
    "THE IVC DIAMETER IS <#>MM",
    "EST RV/RA PRESSURE GRADIENT IS <#>MMHG",
    "ESTIMATED PEAK RVSP IS <#>MMHG",
    "HEART FAILURE, UNSPECIFIED",
    "CHEST PAIN, UNSPECIFIED",
    "SINUS OF VALSALVA: <#>CM",
    "THE PEAK TRANSMITRAL GRADIENT IS <#>MMHG",
    "THE MEAN TRANSMITRAL GRADIENT IS <#>MMHG",
    "ASCENDING AORTA <#>CM",
    "ESTIMATED PA SYSTOLIC PRESSURE IS <#>MMHG",
    "ICD_CODE SHORTNESS BREATH",
    "ICD_CODE ABNORMAL ELECTROCARDIOGRAM ECG EKG",
    "SHORTNESS BREATH",
    "ABNORMAL ELECTROCARDIOGRAM ECG EKG",
    "THE LEFT ATRIAL APPENDAGE IS NORMAL IN APPEARANCE WITH NO EVIDENCE OF THROMBUS",
];

/// Severity words taken out as variables, in the order they are tried.
const SEVERITIES: [&str; 6] = ["MODERATE/SEVERE", "MILD/MODERATE", "MILD", "MODERATE", "SEVERE", "VERY SEVERE"];

/// Rewrites applied after variable extraction (step 3).
const FIXED_REWRITES: [(&str, &str); 2] = [
    (
        "THE INFERIOR VENA CAVA IS NORMAL IN SIZE AND SHOWS A NORMAL RESPIRATORY COLLAPSE, CONSISTENT WITH NORMAL RIGHT ATRIAL PRESSURE (<#>MMHG).",
        "THE INFERIOR VENA CAVA SHOWS A NORMAL RESPIRATORY COLLAPSE CONSISTENT WITH NORMAL RIGHT ATRIAL PRESSURE (<#>MMHG).",
    ),
    ("RESTING SEGMENTAL WALL MOTION ANALYSIS.:", "RESTING SEGMENTAL WALL MOTION ANALYSIS."),
];

/// One substitution of the cleaning sequence.
struct Rule {
    re: Regex,
    with: &'static str,
}

/// The compiled rules.
struct Rules {
    /// Step 1, in order, between the plain-text steps.
    early: Vec<Rule>,
    late: Vec<Rule>,
    add_period: Rule,
    periods: Rule,
    variable: Regex,
}

/// `\bWORD\b` for a word that starts and ends with word characters.
fn whole_word(word: &str) -> String {
    format!("(?<!{PY_WORD}){}(?!{PY_WORD})", fancy_regex::escape(word))
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        // The patterns are constants: a failure to compile is a bug caught by every test.
        // No backtracking limit: fancy-regex counts backtracks over a whole search (a long report
        // reaches its default of 10⁶ with the 20-phrase rule), while Python's `re` has none. The
        // patterns have no nested quantifiers, so the work stays linear in the text.
        #[allow(clippy::expect_used)]
        let rule = |re: &str, with: &'static str| Rule {
            re: fancy_regex::RegexBuilder::new(re).backtrack_limit(usize::MAX).build().expect("report-cleaning regex"),
            with,
        };
        let boundary = format!("(?:(?<={PY_WORD})(?!{PY_WORD})|(?<!{PY_WORD})(?={PY_WORD}))");
        let early = vec![
            rule(r"\^|CRLF|‡", ""),
            rule(r"(?<=\D)\.|\.(?=\D)", ". "),
            rule(r"[\[\]]", ""),
            rule(&whole_word("WAS"), "IS"),
            rule(&whole_word("WERE"), "ARE"),
            rule(&whole_word("AND/OR"), "AND"),
            rule("NORMALLY", "NORMAL"),
            rule("MILDLY", "MILD"),
            rule("MODERATELY", "MODERATE"),
            rule("SEVERELY", "SEVERE"),
            rule("PULMONARY ARTERY", "PA"),
            rule(r"\d{2}/\d{2}/\d{4}", ""),
            rule(r"\d{2}\.\d{2}\.\d{4}", ""),
            rule(&format!(r"[A-Z](?:\d+\.\d*{boundary})"), ""),
            rule(&format!(r"{PY_SPACE}+(MMHG|MM|CM|%)"), "${1}"),
            rule(&format!(r"{PY_SPACE}\."), "."),
            rule(&format!(r"{PY_SPACE}+"), " "),
        ];
        let late = vec![rule(&format!(r"{PY_SPACE}\+{PY_SPACE}"), "+"), rule(r"\+CVPMMHG", "MMHG")];
        let phrases: Vec<String> = ADD_PERIOD_AFTER
            .iter()
            .map(|p| {
                let parts: Vec<String> = p.split(PLACEHOLDER).map(|s| fancy_regex::escape(s).into_owned()).collect();
                format!(r"(?:{})(?!\.)", parts.join(&format!("(?:{NUMBER})")))
            })
            .collect();
        let add_period = rule(&format!("({})", phrases.join("|")), "${1}.");
        let periods = rule(r"\.+", ".");
        let severities: Vec<String> = SEVERITIES.iter().map(|s| fancy_regex::escape(s).into_owned()).collect();
        let variable = rule(&format!(r"({NUMBER})|((?<![A-Za-z])(?:{}))", severities.join("|")), "").re;
        Rules { early, late, add_period, periods, variable }
    })
}

/// Python's `str.strip()`.
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Applies one substitution to all matches (a regex runtime error, which the unlimited
/// backtracking leaves no way to reach, would leave the text as it is).
fn apply(rule: &Rule, text: String) -> String {
    match rule.re.try_replacen(&text, 0, rule.with) {
        Ok(Cow::Owned(s)) => s,
        Ok(Cow::Borrowed(_)) | Err(_) => text,
    }
}

/// Step 1: the reference's report cleaning. Texts of at most one character are left as they are.
pub fn clean_report(text: &str) -> String {
    if text.chars().count() <= 1 {
        return text.to_owned();
    }
    let r = rules();
    let mut s = py_strip(&text.to_uppercase()).replace('`', "'");
    for rule in &r.early {
        s = apply(rule, s);
    }
    for rule in &r.late {
        s = apply(rule, s);
    }
    let mut s = py_strip(&s).to_owned();
    s.push(' ');
    let s = apply(&r.add_period, s);
    apply(&r.periods, s)
}

/// Step 2: every number and severity word, in text order, and the text with each replaced by
/// [`PLACEHOLDER`].
pub fn extract_variables(text: &str) -> (Vec<String>, String) {
    let mut vars = Vec::new();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for m in rules().variable.find_iter(text) {
        // A backtracking limit ends the extraction where it stopped (see `apply`).
        let Ok(m) = m else { break };
        out.push_str(&text[last..m.start()]);
        out.push_str(PLACEHOLDER);
        vars.push(m.as_str().to_owned());
        last = m.end();
    }
    out.push_str(&text[last..]);
    (vars, out)
}

/// Step 3: the two fixed rewrites.
pub fn fixed_rewrites(text: &str) -> String {
    FIXED_REWRITES.iter().fold(text.to_owned(), |s, (from, to)| s.replace(from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_compiles() {
        let r = rules();
        assert_eq!(r.early.len(), 17);
    }

    #[test]
    fn long_reports_are_cleaned_like_short_ones() {
        // ≈ 300k characters without a listed phrase, then one: it still gets its period.
        let text = "THE STUDY IS LONG AND UNREMARKABLE ".repeat(9000) + "LV EJECTION FRACTION IS 55%";
        let cleaned = clean_report(&text);
        assert!(cleaned.ends_with("LV EJECTION FRACTION IS 55%. "), "{}", &cleaned[cleaned.len() - 40..]);
        let (vars, templated) = extract_variables(&cleaned);
        assert_eq!(vars, ["55"]);
        assert!(templated.ends_with("IS <#>%. "));
    }

    #[test]
    fn python_whitespace_is_stripped() {
        assert_eq!(py_strip("\u{1c}\u{a0} A B\u{2003}\u{1f}"), "A B");
    }
}
