//! Printing hits as text (their JSON is [`echovault::tasks::search::SearchHit`]'s).

use echovault::index::Hit;
use echovault::tasks::search::HitGroup;

/// Removes every `source` field (an ingested file's path: PACS paths often carry patient names
/// or MRNs) from a `--json` answer, unless the user asked for them; with it a DICOMweb item's
/// `url` / `wado_url` (its source, the same string).
pub fn without_paths(mut v: serde_json::Value, with_paths: bool) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                for key in ["source", "url", "wado_url"] {
                    o.remove(key);
                }
                o.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    if !with_paths {
        strip(&mut v);
    }
    v
}

/// A failure's reason as printed beside its input: a reason that starts by naming the input
/// again (`{path}: …`) loses that prefix, so a row reads `path: reason`, never `path: path: …`.
pub fn reason_for<'a>(input: &str, reason: &'a str) -> &'a str {
    match reason.strip_prefix(input).and_then(|r| r.strip_prefix(": ")) {
        Some(rest) if !rest.is_empty() => rest,
        _ => reason,
    }
}

/// One hit as a text line: rank, score, kind, id, then patient key, study date and study (so
/// `timeline --patient KEY` and `search --study ID` can follow), then its source.
pub fn hit_line(rank: usize, h: &Hit) -> String {
    let r = &h.record;
    let mut s = format!(
        "{:>3}. {:+.4}  {:<7} {}  patient {}  {}  study {}  {}",
        rank,
        h.score,
        r.kind.as_str(),
        h.id,
        r.patient.as_deref().unwrap_or("-"),
        r.date.map_or("(no date)".to_owned(), |d| d.to_string()),
        r.study.as_deref().unwrap_or("-"),
        r.source
    );
    if let Some(t) = &r.text {
        let short: String = t.chars().take(80).collect();
        s.push_str(&format!("\n       \"{short}{}\"", if t.chars().count() > 80 { "…" } else { "" }));
    }
    s
}

/// A group's heading line: rank, best score, what it is, how many hits follow.
pub fn group_header(rank: usize, g: &HitGroup) -> String {
    format!("{:>3}. {:+.4}  {} {}  ({} hits)", rank, g.best(), g.by, g.key, g.hits.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dicomweb_hits_url_goes_with_its_source() {
        let url = "http://pacs/dicom-web/studies/1.2/series/1.2.3/instances/1.2.3.4";
        let v = serde_json::json!({"hits": [{"id": "a", "source": url, "url": url, "sop": "1.2.3.4"}], "records": [{"extra": {"wado_url": url}}]});
        let hidden = without_paths(v.clone(), false).to_string();
        assert!(!hidden.contains("dicom-web"), "{hidden}");
        assert!(hidden.contains("\"sop\":\"1.2.3.4\""), "{hidden}");
        assert_eq!(without_paths(v.clone(), true), v);
    }
}
