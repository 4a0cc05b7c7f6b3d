//! Label manifests for evaluations: JSON Lines (one object per video, e.g. a phantom
//! `manifest.jsonl` or an events file), a JSON array of objects, or CSV with a header row — which
//! takes EchoNet-Dynamic's `FileList.csv` as it is (`FileName` without extension, videos in the
//! `Videos/` folder beside it, `EF`, `Split`). Column names are matched case-insensitively.
//!
//! Rows stay maps of column name to value, not a typed struct: the columns an evaluation reads
//! are named by its task (a prompt file's findings, the event and EF columns), not fixed here. CSV is read
//! by the `csv` crate (`ingest::reports::CsvRows`), JSON by serde_json.

use crate::error::Error;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One manifest row.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// 1-based line (JSONL, CSV) or element (JSON array) number.
    pub line: usize,
    /// Fields by lower-case name.
    pub fields: BTreeMap<String, Value>,
}

/// A read manifest.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The file.
    pub path: PathBuf,
    /// Its rows.
    pub rows: Vec<Row>,
}

/// Reads a manifest by its content: `[` starts a JSON array, `{` JSON Lines, anything else CSV.
pub fn read(path: &Path) -> Result<Manifest, Error> {
    let bad = |reason: String| Error::Invalid(format!("{}: {reason}", path.display()));
    let mut f = std::fs::File::open(path).map_err(|e| bad(format!("cannot read manifest: {e}")))?;
    if !f.metadata().map_err(|e| bad(format!("cannot read manifest: {e}")))?.is_file() {
        return Err(bad("cannot read manifest: not a regular file".into()));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut f, &mut text).map_err(|e| bad(format!("cannot read manifest: {e}")))?;
    let text = text.trim_start_matches('\u{feff}');
    let lower = |m: serde_json::Map<String, Value>| -> BTreeMap<String, Value> {
        m.into_iter().map(|(k, v)| (k.trim().to_ascii_lowercase(), v)).collect()
    };
    let mut rows = Vec::new();
    match text.trim_start().chars().next() {
        None => return Err(bad("the manifest is empty".into())),
        Some('[') => {
            let all: Vec<serde_json::Map<String, Value>> =
                serde_json::from_str(text).map_err(|e| bad(format!("not a JSON array of objects: {e}")))?;
            rows.extend(all.into_iter().enumerate().map(|(i, m)| Row { line: i + 1, fields: lower(m) }));
        }
        Some('{') => {
            for (i, l) in text.lines().enumerate() {
                if l.trim().is_empty() {
                    continue;
                }
                let m: serde_json::Map<String, Value> =
                    serde_json::from_str(l).map_err(|e| bad(format!("line {}: not a JSON object: {e}", i + 1)))?;
                rows.push(Row { line: i + 1, fields: lower(m) });
            }
        }
        Some(_) => {
            let csv = crate::ingest::reports::CsvRows::read(text).map_err(bad)?;
            for (line, rec) in csv.rows {
                let fields = csv.header.iter().cloned().zip(rec.iter().map(|c| Value::String(c.to_owned()))).collect();
                rows.push(Row { line: line as usize, fields });
            }
        }
    }
    if rows.is_empty() {
        return Err(bad("the manifest has no rows".into()));
    }
    Ok(Manifest { path: path.to_owned(), rows })
}

/// Names of the column giving a video file.
pub const FILE_COLUMNS: [&str; 4] = ["file", "path", "filename", "video"];

impl Manifest {
    /// Rows whose `split` column equals `split` (case-insensitive); all rows without a filter.
    pub fn split(&self, split: Option<&str>) -> Vec<&Row> {
        self.rows.iter().filter(|r| split.is_none_or(|s| r.text(&["split"]).is_some_and(|v| v.eq_ignore_ascii_case(s)))).collect()
    }

    /// The video a row names, resolved against the manifest's folder: as written, else (a bare
    /// EchoNet `FileName`) `Videos/NAME.avi`, `NAME.avi` or `Videos/NAME`.
    pub fn file(&self, row: &Row) -> Option<PathBuf> {
        let name = row.text(&FILE_COLUMNS)?;
        let base = self.path.parent().unwrap_or(Path::new("."));
        let p = Path::new(&name);
        if p.is_absolute() {
            return Some(p.to_owned());
        }
        let direct = base.join(p);
        if direct.exists() || p.extension().is_some() {
            return Some(direct);
        }
        let candidates = [base.join("Videos").join(format!("{name}.avi")), base.join(format!("{name}.avi")), base.join("Videos").join(p)];
        Some(candidates.iter().find(|c| c.exists()).cloned().unwrap_or(direct))
    }

