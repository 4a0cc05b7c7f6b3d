//! Graph snapshots in RocksDB: reload without rebuild, replay of later writes, tombstones and
//! their vacuum, corrupt snapshots and files, and searches running beside a writer.

#![allow(clippy::unwrap_used)]

use echovault_index::{Index, IndexError, IndexOptions, ItemId, ItemRecord, Kind, Query, SpaceId, VectorEncoding};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

fn unit(rng: &mut StdRng, d: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn near(rng: &mut StdRng, c: &[f32], noise: f32) -> Vec<f32> {
    let e = unit(rng, c.len());
    let v: Vec<f32> = c.iter().zip(&e).map(|(a, b)| a + noise * b).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

const D: usize = 16;

/// Writes `n` clustered vectors `v0..`.
fn fill(index: &Index, space: SpaceId, n: usize, seed: u64) -> Vec<(String, Vec<f32>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..40).map(|_| unit(&mut rng, D)).collect();
    let mut out = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut b = index.batch();
        for &i in chunk {
            let id = format!("v{i}");
            let v = near(&mut rng, &centres[i % 40], 0.4);
            let mut r = ItemRecord::new(id.as_str(), Kind::Video, "x");
            r.patient = Some(format!("p{}", i % 97));
            b.put_item(r);
            b.put_vector(space, id.as_str(), Kind::Video, v.clone());
            out.push((id, v));
        }
        index.commit(b).unwrap();
    }
    out
}

fn ids(index: &Index, space: SpaceId, q: &[f32], k: usize) -> Vec<String> {
    // The graph walk itself (the default search would answer this small index exactly).
    index.search_graph_filtered(&Query::new(space, Kind::Video, q.to_vec(), k)).unwrap().into_iter().map(|(id, _)| id.0).collect()
}

fn raw_db(path: &Path) -> rocksdb::DB {
    let opts = rocksdb::Options::default();
    let cfs = rocksdb::DB::list_cf(&opts, path).unwrap();
    rocksdb::DB::open_cf(&opts, path, &cfs).unwrap()
}

#[test]
fn reopening_loads_the_snapshot_instead_of_rebuilding() {
    let dir = tempfile::tempdir().unwrap();
    let (stored, before) = {
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = index.ensure_space("s", D).unwrap();
        let stored = fill(&index, space, 6000, 1);
        index.checkpoint().unwrap();
        let before: Vec<Vec<String>> = stored.iter().step_by(120).map(|(_, v)| ids(&index, space, v, 10)).collect();
        (stored, before)
    };
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let loads = index.graph_loads();
    assert_eq!(loads.len(), 1);
    assert_eq!((loads[0].how, loads[0].replayed, loads[0].live), ("snapshot", 0, 6000), "{loads:?}");
    let space = index.space("s").unwrap().id;
    let after: Vec<Vec<String>> = stored.iter().step_by(120).map(|(_, v)| ids(&index, space, v, 10)).collect();
    // Same graph, same answers (the load drops upper-layer links to nodes below that layer, none
    // of which our inserts make; still allow a rare difference in the tail).
    let same = before.iter().zip(&after).filter(|(a, b)| a == b).count();
    assert!(same * 10 >= before.len() * 9, "{same} of {} identical", before.len());
    assert!(index.verify().unwrap().ok());
    // A forced rebuild answers too, and says why it rebuilt.
    drop(index);
    let index = Index::open(dir.path(), IndexOptions { ignore_snapshots: true, ..IndexOptions::default() }).unwrap();
    assert_eq!(index.graph_loads()[0].how, "rebuilt");
    assert!(index.verify().unwrap().ok());
}

