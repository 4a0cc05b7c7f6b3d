//! Readers ([`Index::open_reader`]): they open beside a writer, never write a byte under the
//! index directory, refuse writes, catch up with `refresh` (new vectors, replacements,
//! deletes, a repair's vacuum, changed filter facts) and agree with the writer afterwards; a
//! second writer is told who writes.

#![allow(clippy::unwrap_used)]

use echovault_index::{Filter, Index, IndexError, IndexOptions, ItemRecord, Kind, Query, SpaceId};
use rand::{rngs::StdRng, Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

const D: usize = 8;

fn unit(rng: &mut StdRng) -> Vec<f32> {
    let v: Vec<f32> = (0..D).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn put(index: &Index, space: SpaceId, rng: &mut StdRng, ids: impl IntoIterator<Item = usize>) {
    let mut b = index.batch();
    for i in ids {
        let id = format!("v{i}");
        let mut r = ItemRecord::new(id.as_str(), Kind::Video, "x");
        r.patient = Some(format!("p{}", i % 5));
        b.put_item(r);
        b.put_vector(space, id.as_str(), Kind::Video, unit(rng));
    }
    index.commit(b).unwrap();
}

/// Every file under `dir` with the SHA-256 of its bytes.
fn hashes(dir: &Path) -> BTreeMap<String, [u8; 32]> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            for (k, v) in hashes(&e.path()) {
                out.insert(format!("{}/{k}", e.file_name().to_string_lossy()), v);
            }
        } else {
            out.insert(e.file_name().to_string_lossy().into_owned(), Sha256::digest(std::fs::read(e.path()).unwrap()).into());
        }
    }
    out
}

/// The ids of an exact search, so that writer and reader must agree exactly.
fn exact(index: &Index, space: SpaceId, q: &[f32], filter: Filter) -> Vec<String> {
    let mut query = Query::new(space, Kind::Video, q.to_vec(), 5000);
    query.exact = true;
    query.filter = filter;
    index.search(&query).unwrap().into_iter().map(|h| h.id.0).collect()
}

#[test]
fn a_reader_opens_beside_the_writer_and_catches_up_on_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let writer = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let space = writer.ensure_space("s", D).unwrap();
    put(&writer, space, &mut rng, 0..300);
    writer.checkpoint().unwrap();
    put(&writer, space, &mut rng, 300..350); // after the snapshot: replayed by the reader

    let reader = Index::open_reader(dir.path()).unwrap();
    assert!(reader.is_reader() && !writer.is_reader());
    let q = unit(&mut rng);
    let all = Filter::default();
    assert_eq!(exact(&reader, space, &q, all.clone()), exact(&writer, space, &q, all.clone()));
    assert_eq!(reader.counts().unwrap(), writer.counts().unwrap());
    assert_eq!(reader.secret().unwrap(), writer.secret().unwrap());

    // Writes are refused, each naming what was asked.
    let mut b = reader.batch();
    b.put_item(ItemRecord::new("x", Kind::Video, "x"));
    for e in [
        reader.commit(b).unwrap_err(),
        reader.ensure_space("other", D).unwrap_err(),
        reader.checkpoint().unwrap_err(),
        reader.repair().unwrap_err(),
    ] {
        assert!(matches!(e, IndexError::ReadOnly { .. }), "{e}");
        assert!(e.to_string().contains("open for reading only"), "{e}");
    }
    assert_eq!(reader.ensure_space("s", D).unwrap(), space, "an existing space is only looked up");

    // New vectors, a replacement, a delete: unseen until the refresh, then seen exactly.
    put(&writer, space, &mut rng, 350..400);
    put(&writer, space, &mut rng, [7]);
    let mut b = writer.batch();
    b.delete_item("v8");
    writer.commit(b).unwrap();
    assert_eq!(reader.counts().unwrap().vectors["s/video"], 350);
    assert!(reader.refresh().unwrap());
    assert!(!reader.refresh().unwrap(), "nothing new");
    assert_eq!(reader.counts().unwrap(), writer.counts().unwrap());
    assert_eq!(exact(&reader, space, &q, all.clone()), exact(&writer, space, &q, all.clone()));
    let mut query = Query::new(space, Kind::Video, q.clone(), 10);
    query.ef = Some(400);
    let ids = |i: &Index| i.search(&query).unwrap().into_iter().map(|h| h.id.0).collect::<Vec<_>>();
    assert_eq!(ids(&reader), ids(&writer), "graph searches agree too");
    assert_eq!(reader.items_by_patient("p3").unwrap(), writer.items_by_patient("p3").unwrap());

    // A record moved to another patient without a new vector: the filter facts follow.
    let mut r = writer.get_item(&"v10".into()).unwrap().unwrap();
    r.patient = Some("p-moved".into());
    let mut b = writer.batch();
    b.put_item(r);
    writer.commit(b).unwrap();
    reader.refresh().unwrap();
    let moved = Filter { patient: Some("p-moved".into()), ..Filter::default() };
    assert_eq!(exact(&reader, space, &q, moved.clone()), ["v10"]);

    // A replacement and a delete the reader has not seen, then a repair that vacuums their
    // tombstones: the reader cannot see them slot by slot and reloads the graph.
    put(&writer, space, &mut rng, [11]);
    let mut b = writer.batch();
    b.delete_item("v12");
    writer.commit(b).unwrap();
    writer.repair().unwrap();
    put(&writer, space, &mut rng, 400..420);
    reader.refresh().unwrap();
    assert_eq!(reader.counts().unwrap(), writer.counts().unwrap());
    assert_eq!(exact(&reader, space, &q, all.clone()), exact(&writer, space, &q, all));
    assert_eq!(ids(&reader), ids(&writer));
    assert!(reader.verify().unwrap().ok(), "{:?}", reader.verify().unwrap().problems);
}

