//! Integration tests of the index through RocksDB and the HNSW graph: put, get, search, reopen,
//! replace, delete, filters, format checks, and graph search against brute force.

#![allow(clippy::unwrap_used)]

use echovault_index::{Filter, Index, IndexError, IndexOptions, ItemId, ItemRecord, Kind, Query, VectorEncoding};
use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn unit(rng: &mut StdRng, d: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// A unit vector near `centre`: centre + `spread` × a random unit vector, normalised.
fn near(rng: &mut StdRng, centre: &[f32], spread: f32) -> Vec<f32> {
    let noise = unit(rng, centre.len());
    let v: Vec<f32> = centre.iter().zip(&noise).map(|(a, b)| a + spread * b).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn video(id: &str, patient: &str, date: &str) -> ItemRecord {
    let mut r = ItemRecord::new(id, Kind::Video, format!("/export/{id}.avi"));
    r.patient = Some(patient.into());
    r.study = Some(format!("s-{id}"));
    r.date = Some(date.parse().unwrap());
    r
}

fn brute(vs: &[(String, Vec<f32>)], q: &[f32], k: usize) -> Vec<String> {
    let mut s: Vec<(f32, &String)> = vs.iter().map(|(id, v)| (v.iter().zip(q).map(|(a, b)| a * b).sum(), id)).collect();
    s.sort_by(|a, b| b.0.total_cmp(&a.0));
    s.into_iter().take(k).map(|(_, id)| id.clone()).collect()
}

#[test]
fn put_get_search_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let mut stored = Vec::new();
    {
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = index.ensure_space("echoclip", 32).unwrap();
        let mut b = index.batch();
        for i in 0..200 {
            let id = format!("v{i:03}");
            let v = unit(&mut rng, 32);
            b.put_item(video(&id, &format!("p{}", i % 10), &format!("2020-01-{:02}", 1 + i % 28)));
            b.put_vector(space, id.as_str(), Kind::Video, v.clone());
            stored.push((id, v));
        }
        index.commit(b).unwrap();
        let got = index.get_item(&ItemId::from("v007")).unwrap().unwrap();
        assert_eq!(got.patient.as_deref(), Some("p7"));
        let hits = index.search(&Query::new(space, Kind::Video, stored[7].1.clone(), 5)).unwrap();
        assert_eq!(hits[0].id.as_str(), "v007");
        assert!((hits[0].score - 1.0).abs() < 1e-5);
        assert_eq!(hits.len(), 5);
    }
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let space = index.space("echoclip").unwrap().id;
    let counts = index.counts().unwrap();
    assert_eq!(counts.items["video"], 200);
    assert_eq!(counts.vectors["echoclip/video"], 200);
    for (id, v) in stored.iter().step_by(17) {
        let mut q = Query::new(space, Kind::Video, v.clone(), 10);
        q.exact = true;
        let exact: Vec<String> = index.search(&q).unwrap().into_iter().map(|h| h.id.0).collect();
        assert_eq!(exact, brute(&stored, v, 10));
        assert_eq!(&exact[0], id);
        let stored_v = index.get_vector(space, Kind::Video, &ItemId(id.clone())).unwrap().unwrap();
        assert!(stored_v.iter().zip(v).all(|(a, b)| (a - b).abs() < 1e-6));
    }
}

#[test]
fn reinserting_replaces_and_delete_removes() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let space = index.ensure_space("s", 4).unwrap();
    let mut b = index.batch();
    b.put_item(video("a", "p1", "2021-01-01"));
    b.put_vector(space, "a", Kind::Video, vec![1.0, 0.0, 0.0, 0.0]);
    b.put_item(video("b", "p2", "2021-01-02"));
    b.put_vector(space, "b", Kind::Video, vec![0.0, 1.0, 0.0, 0.0]);
    index.commit(b).unwrap();
    // Replace a's vector: searches must see only the new one.
    let mut b = index.batch();
    b.put_vector(space, "a", Kind::Video, vec![0.0, 0.0, 2.0, 0.0]);
    index.commit(b).unwrap();
    let hits = index.search(&Query::new(space, Kind::Video, vec![1.0, 0.0, 0.0, 0.0], 10)).unwrap();
    assert_eq!(hits.len(), 2, "no ghost of the replaced vector");
    let hits = index.search(&Query::new(space, Kind::Video, vec![0.0, 0.0, 1.0, 0.0], 1)).unwrap();
    assert_eq!(hits[0].id.as_str(), "a");
    assert!((hits[0].score - 1.0).abs() < 1e-6, "stored vectors are normalised");
    let mut b = index.batch();
    b.delete_item("b");
    index.commit(b).unwrap();
    drop(index);
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let hits = index.search(&Query::new(space, Kind::Video, vec![0.0, 1.0, 0.0, 0.0], 10)).unwrap();
    assert_eq!(hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), vec!["a"]);
    assert!(index.get_item(&ItemId::from("b")).unwrap().is_none());
    assert_eq!(index.counts().unwrap().vectors["s/video"], 1);
}