#[test]
fn writes_after_the_snapshot_are_replayed_and_tombstones_respected() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    let (replaced, fresh) = {
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = index.ensure_space("s", D).unwrap();
        fill(&index, space, 5000, 2);
        index.checkpoint().unwrap();
        // After the snapshot: 300 new vectors, 50 replaced, 20 items deleted.
        let mut b = index.batch();
        let mut fresh = Vec::new();
        for i in 0..300 {
            let id = format!("n{i}");
            let v = unit(&mut rng, D);
            b.put_item(ItemRecord::new(id.as_str(), Kind::Video, "x"));
            b.put_vector(space, id.as_str(), Kind::Video, v.clone());
            fresh.push((id, v));
        }
        let mut replaced = Vec::new();
        for i in 0..50 {
            let id = format!("v{}", i * 7);
            let v = unit(&mut rng, D);
            b.put_vector(space, id.as_str(), Kind::Video, v.clone());
            replaced.push((id, v));
        }
        for i in 0..20 {
            b.delete_item(format!("v{}", 1000 + i));
        }
        index.commit(b).unwrap();
        (replaced, fresh)
    };
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let l = &index.graph_loads()[0];
    assert_eq!((l.how, l.replayed, l.live), ("snapshot", 350, 5280), "{l:?}");
    let v = index.verify().unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    assert_eq!(v.stored["s/video"], 5350, "replaced and deleted vectors stay stored as tombstones until a rebuild");
    assert_eq!(v.live["s/video"], 5280);
    let space = index.space("s").unwrap().id;
    for (id, v) in fresh.iter().step_by(10).chain(replaced.iter().step_by(5)) {
        assert_eq!(&ids(&index, space, v, 1)[0], id);
    }
    for i in 0..20 {
        assert!(index.get_item(&ItemId(format!("v{}", 1000 + i))).unwrap().is_none());
    }
    // Repair rebuilds, drops the tombstones for good, and the result reloads from its snapshot.
    let r = index.repair().unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!((r.stored["s/video"], r.live["s/video"]), (5280, 5280));
    drop(index);
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    assert_eq!((index.graph_loads()[0].how, index.graph_loads()[0].replayed), ("snapshot", 0));
    assert_eq!(&ids(&index, space, &replaced[0].1, 1)[0], &replaced[0].0);
}

#[test]
fn f16_vectors_survive_snapshot_and_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let opts = IndexOptions { encoding: Some(VectorEncoding::F16), ..IndexOptions::default() };
    let stored = {
        let index = Index::open(dir.path(), opts.clone()).unwrap();
        let space = index.ensure_space("s", D).unwrap();
        let s = fill(&index, space, 4500, 3);
        index.checkpoint().unwrap();
        s
    };
    for ignore_snapshots in [false, true] {
        let index = Index::open(dir.path(), IndexOptions { ignore_snapshots, ..opts.clone() }).unwrap();
        let space = index.space("s").unwrap().id;
        let mut hit = 0;
        for (id, v) in stored.iter().step_by(45) {
            // A query equal to a stored f16 vector: the dot product may round above 1.
            hit += usize::from(&ids(&index, space, v, 1)[0] == id);
        }
        assert!(hit >= 98, "{hit} of 100 self-queries found themselves");
        // Every stored vector is f16: the graph holds halves (half the memory), whether it
        // came from the snapshot or was rebuilt.
        assert_eq!(index.graph_loads()[0].precision, "f16", "{:?}", index.graph_loads());
    }
    // Whatever encoding the opener writes in: what is stored decides.
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    assert_eq!(index.graph_loads()[0].precision, "f16");
}

#[test]
fn a_collection_with_any_f32_vector_is_held_as_f32() {
    let dir = tempfile::tempdir().unwrap();
    let f16 = IndexOptions { encoding: Some(VectorEncoding::F16), ..IndexOptions::default() };
    let mut stored = {
        let index = Index::open(dir.path(), f16.clone()).unwrap();
        let space = index.ensure_space("s", D).unwrap();
        fill(&index, space, 600, 5)
    };
    {
        // A writer told to write f32 adds vectors to the f16 collection: they are stored in f32
        // and held in the (half) graph it loaded, rounded.
        let index = Index::open(dir.path(), IndexOptions { encoding: Some(VectorEncoding::F32), ..IndexOptions::default() }).unwrap();
        assert_eq!(index.graph_loads()[0].precision, "f16");
        let space = index.space("s").unwrap().id;
        let mut rng = StdRng::seed_from_u64(6);
        let mut b = index.batch();
        for i in 0..600 {
            let (id, v) = (format!("w{i}"), unit(&mut rng, D));
            b.put_item(ItemRecord::new(id.as_str(), Kind::Video, "x"));
            b.put_vector(space, id.as_str(), Kind::Video, v.clone());
            stored.push((id, v));
        }
        index.commit(b).unwrap();
        index.checkpoint().unwrap();
    }
    for ignore_snapshots in [false, true] {
        let index = Index::open(dir.path(), IndexOptions { ignore_snapshots, ..f16.clone() }).unwrap();
        assert_eq!(index.graph_loads()[0].precision, "f32", "an f32 row is not rounded");
        let space = index.space("s").unwrap().id;
        let found = stored.iter().step_by(12).filter(|(id, v)| &ids(&index, space, v, 1)[0] == id).count();
        assert!(found >= 99, "{found} of 100 self-queries found themselves");
    }
}

