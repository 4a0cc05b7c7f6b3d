//! Report manifests mapping study ids (for DICOM: the StudyInstanceUID) to report text:
//! - JSON Lines (`.jsonl`): one `{"study": ID, "text": TEXT, "date": "YYYY-MM-DD"?,
//!   "patient": ID?}` per line;
//! - CSV (`.csv`, RFC 4180 quoting, reports may span lines): a header row naming a `study`
//!   column (also `study_uid`, `study_id`, `StudyInstanceUID`), a `text` column (also `report`)
//!   and optionally `date` and `patient` (also `patient_id`, `mrn`);
//!
//! A patient id given here is what links the videos of formats that carry none (AVI, MP4) to
//! their patient; ingest pseudonymises it like a DICOM PatientID before anything is stored.
//! - plain text: a `.txt` file (the study id is its name without extension), or a folder of them.

use crate::error::Error;
use echovault_index::StudyDate;
use serde::Deserialize;
use std::path::Path;

/// One report of a manifest. Its `Debug` redacts the raw patient id (as
/// [`crate::media::dicom::PatientId`]'s does), so no log or panic message prints it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct ReportEntry {
    /// Study id the report belongs to.
    pub study: String,
    /// Report text.
    pub text: String,
    /// Study date.
    #[serde(default)]
    pub date: Option<StudyDate>,
    /// The patient's id (raw: pseudonymised at ingest, never stored as given).
    #[serde(default)]
    pub patient: Option<String>,
}

impl std::fmt::Debug for ReportEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportEntry")
            .field("study", &self.study)
            .field("text", &self.text)
            .field("date", &self.date)
            .field("patient", &self.patient.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Reads reports from a JSONL or CSV manifest, a `.txt` file or a folder of `.txt` files. A
/// malformed line or row is an error naming it; so is a study named twice (which of two reports
/// to keep is the manifest writer's call: keeping either would flip the stored report between
/// runs), with both line numbers.
pub fn read_reports(path: &Path) -> Result<Vec<ReportEntry>, Error> {
    if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| Error::io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt")))
            .collect();
        files.sort();
        return files.iter().map(|f| read_text(f)).collect();
    }
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("csv") => read_csv(path),
        Some("txt") => Ok(vec![read_text(path)?]),
        _ => read_jsonl(path),
    }
}

fn read_text(path: &Path) -> Result<ReportEntry, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let study = path.file_stem().and_then(|s| s.to_str()).ok_or_else(|| Error::media(path, "file name is not UTF-8"))?;
    Ok(ReportEntry { study: study.to_owned(), text: text.trim().to_owned(), date: None, patient: None })
}

fn read_jsonl(path: &Path) -> Result<Vec<ReportEntry>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    let mut lines = StudyLines::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::media(path, format!("line {}: {e}", i + 1)))?;
        let bad = |what: &str| Error::media(path, format!("line {}: {what}", i + 1));
        if !v.is_object() {
            return Err(bad("not a JSON object"));
        }
        // Ids may be written as strings or numbers; empty ones count as absent.
        let field = |names: &[&str]| -> Option<String> {
            names.iter().find_map(|n| match v.get(*n)? {
                serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
                serde_json::Value::Number(x) => Some(x.to_string()),
                _ => None,
            })
        };
        let study = field(&["study", "study_uid", "study_id"]).ok_or_else(|| bad("no study id"))?;
        let text = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| bad("no text"))?.to_owned();
        let date = field(&["date", "study_date"]).map(|d| d.parse::<StudyDate>()).transpose().map_err(|e| bad(&format!("date: {e}")))?;
        lines.first(path, &study, i + 1)?;
        out.push(ReportEntry { study, text, date, patient: field(&["patient", "patient_id"]) });
    }
    Ok(out)
}

