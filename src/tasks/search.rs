//! Search as a library call: a [`SearchRequest`] (text, an indexed item, a vector or an embedded
//! video; kind, k, filters, grouping) in, a [`SearchResponse`] out, whose JSON is what
//! `echovault search --json` prints and what the server's `POST /v1/search` returns.
//!
//! Grouped search (`group_by` study or patient) returns the best `group_size` hits of each of
//! the `k` best groups, groups ordered by their best hit, as Qdrant's and Vespa's grouping do.
//! It asks the index for more candidates until `k` groups appear (or the collection is
//! exhausted), then completes each group with a search restricted to that group.

use crate::engine::Engine;
use crate::error::Error;
use echovault_index::{Filter, Hit, Index, ItemId, Kind, Query, SpaceId, StudyDate};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Hits per search when the request gives no `k`.
pub const DEFAULT_K: usize = 10;
/// Hits per group when a grouped request gives no `group_size` (Qdrant's query-groups default).
pub const DEFAULT_GROUP_SIZE: usize = 3;
/// A grouped search first asks the index for this many candidates per hit it may return
/// (`k · group_size`), and multiplies the request by this factor each time too few groups appear.
pub const GROUP_FETCH_FACTOR: usize = 4;
/// The most candidates a grouped search asks the index for (or `k · group_size` when larger):
/// groups beyond are not looked for, so a query whose candidates are dominated by a few groups
/// returns fewer than `k` groups instead of reading the whole collection.
pub const GROUP_MAX_CANDIDATES: usize = 16_384;
/// The most hits (or groups) one search may ask for: larger requests are refused rather than
/// sized into the index's heaps.
pub const MAX_K: usize = 10_000;
/// The longest query text, in characters (the text cache keys on the whole text).
pub const MAX_TEXT_CHARS: usize = 10_000;

/// What to group hits by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// The hit's study (StudyInstanceUID or study id).
    Study,
    /// The hit's pseudonymous patient key.
    Patient,
}

impl GroupBy {
    /// The name used in the CLI and JSON (`study`, `patient`).
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Study => "study",
            GroupBy::Patient => "patient",
        }
    }

    /// The key of a hit's group, `None` when the record lacks it (such hits are left out).
    pub fn key_of(self, h: &Hit) -> Option<&str> {
        match self {
            GroupBy::Study => h.record.study.as_deref(),
            GroupBy::Patient => h.record.patient.as_deref(),
        }
    }

    /// `filter` narrowed to the group `key`.
    fn restrict(self, filter: &Filter, key: &str) -> Filter {
        let mut f = filter.clone();
        match self {
            GroupBy::Study => f.study = Some(key.to_owned()),
            GroupBy::Patient => f.patient = Some(key.to_owned()),
        }
        f
    }
}

impl std::fmt::Display for GroupBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "study" => Ok(GroupBy::Study),
            "patient" => Ok(GroupBy::Patient),
            other => Err(format!("unknown group '{other}' (expected study or patient)")),
        }
    }
}

/// A video the caller decoded and embedded (the CLI's `--video FILE`, an upload to the server).
#[derive(Clone, Debug, PartialEq)]
pub struct VideoQuery {
    /// What the response echoes as the query (the file's path or the upload's name).
    pub name: String,
    /// The video's embedding in the primary model's space.
    pub vector: Vec<f32>,
}

/// One search. Exactly one of `text`, `like`, `vector` and `video` is the query. As JSON (the
/// server's body) the fields are named as the CLI's flags; unknown fields are refused by name;
/// `video` is never read from JSON (the server takes it as an upload).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchRequest {
    /// Free text, embedded with the primary model's text tower.
    pub text: Option<String>,
    /// An indexed item id: its vector is the query, the item itself is left out.
    pub like: Option<String>,
    /// A query vector in the primary model's space.
    pub vector: Option<Vec<f32>>,
    /// An embedded video.
    #[serde(skip)]
    pub video: Option<VideoQuery>,
    /// Kind of items to return.
    #[serde(deserialize_with = "kind_from_name")]
    pub kind: Kind,
    /// Number of hits, or of groups when grouping.
    pub k: usize,
    /// Only this (pseudonymous) patient key.
    pub patient: Option<String>,
    /// Only this study id.
    pub study: Option<String>,
    /// Only studies on or after this day.
    pub since: Option<StudyDate>,
    /// Only studies on or before this day.
    pub until: Option<StudyDate>,
    /// Group the hits by study or patient.
    pub group_by: Option<GroupBy>,
    /// Hits per group (default [`DEFAULT_GROUP_SIZE`]); only with `group_by`.
    pub group_size: Option<usize>,
    /// Exact (brute-force) search instead of the HNSW graph.
    pub exact: bool,
}

