//! Prompt files: task name → mode and prompts, plus the default prompt file we wrote ourselves in
//! report-template style (`default_prompts.json`, embedded in the binary). Two schemas are read,
//! one per task (mixing them in one task is an error naming it):
//!
//! Ours (`{"task": {"mode": ..., "prompts": [...], "values": [...], "classes": {...}}}`):
//! - `binary`: `prompts` describe the finding; the score is their mean cosine with the frames.
//! - `regression`: each prompt holding `<#>` is filled with every value of `values` (default
//!   0..=100); a prompt without `<#>` needs `values` of the same length, one value per prompt.
//! - `categorical`: `classes` maps each class name to its prompts (one-vs-rest binary scores),
//!   classes in file order.
//!
//! The EchoCLIP reference's (`prompts_used.json`; with a copy of that repository, pass its file
//! to use the paper's prompts):
//! - `label_sources`: the prompts; `testers`, when present, the prompts zero-shot uses instead.
//! - `regression`: `range: [lo, hi]`, integers, inclusive, step 1, fills `<#>` (instead of our
//!   `values`; default 0..=100 as ours).
//! - `categorical`: `values` gives each prompt's class value (`tester_values` each tester's, when
//!   `testers` are used) and `value_mapping` names values (`{"0": "none", ...}`). One class per
//!   distinct value, in ascending value order, holding that value's prompts and named by
//!   `value_mapping` (by the value itself, `2` or `2.5`, where it has no entry); a mapping entry
//!   no prompt has is not a class.
//!
//! So `values` means regression values in a regression task and class values per prompt in a
//! categorical task of the reference's schema: the mode decides.
//!
//! Optional in both: `description`, `unit`, `labels` (names under which a label manifest gives
//! the truth: a column, or an entry of a `devices` list), `threshold` (binary: a score strictly
//! above it reads as present, the reference's rule for pacemakers, `> 0.298`). Any other field is
//! an error naming the task and the field.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The widest `range` a regression task may span: every value is a prompt to embed.
const MAX_RANGE: i64 = 100_000;

/// The embedded default prompt file.
pub const DEFAULT_PROMPTS: &str = include_str!("default_prompts.json");

/// How a task reads its prompts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Present or absent: a score.
    Binary,
    /// A number from valued prompts.
    Regression,
    /// The best of several classes.
    Categorical,
}

/// One task as written in a prompt file (either schema).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptTask {
    /// How the prompts are read.
    pub mode: Mode,
    /// Binary and regression prompts (ours).
    #[serde(default)]
    pub prompts: Vec<String>,
    /// Regression: the values filling `<#>` (default 0..=100). Categorical, reference schema:
    /// the class value of each of `label_sources`.
    #[serde(default)]
    pub values: Option<Vec<f64>>,
    /// Categorical classes in file order (ours).
    #[serde(default)]
    pub classes: Option<Classes>,
    /// The prompts (reference schema).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label_sources: Vec<String>,
    /// The prompts zero-shot uses instead of `label_sources` (reference schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub testers: Option<Vec<String>>,
    /// Regression: `[lo, hi]`, the integers filling `<#>`, both included (reference schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[i64; 2]>,
    /// Categorical: the class value of each of `testers` (reference schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tester_values: Option<Vec<f64>>,
    /// Categorical: class value (as written: `"0"`, `"1"`…) → class name (reference schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_mapping: Option<BTreeMap<String, String>>,
    /// What the task reads.
    #[serde(default)]
    pub description: Option<String>,
    /// Unit of a regression value.
    #[serde(default)]
    pub unit: Option<String>,
    /// Manifest names carrying this task's truth (default: the task name).
    #[serde(default)]
    pub labels: Vec<String>,
    /// Binary: a score strictly above this reads as present.
    #[serde(default)]
    pub threshold: Option<f64>,
}

/// Class name → prompts, in the file's order.
pub type Classes = indexmap_like::OrderedMap;

/// A prompt file: tasks in name order.
pub type PromptFile = BTreeMap<String, PromptTask>;

/// A task's texts to embed, ready for the readers of [`super::zeroshot`].
#[derive(Clone, Debug, PartialEq)]
pub enum Expanded {
    /// Prompts.
    Binary(Vec<String>),
    /// Prompts with one value each.
    Regression(Vec<String>, Vec<f64>),
    /// Class names with their prompts.
    Categorical(Vec<(String, Vec<String>)>),
}

