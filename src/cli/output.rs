//! Printing hits as text (their JSON is [`echovault::tasks::search::SearchHit`]'s).

use echovault::index::Hit;
use echovault::tasks::search::HitGroup;

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

/// A group's heading line: rank, best score, what it is, how many hits follow.
pub fn group_header(rank: usize, g: &HitGroup) -> String {
    format!("{:>3}. {:+.4}  {} {}  ({} hits)", rank, g.best(), g.by, g.key, g.hits.len())
}
