//! Prompt files: task name → mode and prompts, the shape the reference's prompt lists take
//! (`{"task": {"mode": ..., "prompts": [...], "values": [...]}}`), plus the default prompt file
//! we wrote ourselves in report-template style (`default_prompts.json`, embedded in the binary).
//!
//! - `binary`: `prompts` describe the finding; the score is their mean cosine with the frames.
//! - `regression`: each prompt holding `<#>` is filled with every value of `values` (default
//!   0..=100); a prompt without `<#>` needs `values` of the same length, one value per prompt.
//! - `categorical`: `classes` maps each class name to its prompts (one-vs-rest binary scores).
//!
//! Optional: `description`, `unit`, `labels` (names under which a label manifest gives the
//! truth: a column, or an entry of a `devices` list), `threshold` (binary: a score at or above
//! it reads as present).

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

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

/// One task as written in a prompt file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptTask {
    /// How the prompts are read.
    pub mode: Mode,
    /// Binary and regression prompts.
    #[serde(default)]
    pub prompts: Vec<String>,
    /// Regression values (default 0..=100).
    #[serde(default)]
    pub values: Option<Vec<f64>>,
    /// Categorical classes in file order.
    #[serde(default)]
    pub classes: Option<Classes>,
    /// What the task reads.
    #[serde(default)]
    pub description: Option<String>,
    /// Unit of a regression value.
    #[serde(default)]
    pub unit: Option<String>,
    /// Manifest names carrying this task's truth (default: the task name).
    #[serde(default)]
    pub labels: Vec<String>,
    /// Binary: a score at or above this reads as present.
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
    let text = std::fs::read_to_string(path).map_err(|e| Error::Invalid(format!("{}: cannot read prompt file: {e}", path.display())))?;
    parse(&text, path)
}

/// Parses and checks prompt-file text (`path` names it in errors).
pub fn parse(text: &str, path: &Path) -> Result<PromptFile, Error> {
    let file: PromptFile = serde_json::from_str(text).map_err(|e| Error::Invalid(format!("{}: not a prompt file: {e}", path.display())))?;
    if file.is_empty() {
        return Err(Error::Invalid(format!("{}: the prompt file has no tasks", path.display())));
    }
    for (name, t) in &file {
        t.expand().map_err(|e| Error::Invalid(format!("{}: task '{name}': {e}", path.display())))?;
    }
    Ok(file)
}

impl PromptTask {
    /// The texts to embed, checked.
    pub fn expand(&self) -> Result<Expanded, String> {
        match self.mode {
            Mode::Binary => {
                if self.prompts.is_empty() {
                    return Err("a binary task needs prompts".into());
                }
                Ok(Expanded::Binary(self.prompts.clone()))
            }
            Mode::Regression => {
                if self.prompts.is_empty() {
                    return Err("a regression task needs prompts".into());
                }
                let values = self.values.clone().unwrap_or_else(|| (0..=100).map(f64::from).collect());
                if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
                    return Err("regression values must be finite numbers".into());
                }
                let (slotted, plain): (Vec<&String>, Vec<&String>) = self.prompts.iter().partition(|p| p.contains("<#>"));
                let (mut texts, mut vals) = (Vec::new(), Vec::new());
                for p in slotted {
                    for v in &values {
                        texts.push(p.replace("<#>", &format_value(*v)));
                        vals.push(*v);
                    }
                }
                if !plain.is_empty() {
                    if plain.len() != self.prompts.len() || plain.len() != values.len() {
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
            Mode::Categorical => {
                let classes = self.classes.as_ref().map(|c| c.0.clone()).unwrap_or_default();
                if classes.len() < 2 || classes.iter().any(|(_, p)| p.is_empty()) {
                    return Err("a categorical task needs two or more classes, each with prompts".into());
                }
                Ok(Expanded::Categorical(classes))
            }
        }
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
    }

    #[test]
    fn bad_prompt_files_are_refused_with_the_task_named() {
        let bad = [
            (r#"{"ef": {"mode": "regression", "prompts": []}}"#, "needs prompts"),
            (r#"{"ef": {"mode": "regression", "prompts": ["A", "B"], "values": [1]}}"#, "one value each"),
            (r#"{"x": {"mode": "categorical", "classes": {"a": ["A"]}}}"#, "two or more classes"),
            (r#"{"x": {"mode": "maybe", "prompts": ["A"]}}"#, "not a prompt file"),
            (r#"{}"#, "no tasks"),
        ];
        for (text, want) in bad {
            let e = parse(text, Path::new("p.json")).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want) && e.contains("p.json"), "{text}: {e}");
        }
        let ok = parse(r#"{"ef": {"mode": "regression", "prompts": ["EF 10", "EF 20"], "values": [10, 20]}}"#, Path::new("p"));
        assert!(ok.is_ok());
    }
}