/// The default prompt file.
pub fn default_prompts() -> PromptFile {
    parse(DEFAULT_PROMPTS, Path::new("default_prompts.json")).unwrap_or_default()
}

/// Reads and checks a prompt file.
pub fn load(path: &Path) -> Result<PromptFile, Error> {
    let cannot = |e: String| Error::Invalid(format!("{}: cannot read prompt file: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(|e| cannot(e.to_string()))?;
    if !f.metadata().map_err(|e| cannot(e.to_string()))?.is_file() {
        return Err(cannot("not a regular file".into()));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut f, &mut text).map_err(|e| cannot(e.to_string()))?;
    parse(&text, path)
}

/// The prompt file at `path`, else the built-in one; with the name outputs show for it (its
/// path, or `built-in`).
pub fn load_or_default(path: Option<&Path>) -> Result<(PromptFile, String), Error> {
    Ok(match path {
        Some(p) => (load(p)?, p.display().to_string()),
        None => (default_prompts(), "built-in".to_owned()),
    })
}

/// The tasks `names` of `file`, each once, in the order given (none or `all`: every task of the
/// file); a name the file lacks is an error listing the tasks it has.
pub fn select_tasks(file: &PromptFile, names: &[String]) -> Result<Vec<String>, Error> {
    if names.is_empty() || names.iter().any(|n| n == "all") {
        return Ok(file.keys().cloned().collect());
    }
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !file.contains_key(n) {
            return Err(Error::Invalid(format!(
                "no task '{n}' in the prompt file (it has: {})",
                file.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    Ok(out)
}

/// Parses and checks prompt-file text (`path` names it in errors).
pub fn parse(text: &str, path: &Path) -> Result<PromptFile, Error> {
    let invalid = |reason: String| Error::Invalid(format!("{}: {reason}", path.display()));
    let file: PromptFile =
        serde_json::from_str(text).map_err(|e| invalid(task_in_error(text).unwrap_or_else(|| format!("not a prompt file: {e}"))))?;
    if file.is_empty() {
        return Err(invalid("the prompt file has no tasks".into()));
    }
    for (name, t) in &file {
        t.expand().map_err(|e| invalid(format!("task '{name}': {e}")))?;
    }
    Ok(file)
}

/// Which task of a file that does not parse is at fault, and why. Read again task by task only
/// on failure: the whole-file parse keeps the order of `classes`, which a `serde_json::Value`
/// would not.
fn task_in_error(text: &str) -> Option<String> {
    let raw: BTreeMap<String, serde_json::Value> = serde_json::from_str(text).ok()?;
    raw.into_iter()
        .find_map(|(name, v)| serde_json::from_value::<PromptTask>(v).err().map(|e| format!("task '{name}': not a prompt task: {e}")))
}

impl PromptTask {
    /// The texts to embed, checked.
    pub fn expand(&self) -> Result<Expanded, String> {
        let reference = !self.label_sources.is_empty() || self.testers.is_some();
        if reference && (!self.prompts.is_empty() || self.classes.is_some()) {
            return Err("mixes our `prompts`/`classes` with the reference's `label_sources`/`testers`: use one schema per task".into());
        }
        match self.mode {
            Mode::Binary => {
                let prompts = self.prompt_list()?;
                if prompts.is_empty() {
                    return Err("a binary task needs prompts".into());
                }
                Ok(Expanded::Binary(prompts.to_vec()))
            }
            Mode::Regression => self.expand_regression(),
            Mode::Categorical if reference => self.expand_valued_classes(),
            Mode::Categorical => {
                let classes = self.classes.as_ref().map(|c| c.0.clone()).unwrap_or_default();
                if classes.len() < 2 || classes.iter().any(|(_, p)| p.is_empty()) {
                    return Err("a categorical task needs two or more classes, each with prompts".into());
                }
                Ok(Expanded::Categorical(classes))
            }
        }
    }

    /// The prompts zero-shot reads: `testers` when present, else `label_sources`, else `prompts`.
    fn prompt_list(&self) -> Result<&[String], String> {
        match &self.testers {
            Some(t) if t.is_empty() => Err("`testers` is empty (leave it out to use `label_sources`)".into()),
            Some(t) => Ok(t),
            None if !self.label_sources.is_empty() => Ok(&self.label_sources),
            None => Ok(&self.prompts),
        }
    }

    fn expand_regression(&self) -> Result<Expanded, String> {
        let prompts = self.prompt_list()?;
        if prompts.is_empty() {
            return Err("a regression task needs prompts".into());
        }
        let values = match (&self.values, self.range) {
            (Some(_), Some(_)) => return Err("give `values` or `range`, not both".into()),
            (Some(v), None) => v.clone(),
            (None, Some([lo, hi])) if hi.checked_sub(lo).is_some_and(|n| (0..=MAX_RANGE).contains(&n)) => {
                (lo..=hi).map(|v| v as f64).collect()
            }
            (None, Some([lo, hi])) => {
                return Err(format!("`range` [{lo}, {hi}] must be [lo, hi] with lo ≤ hi (at most {MAX_RANGE} steps)"))
            }
            (None, None) => (0..=100).map(f64::from).collect(),
        };
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return Err("regression values must be finite numbers".into());
        }
        let (slotted, plain): (Vec<&String>, Vec<&String>) = prompts.iter().partition(|p| p.contains("<#>"));
        let (mut texts, mut vals) = (Vec::new(), Vec::new());
        for p in slotted {
            for v in &values {
                texts.push(p.replace("<#>", &format_value(*v)));
                vals.push(*v);
            }
        }
        if !plain.is_empty() {
            if plain.len() != prompts.len() || plain.len() != values.len() {
                return Err(format!(
                    "prompts without <#> need one value each ({} prompts, {} values), and cannot be mixed with <#> prompts",
                    plain.len(),
                    values.len()
                ));
            }
            texts.extend(plain.into_iter().cloned());
            vals.extend(values);
        }
        Ok(Expanded::Regression(texts, vals))
    }

    /// Reference-schema categorical: one class per distinct value, ascending.
    fn expand_valued_classes(&self) -> Result<Expanded, String> {
        let (prompts, values, names) = match (&self.testers, &self.tester_values) {
            (Some(_), Some(v)) => (self.prompt_list()?, v, ("testers", "tester_values")),
            (Some(_), None) => return Err("`testers` of a categorical task need `tester_values` (the class value of each)".into()),
            (None, Some(_)) => return Err("`tester_values` without `testers`".into()),
            (None, None) => match &self.values {
                Some(v) => (&self.label_sources[..], v, ("label_sources", "values")),
                None => return Err("`label_sources` of a categorical task need `values` (the class value of each)".into()),
            },
        };
        if prompts.len() != values.len() {
            return Err(format!("{} {} but {} {}: one value per prompt", prompts.len(), names.0, values.len(), names.1));
        }
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(format!("`{}` holds {v}: class values are finite numbers", names.1));
        }
        let mut distinct: Vec<f64> = values.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        let mapping = self.value_mapping.clone().unwrap_or_default();
        let mut classes: Vec<(String, Vec<String>)> = Vec::with_capacity(distinct.len());
        for v in distinct {
            let key = format_value(v);
            let name = mapping.get(&key).cloned().unwrap_or(key);
            if classes.iter().any(|(n, _)| *n == name) {
                return Err(format!("two class values are both named '{name}' by `value_mapping`"));
            }
            let members = prompts.iter().zip(values).filter(|(_, x)| **x == v).map(|(p, _)| p.clone()).collect();
            classes.push((name, members));
        }
        if classes.len() < 2 {
            return Err(format!("a categorical task needs two or more distinct values in `{}`", names.1));
        }
        Ok(Expanded::Categorical(classes))
    }

    /// The manifest names of this task's truth: the task's name, its `labels`, and those of the
    /// built-in task of the same name (so a user's `ejection_fraction` task also reads `EF`).
    pub fn label_names(&self, task: &str) -> Vec<String> {
        let mut names = vec![task.to_ascii_lowercase()];
        let builtin = default_prompts().remove(task).map(|t| t.labels).unwrap_or_default();
        for n in self.labels.iter().chain(&builtin) {
            let n = n.to_ascii_lowercase();
            if !names.contains(&n) {
                names.push(n);
            }
        }
        names
    }
}

/// A value as a report writes it: integers without a decimal point.
pub fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// An insertion-ordered map for categorical classes (a JSON object keeps its order).
pub mod indexmap_like {
    use serde::de::{MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Class name → prompts, in file order.
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct OrderedMap(pub Vec<(String, Vec<String>)>);

    impl Serialize for OrderedMap {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for (k, v) in &self.0 {
                m.serialize_entry(k, v)?;
            }
            m.end()
        }
    }

    impl<'de> Deserialize<'de> for OrderedMap {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = OrderedMap;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object of class name → list of prompts")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<OrderedMap, A::Error> {
                    let mut out = Vec::new();
                    while let Some((k, v)) = a.next_entry::<String, Vec<String>>()? {
                        out.push((k, v));
                    }
                    Ok(OrderedMap(out))
                }
            }
            d.deserialize_map(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn refuses_what_is_not_a_regular_file() {
        let e = load(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.contains("/dev/null") && e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn the_default_prompt_file_parses_and_covers_the_paper_families() {
        let f = parse(DEFAULT_PROMPTS, Path::new("default")).unwrap_or_default();
        for t in ["ejection_fraction", "pulmonary_artery_pressure", "pacemaker", "impella", "tavr", "mitraclip", "pericardial_effusion"] {
            assert!(f.contains_key(t), "{t}");
        }
        match f["ejection_fraction"].expand() {
            Ok(Expanded::Regression(texts, values)) => {
                assert_eq!(texts.len(), 2 * 101);
                assert_eq!(texts[35], "LEFT VENTRICULAR EJECTION FRACTION IS 35 %.");
                assert_eq!(values[35], 35.0);
            }
            other => panic!("{other:?}"),
        }
        match f["pericardial_effusion"].expand() {
            Ok(Expanded::Categorical(c)) => assert_eq!(c[0].0, "none", "classes keep file order"),
            other => panic!("{other:?}"),
        }
        // The reference's pacemaker rule: present when the score is > 0.298.
        assert_eq!(f["pacemaker"].threshold, Some(0.298));
    }

    #[test]
    fn bad_prompt_files_are_refused_with_the_task_named() {
        let bad = [
            (r#"{"ef": {"mode": "regression", "prompts": []}}"#, "needs prompts"),
            (r#"{"ef": {"mode": "regression", "prompts": ["A", "B"], "values": [1]}}"#, "one value each"),
            (r#"{"x": {"mode": "categorical", "classes": {"a": ["A"]}}}"#, "two or more classes"),
            (r#"{"x": {"mode": "maybe", "prompts": ["A"]}}"#, "task 'x': not a prompt task: unknown variant `maybe`"),
            (r#"{}"#, "no tasks"),
            (r#"[1]"#, "not a prompt file"),
        ];
        for (text, want) in bad {
            let e = parse(text, Path::new("p.json")).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want) && e.contains("p.json"), "{text}: {e}");
        }
        let ok = parse(r#"{"ef": {"mode": "regression", "prompts": ["EF 10", "EF 20"], "values": [10, 20]}}"#, Path::new("p"));
        assert!(ok.is_ok());
    }

    /// Our test file in the reference's schema (our own sentences).
    const REFERENCE_SCHEMA: &str = include_str!("../../tests/fixtures/prompts_reference_schema.json");

    fn expanded(file: &PromptFile, task: &str) -> Expanded {
        file[task].expand().unwrap_or_else(|e| panic!("{task}: {e}"))
    }

    fn class(name: &str, prompts: &[&str]) -> (String, Vec<String>) {
        (name.to_owned(), prompts.iter().map(|p| (*p).to_owned()).collect())
    }

    #[test]
    fn the_reference_schema_expands_as_ours_would() {
        let f = parse(REFERENCE_SCHEMA, Path::new("ref.json")).unwrap();
        assert_eq!(f.len(), 6);
        // Regression: `range` [0, 100] fills <#> with 0, 1, ..., 100 in each label source.
        let Expanded::Regression(texts, values) = expanded(&f, "ejection_fraction") else { panic!("regression") };
        assert_eq!((texts.len(), values.len()), (2 * 101, 2 * 101));
        assert_eq!(texts[0], "LEFT VENTRICULAR EJECTION FRACTION IS 0%.");
        assert_eq!(texts[100], "LEFT VENTRICULAR EJECTION FRACTION IS 100%.");
        assert_eq!((texts[101 + 35].as_str(), values[101 + 35]), ("THE LEFT VENTRICULAR EJECTION FRACTION IS ESTIMATED AT 35%.", 35.0));
        let Expanded::Regression(texts, values) = expanded(&f, "pulmonary_artery_pressure") else { panic!("regression") };
        assert_eq!(values, (10..=90).map(f64::from).collect::<Vec<_>>(), "range bounds both included");
        assert_eq!(
            (texts[0].as_str(), texts[80].as_str()),
            ("ESTIMATED PA SYSTOLIC PRESSURE IS 10MMHG.", "ESTIMATED PA SYSTOLIC PRESSURE IS 90MMHG.")
        );
        // Binary: testers replace label_sources when present.
        assert_eq!(expanded(&f, "pacemaker"), Expanded::Binary(vec!["A PACING WIRE IS SEEN IN THE RIGHT VENTRICLE.".into()]));
        assert_eq!(
            expanded(&f, "tavr"),
            Expanded::Binary(vec![
                "A TRANSCATHETER AORTIC VALVE PROSTHESIS IS PRESENT.".into(),
                "THE PROSTHETIC AORTIC VALVE IS WELL SEATED.".into()
            ])
        );
        // Categorical: one class per value, ascending, named by value_mapping; "4" has no prompt.
        assert_eq!(
            expanded(&f, "pericardial_effusion"),
            Expanded::Categorical(vec![
                class("none", &["NO PERICARDIAL EFFUSION."]),
                class("small", &["TRACE PERICARDIAL EFFUSION.", "SMALL PERICARDIAL EFFUSION."]),
                class("moderate", &["MODERATE PERICARDIAL EFFUSION."]),
                class("large", &["LARGE PERICARDIAL EFFUSION WITH TAMPONADE PHYSIOLOGY."]),
            ])
        );
        // Testers with tester_values instead; value 3 has no name but its own; "moderately
        // dilated" (2) has no tester, so it is no class.
        assert_eq!(
            expanded(&f, "left_ventricle_size"),
            Expanded::Categorical(vec![
                class("normal", &["NORMAL LEFT VENTRICULAR SIZE."]),
                class("mildly dilated", &["THE LEFT VENTRICLE IS MILDLY DILATED."]),
                class("3", &["THE LEFT VENTRICLE IS SEVERELY DILATED."]),
            ])
        );
        // A task named like a built-in one still reads the built-in's manifest names.
        assert!(f["ejection_fraction"].label_names("ejection_fraction").contains(&"ef".to_owned()));
    }

    #[test]
    fn reference_schema_mistakes_are_refused_with_the_task_and_field_named() {
        let bad = [
            (
                r#"{"lvef": {"mode": "regression", "label_sources": ["EF <#>"], "range": [0, 100], "step": 5}}"#,
                "task 'lvef'",
                "unknown field `step`",
            ),
            (r#"{"pacer": {"mode": "binary", "prompts": ["A"], "label_sources": ["B"]}}"#, "task 'pacer'", "use one schema per task"),
            (r#"{"pacer": {"mode": "binary", "label_sources": ["A"], "testers": []}}"#, "task 'pacer'", "`testers` is empty"),
            (r#"{"ef": {"mode": "regression", "label_sources": ["EF <#>"], "range": [60, 20]}}"#, "task 'ef'", "lo ≤ hi"),
            (r#"{"ef": {"mode": "regression", "label_sources": ["EF <#>"], "range": [0, 100], "values": [1]}}"#, "task 'ef'", "not both"),
            (r#"{"ef": {"mode": "regression", "label_sources": ["EF <#>"], "range": [0.5, 100]}}"#, "task 'ef'", "not a prompt task"),
            (r#"{"pe": {"mode": "categorical", "label_sources": ["A", "B"], "values": [0]}}"#, "task 'pe'", "2 label_sources but 1 values"),
            (r#"{"pe": {"mode": "categorical", "label_sources": ["A", "B"]}}"#, "task 'pe'", "need `values`"),
            (
                r#"{"pe": {"mode": "categorical", "label_sources": ["A", "B"], "values": [1, 1]}}"#,
                "task 'pe'",
                "two or more distinct values",
            ),
            (
                r#"{"pe": {"mode": "categorical", "label_sources": ["A"], "values": [0], "testers": ["B", "C"]}}"#,
                "task 'pe'",
                "need `tester_values`",
            ),
            (
                r#"{"pe": {"mode": "categorical", "label_sources": ["A", "B"], "values": [0, 1], "tester_values": [0]}}"#,
                "task 'pe'",
                "without `testers`",
            ),
            (
                r#"{"pe": {"mode": "categorical", "label_sources": ["A", "B"], "values": [0, 1], "value_mapping": {"0": "x", "1": "x"}}}"#,
                "task 'pe'",
                "both named 'x'",
            ),
        ];
        for (text, task, want) in bad {
            let e = parse(text, Path::new("p.json")).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("p.json") && e.contains(task) && e.contains(want), "{text}: {e}");
        }
    }
}