#[test]
fn filters_restrict_by_patient_and_date() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let space = index.ensure_space("s", 8).unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    let mut b = index.batch();
    for i in 0..60 {
        let id = format!("v{i}");
        b.put_item(video(&id, &format!("p{}", i % 3), &format!("2022-{:02}-01", 1 + i % 12)));
        b.put_vector(space, id.as_str(), Kind::Video, unit(&mut rng, 8));
    }
    index.commit(b).unwrap();
    let mut q = Query::new(space, Kind::Video, unit(&mut rng, 8), 100);
    q.filter = Filter {
        patient: Some("p1".into()),
        since: Some("2022-03-01".parse().unwrap()),
        until: Some("2022-06-30".parse().unwrap()),
        ..Filter::default()
    };
    let hits = index.search(&q).unwrap();
    assert!(!hits.is_empty());
    for h in &hits {
        assert_eq!(h.record.patient.as_deref(), Some("p1"));
        let d = h.record.date.unwrap().to_string();
        assert!(("2022-03-01"..="2022-06-30").contains(&d.as_str()), "{d}");
    }
    let expected = (0..60).filter(|i| i % 3 == 1 && (3..=6).contains(&(1 + i % 12))).count();
    assert_eq!(hits.len(), expected);
    q.filter = Filter { exclude: vec![ItemId::from("v0")], ..Filter::default() };
    assert!(index.search(&q).unwrap().iter().all(|h| h.id.as_str() != "v0"));
}

#[test]
fn rejects_bad_vectors_and_dimension_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let space = index.ensure_space("s", 3).unwrap();
    assert!(matches!(index.ensure_space("s", 4), Err(IndexError::SpaceDimension { .. })));
    let mut b = index.batch();
    b.put_item(video("a", "p", "2020-01-01"));
    b.put_vector(space, "a", Kind::Video, vec![1.0, 2.0]);
    assert!(matches!(index.commit(b), Err(IndexError::DimensionMismatch { expected: 3, got: 2, .. })));
    let mut b = index.batch();
    b.put_item(video("a", "p", "2020-01-01"));
    b.put_vector(space, "a", Kind::Video, vec![f32::NAN, 0.0, 0.0]);
    assert!(matches!(index.commit(b), Err(IndexError::BadVector { .. })));
    let mut b = index.batch();
    b.put_vector(space, "ghost", Kind::Video, vec![1.0, 0.0, 0.0]);
    assert!(matches!(index.commit(b), Err(IndexError::UnknownItem(_))));
    // Nothing of the failed batches was written.
    assert_eq!(index.counts().unwrap().items["video"], 0);
}

