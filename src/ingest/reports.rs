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

/// One JSON Lines report as written: ids and dates as strings or numbers, each field under its
/// name or an alias (a line naming one field twice, e.g. `study` and `study_uid`, is refused).
#[derive(Deserialize)]
struct JsonReport {
    #[serde(default, alias = "study_uid", alias = "study_id")]
    study: Option<Scalar>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default, alias = "study_date")]
    date: Option<Scalar>,
    #[serde(default, alias = "patient_id")]
    patient: Option<Scalar>,
}

/// A string or a number, as JSON writers emit ids.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Number(serde_json::Number),
}

impl Scalar {
    /// The value as trimmed text; a blank string is absent (never one shared empty id).
    fn text(self) -> Option<String> {
        match self {
            Scalar::Text(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
            Scalar::Number(n) => Some(n.to_string()),
        }
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<ReportEntry>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    let mut lines = StudyLines::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: &str| Error::media(path, format!("line {}: {what}", i + 1));
        // serde would also read a struct from an array: only objects are reports.
        if !line.trim_start().starts_with('{') {
            return Err(bad("not a JSON object"));
        }
        let r: JsonReport = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        let study = r.study.and_then(Scalar::text).ok_or_else(|| bad("no study id"))?;
        let text = r.text.ok_or_else(|| bad("no text"))?;
        let date = r.date.and_then(Scalar::text).map(|d| d.parse::<StudyDate>()).transpose().map_err(|e| bad(&format!("date: {e}")))?;
        lines.first(path, &study, i + 1)?;
        out.push(ReportEntry { study, text, date, patient: r.patient.and_then(Scalar::text) });
    }
    Ok(out)
}

/// One CSV report row, by the (lower-cased) header's column names and their aliases; columns
/// of other names are ignored, empty fields are absent.
#[derive(Deserialize)]
struct CsvReport {
    #[serde(default, alias = "study_uid", alias = "study_id", alias = "studyinstanceuid")]
    study: Option<String>,
    #[serde(default, alias = "report")]
    text: Option<String>,
    #[serde(default, alias = "study_date")]
    date: Option<String>,
    #[serde(default, alias = "patient_id", alias = "mrn")]
    patient: Option<String>,
}

fn read_csv(path: &Path) -> Result<Vec<ReportEntry>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let csv = CsvRows::read(&text).map_err(|e| Error::media(path, e))?;
    if csv.header.is_empty() {
        return Err(Error::media(path, "empty CSV (a header row is needed)"));
    }
    let has = |names: &[&str]| csv.header.iter().any(|h| names.contains(&h.as_str()));
    if !has(&["study", "study_uid", "study_id", "studyinstanceuid"]) {
        return Err(Error::media(path, format!("no study column in the header {:?}", csv.header)));
    }
    if !has(&["text", "report"]) {
        return Err(Error::media(path, format!("no text column in the header {:?}", csv.header)));
    }
    let header = csv::StringRecord::from(csv.header.clone());
    let mut out = Vec::new();
    let mut lines = StudyLines::default();
    for (line, row) in &csv.rows {
        let bad = |what: String| Error::media(path, format!("line {line}: {what}"));
        let r: CsvReport = row.deserialize(Some(&header)).map_err(|e| bad(e.to_string()))?;
        let study = r.study.filter(|s| !s.is_empty()).ok_or_else(|| bad("no study id".into()))?;
        let text = r.text.ok_or_else(|| bad("no text".into()))?;
        let date = r.date.filter(|d| !d.is_empty()).map(|d| d.parse::<StudyDate>()).transpose().map_err(|e| bad(format!("date: {e}")))?;
        lines.first(path, &study, *line as usize)?;
        out.push(ReportEntry { study, text, date, patient: r.patient.filter(|p| !p.is_empty()) });
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

/// A CSV file read with the `csv` crate (RFC 4180: quoted fields may hold commas, quotes and
/// line breaks; CRLF or LF rows): the header's names trimmed and lower-cased, then every row
/// that is not blank with the line it starts on, its fields trimmed.
#[derive(Debug)]
pub(crate) struct CsvRows {
    /// Column names, lower-case.
    pub header: Vec<String>,
    /// (line, fields).
    pub rows: Vec<(u64, csv::StringRecord)>,
}

impl CsvRows {
    /// Reads `text` (a leading byte-order mark is dropped). A row with another number of fields
    /// than the header, or a quoted field that is never closed, is an error naming its line.
    pub(crate) fn read(text: &str) -> Result<CsvRows, String> {
        let text = text.trim_start_matches('\u{feff}');
        let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
        let header: Vec<String> = reader.headers().map_err(|e| csv_error(&e))?.iter().map(|h| h.to_ascii_lowercase()).collect();
        let mut rows = Vec::new();
        for r in reader.records() {
            let r = r.map_err(|e| csv_error(&e))?;
            if r.iter().all(str::is_empty) {
                continue;
            }
            rows.push((r.position().map_or(0, csv::Position::line), r));
        }
        if ends_in_open_quote(text) {
            let line = rows.last().map_or(1, |(l, _)| *l);
            return Err(format!("line {line}: unterminated quoted field (it would take the rest of the file)"));
        }
        Ok(CsvRows { header, rows })
    }
}

/// The csv crate's error in our words: the line first.
fn csv_error(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { pos, expected_len, len } => {
            let line = pos.as_ref().map_or(0, csv::Position::line);
            format!("line {line}: {len} fields, the header has {expected_len}")
        }
        _ => e.to_string(),
    }
}

/// True when `text` ends inside a quoted field, which the csv crate closes silently at the end
/// of the input (the rest of the file becoming one field): one more quote would then close
/// that field and change no record, where after a closed field it adds a field or a row.
fn ends_in_open_quote(text: &str) -> bool {
    let records = |t: &str| -> Vec<csv::StringRecord> {
        csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(t.as_bytes()).records().filter_map(Result::ok).collect()
    };
    !text.is_empty() && records(text) == records(&format!("{text}\""))
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
    fn csv_keeps_carriage_returns_inside_quotes_and_names_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.csv");
        // CRLF rows; a CR LF inside a quoted report is the report's own text.
        std::fs::write(&p, "\u{feff}Study_ID , Report\r\n1.2,\"line one\r\nline two\"\r\n\r\n3.4,  padded  \r\n").unwrap();
        let r = read_reports(&p).unwrap();
        assert_eq!(r.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(), vec!["line one\r\nline two", "padded"]);
        assert_eq!(r[0].study, "1.2");
        // A row with a field too many or too few is refused with its line, not read shifted.
        std::fs::write(&p, "study,text\n1,ok\n2,a,b\n").unwrap();
        let e = read_reports(&p).unwrap_err().to_string();
        assert!(e.contains("r.csv") && e.contains("line 3") && e.contains("3 fields, the header has 2"), "{e}");
        // An empty text is no report.
        std::fs::write(&p, "study,text\n1,\n").unwrap();
        let e = read_reports(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("no text"), "{e}");
        // A quote left open in the middle would swallow the rows after it.
        std::fs::write(&p, "study,text\n1,\"open\n2,x\n3,y\n").unwrap();
        let e = read_reports(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("unterminated"), "{e}");
        // An escaped quote at the very end still closes.
        std::fs::write(&p, "study,text\n1,\"say \"\"hi\"\"\"").unwrap();
        assert_eq!(read_reports(&p).unwrap()[0].text, "say \"hi\"");
    }

    #[test]
    fn jsonl_fields_are_typed_with_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let jl = dir.path().join("r.jsonl");
        std::fs::write(&jl, "{\"study_uid\":\"1.2\",\"text\":\"t\",\"study_date\":20210228,\"patient_id\":null,\"extra\":[1]}\n").unwrap();
        let r = read_reports(&jl).unwrap();
        assert_eq!((r[0].study.as_str(), r[0].date.unwrap().to_string(), r[0].patient.clone()), ("1.2", "2021-02-28".into(), None));
        for (line, why) in [
            ("{\"study\":\"a\",\"study_uid\":\"b\",\"text\":\"t\"}", "duplicate field"),
            ("{\"study\":\"a\",\"text\":5}", "invalid type"),
            ("[\"a\",\"t\"]", "not a JSON object"),
            ("{\"study\":\"a\"}", "no text"),
        ] {
            std::fs::write(&jl, format!("{line}\n")).unwrap();
            let e = read_reports(&jl).unwrap_err().to_string();
            assert!(e.contains("r.jsonl") && e.contains("line 1") && e.contains(why), "{line}: {e}");
        }
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