#[test]
fn a_space_filled_in_f16_stays_f16_for_a_writer_that_does_not_say() {
    let dir = tempfile::tempdir().unwrap();
    let f16 = IndexOptions { encoding: Some(VectorEncoding::F16), ..IndexOptions::default() };
    let mut stored = {
        let index = Index::open(dir.path(), f16).unwrap();
        let space = index.ensure_space("s", D).unwrap();
        assert_eq!(index.space_precision(space), None, "no vector yet");
        let s = fill(&index, space, 300, 7);
        assert_eq!(index.space_precision(space), Some(VectorEncoding::F16));
        s
    };
    {
        // The default writer adds videos, and reports (a collection new to the space), and a
        // new space.
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = index.space("s").unwrap().id;
        assert_eq!(index.space_precision(space), Some(VectorEncoding::F16));
        let other = index.ensure_space("t", D).unwrap();
        let mut rng = StdRng::seed_from_u64(8);
        let mut b = index.batch();
        for i in 0..300 {
            let (id, v) = (format!("n{i}"), unit(&mut rng, D));
            b.put_item(ItemRecord::new(id.as_str(), Kind::Video, "x"));
            b.put_vector(space, id.as_str(), Kind::Video, v.clone());
            b.put_vector(other, id.as_str(), Kind::Video, v.clone());
            stored.push((id, v));
        }
        for i in 0..20 {
            let id = format!("r{i}");
            b.put_item(ItemRecord::new(id.as_str(), Kind::Report, "x"));
            b.put_vector(space, id.as_str(), Kind::Report, unit(&mut rng, D));
        }
        index.commit(b).unwrap();
        index.checkpoint().unwrap();
        assert_eq!(index.space_precision(other), Some(VectorEncoding::F32), "a new space is f32");
    }
    for ignore_snapshots in [false, true] {
        let index = Index::open(dir.path(), IndexOptions { ignore_snapshots, ..IndexOptions::default() }).unwrap();
        let precision = |name: &str, kind: &str| {
            let l =
                index.graph_loads().iter().find(|l| l.collection == format!("{name}/{kind}")).unwrap_or_else(|| panic!("{name}/{kind}"));
            l.precision
        };
        // Every stored row of `s` is f16 (else the graph would be held as f32), those of `t` f32.
        assert_eq!((precision("s", "video"), precision("s", "report"), precision("t", "video")), ("f16", "f16", "f32"));
        let space = index.space("s").unwrap().id;
        let found = stored.iter().step_by(6).filter(|(id, v)| &ids(&index, space, v, 1)[0] == id).count();
        assert!(found >= 99, "{found} of 100 self-queries found themselves");
    }
}

/// The first `graph` key of a snapshot part: `h` (header) or `c` (a chunk).
fn snapshot_key(db: &rocksdb::DB, part: u8) -> Box<[u8]> {
    let cf = db.cf_handle("graph").unwrap();
    db.iterator_cf(cf, rocksdb::IteratorMode::Start).map(|kv| kv.unwrap().0).find(|k| k.starts_with(b"snap/") && k[8] == part).unwrap()
}