impl Default for SearchRequest {
    fn default() -> Self {
        SearchRequest {
            text: None,
            like: None,
            vector: None,
            video: None,
            kind: Kind::Video,
            k: DEFAULT_K,
            patient: None,
            study: None,
            since: None,
            until: None,
            group_by: None,
            group_size: None,
            exact: false,
        }
    }
}

fn kind_from_name<'de, D: Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

fn kind_name<S: Serializer>(k: &Kind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

impl SearchRequest {
    /// The filter the request's `patient`, `study`, `since` and `until` make.
    pub fn filter(&self) -> Filter {
        Filter { patient: self.patient.clone(), study: self.study.clone(), since: self.since, until: self.until, exclude: Vec::new() }
    }

    /// Checks the fields that do not depend on the index; the error names the field.
    pub fn validate(&self) -> Result<(), Error> {
        let given = [self.text.is_some(), self.like.is_some(), self.vector.is_some(), self.video.is_some()];
        match given.iter().filter(|g| **g).count() {
            0 => return Err(Error::Invalid("give a query: one of text, like, vector (or a video)".into())),
            1 => {}
            _ => return Err(Error::Invalid("give only one query: text, like, vector and video exclude each other".into())),
        }
        if self.k == 0 {
            return Err(Error::Invalid("k: must be at least 1".into()));
        }
        if self.k > MAX_K {
            return Err(Error::Invalid(format!("k: at most {MAX_K}")));
        }
        if let Some(t) = &self.text {
            // An empty text embeds to the same vector whatever is indexed: a search that means
            // nothing.
            if t.trim().is_empty() {
                return Err(Error::Invalid("text: empty; give words to search for (e.g. \"severe mitral regurgitation\")".into()));
            }
            if t.chars().count() > MAX_TEXT_CHARS {
                return Err(Error::Invalid(format!("text: at most {MAX_TEXT_CHARS} characters")));
            }
        }
        match (self.group_by, self.group_size) {
            (None, Some(_)) => return Err(Error::Invalid("group_size: only with group_by (study or patient)".into())),
            (Some(_), Some(0)) => return Err(Error::Invalid("group_size: must be at least 1".into())),
            (Some(_), size) => {
                let size = size.unwrap_or(DEFAULT_GROUP_SIZE);
                if self.k.checked_mul(size).is_none_or(|n| n > GROUP_MAX_CANDIDATES) {
                    return Err(Error::Invalid(format!("group_size: k · group_size must be at most {GROUP_MAX_CANDIDATES}")));
                }
            }
            _ => {}
        }
        if let (Some(s), Some(u)) = (self.since, self.until) {
            if s > u {
                return Err(Error::Invalid(format!("since {s} is after until {u}: no day is in between")));
            }
        }
        Ok(())
    }
}

/// What a search searched for, as the response echoes it: `{"text": …}`, `{"like": …}`,
/// `{"video": …}` or `{"vector": {"dim": …}}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryEcho {
    /// Free text.
    Text(String),
    /// An indexed item's id.
    Like(String),
    /// An embedded video's name.
    Video(String),
    /// A vector of this dimension.
    Vector {
        /// Its length.
        dim: usize,
    },
}

/// One hit. As JSON: `id`, `kind`, `score`, `source`, `study`, `patient`, `date`, `text`; for
/// a DICOM video also `series` and `sop` (its Series / SOP Instance UIDs), and for one ingested
/// over DICOMweb `url`, its WADO-RS URL (what a DICOM viewer opens).
#[derive(Clone, Debug, PartialEq)]
pub struct SearchHit(pub Hit);

