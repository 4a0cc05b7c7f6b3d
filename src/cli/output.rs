//! Printing hits as text or JSON (the JSON shape later tools rely on).

use echovault::index::Hit;
use serde_json::{json, Value};

/// One hit as JSON: `id`, `kind`, `score`, `source`, and what else is known.
pub fn hit_json(h: &Hit) -> Value {
    let r = &h.record;
    json!({
        "id": h.id.as_str(),
        "kind": r.kind.as_str(),
        "score": h.score,
        "source": r.source,
        "study": r.study,
        "patient": r.patient,
        "date": r.date,
        "text": r.text,
    })
}

/// One hit as a text line.
pub fn hit_line(rank: usize, h: &Hit) -> String {
    let r = &h.record;
    let mut s = format!("{:>3}. {:+.4}  {:<7} {}  {}", rank, h.score, r.kind.as_str(), h.id, r.source);
    if let Some(t) = &r.text {
        let short: String = t.chars().take(80).collect();
        s.push_str(&format!("\n       \"{short}{}\"", if t.chars().count() > 80 { "…" } else { "" }));
    }
    s
}