#[test]
fn a_corrupt_or_missing_snapshot_means_a_rebuild_not_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let stored = {
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = index.ensure_space("s", D).unwrap();
        let s = fill(&index, space, 4200, 4);
        index.checkpoint().unwrap();
        s
    };
    type Damage = fn(&rocksdb::DB);
    let damages: [(&str, Damage); 3] = [
        ("checksum", |db| {
            let (cf, key) = (db.cf_handle("graph").unwrap(), snapshot_key(db, b'c'));
            let mut v = db.get_cf(cf, &key).unwrap().unwrap();
            let i = v.len() / 2;
            v[i] ^= 0x40;
            db.put_cf(cf, &key, v).unwrap();
        }),
        ("no snapshot", |db| {
            let (cf, key) = (db.cf_handle("graph").unwrap(), snapshot_key(db, b'h'));
            db.delete_cf(cf, key).unwrap();
        }),
        ("snapshot header", |db| {
            let (cf, key) = (db.cf_handle("graph").unwrap(), snapshot_key(db, b'h'));
            db.put_cf(cf, key, b"").unwrap();
        }),
    ];
    for (why, damage) in damages {
        {
            let db = raw_db(dir.path());
            damage(&db);
        }
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let l = &index.graph_loads()[0];
        assert_eq!(l.how, "rebuilt", "{why}");
        assert!(l.reason.as_deref().unwrap_or("").contains(why), "{why}: {l:?}");
        let v = index.verify().unwrap();
        assert!(v.ok(), "{why}: {:?}", v.problems);
        let space = index.space("s").unwrap().id;
        assert_eq!(&ids(&index, space, &stored[4100].1, 1)[0], &stored[4100].0);
        drop(index);
        // The rebuild stored a fresh snapshot: the next open loads it.
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        assert_eq!(index.graph_loads()[0].how, "snapshot", "{why}");
    }
}

#[test]
fn a_truncated_table_file_is_a_typed_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    {
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = index.ensure_space("s", D).unwrap();
        fill(&index, space, 3000, 5);
        index.compact().unwrap();
    }
    let mut ssts: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .map(|p| (std::fs::metadata(&p).unwrap().len(), p))
        .collect();
    ssts.sort();
    let (len, biggest) = ssts.pop().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&biggest).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let err = Index::open(dir.path(), IndexOptions::default()).unwrap_err();
    assert!(matches!(err, IndexError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
    assert!(err.to_string().contains("echovault repair"), "{err}");
    // `echovault repair`: RocksDB sets the damaged table aside, the rest opens, and a repair
    // leaves a consistent (smaller) index.
    let salvage = echovault_index::salvage(dir.path(), false).unwrap();
    assert!(salvage.rocksdb_repair.is_some(), "{salvage:?}");
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let v = index.repair().unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    assert!(v.live.get("s/video").copied().unwrap_or(0) < 3000, "{v:?}");
}

#[test]
fn searches_see_whole_batches_while_a_writer_writes() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let space = index.ensure_space("s", D).unwrap();
    fill(&index, space, 4500, 6);
    // Each batch n adds 5 near-copies of its own direction; readers query those directions
    // and must find all 5 or none, exactly and through the graph, while batches land.
    let mut rng = StdRng::seed_from_u64(7);
    let dirs: Vec<Vec<f32>> = (0..120).map(|_| unit(&mut rng, D)).collect();
    let committed = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let checks = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (index, dirs, committed, done, checks) = (&index, &dirs, &committed, &done, &checks);
            s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(100 + t);
                while !done.load(Ordering::Acquire) {
                    let n = rng.random_range(0..dirs.len());
                    let was = committed.load(Ordering::Acquire);
                    let mut q = Query::new(space, Kind::Video, dirs[n].clone(), 10);
                    q.exact = t == 0;
                    let hits = index.search(&q).unwrap();
                    let mine = hits.iter().filter(|h| h.id.0.starts_with(&format!("b{n}-"))).count();
                    if q.exact {
                        assert!(mine == 0 || mine == 5, "batch {n}: {mine} of 5 visible");
                        if n < was {
                            assert_eq!(mine, 5, "batch {n} was acknowledged before the search began");
                        }
                    } else if n < was {
                        // The graph walk is approximate: allow it to miss one near-copy.
                        assert!(mine >= 4, "batch {n}: graph search found {mine} of 5");
                    }
                    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
                    checks.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let mut rng = StdRng::seed_from_u64(8);
        for (n, d) in dirs.iter().enumerate() {
            let mut b = index.batch();
            for i in 0..5 {
                let id = format!("b{n}-{i}");
                b.put_item(ItemRecord::new(id.as_str(), Kind::Video, "x"));
                b.put_vector(space, id.as_str(), Kind::Video, near(&mut rng, d, 0.01));
            }
            index.commit(b).unwrap();
            committed.store(n + 1, Ordering::Release);
        }
        done.store(true, Ordering::Release);
    });
    assert!(checks.load(Ordering::Relaxed) > 100, "readers ran {} searches", checks.load(Ordering::Relaxed));
    assert!(index.verify().unwrap().ok());
}