#[test]
fn a_reader_writes_nothing_under_the_index_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    {
        let writer = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = writer.ensure_space("s", D).unwrap();
        put(&writer, space, &mut rng, 0..200);
        writer.checkpoint().unwrap();
        // Vectors after the snapshot: the reader replays them into the graph it filled from the
        // snapshot (writing nothing under the index).
        put(&writer, space, &mut rng, 200..260);
    }
    let before = hashes(dir.path());
    {
        let reader = Index::open_reader(dir.path()).unwrap();
        let space = reader.space("s").unwrap().id;
        assert_eq!(reader.graph_loads()[0].replayed, 60);
        let q = unit(&mut rng);
        assert_eq!(exact(&reader, space, &q, Filter::default()).len(), 260);
        reader.items_by_patient("p1").unwrap();
        reader.patients().unwrap();
        reader.verify().unwrap();
        reader.refresh().unwrap();
    }
    assert_eq!(hashes(dir.path()), before, "the reader changed the index directory");
}

#[test]
fn no_index_is_a_clear_error_for_a_reader() {
    let dir = tempfile::tempdir().unwrap();
    let e = Index::open_reader(dir.path().join("nothing")).unwrap_err();
    assert!(matches!(e, IndexError::Missing { .. }) && e.to_string().contains("no index at"), "{e}");
}

#[test]
fn a_second_writer_is_told_who_writes() {
    let dir = tempfile::tempdir().unwrap();
    let first = Index::open(dir.path(), IndexOptions { writer: Some("echovault ingest".into()), ..IndexOptions::default() }).unwrap();
    let e = Index::open(dir.path(), IndexOptions::default()).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, IndexError::Busy { .. }), "{e}");
    assert!(
        text.contains(&format!("is being written by another process (pid {}, `echovault ingest`, since ", std::process::id())),
        "{text}"
    );
    drop(first);
    // Closed: the record is gone and the index opens again.
    assert!(!dir.path().join("echovault-writer.json").exists());
    Index::open(dir.path(), IndexOptions::default()).unwrap();
}

#[test]
fn searches_of_a_refreshing_reader_grow_while_a_writer_commits() {
    let dir = tempfile::tempdir().unwrap();
    let writer = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let space = writer.ensure_space("s", D).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    put(&writer, space, &mut rng, 0..50);
    let reader = Index::open_reader(dir.path()).unwrap();
    let q = unit(&mut rng);
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            let mut rng = StdRng::seed_from_u64(10);
            for k in 1..40 {
                put(&writer, space, &mut rng, k * 50..(k + 1) * 50);
            }
        });
        let mut last = 0;
        while !w.is_finished() {
            reader.refresh().unwrap();
            let n = exact(&reader, space, &q, Filter::default()).len();
            assert!(n >= last && n % 50 == 0, "saw {n} after {last}: whole batches only, never fewer");
            last = n;
        }
        w.join().unwrap();
    });
    reader.refresh().unwrap();
    assert_eq!(exact(&reader, space, &q, Filter::default()).len(), 2000);
}
