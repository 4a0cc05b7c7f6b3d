//! Grouped search (`search --group-by study|patient`, `group_by` in the library and the server)
//! against groupings known by hand and against the brute-force grouping of every stored vector
//! scored by the test itself.

#![allow(clippy::unwrap_used)]

mod common;

use common::{echovault, json};
use echovault::index::{Filter, Index, IndexOptions, ItemId, ItemRecord, Kind, Query, SpaceId, StudyDate};
use echovault::tasks::search::{group_hits, group_search, search_in, GroupBy, SearchRequest, GROUP_FETCH_FACTOR};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::Value;
use std::collections::HashMap;

fn no_text(_: &str) -> echovault::Result<Vec<f32>> {
    Err(echovault::Error::Invalid("no text tower in this test".into()))
}

/// A unit vector of cosine `c` with the first axis.
fn at(c: f32, d: usize) -> Vec<f32> {
    let mut v = vec![0.0; d];
    v[0] = c;
    v[1] = (1.0 - c * c).sqrt();
    v
}

fn record(id: &str, study: Option<&str>, patient: Option<&str>, date: Option<&str>) -> ItemRecord {
    let mut r = ItemRecord::new(id, Kind::Video, format!("/data/{id}.avi"));
    r.study = study.map(str::to_owned);
    r.patient = patient.map(str::to_owned);
    r.date = date.map(|d| d.parse().unwrap());
    r
}

/// (key, [hit ids]) per group of a response's JSON.
fn groups_of(v: &Value, by: &str) -> Vec<(String, Vec<String>)> {
    v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let ids = g["hits"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap().to_owned()).collect();
            (g[by].as_str().unwrap().to_owned(), ids)
        })
        .collect()
}

fn owned(expected: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    expected.iter().map(|(k, ids)| (k.to_string(), ids.iter().map(|s| s.to_string()).collect())).collect()
}