/// A raw RocksDB key/value pair.
type KeyValue = (Box<[u8]>, Box<[u8]>);

#[test]
fn a_stale_snapshot_is_detected_and_rebuilt() {
    // An old snapshot put back after a repair vacuumed tombstones it still routes through.
    let dir = tempfile::tempdir().unwrap();
    let graph_keys = |path: &Path| -> Vec<KeyValue> {
        let db = raw_db(path);
        let cf = db.cf_handle("graph").unwrap();
        db.iterator_cf(cf, rocksdb::IteratorMode::Start).map(|kv| kv.unwrap()).filter(|(k, _)| k.starts_with(b"snap/")).collect()
    };
    {
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = index.ensure_space("s", D).unwrap();
        fill(&index, space, 4200, 8);
        index.checkpoint().unwrap();
    }
    let old = graph_keys(dir.path());
    {
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = index.space("s").unwrap().id;
        let mut rng = StdRng::seed_from_u64(9);
        let mut b = index.batch();
        for i in 0..10 {
            b.put_vector(space, format!("v{i}").as_str(), Kind::Video, unit(&mut rng, D));
        }
        index.commit(b).unwrap();
        assert!(index.repair().unwrap().ok());
    }
    {
        let db = raw_db(dir.path());
        let cf = db.cf_handle("graph").unwrap();
        for (k, v) in &old {
            db.put_cf(cf, k, v).unwrap();
        }
    }
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let l = &index.graph_loads()[0];
    assert_eq!(l.how, "rebuilt");
    assert!(l.reason.as_deref().unwrap_or("").contains("stale"), "{l:?}");
    assert!(index.verify().unwrap().ok());
}

#[test]
fn a_vector_put_twice_in_one_batch_and_replays_of_tombstones_stay_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(12);
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let space = index.ensure_space("s", D).unwrap();
    fill(&index, space, 4200, 12);
    index.checkpoint().unwrap();
    // After the snapshot: an item put twice in one batch, then replaced again, then deleted.
    let (a, b) = (unit(&mut rng, D), unit(&mut rng, D));
    let mut batch = index.batch();
    batch.put_item(ItemRecord::new("twice", Kind::Video, "x"));
    batch.put_vector(space, "twice", Kind::Video, a.clone());
    batch.put_vector(space, "twice", Kind::Video, b.clone());
    index.commit(batch).unwrap();
    // The first vector is dead at once: no search finds "twice" through it.
    for exact in [false, true] {
        let mut q = Query::new(space, Kind::Video, a.clone(), 10);
        q.exact = exact;
        let hits = index.search_ids(&q).unwrap();
        assert!(!hits.iter().any(|(id, s)| id.0 == "twice" && *s > 0.999), "{hits:?}");
    }
    assert_eq!(&ids(&index, space, &b, 1)[0], "twice");
    assert!(index.verify().unwrap().ok(), "{:?}", index.verify().unwrap().problems);
    let mut batch = index.batch();
    batch.put_vector(space, "twice", Kind::Video, a.clone());
    index.commit(batch).unwrap();
    let mut batch = index.batch();
    batch.delete_item("twice");
    index.commit(batch).unwrap();
    drop(index);
    // Reopen: the tombstoned vectors above the snapshot are replayed (hidden), so the next
    // snapshot covers every stored slot and the open after it loads rather than rebuilds.
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    assert_eq!((index.graph_loads()[0].how, index.graph_loads()[0].replayed), ("snapshot", 3));
    assert!(index.verify().unwrap().ok());
    index.checkpoint().unwrap();
    drop(index);
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    assert_eq!((index.graph_loads()[0].how, index.graph_loads()[0].replayed), ("snapshot", 0), "{:?}", index.graph_loads());
    assert!(index.get_item(&ItemId::from("twice")).unwrap().is_none());
}