impl Serialize for SearchHit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (h, r) = (&self.0, &self.0.record);
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", h.id.as_str())?;
        m.serialize_entry("kind", r.kind.as_str())?;
        m.serialize_entry("score", &h.score)?;
        m.serialize_entry("source", &r.source)?;
        m.serialize_entry("study", &r.study)?;
        m.serialize_entry("patient", &r.patient)?;
        m.serialize_entry("date", &r.date)?;
        m.serialize_entry("text", &r.text)?;
        for (key, extra) in [("series", "series_uid"), ("sop", "sop_uid"), ("url", "wado_url")] {
            if let Some(v) = r.extra.get(extra) {
                m.serialize_entry(key, v)?;
            }
        }
        m.end()
    }
}

/// The best hits of one study or patient. As JSON: `{"study" | "patient": key, "hits": […]}`.
#[derive(Clone, Debug, PartialEq)]
pub struct HitGroup {
    /// What the hits share.
    pub by: GroupBy,
    /// The study id or patient key.
    pub key: String,
    /// Its best hits, best first.
    pub hits: Vec<SearchHit>,
}

impl HitGroup {
    /// The best hit's score.
    pub fn best(&self) -> f32 {
        self.hits.first().map_or(f32::NEG_INFINITY, |h| h.0.score)
    }
}

impl Serialize for HitGroup {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry(self.by.as_str(), &self.key)?;
        m.serialize_entry("hits", &self.hits)?;
        m.end()
    }
}

/// A search's answer: `query`, `kind`, `space` and either `hits` or, grouped, `group_by`,
/// `group_size` and `groups`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SearchResponse {
    /// What was searched for.
    pub query: QueryEcho,
    /// Kind of the hits.
    #[serde(serialize_with = "kind_name")]
    pub kind: Kind,
    /// The embedding space searched.
    pub space: String,
    /// The hits, best first (ungrouped searches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hits: Option<Vec<SearchHit>>,
    /// What the hits are grouped by (grouped searches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_by: Option<GroupBy>,
    /// Hits per group at most (grouped searches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_size: Option<usize>,
    /// The groups, ordered by their best hit (grouped searches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<HitGroup>>,
}

/// Searches the engine's primary space; a text query is embedded with its text tower.
pub fn search(engine: &Engine, req: &SearchRequest) -> Result<SearchResponse, Error> {
    search_with(engine, req, &|t| engine.embed_text(t))
}

/// [`search`] with the text embedding supplied by the caller (e.g. through a cache).
pub fn search_with(
    engine: &Engine,
    req: &SearchRequest,
    embed_text: &dyn Fn(&str) -> Result<Vec<f32>, Error>,
) -> Result<SearchResponse, Error> {
    search_in(&engine.index, engine.space, &engine.space_name, req, embed_text)
}

/// [`search`] in the space `space` (named `space_name`) of `index`.
pub fn search_in(
    index: &Index,
    space: SpaceId,
    space_name: &str,
    req: &SearchRequest,
    embed_text: &dyn Fn(&str) -> Result<Vec<f32>, Error>,
) -> Result<SearchResponse, Error> {
    req.validate()?;
    let mut filter = req.filter();
    let (query, vector) = if let Some(t) = &req.text {
        (QueryEcho::Text(t.clone()), embed_text(t)?)
    } else if let Some(id) = &req.like {
        let item = ItemId::from(id.as_str());
        let rec = index.get_item(&item)?.ok_or_else(|| Error::Invalid(format!("like: no item '{id}' in the index")))?;
        let v = index
            .get_vector(space, rec.kind, &item)?
            .ok_or_else(|| Error::Invalid(format!("like: item '{id}' has no vector in space '{space_name}'")))?;
        filter.exclude.push(item);
        (QueryEcho::Like(id.clone()), v)
    } else if let Some(v) = &req.vector {
        (QueryEcho::Vector { dim: v.len() }, v.clone())
    } else if let Some(v) = &req.video {
        (QueryEcho::Video(v.name.clone()), v.vector.clone())
    } else {
        return Err(Error::Invalid("give a query: one of text, like, vector (or a video)".into()));
    };
    let mut q = Query::new(space, req.kind, vector, req.k);
    q.filter = filter;
    q.exact = req.exact;
    let mut out =
        SearchResponse { query, kind: req.kind, space: space_name.to_owned(), hits: None, group_by: None, group_size: None, groups: None };
    match req.group_by {
        None => out.hits = Some(index.search(&q)?.into_iter().map(SearchHit).collect()),
        Some(by) => {
            let size = req.group_size.unwrap_or(DEFAULT_GROUP_SIZE);
            out.groups = Some(group_search(index, &q, by, size)?);
            out.group_by = Some(by);
            out.group_size = Some(size);
        }
    }
    Ok(out)
}