#[test]
fn f16_vectors_round_trip_closely() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path(), IndexOptions { encoding: Some(VectorEncoding::F16), ..IndexOptions::default() }).unwrap();
    let space = index.ensure_space("s", 16).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let v = unit(&mut rng, 16);
    let mut b = index.batch();
    b.put_item(video("a", "p", "2020-01-01"));
    b.put_vector(space, "a", Kind::Video, v.clone());
    index.commit(b).unwrap();
    let got = index.get_vector(space, Kind::Video, &ItemId::from("a")).unwrap().unwrap();
    assert!(got.iter().zip(&v).all(|(a, b)| (a - b).abs() < 1e-3));
}

#[test]
fn a_foreign_rocksdb_or_other_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = index.ensure_space("s", 2).unwrap();
        let mut b = index.batch();
        b.put_item(video("a", "p", "2020-01-01"));
        b.put_vector(space, "a", Kind::Video, vec![1.0, 0.0]);
        index.commit(b).unwrap();
    }
    // Rewrite the format version as if a future echovault had written the index.
    {
        let mut opts = rocksdb::Options::default();
        opts.create_missing_column_families(true);
        let cfs = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&opts, dir.path(), &cfs).unwrap();
        db.put_cf(db.cf_handle("meta").unwrap(), b"format_version", 99u32.to_be_bytes()).unwrap();
    }
    let err = Index::open(dir.path(), IndexOptions::default()).unwrap_err();
    assert!(matches!(err, IndexError::FormatVersion { found: 99, expected: echovault_index::FORMAT_VERSION, .. }), "{err}");
    assert!(err.to_string().contains("new --index directory"));
}

#[test]
fn graph_search_matches_brute_force_on_clustered_data() {
    // The HNSW walk itself (search_graph_filtered), against brute force.
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let d = 24;
    let space = index.ensure_space("s", d).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    let centres: Vec<Vec<f32>> = (0..50).map(|_| unit(&mut rng, d)).collect();
    let mut stored = Vec::new();
    let mut b = index.batch();
    for i in 0..6000 {
        let v = near(&mut rng, &centres[i % centres.len()], 0.3);
        let id = format!("v{i}");
        b.put_item(ItemRecord::new(id.as_str(), Kind::Video, "x"));
        b.put_vector(space, id.as_str(), Kind::Video, v.clone());
        stored.push((id, v));
    }
    index.commit(b).unwrap();
    let mut found = 0;
    let queries = 50;
    for qi in 0..queries {
        let q = &stored[qi * 97].1;
        let truth = brute(&stored, q, 10);
        let hits = index.search_graph_filtered(&Query::new(space, Kind::Video, q.clone(), 10)).unwrap();
        found += hits.iter().filter(|(id, _)| truth.contains(&id.0)).count();
        // The default search answers a collection this small exactly.
        let exact: Vec<String> =
            index.search(&Query::new(space, Kind::Video, q.clone(), 10)).unwrap().into_iter().map(|h| h.id.0).collect();
        assert_eq!(exact, truth);
    }
    let recall = found as f64 / (queries * 10) as f64;
    assert!(recall >= 0.95, "recall@10 {recall}");
    // A k far beyond the collection (a request may ask for 10^12) returns every vector once,
    // without sizing anything by k.
    for k in [6000, 1 << 40] {
        let all = index.search_graph_filtered(&Query::new(space, Kind::Video, stored[0].1.clone(), k)).unwrap();
        assert!(all.len() >= 5900 && all.len() <= 6000, "k {k}: {} hits", all.len());
        let distinct: std::collections::HashSet<_> = all.iter().map(|(id, _)| id.0.clone()).collect();
        assert_eq!(distinct.len(), all.len());
    }
}

