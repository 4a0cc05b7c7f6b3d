//! Patient re-identification, clinical transitions and cross-modal retrieval over unit
//! embeddings (DESIGN §6). Similarities are dot products computed in f64, so that an
//! independent implementation ranks exactly alike.

use super::metrics::SplitMix64;
use serde::Serialize;
use std::collections::HashMap;

/// Dot product in f64.
pub fn sim(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
}

/// Pair similarities by relation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReidPairs {
    /// Two videos of the same study.
    pub same_study: Vec<f64>,
    /// Same patient, different studies.
    pub same_patient: Vec<f64>,
    /// Different patients.
    pub different: Vec<f64>,
    /// True when the pairs are a sample (more than `max_pairs` existed).
    pub sampled: bool,
}

/// Similarities of all pairs of videos (i < j), or of `max_pairs` pairs drawn with
/// [`SplitMix64`] from `seed` when there are more (i = below(n), j = below(n − 1), j ≥ i → j + 1).
pub fn reid_pairs(vectors: &[Vec<f32>], patients: &[String], studies: &[String], max_pairs: usize, seed: u64) -> ReidPairs {
    let n = vectors.len();
    let mut out = ReidPairs::default();
    let mut put = |i: usize, j: usize| {
        let s = sim(&vectors[i], &vectors[j]);
        if patients[i] != patients[j] {
            out.different.push(s);
        } else if studies[i] == studies[j] {
            out.same_study.push(s);
        } else {
            out.same_patient.push(s);
        }
    };
    let total = n.saturating_sub(1) * n / 2;
    if total <= max_pairs {
        for i in 0..n {
            for j in i + 1..n {
                put(i, j);
            }
        }
    } else {
        let mut rng = SplitMix64::new(seed);
        for _ in 0..max_pairs {
            let i = rng.below(n);
            let mut j = rng.below(n - 1);
            if j >= i {
                j += 1;
            }
            put(i, j);
        }
        out.sampled = true;
    }
    out
}

/// Mean, `None` when empty.
pub fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// One study in a patient's history.
#[derive(Clone, Debug)]
pub struct Visit {
    /// Patient (any stable key).
    pub patient: String,
    /// Days since 1970-01-01.
    pub day: i64,
    /// Unit study (or video) embedding.
    pub vector: Vec<f32>,
}

/// A clinical event.
#[derive(Clone, Debug)]
pub struct Event {
    /// Patient, as in [`Visit::patient`].
    pub patient: String,
    /// Days since 1970-01-01.
    pub day: i64,
    /// Event type, e.g. `heart_transplant`.
    pub kind: String,
}

/// A visit scored against its reference in one event's window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scored {
    /// Index of the event.
    pub event: usize,
    /// Index of the visit.
    pub visit: usize,
    /// Index of the reference visit (the earliest in the window).
    pub reference: usize,
    /// Similarity to the reference.
    pub similarity: f64,
    /// Dated on or after the event.
    pub after: bool,
}

/// For each event: the patient's visits within `window` days of it, in date order (ties by
/// input order); the earliest is the reference and must precede the event (else the event is
/// passed over); every other visit is scored by its similarity to the reference, labelled
/// after when dated on or after the event.
pub fn transition_scores(visits: &[Visit], events: &[Event], window: i64) -> Vec<Scored> {
    let mut out = Vec::new();
    for (e, ev) in events.iter().enumerate() {
        let mut idx: Vec<usize> =
            (0..visits.len()).filter(|&i| visits[i].patient == ev.patient && (visits[i].day - ev.day).abs() <= window).collect();
        idx.sort_by_key(|&i| (visits[i].day, i));
        let Some((&r, rest)) = idx.split_first() else { continue };
        if visits[r].day >= ev.day {
            continue;
        }
        for &i in rest {
            out.push(Scored {
                event: e,
                visit: i,
                reference: r,
                similarity: sim(&visits[r].vector, &visits[i].vector),
                after: visits[i].day >= ev.day,
            });
        }
    }
    out
}

/// The smallest window (days either side) under which `ev` is scored by
/// [`transition_scores`]: a study of its patient before it and another; `None` when no window
/// would do. `days` are the patient's study days.
fn window_needed(days: &[i64], ev: &Event) -> Option<i64> {
    let mut by_distance: Vec<i64> = days.to_vec();
    by_distance.sort_by_key(|d| ((d - ev.day).abs(), *d));
    // Widening only adds studies, and the earliest of them only moves earlier: the first
    // distance that scores the event is the answer.
    let mut earliest = i64::MAX;
    for (n, d) in by_distance.iter().enumerate() {
        earliest = earliest.min(*d);
        if n >= 1 && earliest < ev.day {
            return Some((d - ev.day).abs());
        }
    }
    None
}