/// The best `size` hits of each of the `q.k` best groups of `by` for the query `q` (its kind,
/// filter and exactness), groups ordered by their best hit. Hits whose record lacks the group's
/// key are left out. Fewer than `q.k` groups when the collection holds fewer, or when the
/// [`GROUP_MAX_CANDIDATES`] best candidates fall into fewer.
pub fn group_search(index: &Index, q: &Query, by: GroupBy, size: usize) -> Result<Vec<HitGroup>, Error> {
    let (k, size) = (q.k, size.max(1));
    let want = k.saturating_mul(size);
    let cap = GROUP_MAX_CANDIDATES.max(want);
    let mut fetch = want.saturating_mul(GROUP_FETCH_FACTOR).min(cap);
    let (mut groups, exhausted) = loop {
        let mut cq = q.clone();
        cq.k = fetch;
        let hits = index.search(&cq)?;
        let exhausted = hits.len() < fetch;
        let groups = group_hits(hits, by, k, size);
        if groups.len() >= k || exhausted || fetch >= cap {
            break (groups, exhausted);
        }
        fetch = fetch.saturating_mul(GROUP_FETCH_FACTOR).min(cap);
    };
    if !exhausted {
        // A group with fewer than `size` candidates may hold more further down: ask for them.
        for g in groups.iter_mut().filter(|g| g.hits.len() < size) {
            let mut gq = q.clone();
            gq.k = size;
            gq.filter = by.restrict(&q.filter, &g.key);
            let mut all: Vec<Hit> = g.hits.drain(..).map(|h| h.0).collect();
            for h in index.search(&gq)? {
                if !all.iter().any(|x| x.id == h.id) {
                    all.push(h);
                }
            }
            all.sort_by(|a, b| b.score.total_cmp(&a.score));
            all.truncate(size);
            g.hits = all.into_iter().map(SearchHit).collect();
        }
        groups.sort_by(|a, b| b.best().total_cmp(&a.best()));
    }
    Ok(groups)
}