#[test]
fn graph_walk_honours_filters_deletes_and_fresh_inserts() {
    // 9000 vectors, half of them patient "a": the graph walk (search_graph_filtered) plain and
    // filtered, after deletes and with fresh vectors in the exactly-searched tail.
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let d = 16;
    let space = index.ensure_space("s", d).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let centres: Vec<Vec<f32>> = (0..40).map(|_| unit(&mut rng, d)).collect();
    let noisy = |rng: &mut StdRng, i: usize| near(rng, &centres[i % centres.len()], 0.4);
    let patient = |i: usize| if i % 2 == 0 { "a" } else { "b" };
    let mut stored: Vec<(String, Vec<f32>)> = Vec::new();
    let mut b = index.batch();
    for i in 0..9000 {
        let id = format!("v{i}");
        let v = noisy(&mut rng, i);
        b.put_item(video(&id, patient(i), "2024-01-01"));
        b.put_vector(space, id.as_str(), Kind::Video, v.clone());
        stored.push((id, v));
    }
    index.commit(b).unwrap();
    // Delete every 10th vector; then add 200 in small batches (they stay in the exactly searched
    // tail: fewer than the re-copy limit).
    let mut b = index.batch();
    for i in (0..9000).step_by(10) {
        b.delete_item(format!("v{i}"));
    }
    index.commit(b).unwrap();
    let deleted: std::collections::HashSet<String> = (0..9000).step_by(10).map(|i| format!("v{i}")).collect();
    stored.retain(|(id, _)| !deleted.contains(id));
    for chunk in 0..20 {
        let mut b = index.batch();
        for j in 0..10 {
            let i = 9000 + chunk * 10 + j;
            let id = format!("v{i}");
            let v = noisy(&mut rng, i);
            b.put_item(video(&id, patient(i), "2024-01-01"));
            b.put_vector(space, id.as_str(), Kind::Video, v.clone());
            stored.push((id, v));
        }
        index.commit(b).unwrap();
    }
    let of_a: Vec<(String, Vec<f32>)> =
        stored.iter().filter(|(id, _)| patient(id[1..].parse::<usize>().unwrap()) == "a").cloned().collect();
    let (mut found, mut found_a, queries) = (0, 0, 60);
    for qi in 0..queries {
        // Half the queries are fresh vectors: each must find itself first.
        let (qid, q) = &stored[if qi % 2 == 0 { stored.len() - 1 - qi } else { qi * 131 }];
        let hits = index.search_graph_filtered(&Query::new(space, Kind::Video, q.clone(), 10)).unwrap();
        assert_eq!(&hits[0].0 .0, qid, "a stored vector is its own nearest neighbour");
        assert!(hits.iter().all(|(id, _)| !deleted.contains(&id.0)), "a deleted vector came back");
        let truth = brute(&stored, q, 10);
        found += hits.iter().filter(|(id, _)| truth.contains(&id.0)).count();
        let mut fq = Query::new(space, Kind::Video, q.clone(), 10);
        fq.filter = Filter { patient: Some("a".into()), ..Filter::default() };
        let hits = index.search_graph_filtered(&fq).unwrap();
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|(id, _)| id.0[1..].parse::<usize>().unwrap() % 2 == 0 && !deleted.contains(&id.0)));
        let truth = brute(&of_a, q, 10);
        found_a += hits.iter().filter(|(id, _)| truth.contains(&id.0)).count();
        // The default search scores a filtered set this small exactly, from memory.
        let exact: Vec<String> = index.search(&fq).unwrap().into_iter().map(|h| h.id.0).collect();
        assert_eq!(exact, truth);
    }
    let recall = found as f64 / (queries * 10) as f64;
    let recall_a = found_a as f64 / (queries * 10) as f64;
    assert!(recall >= 0.95, "recall@10 {recall}");
    assert!(recall_a >= 0.95, "filtered recall@10 {recall_a}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn exact_search_equals_brute_force(seed in 0u64..1000, n in 1usize..80, k in 1usize..20) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = index.ensure_space("s", 6).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut stored = Vec::new();
        let mut b = index.batch();
        for i in 0..n {
            let id = format!("v{i}");
            let v = unit(&mut rng, 6);
            b.put_item(ItemRecord::new(id.as_str(), Kind::Video, "x"));
            b.put_vector(space, id.as_str(), Kind::Video, v.clone());
            stored.push((id, v));
        }
        index.commit(b).unwrap();
        let q = unit(&mut rng, 6);
        let got: Vec<String> = index.search(&Query::new(space, Kind::Video, q.clone(), k)).unwrap().into_iter().map(|h| h.id.0).collect();
        prop_assert_eq!(got, brute(&stored, &q, k));
    }
}