/// Why [`transition_scores`] scored nothing under `window`, and which window would score
/// something: a line for the reader of an empty table.
pub fn window_hint(visits: &[Visit], events: &[Event], window: i64) -> String {
    if events.is_empty() {
        return "no event was read: nothing to score".into();
    }
    let mut days: HashMap<&str, Vec<i64>> = HashMap::new();
    for v in visits {
        days.entry(v.patient.as_str()).or_default().push(v.day);
    }
    let with_studies = events.iter().filter(|e| days.contains_key(e.patient.as_str())).count();
    if with_studies == 0 {
        return format!(
            "none of the {} events' patients has a study among the {} studies: the events' patient ids must match the studies'",
            events.len(),
            visits.len()
        );
    }
    let needed: Vec<i64> = events.iter().filter_map(|e| window_needed(days.get(e.patient.as_str())?, e)).collect();
    match needed.iter().min() {
        None => format!(
            "no event's patient has a study before the event and another study ({with_studies} of {} events have studies): no window would score one",
            events.len()
        ),
        Some(&w) => format!(
            "no study within ±{window} days of any event date (an event needs a study before it and another); the nearest lies {w} days away — \
             widen --window to at least {w} (it would score {} of {} events)",
            needed.iter().filter(|&&n| n <= w).count(),
            events.len()
        ),
    }
}

/// One row of a patient's timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelineRow {
    /// Index of the visit.
    pub visit: usize,
    /// The visit it is compared with (`None` for the first).
    pub reference: Option<usize>,
    /// Similarity to the reference.
    pub similarity: Option<f64>,
    /// A drop: the similarity lies more than `drop` below the median of the timeline's
    /// similarities.
    pub flagged: bool,
}

/// A patient's visits (already in date order) scored against the previous visit, or, with an
/// event day, against the earliest visit in the `window` around it (visits outside the window
/// are left out).
pub fn timeline(visits: &[Visit], event: Option<i64>, window: i64, drop: f64) -> Vec<TimelineRow> {
    let keep: Vec<usize> = match event {
        Some(d) => (0..visits.len()).filter(|&i| (visits[i].day - d).abs() <= window).collect(),
        None => (0..visits.len()).collect(),
    };
    let mut rows: Vec<TimelineRow> = Vec::with_capacity(keep.len());
    for (k, &i) in keep.iter().enumerate() {
        let reference = match (k, event) {
            (0, _) => None,
            (_, Some(_)) => Some(keep[0]),
            (_, None) => Some(keep[k - 1]),
        };
        let similarity = reference.map(|r| sim(&visits[r].vector, &visits[i].vector));
        rows.push(TimelineRow { visit: i, reference, similarity, flagged: false });
    }
    let mut sims: Vec<f64> = rows.iter().filter_map(|r| r.similarity).collect();
    sims.sort_by(f64::total_cmp);
    if let Some(&median) = sims.get((sims.len().max(1) - 1) / 2) {
        for r in &mut rows {
            r.flagged = r.similarity.is_some_and(|s| s < median - drop);
        }
    }
    rows
}

/// Ranks of true pairs in both directions.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RetrievalRanks {
    /// Per video: rank of its report among all reports (1 = first).
    pub video_to_report: Vec<usize>,
    /// Per video: rank of the video among all videos for its report, other videos of the same
    /// report left out of the candidates.
    pub report_to_video: Vec<usize>,
    /// Candidate reports.
    pub reports: usize,
    /// Candidate videos.
    pub videos: usize,
}

/// Ranks with ties counted against the truth: every other candidate scoring at least as high
/// ranks before it. `truth[i]` is video i's report.
pub fn retrieval_ranks(videos: &[Vec<f32>], reports: &[Vec<f32>], truth: &[usize]) -> RetrievalRanks {
    let mut out = RetrievalRanks { reports: reports.len(), videos: videos.len(), ..Default::default() };
    // Scores per report for every video, computed once.
    let scores: Vec<Vec<f64>> = videos.iter().map(|v| reports.iter().map(|r| sim(v, r)).collect()).collect();
    for (i, row) in scores.iter().enumerate() {
        let own = row[truth[i]];
        out.video_to_report.push(1 + row.iter().enumerate().filter(|&(j, &s)| j != truth[i] && s >= own).count());
        let r = truth[i];
        out.report_to_video.push(1 + (0..videos.len()).filter(|&j| j != i && truth[j] != r && scores[j][r] >= own).count());
    }
    out
}

/// Mean of both mean ranks (MCMRR) over the pairs `idx`.
pub fn mcmrr(r: &RetrievalRanks, idx: &[usize]) -> Option<f64> {
    if idx.is_empty() {
        return None;
    }
    let n = idx.len() as f64;
    let a: f64 = idx.iter().map(|&i| r.video_to_report[i] as f64).sum::<f64>() / n;
    let b: f64 = idx.iter().map(|&i| r.report_to_video[i] as f64).sum::<f64>() / n;
    Some((a + b) / 2.0)
}