/// Hits (best first) into the first `k` groups they reach, at most `size` hits each.
pub fn group_hits(hits: Vec<Hit>, by: GroupBy, k: usize, size: usize) -> Vec<HitGroup> {
    let mut groups: Vec<HitGroup> = Vec::new();
    for h in hits {
        let Some(key) = by.key_of(&h) else { continue };
        match groups.iter().position(|g| g.key == key) {
            Some(i) if groups[i].hits.len() < size => groups[i].hits.push(SearchHit(h)),
            Some(_) => {}
            None if groups.len() < k => groups.push(HitGroup { by, key: key.to_owned(), hits: vec![SearchHit(h)] }),
            None => {}
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use echovault_index::ItemRecord;

    fn hit(id: &str, score: f32, study: Option<&str>) -> Hit {
        let mut r = ItemRecord::new(id, Kind::Video, format!("{id}.avi"));
        r.study = study.map(str::to_owned);
        Hit { id: ItemId::from(id), score, record: r }
    }

    #[test]
    fn requests_parse_with_the_cli_names_and_refuse_unknown_fields() {
        let r: SearchRequest = serde_json::from_str(
            r#"{"text":"mitral","kind":"study","k":3,"since":"2021-02-01","until":"2021-03-01","group_by":"patient","group_size":2}"#,
        )
        .unwrap();
        assert_eq!(r.text.as_deref(), Some("mitral"));
        assert_eq!((r.kind, r.k, r.group_by, r.group_size), (Kind::Study, 3, Some(GroupBy::Patient), Some(2)));
        assert_eq!(r.since.map(|d| d.to_string()).as_deref(), Some("2021-02-01"));
        let d: SearchRequest = serde_json::from_str(r#"{"like":"x"}"#).unwrap();
        assert_eq!((d.kind, d.k, d.exact, d.group_by), (Kind::Video, DEFAULT_K, false, None));
        let e = serde_json::from_str::<SearchRequest>(r#"{"text":"x","limit":3}"#).unwrap_err().to_string();
        assert!(e.contains("unknown field `limit`"), "{e}");
        let e = serde_json::from_str::<SearchRequest>(r#"{"text":"x","kind":"frame"}"#).unwrap_err().to_string();
        assert!(e.contains("unknown kind 'frame'"), "{e}");
        let e = serde_json::from_str::<SearchRequest>(r#"{"text":"x","since":"2021-02-31"}"#).unwrap_err().to_string();
        assert!(e.contains("2021-02-31") && e.contains("28 days"), "{e}");
        let e = serde_json::from_str::<SearchRequest>(r#"{"text":"x","video":"a.avi"}"#).unwrap_err().to_string();
        assert!(e.contains("unknown field `video`"), "{e}");
    }

    #[test]
    fn validation_names_the_field() {
        let base = SearchRequest { text: Some("x".into()), ..SearchRequest::default() };
        assert!(base.validate().is_ok());
        let err = |r: SearchRequest| r.validate().unwrap_err().to_string();
        assert!(err(SearchRequest::default()).contains("give a query"));
        assert!(err(SearchRequest { like: Some("a".into()), ..base.clone() }).contains("only one query"));
        assert!(err(SearchRequest { k: 0, ..base.clone() }).starts_with("k:"));
        assert!(err(SearchRequest { group_size: Some(2), ..base.clone() }).starts_with("group_size:"));
        assert!(err(SearchRequest { group_by: Some(GroupBy::Study), group_size: Some(0), ..base.clone() }).starts_with("group_size:"));
        assert!(err(SearchRequest { k: 1_000_000_000_000, ..base.clone() }).starts_with("k:"));
        assert!(err(SearchRequest { k: MAX_K + 1, ..base.clone() }).starts_with("k:"));
        assert!(SearchRequest { k: MAX_K, ..base.clone() }.validate().is_ok());
        let grouped = SearchRequest { group_by: Some(GroupBy::Patient), ..base.clone() };
        assert!(err(SearchRequest { k: 5_000, group_size: Some(4), ..grouped.clone() }).starts_with("group_size:"));
        assert!(err(SearchRequest { k: 8_000, ..grouped.clone() }).starts_with("group_size:"));
        assert!(err(SearchRequest { k: 2, group_size: Some(usize::MAX), ..grouped.clone() }).starts_with("group_size:"));
        assert!(SearchRequest { k: 4_096, group_size: Some(4), ..grouped }.validate().is_ok());
        assert!(err(SearchRequest { text: Some("x".repeat(MAX_TEXT_CHARS + 1)), ..base.clone() }).starts_with("text:"));
        assert!(SearchRequest { text: Some("é".repeat(MAX_TEXT_CHARS)), ..base.clone() }.validate().is_ok());
        let (s, u) = ("2021-03-01".parse().ok(), "2021-02-01".parse().ok());
        assert!(err(SearchRequest { since: s, until: u, ..base }).contains("after until"));
    }

    #[test]
    fn grouping_keeps_the_first_groups_and_their_best_hits() {
        let hits = vec![
            hit("a1", 0.9, Some("A")),
            hit("b1", 0.8, Some("B")),
            hit("n1", 0.75, None),
            hit("a2", 0.7, Some("A")),
            hit("a3", 0.6, Some("A")),
            hit("c1", 0.5, Some("C")),
            hit("b2", 0.4, Some("B")),
        ];
        let g = group_hits(hits, GroupBy::Study, 2, 2);
        let got: Vec<(&str, Vec<&str>)> = g.iter().map(|g| (g.key.as_str(), g.hits.iter().map(|h| h.0.id.as_str()).collect())).collect();
        assert_eq!(got, vec![("A", vec!["a1", "a2"]), ("B", vec!["b1", "b2"])]);
        let v = serde_json::to_value(&g[1]).unwrap();
        assert_eq!(v["study"], "B");
        assert_eq!(v["hits"][1]["id"], "b2");
        assert_eq!(v.as_object().unwrap().len(), 2);
    }
}