#[test]
fn a_record_update_without_a_new_vector_reaches_the_filters() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let space = index.ensure_space("s", 2).unwrap();
    let mut b = index.batch();
    b.put_item(video("a", "p1", "2020-01-01"));
    b.put_vector(space, "a", Kind::Video, vec![1.0, 0.0]);
    index.commit(b).unwrap();
    let mut b = index.batch();
    b.put_item(video("a", "p2", "2020-01-01"));
    index.commit(b).unwrap();
    let mut q = Query::new(space, Kind::Video, vec![1.0, 0.0], 5);
    q.filter.patient = Some("p2".into());
    assert_eq!(index.search(&q).unwrap().len(), 1);
    q.filter.patient = Some("p1".into());
    assert!(index.search(&q).unwrap().is_empty());
}

#[test]
fn frame_embeddings_and_the_ingest_log_commit_with_the_item_and_go_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let frames: Vec<Vec<f32>> = (0..7).map(|_| unit(&mut rng, 16)).collect();
    {
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = index.ensure_space("echoclip", 16).unwrap();
        // Frames of an item that does not exist are refused, and so is a wrong dimension.
        let mut b = index.batch();
        b.put_frames(space, "ghost", frames.clone());
        assert!(matches!(index.commit(b), Err(IndexError::UnknownItem(_))));
        let mut b = index.batch();
        b.put_item(video("v1", "p1", "2021-01-01"));
        b.put_frames(space, "v1", vec![vec![0.5; 15]]);
        assert!(matches!(index.commit(b), Err(IndexError::DimensionMismatch { .. })));
        assert!(index.get_item(&ItemId::from("v1")).unwrap().is_none(), "a refused batch writes nothing");
        let mut b = index.batch();
        b.put_item(video("v1", "p1", "2021-01-01"));
        b.put_vector(space, "v1", Kind::Video, frames[0].clone());
        b.put_frames(space, "v1", frames.clone());
        b.put_log("file:/export/v1.avi", Some(b"v1"));
        index.commit(b).unwrap();
    }
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let space = index.space("echoclip").unwrap().id;
    let got = index.get_frames(space, &ItemId::from("v1")).unwrap().unwrap();
    assert_eq!(got.len(), 7);
    for (a, b) in frames.iter().zip(&got) {
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3), "f16 frames round-trip closely");
    }
    assert_eq!(index.get_log("file:/export/v1.avi").unwrap().as_deref(), Some(&b"v1"[..]));
    let mut b = index.batch();
    b.delete_item("v1");
    b.put_log("file:/export/v1.avi", None);
    index.commit(b).unwrap();
    assert!(index.get_frames(space, &ItemId::from("v1")).unwrap().is_none());
    assert!(index.get_log("file:/export/v1.avi").unwrap().is_none());
}

#[test]
fn buffered_commits_are_visible_at_once_and_kept_after_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(6);
    let v = unit(&mut rng, 8);
    {
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = index.ensure_space("s", 8).unwrap();
        let mut b = index.batch();
        b.put_item(video("b1", "p", "2022-02-02"));
        b.put_vector(space, "b1", Kind::Video, v.clone());
        index.commit_with(b, echovault_index::Durability::Buffered).unwrap();
        let hits = index.search(&Query::new(space, Kind::Video, v.clone(), 1)).unwrap();
        assert_eq!(hits[0].id.as_str(), "b1", "a buffered commit is searchable at once");
        index.sync().unwrap();
    }
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let space = index.space("s").unwrap().id;
    assert!(index.get_vector(space, Kind::Video, &ItemId::from("b1")).unwrap().is_some());
}