/// Fraction of `ranks` at or below `k`.
pub fn recall_at(ranks: &[usize], k: usize) -> Option<f64> {
    (!ranks.is_empty()).then(|| ranks.iter().filter(|&&r| r <= k).count() as f64 / ranks.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: f32) -> Vec<f32> {
        vec![a.cos(), a.sin()]
    }

    #[test]
    fn the_window_hint_names_the_smallest_window_that_scores_an_event() {
        let visit = |p: &str, day: i64| Visit { patient: p.into(), day, vector: v(day as f32) };
        let event = |p: &str, day: i64| Event { patient: p.into(), day, kind: "surgery".into() };
        // a: studies 300 days before and 420 after; b: 250 before and 260 before (both before).
        let visits = vec![visit("a", 700), visit("a", 1420), visit("b", 750), visit("b", 740), visit("c", 5000)];
        let events = vec![event("a", 1000), event("b", 1000), event("d", 1000)];
        let hint = window_hint(&visits, &events, 200);
        assert!(hint.contains("±200") && hint.contains("nearest lies 260 days away") && hint.contains("score 1 of 3"), "{hint}");
        // The smallest window that scores, by brute force over transition_scores.
        let first = (0..2000).find(|&w| !transition_scores(&visits, &events, w).is_empty()).unwrap();
        assert_eq!(first, 260);
        // Patients without studies, or with one study only.
        assert!(window_hint(&visits, &[event("d", 1)], 200).contains("must match"));
        assert!(window_hint(&visits, &[event("c", 6000)], 200).contains("no window would score"));
        assert!(window_hint(&visits, &[], 200).contains("no event"));
    }

    #[test]
    fn pairs_fall_into_their_relation() {
        let vs = vec![v(0.0), v(0.1), v(0.2), v(1.5)];
        let p: Vec<String> = ["a", "a", "a", "b"].iter().map(|s| s.to_string()).collect();
        let s: Vec<String> = ["1", "1", "2", "3"].iter().map(|s| s.to_string()).collect();
        let r = reid_pairs(&vs, &p, &s, 100, 1);
        assert_eq!((r.same_study.len(), r.same_patient.len(), r.different.len()), (1, 2, 3));
        assert!(!r.sampled);
        let r = reid_pairs(&vs, &p, &s, 4, 1);
        assert!(r.sampled);
        assert_eq!(r.same_study.len() + r.same_patient.len() + r.different.len(), 4);
    }

    #[test]
    fn transitions_score_against_the_earliest_visit_in_the_window() {
        let visit = |d: i64, a: f32| Visit { patient: "p".into(), day: d, vector: v(a) };
        let visits = vec![visit(100, 0.0), visit(0, 0.0), visit(150, 0.05), visit(400, 1.0), visit(1000, 1.0)];
        let events = vec![Event { patient: "p".into(), day: 300, kind: "heart_transplant".into() }];
        let s = transition_scores(&visits, &events, 200);
        // Window 100..=500: reference day 100; scored: day 150 (before), day 400 (after).
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].reference, s[0].visit, s[0].after), (0, 2, false));
        assert_eq!((s[1].visit, s[1].after), (3, true));
        assert!(s[0].similarity > s[1].similarity);
        // No visit before the event in the window: passed over.
        let late = vec![Event { patient: "p".into(), day: 90, kind: "x".into() }];
        assert!(transition_scores(&visits[2..], &late, 50).is_empty());
    }

    #[test]
    fn timeline_flags_a_drop() {
        let vis: Vec<Visit> = [0.0f32, 0.02, 0.04, 0.9, 0.92]
            .iter()
            .enumerate()
            .map(|(i, a)| Visit { patient: "p".into(), day: i as i64 * 100, vector: v(*a) })
            .collect();
        let rows = timeline(&vis, None, 200, 0.1);
        let flagged: Vec<usize> = rows.iter().filter(|r| r.flagged).map(|r| r.visit).collect();
        assert_eq!(flagged, vec![3]);
        let rows = timeline(&vis, Some(250), 200, 0.1);
        assert_eq!(rows.iter().map(|r| r.visit).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert!(rows[1..].iter().all(|r| r.reference == Some(1)));
    }

    #[test]
    fn retrieval_ranks_leave_sibling_videos_out() {
        // Videos 0 and 1 share report 0; video 2 has report 1.
        let videos = vec![v(0.0), v(0.05), v(1.0)];
        let reports = vec![v(0.02), v(1.0)];
        let r = retrieval_ranks(&videos, &reports, &[0, 0, 1]);
        assert_eq!(r.video_to_report, vec![1, 1, 1]);
        assert_eq!(r.report_to_video, vec![1, 1, 1]);
        assert_eq!(mcmrr(&r, &[0, 1, 2]), Some(1.0));
        let r = retrieval_ranks(&videos, &reports, &[1, 0, 0]);
        assert_eq!(r.video_to_report, vec![2, 1, 2]);
        assert_eq!(recall_at(&r.video_to_report, 1), Some(1.0 / 3.0));
    }
}