    /// A row's place for messages: `FILE:LINE`.
    pub fn at(&self, row: &Row) -> String {
        format!("{}:{}", self.path.display(), row.line)
    }
}

impl Row {
    /// The first of `names` present as a non-empty string or number, as text.
    pub fn text(&self, names: &[&str]) -> Option<String> {
        names.iter().find_map(|n| match self.fields.get(*n)? {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Value::Number(x) => Some(x.to_string()),
            _ => None,
        })
    }

    /// The first of `names` holding a number (or a numeric string).
    pub fn number(&self, names: &[&str]) -> Option<f64> {
        names.iter().find_map(|n| match self.fields.get(*n)? {
            Value::Number(x) => x.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
            _ => None,
        })
    }

    /// Whether the finding named by any of `names` is present: a column holding a boolean
    /// (`true/false`, `1/0`, `yes/no`), else a `devices` (or `findings`) list naming it. `None`
    /// when the row says nothing either way.
    pub fn flag(&self, names: &[&str]) -> Option<bool> {
        for n in names {
            match self.fields.get(*n) {
                Some(Value::Bool(b)) => return Some(*b),
                Some(Value::Number(x)) => return x.as_f64().map(|x| x != 0.0),
                Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "y" => return Some(true),
                    "false" | "0" | "no" | "n" => return Some(false),
                    _ => {}
                },
                _ => {}
            }
        }
        let mut listed = None;
        for list in ["devices", "findings"] {
            let items: Vec<String> = match self.fields.get(list) {
                Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_ascii_lowercase)).collect(),
                Some(Value::String(s)) => {
                    s.split([';', ',', '|']).map(|x| x.trim().to_ascii_lowercase()).filter(|x| !x.is_empty()).collect()
                }
                _ => continue,
            };
            let here = names.iter().any(|n| items.iter().any(|i| i == &n.to_ascii_lowercase()));
            listed = Some(listed.unwrap_or(false) || here);
        }
        listed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn refuses_what_is_not_a_regular_file() {
        let e = read(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.contains("/dev/null") && e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn echonet_filelist_jsonl_and_flags() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(dir.path().join("Videos")).unwrap_or_default();
        std::fs::write(dir.path().join("Videos/0X1A.avi"), b"").unwrap_or_default();
        let csv = dir.path().join("FileList.csv");
        std::fs::write(&csv, "FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split\r\n0X1A,55.2,1,2,112,112,50,100,TEST\r\n0X2B,30,1,2,112,112,50,100,TRAIN\r\n").unwrap_or_default();
        let m = read(&csv).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.rows.len(), 2);
        let test = m.split(Some("test"));
        assert_eq!(test.len(), 1);
        assert_eq!(test[0].number(&["ef"]), Some(55.2));
        assert_eq!(m.file(test[0]), Some(dir.path().join("Videos/0X1A.avi")));
        let jl = dir.path().join("m.jsonl");
        std::fs::write(
            &jl,
            "{\"file\": \"a.avi\", \"devices\": [\"pacemaker\"], \"Impella\": false}\n\n{\"file\": \"b.avi\", \"devices\": []}\n",
        )
        .unwrap_or_default();
        let m = read(&jl).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.rows[0].flag(&["pacemaker", "pacer"]), Some(true));
        assert_eq!(m.rows[0].flag(&["impella"]), Some(false));
        assert_eq!(m.rows[1].flag(&["pacemaker"]), Some(false));
        let both = Row {
            line: 1,
            fields: [("devices".to_owned(), serde_json::json!(["pacemaker"])), ("findings".to_owned(), serde_json::json!("effusion; lvh"))]
                .into(),
        };
        assert_eq!(both.flag(&["effusion"]), Some(true), "every list is looked at");
        assert_eq!(both.flag(&["impella"]), Some(false));
        assert_eq!(m.rows[1].line, 3);
        // CSV through the csv crate: quoted commas and line breaks, rows numbered by their line,
        // a short row refused with its line.
        std::fs::write(&csv, "File,Findings\n\"a, b.avi\",\"effusion;\nlvh\"\nc.avi,none\n").unwrap_or_default();
        let m = read(&csv).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 4]);
        assert_eq!(m.rows[0].text(&["file"]).as_deref(), Some("a, b.avi"));
        assert_eq!(m.rows[0].flag(&["lvh"]), Some(true));
        std::fs::write(&csv, "file,ef\na.avi,50\nb.avi\n").unwrap_or_default();
        let e = read(&csv).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("FileList.csv") && e.contains("line 3") && e.contains("1 fields, the header has 2"), "{e}");
        std::fs::write(&jl, "{\"file\": 1}\nnot json\n").unwrap_or_default();
        let e = read(&jl).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("m.jsonl") && e.contains("line 2"), "{e}");
    }
}