#[test]
fn groups_of_a_hand_built_index_are_the_ones_worked_out_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let index = Index::open(tmp.path(), IndexOptions::default()).unwrap();
    let space = index.ensure_space("hand", 4).unwrap();
    // Cosine with the query [1, 0, 0, 0]: n1 is best but has neither study nor patient.
    let items = [
        ("n1", 0.99, None, None, None),
        ("a1", 0.95, Some("A"), Some("P1"), Some("2021-01-05")),
        ("b1", 0.93, Some("B"), Some("P1"), Some("2021-06-01")),
        ("a2", 0.90, Some("A"), Some("P1"), Some("2021-01-05")),
        ("c1", 0.80, Some("C"), Some("P2"), Some("2022-03-01")),
        ("c2", 0.70, Some("C"), Some("P2"), Some("2022-03-01")),
        ("a3", 0.50, Some("A"), Some("P1"), Some("2021-01-05")),
        ("b2", 0.20, Some("B"), Some("P1"), Some("2021-06-01")),
        ("d1", 0.10, Some("D"), Some("P3"), Some("2023-01-01")),
    ];
    let mut b = index.batch();
    for (id, c, study, patient, date) in items {
        b.put_item(record(id, study, patient, date));
        b.put_vector(space, id, Kind::Video, at(c, 4));
    }
    index.commit(b).unwrap();

    let ask = |extra: Value| -> Value {
        let mut body = serde_json::json!({ "vector": [1.0, 0.0, 0.0, 0.0] });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let req: SearchRequest = serde_json::from_value(body).unwrap();
        serde_json::to_value(search_in(&index, space, "hand", &req, &no_text).unwrap()).unwrap()
    };

    let r = ask(serde_json::json!({ "group_by": "study", "k": 2, "group_size": 2 }));
    assert_eq!(groups_of(&r, "study"), owned(&[("A", &["a1", "a2"]), ("B", &["b1", "b2"])]));
    // The grouped shape: groups instead of hits, each hit as an ungrouped search shows it.
    let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["group_by", "group_size", "groups", "kind", "query", "space"]);
    assert_eq!((&r["group_by"], &r["group_size"], &r["kind"], &r["space"]), (&"study".into(), &2.into(), &"video".into(), &"hand".into()));
    assert_eq!(r["query"], serde_json::json!({ "vector": { "dim": 4 } }));
    let hit = &r["groups"][1]["hits"][1];
    assert_eq!(hit["source"], "/data/b2.avi");
    assert_eq!((&hit["patient"], &hit["date"], &hit["kind"]), (&"P1".into(), &"2021-06-01".into(), &"video".into()));
    assert!((hit["score"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    assert_eq!(r["groups"][0].as_object().unwrap().len(), 2, "a group is its key and its hits");

    // Default group size (3); k groups, not k hits; D is reached although far down.
    let r = ask(serde_json::json!({ "group_by": "study" }));
    assert_eq!(groups_of(&r, "study"), owned(&[("A", &["a1", "a2", "a3"]), ("B", &["b1", "b2"]), ("C", &["c1", "c2"]), ("D", &["d1"])]));
    assert_eq!(r["group_size"], 3);
    let r = ask(serde_json::json!({ "group_by": "patient", "k": 2, "group_size": 3 }));
    assert_eq!(groups_of(&r, "patient"), owned(&[("P1", &["a1", "b1", "a2"]), ("P2", &["c1", "c2"])]));
    // Filters apply before grouping.
    let r = ask(serde_json::json!({ "group_by": "study", "k": 5, "group_size": 1, "since": "2021-02-01", "until": "2022-12-31" }));
    assert_eq!(groups_of(&r, "study"), owned(&[("B", &["b1"]), ("C", &["c1"])]));
    let r = ask(serde_json::json!({ "group_by": "study", "patient": "P2" }));
    assert_eq!(groups_of(&r, "study"), owned(&[("C", &["c1", "c2"])]));

    // Ungrouped: the shape `search --json` always printed.
    let r = ask(serde_json::json!({ "k": 2 }));
    let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["hits", "kind", "query", "space"]);
    let hit_keys: Vec<&str> = r["hits"][0].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(hit_keys, ["date", "id", "kind", "patient", "score", "source", "study", "text"]);
    assert_eq!((&r["hits"][0]["id"], &r["hits"][1]["id"]), (&"n1".into(), &"a1".into()));

    // Mistakes name the field.
    let bad = |body: &str| match serde_json::from_str::<SearchRequest>(body) {
        Err(e) => e.to_string(),
        Ok(req) => search_in(&index, space, "hand", &req, &no_text).unwrap_err().to_string(),
    };
    assert!(bad(r#"{"vector":[1,0,0,0],"group_size":2}"#).starts_with("group_size:"));
    assert!(bad(r#"{"vector":[1,0,0,0],"group_by":"visit"}"#).contains("unknown variant `visit`"));
    assert!(bad(r#"{"vector":[1,0,0,0],"groupby":"study"}"#).contains("unknown field `groupby`"));
    assert!(bad(r#"{"like":"zz","group_by":"study"}"#).contains("like: no item 'zz'"));
}

/// Clustered data: patients around random centres, their studies around the patient's, videos
/// around the study's, so that a query near one patient finds mostly that patient's videos.
struct Clustered {
    ids: Vec<String>,
    records: Vec<ItemRecord>,
    vectors: Vec<Vec<f32>>,
    centres: Vec<Vec<f32>>,
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn clustered(rng: &mut StdRng, d: usize) -> Clustered {
    let noisy = |rng: &mut StdRng, c: &[f32], s: f32| unit(c.iter().map(|x| x + s * rng.random_range(-1.0f32..1.0)).collect());
    let mut out = Clustered { ids: Vec::new(), records: Vec::new(), vectors: Vec::new(), centres: Vec::new() };
    for p in 0..30 {
        let centre = unit((0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect());
        // Patient 0 has far more videos than the others: its videos crowd the first candidates.
        let studies = if p == 0 { 40 } else { 1 + p % 6 };
        for s in 0..studies {
            let sc = noisy(rng, &centre, 0.25);
            let date = format!("20{:02}-{:02}-{:02}", 10 + s % 12, 1 + (p + s) % 12, 1 + (3 * s + p) % 28);
            let videos = if p == 0 { 12 } else { 1 + rng.random_range(0..8usize) };
            for v in 0..videos {
                let id = format!("p{p}-s{s}-v{v}");
                // Some videos lack a study or patient: grouping leaves them out.
                let (study, patient) = match v % 17 {
                    16 => (None, None),
                    15 => (Some(format!("p{p}-s{s}")), None),
                    _ => (Some(format!("p{p}-s{s}")), Some(format!("P{p}"))),
                };
                out.records.push(record(&id, study.as_deref(), patient.as_deref(), Some(&date)));
                out.vectors.push(noisy(rng, &sc, 0.4));
                out.ids.push(id);
            }
        }
        out.centres.push(centre);
    }
    out
}

/// Every stored vector scored against `q` by the test, best first, filtered as `f` says.
fn brute_force(data: &Clustered, q: &[f32], f: &Filter) -> Vec<(usize, f32)> {
    let qn = unit(q.to_vec());
    let mut scored: Vec<(usize, f32)> = (0..data.ids.len())
        .filter(|&i| {
            let r = &data.records[i];
            f.patient.as_ref().is_none_or(|p| r.patient.as_ref() == Some(p))
                && f.study.as_ref().is_none_or(|s| r.study.as_ref() == Some(s))
                && f.since.is_none_or(|s| r.date.is_some_and(|d| d >= s))
                && f.until.is_none_or(|u| r.date.is_some_and(|d| d <= u))
                && !f.exclude.contains(&ItemId(data.ids[i].clone()))
        })
        .map(|i| (i, data.vectors[i].iter().zip(&qn).map(|(a, b)| a * b).sum::<f32>()))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored
}

/// The brute-force grouping: walk the scored items best first, open a group at each new key
/// until `k` are open, keep the first `size` items of each.
fn brute_groups(data: &Clustered, scored: &[(usize, f32)], by: GroupBy, k: usize, size: usize) -> Vec<(String, Vec<(String, f32)>)> {
    let mut out: Vec<(String, Vec<(String, f32)>)> = Vec::new();
    for &(i, s) in scored {
        let r = &data.records[i];
        let key = match by {
            GroupBy::Study => r.study.clone(),
            GroupBy::Patient => r.patient.clone(),
        };
        let Some(key) = key else { continue };
        if let Some(g) = out.iter_mut().find(|g| g.0 == key) {
            if g.1.len() < size {
                g.1.push((data.ids[i].clone(), s));
            }
        } else if out.len() < k {
            out.push((key, vec![(data.ids[i].clone(), s)]));
        }
    }
    out
}

#[test]
fn grouped_search_equals_the_brute_force_grouping_of_every_vector() {
    let mut rng = StdRng::seed_from_u64(17);
    let d = 24;
    let data = clustered(&mut rng, d);
    let tmp = tempfile::tempdir().unwrap();
    let index = Index::open(tmp.path(), IndexOptions::default()).unwrap();
    let space = index.ensure_space("clustered", d).unwrap();
    let mut b = index.batch();
    for (r, v) in data.records.iter().zip(&data.vectors) {
        b.put_item(r.clone());
        b.put_vector(space, r.id.clone(), Kind::Video, v.clone());
    }
    index.commit(b).unwrap();
    assert!(data.ids.len() > 700, "{} videos", data.ids.len());

    let day = |s: &str| Some(s.parse::<StudyDate>().unwrap());
    let filters = [
        Filter::default(),
        Filter { since: day("2012-01-01"), until: day("2018-12-31"), ..Filter::default() },
        Filter { patient: Some("P0".into()), ..Filter::default() },
        Filter { exclude: vec![ItemId::from("p0-s0-v0"), ItemId::from("p0-s1-v1")], ..Filter::default() },
    ];
    let (mut grew, mut filled, mut cases) = (false, false, 0);
    for (qi, centre) in [&data.centres[0], &data.centres[7], &data.centres[0]].into_iter().enumerate() {
        // Near patient 0's centre (its videos crowd the candidates), and a random direction.
        let q: Vec<f32> = if qi == 2 { unit((0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect()) } else { centre.clone() };
        for f in &filters {
            let scored = brute_force(&data, &q, f);
            for by in [GroupBy::Study, GroupBy::Patient] {
                for (k, size) in [(1, 1), (3, 2), (6, 3), (10, 5), (40, 2)] {
                    let mut query = Query::new(space, Kind::Video, q.clone(), k);
                    query.filter = f.clone();
                    query.exact = true;
                    let got = group_search(&index, &query, by, size).unwrap();
                    let got: Vec<(String, Vec<(String, f32)>)> =
                        got.iter().map(|g| (g.key.clone(), g.hits.iter().map(|h| (h.0.id.0.clone(), h.0.score)).collect())).collect();
                    let want = brute_groups(&data, &scored, by, k, size);
                    let ids = |g: &[(String, Vec<(String, f32)>)]| -> Vec<(String, Vec<String>)> {
                        g.iter().map(|(k, h)| (k.clone(), h.iter().map(|x| x.0.clone()).collect())).collect()
                    };
                    assert_eq!(ids(&got), ids(&want), "query {qi}, filter {f:?}, by {by}, k {k}, size {size}");
                    for ((_, gh), (_, wh)) in got.iter().zip(&want) {
                        for (g, w) in gh.iter().zip(wh) {
                            assert!((g.1 - w.1).abs() < 1e-5, "score of {}: {} vs {}", g.0, g.1, w.1);
                        }
                    }
                    cases += 1;
                    // Which of the search's paths this case needed: the first candidates (k ·
                    // size · factor) holding fewer than k groups means the request had to grow;
                    // an answer hit ranked below the candidates that first held k groups means
                    // a group was completed by its own search.
                    let first = (k * size * GROUP_FETCH_FACTOR).min(scored.len());
                    let top: Vec<_> = index.search(&Query { k: first, ..query.clone() }).unwrap();
                    if group_hits(top, by, k, size).len() < k && scored.len() > first {
                        grew = true;
                    }
                    let rank: HashMap<&str, usize> = scored.iter().enumerate().map(|(r, (i, _))| (data.ids[*i].as_str(), r)).collect();
                    let mut fetch = first;
                    while brute_groups(&data, &scored[..fetch.min(scored.len())], by, k, size).len() < k && fetch < scored.len() {
                        fetch *= GROUP_FETCH_FACTOR;
                    }
                    if want.iter().flat_map(|g| &g.1).any(|(id, _)| rank[id.as_str()] >= fetch) {
                        filled = true;
                    }
                }
            }
        }
    }
    assert!(grew && filled, "cases covered growing the request ({grew}) and completing groups ({filled}) of {cases}");
}

#[test]
fn cli_search_groups_by_patient_and_study() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("index");
    // An index as ingest leaves it: the tiny model's space (and probe), then our own records.
    let model = common::root().join("data-samples/echovault-tiny");
    let cfg = echovault::engine::EngineConfig {
        index_dir: dir.clone(),
        secret_file: None,
        model_dir: model,
        extra_models: Vec::new(),
        space: None,
        device: tch::Device::Cpu,
        channel_order: echovault::media::ChannelOrder::Bgr,
        sampling: echovault::media::FrameSampling::ALL,
        frame_batch: 8,
        max_frames: echovault::media::DEFAULT_MAX_FRAMES,
        mask: echovault::media::MaskMode::Off,
        template_vocab: None,
        vectors: None,
    };
    let mut rng = StdRng::seed_from_u64(5);
    let data = clustered(&mut rng, 64);
    {
        let engine = echovault::Engine::open(&cfg).unwrap();
        let space: SpaceId = engine.space;
        let mut b = engine.index.batch();
        for (r, v) in data.records.iter().zip(&data.vectors) {
            b.put_item(r.clone());
            b.put_vector(space, r.id.clone(), Kind::Video, v.clone());
        }
        engine.index.commit(b).unwrap();
        engine.index.checkpoint().unwrap();
    }
    let like = "p3-s1-v0";
    let i = data.ids.iter().position(|x| x == like).unwrap();
    let f = Filter { exclude: vec![ItemId::from(like)], ..Filter::default() };
    let scored = brute_force(&data, &data.vectors[i], &f);
    for (by, k, size) in [(GroupBy::Patient, 4, 2), (GroupBy::Study, 5, 3)] {
        let out = echovault(
            &dir,
            &["search", "--like", like, "--group-by", by.as_str(), "--group-size", &size.to_string(), "-k", &k.to_string(), "--json"],
        );
        assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
        let r = json(&out);
        let scored_groups = brute_groups(&data, &scored, by, k, size);
        let want: Vec<(String, Vec<String>)> =
            scored_groups.iter().map(|(k, h)| (k.clone(), h.iter().map(|x| x.0.clone()).collect())).collect();
        assert_eq!(groups_of(&r, by.as_str()), want, "{by}");
        assert_eq!(r["query"]["like"], like);

        let text = echovault(
            &dir,
            &["search", "--like", like, "--group-by", by.as_str(), "--group-size", &size.to_string(), "-k", &k.to_string()],
        );
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.starts_with(&format!("{k} {by} groups of video hits for {{\"like\":\"{like}\"}}:")), "{text}");
        assert!(text.contains(&format!("  1. {:+.4}  {by} {}  (", scored_groups[0].1[0].1, want[0].0)), "{text}");
        for (key, ids) in &want {
            assert!(text.contains(&format!("{by} {key}  ({} hits)", ids.len())), "{text}");
        }
    }
    // --group-size needs --group-by (a usage error).
    let out = echovault(&dir, &["search", "--like", like, "--group-size", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--group-by"));
}