fn read_csv(path: &Path) -> Result<Vec<ReportEntry>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let rows = parse_csv(text.trim_start_matches('\u{feff}')).map_err(|e| Error::media(path, e))?;
    let mut it = rows.into_iter();
    let (_, header) = it.next().ok_or_else(|| Error::media(path, "empty CSV (a header row is needed)"))?;
    let col = |names: &[&str]| header.iter().position(|h| names.iter().any(|n| h.trim().eq_ignore_ascii_case(n)));
    let study = col(&["study", "study_uid", "study_id", "studyinstanceuid"])
        .ok_or_else(|| Error::media(path, format!("no study column in the header {header:?}")))?;
    let text_col = col(&["text", "report"]).ok_or_else(|| Error::media(path, format!("no text column in the header {header:?}")))?;
    let date = col(&["date", "study_date"]);
    let patient = col(&["patient", "patient_id", "mrn"]);
    let mut out = Vec::new();
    let mut lines = StudyLines::default();
    for (line, row) in it {
        if row.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        let get = |i: usize| row.get(i).map(|s| s.trim().to_owned());
        let s = get(study).filter(|s| !s.is_empty()).ok_or_else(|| Error::media(path, format!("line {line}: no study id")))?;
        let t = get(text_col).ok_or_else(|| Error::media(path, format!("line {line}: no text")))?;
        let date = date
            .and_then(get)
            .filter(|d| !d.is_empty())
            .map(|d| d.parse::<StudyDate>())
            .transpose()
            .map_err(|e| Error::media(path, format!("line {line}: date: {e}")))?;
        lines.first(path, &s, line)?;
        out.push(ReportEntry { study: s, text: t, date, patient: patient.and_then(get).filter(|p| !p.is_empty()) });
    }
    Ok(out)
}

/// The line where each study of a manifest was first named.
#[derive(Default)]
struct StudyLines(std::collections::HashMap<String, usize>);

impl StudyLines {
    /// An error naming both lines when `study` was named before.
    fn first(&mut self, path: &Path, study: &str, line: usize) -> Result<(), Error> {
        match self.0.insert(study.to_owned(), line) {
            Some(before) => Err(Error::media(
                path,
                format!("study {study} has two reports, lines {before} and {line}: keep one per study (or join their texts) and run again"),
            )),
            None => Ok(()),
        }
    }
}

/// RFC 4180 rows as (line number where the row starts, fields).
pub(crate) fn parse_csv(text: &str) -> Result<Vec<(usize, Vec<String>)>, String> {
    let mut rows = Vec::new();
    let (mut row, mut field) = (Vec::new(), String::new());
    let (mut line, mut row_line) = (1usize, 1usize);
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
        }
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => quoted = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push((row_line, std::mem::take(&mut row)));
                row_line = line;
            }
            c => field.push(c),
        }
    }
    if quoted {
        return Err(format!("line {row_line}: unterminated quoted field"));
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push((row_line, row));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_entry_never_prints_its_raw_patient_id() {
        let e = ReportEntry { study: "S1".into(), text: "NORMAL.".into(), date: None, patient: Some("MRN-0042-SMITH".into()) };
        let shown = format!("{e:?} {e:#?}");
        assert!(!shown.contains("MRN-0042") && !shown.contains("SMITH"), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("S1") && shown.contains("NORMAL."), "{shown}");
        let none = format!("{:?}", ReportEntry { patient: None, ..e });
        assert!(none.contains("patient: None"), "{none}");
    }

    #[test]
    fn csv_with_quotes_newlines_and_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.csv");
        std::fs::write(
            &p,
            "StudyInstanceUID,date,report\n1.2.3,2020-01-02,\"Normal LV, \"\"EF\"\" 60%.\nNo effusion.\"\r\n4.5.6,,Severe MR.\n\n",
        )
        .unwrap();
        let r = read_reports(&p).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            ReportEntry {
                study: "1.2.3".into(),
                text: "Normal LV, \"EF\" 60%.\nNo effusion.".into(),
                date: Some("2020-01-02".parse().unwrap()),
                patient: None
            }
        );
        assert_eq!(r[1].date, None);
        std::fs::write(&p, "id,text\n1,x\n").unwrap();
        assert!(read_reports(&p).unwrap_err().to_string().contains("no study column"));
        std::fs::write(&p, "study,text\n1,\"open\n").unwrap();
        assert!(read_reports(&p).unwrap_err().to_string().contains("unterminated"));
    }

    #[test]
    fn a_date_that_is_no_day_refuses_the_manifest_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("r.csv");
        std::fs::write(&csv, "study,date,text\n1,2021-02-28,ok\n2,2021-02-31,bad\n").unwrap();
        let e = read_reports(&csv).unwrap_err().to_string();
        assert!(e.contains("r.csv") && e.contains("line 3") && e.contains("February 2021 has 28 days"), "{e}");
        let jsonl = dir.path().join("r.jsonl");
        std::fs::write(
            &jsonl,
            "{\"study\": \"1\", \"text\": \"ok\", \"date\": \"20210228\"}\n{\"study\": \"2\", \"text\": \"x\", \"date\": \"2021-13-01\"}\n",
        )
        .unwrap();
        let e = read_reports(&jsonl).unwrap_err().to_string();
        assert!(e.contains("r.jsonl") && e.contains("line 2") && e.contains("no month 13"), "{e}");
        std::fs::write(&jsonl, "{\"study\": \"1\", \"text\": \"ok\", \"date\": \"20210228\"}\n").unwrap();
        assert_eq!(read_reports(&jsonl).unwrap()[0].date.unwrap().to_string(), "2021-02-28");
    }

    #[test]
    fn a_study_named_twice_refuses_the_manifest_with_both_lines() {
        let dir = tempfile::tempdir().unwrap();
        let jl = dir.path().join("r.jsonl");
        std::fs::write(&jl, "{\"study\":\"a\",\"text\":\"one\"}\n\n{\"study\":\"b\",\"text\":\"x\"}\n{\"study\":\"a\",\"text\":\"two\"}\n")
            .unwrap();
        let e = read_reports(&jl).unwrap_err().to_string();
        assert!(e.contains("r.jsonl") && e.contains("study a") && e.contains("lines 1 and 4"), "{e}");
        let csv = dir.path().join("r.csv");
        std::fs::write(&csv, "study,text\n1.2,\"first\nreport\"\n3.4,x\n1.2,second\n").unwrap();
        let e = read_reports(&csv).unwrap_err().to_string();
        assert!(e.contains("r.csv") && e.contains("study 1.2") && e.contains("lines 2 and 5"), "{e}");
    }

    #[test]
    fn text_files_and_folders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.2.840.1.txt"), " Mild AR. \n").unwrap();
        std::fs::write(dir.path().join("s2.txt"), "Normal.").unwrap();
        std::fs::write(dir.path().join("ignore.json"), "{}").unwrap();
        let r = read_reports(dir.path()).unwrap();
        assert_eq!(r.iter().map(|e| e.study.as_str()).collect::<Vec<_>>(), vec!["1.2.840.1", "s2"]);
        assert_eq!(r[0].text, "Mild AR.");
        let jl = dir.path().join("r.jsonl");
        std::fs::write(&jl, "{\"study\":\"a\",\"text\":\"t\"}\nnot json\n").unwrap();
        assert!(read_reports(&jl).unwrap_err().to_string().contains("line 2"));
        // Patients: strings or numbers, either key; blank ones are absent (never one shared key).
        std::fs::write(
            &jl,
            "{\"study\":1,\"text\":\"a\",\"patient\":12345}\n{\"study\":\"b\",\"text\":\"b\",\"patient\":\"  \"}\n{\"study\":\"c\",\"text\":\"c\",\"patient_id\":\"MRN-7\"}\n",
        )
        .unwrap();
        let r = read_reports(&jl).unwrap();
        let p: Vec<Option<&str>> = r.iter().map(|e| e.patient.as_deref()).collect();
        assert_eq!(p, vec![Some("12345"), None, Some("MRN-7")]);
        assert_eq!(r[0].study, "1");
        std::fs::write(&jl, "{\"text\":\"no study\"}\n").unwrap();
        assert!(read_reports(&jl).unwrap_err().to_string().contains("no study id"));
    }
}
