//! Look-ups by patient, study and date through the secondary keys: results against a model of
//! what was written (puts, replacements that move an item, deletes), touching only the matches,
//! `verify`/`repair` of damaged keys, and an index from before the keys (fallback, then backfill).

#![allow(clippy::unwrap_used)]

use echovault_index::{Filter, Index, IndexOptions, ItemId, ItemRecord, Kind, Query, StudyDate};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn day(d: i64) -> StudyDate {
    StudyDate::from_days_since_epoch(d).unwrap()
}

fn record(id: &str, kind: Kind, patient: Option<&str>, study: Option<&str>, date: Option<i64>) -> ItemRecord {
    let mut r = ItemRecord::new(id, kind, "x");
    r.patient = patient.map(str::to_owned);
    r.study = study.map(str::to_owned);
    r.date = date.map(day);
    r
}

fn ids(recs: &[ItemRecord]) -> Vec<String> {
    recs.iter().map(|r| r.id.0.clone()).collect()
}

/// What the look-ups must return, computed from the records alone.
fn expected_by_patient(model: &BTreeMap<String, ItemRecord>, p: &str) -> Vec<String> {
    let mut v: Vec<&ItemRecord> = model.values().filter(|r| r.patient.as_deref() == Some(p)).collect();
    v.sort_by_key(|r| (r.date.is_none(), r.date, r.id.clone()));
    v.iter().map(|r| r.id.0.clone()).collect()
}

fn expected_by_date(model: &BTreeMap<String, ItemRecord>, since: Option<i64>, until: Option<i64>, kind: Option<Kind>) -> Vec<String> {
    let mut v: Vec<&ItemRecord> = model
        .values()
        .filter(|r| r.date.is_some_and(|d| since.is_none_or(|s| d >= day(s)) && until.is_none_or(|u| d <= day(u))))
        .filter(|r| kind.is_none_or(|k| r.kind == k))
        .collect();
    v.sort_by_key(|r| (r.date, r.id.clone()));
    v.iter().map(|r| r.id.0.clone()).collect()
}

fn check_all(index: &Index, model: &BTreeMap<String, ItemRecord>) {
    let patients: BTreeSet<String> = model.values().filter_map(|r| r.patient.clone()).collect();
    assert_eq!(index.patients().unwrap(), patients.iter().cloned().collect::<Vec<_>>());
    for p in patients.iter().map(String::as_str).chain(["nobody"]) {
        assert_eq!(ids(&index.items_by_patient(p).unwrap()), expected_by_patient(model, p), "patient {p}");
    }
    let studies: BTreeSet<String> = model.values().filter_map(|r| r.study.clone()).collect();
    for s in studies.iter().map(String::as_str).chain(["none"]) {
        let want: Vec<String> = model.values().filter(|r| r.study.as_deref() == Some(s)).map(|r| r.id.0.clone()).collect();
        assert_eq!(ids(&index.items_by_study(s).unwrap()), want, "study {s}");
    }
    for (since, until, kind) in
        [(None, None, None), (Some(3), Some(7), None), (Some(5), None, Some(Kind::Study)), (None, Some(2), Some(Kind::Video))]
    {
        assert_eq!(ids(&index.items_by_date(since.map(day), until.map(day), kind).unwrap()), expected_by_date(model, since, until, kind));
    }
}

#[test]
fn lookups_follow_puts_replacements_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let mut model = BTreeMap::new();
    let mut b = index.batch();
    // "p1" is a prefix of "p10": their keys must not mix.
    for r in [
        record("v3", Kind::Video, Some("p1"), Some("s1"), Some(5)),
        record("v1", Kind::Video, Some("p1"), Some("s1"), Some(5)),
        record("v2", Kind::Video, Some("p1"), Some("s2"), Some(2)),
        record("v4", Kind::Video, Some("p1"), None, None),
        record("s1", Kind::Study, Some("p1"), Some("s1"), Some(5)),
        record("v5", Kind::Video, Some("p10"), Some("s3"), Some(1)),
        record("r1", Kind::Report, None, Some("s3"), Some(9)),
        record("v6", Kind::Video, None, None, None),
    ] {
        model.insert(r.id.0.clone(), r.clone());
        b.put_item(r);
    }
    index.commit(b).unwrap();
    assert_eq!(ids(&index.items_by_patient("p1").unwrap()), ["v2", "s1", "v1", "v3", "v4"]);
    check_all(&index, &model);

    // v1 moves to another patient, study and date; v2 loses its date; r1 and v5 go.
    let mut b = index.batch();
    for r in [record("v1", Kind::Video, Some("p2"), Some("s9"), Some(8)), record("v2", Kind::Video, Some("p1"), Some("s2"), None)] {
        model.insert(r.id.0.clone(), r.clone());
        b.put_item(r);
    }
    b.delete_item("r1");
    b.delete_item("v5");
    model.remove("r1");
    model.remove("v5");
    index.commit(b).unwrap();
    assert_eq!(ids(&index.items_by_patient("p1").unwrap()), ["s1", "v3", "v2", "v4"]);
    assert_eq!(index.patients().unwrap(), ["p1", "p2"]);
    assert_eq!(index.studies_of_patient("p1").unwrap(), ["s1", "s2"]);
    check_all(&index, &model);
    assert!(index.verify().unwrap().ok(), "{:?}", index.verify().unwrap().problems);

    // Reopened, the same.
    drop(index);
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    check_all(&index, &model);
}

#[test]
fn a_lookup_decodes_only_its_matches() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let n = 20_000;
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let mut b = index.batch();
        for &i in chunk {
            let p = format!("p{}", i % 4000);
            b.put_item(record(&format!("v{i}"), Kind::Video, Some(&p), Some(&format!("s{}", i / 2)), Some(i64::from(i % 3650))));
        }
        index.commit(b).unwrap();
    }
    let before = index.records_decoded();
    let got = index.items_by_patient("p17").unwrap();
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|r| r.patient.as_deref() == Some("p17")));
    assert_eq!(index.records_decoded() - before, 5, "only the patient's own records are read");
    let before = index.records_decoded();
    assert_eq!(index.items_by_study("s100").unwrap().len(), 2);
    let got = index.items_by_date(Some(day(10)), Some(day(11)), Some(Kind::Video)).unwrap();
    let want = (0..n).filter(|i| (10..=11).contains(&(i % 3650))).count();
    assert_eq!(got.len(), want);
    assert_eq!(index.records_decoded() - before, 2 + want as u64);
    let before = index.records_decoded();
    assert_eq!(index.patients().unwrap().len(), 4000);
    assert_eq!(index.records_decoded(), before, "listing patients reads keys, no record");
}

#[test]
fn patient_and_study_filtered_searches_find_exactly_their_items() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let space = index.ensure_space("s", 4).unwrap();
    let mut model = BTreeMap::new();
    let vector = |i: usize| vec![1.0, (i as f32).sin(), (i as f32 * 0.7).cos(), 0.5];
    let mut b = index.batch();
    for i in 0..3000usize {
        // p1 is a prefix of p10..p19: their keys must not mix.
        let r = record(&format!("v{i}"), Kind::Video, Some(&format!("p{}", i % 40)), Some(&format!("s{}", i / 3)), Some((i % 50) as i64));
        model.insert(r.id.0.clone(), r.clone());
        b.put_vector(space, r.id.clone(), Kind::Video, vector(i));
        b.put_item(r);
    }
    // A study record of p1 (another kind: never a video hit).
    b.put_item(record("study-1", Kind::Study, Some("p1"), Some("s0"), Some(0)));
    index.commit(b).unwrap();
    // v41 moves from p1 to p2 without a new vector; v81 (p1) gets a new vector; v121 goes.
    let mut b = index.batch();
    let moved = record("v41", Kind::Video, Some("p2"), Some("s13"), Some(41));
    model.insert("v41".into(), moved.clone());
    b.put_item(moved);
    b.put_vector(space, "v81", Kind::Video, vector(5));
    b.delete_item("v121");
    model.remove("v121");
    index.commit(b).unwrap();
    let search = |filter: Filter| -> BTreeSet<String> {
        let mut q = Query::new(space, Kind::Video, vector(7), 10_000);
        q.exact = true;
        q.filter = filter;
        index.search(&q).unwrap().into_iter().map(|h| h.id.0).collect()
    };
    let want = |keep: &dyn Fn(&ItemRecord) -> bool| -> BTreeSet<String> {
        model.values().filter(|r| r.kind == Kind::Video && keep(r)).map(|r| r.id.0.clone()).collect()
    };
    for p in ["p1", "p2", "p10"] {
        let got = search(Filter { patient: Some(p.into()), ..Filter::default() });
        assert_eq!(got, want(&|r| r.patient.as_deref() == Some(p)), "patient {p}");
        assert!(!got.is_empty());
    }
    let s13 = search(Filter { study: Some("s13".into()), ..Filter::default() });
    assert_eq!(s13, want(&|r| r.study.as_deref() == Some("s13")));
    assert!(s13.contains("v41"));
    // Patient and date together: the keys give the patient's items, the facts the dates.
    let (since, until) = (day(10), day(20));
    let got = search(Filter { patient: Some("p1".into()), since: Some(since), until: Some(until), ..Filter::default() });
    assert_eq!(got, want(&|r| r.patient.as_deref() == Some("p1") && r.date.is_some_and(|d| d >= since && d <= until)));
    assert_eq!(search(Filter { patient: Some("nobody".into()), ..Filter::default() }), BTreeSet::new());
}

/// Opens the RocksDB database under an index with every column family it holds.
fn raw(path: &Path) -> rocksdb::DB {
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), path).unwrap();
    rocksdb::DB::open_cf(&rocksdb::Options::default(), path, cfs).unwrap()
}

#[test]
fn verify_finds_damaged_keys_and_repair_rebuilds_them() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let mut b = index.batch();
    b.put_item(record("v1", Kind::Video, Some("p1"), Some("s1"), Some(3)));
    b.put_item(record("v2", Kind::Video, Some("p1"), Some("s1"), Some(4)));
    index.commit(b).unwrap();
    drop(index);
    {
        let db = raw(dir.path());
        let cf = db.cf_handle("lookup").unwrap();
        let keys: Vec<Box<[u8]>> = db.iterator_cf(cf, rocksdb::IteratorMode::Start).map(|kv| kv.unwrap().0).collect();
        assert_eq!(keys.len(), 6, "patient, study and date keys of two records");
        // One key lost, one left behind by a record that no longer has it.
        db.delete_cf(cf, &keys[0]).unwrap();
        let mut stale = keys[1].to_vec();
        stale.extend_from_slice(b"-ghost");
        db.put_cf(cf, &stale, [1u8]).unwrap();
    }
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let problems = index.verify().unwrap().problems;
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems.iter().any(|p| p.starts_with("secondary key missing")), "{problems:?}");
    assert!(problems.iter().any(|p| p.starts_with("stale secondary key") && p.contains("-ghost")), "{problems:?}");
    let v = index.repair().unwrap();
    assert!(v.ok(), "{:?}", v.problems);
    assert_eq!(ids(&index.items_by_patient("p1").unwrap()), ["v1", "v2"]);
}

#[test]
fn an_index_from_before_the_keys_is_read_by_scanning_then_backfilled_on_a_writer_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = BTreeMap::new();
    {
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let mut b = index.batch();
        for i in 0..50 {
            let r = record(&format!("v{i}"), Kind::Video, Some(&format!("p{}", i % 7)), Some(&format!("s{}", i % 11)), Some(i % 9));
            model.insert(r.id.0.clone(), r.clone());
            b.put_item(r);
        }
        index.commit(b).unwrap();
    }
    {
        // Make it what format 2 wrote before the secondary keys: no `lookup` column family, no
        // `lookup_version`, and a record whose date text is no day (nothing validated dates).
        let mut db = raw(dir.path());
        db.drop_cf("lookup").unwrap();
        db.delete_cf(db.cf_handle("meta").unwrap(), b"lookup_version").unwrap();
        #[derive(serde::Serialize)]
        struct OldRecord {
            id: ItemId,
            kind: Kind,
            source: String,
            patient: Option<String>,
            study: Option<String>,
            date: Option<String>,
            text: Option<String>,
            frames: Option<u32>,
            fps: Option<f64>,
            extra: BTreeMap<String, String>,
        }
        let old = OldRecord {
            id: ItemId::from("bad-date"),
            kind: Kind::Report,
            source: "r.csv".into(),
            patient: Some("p1".into()),
            study: Some("s1".into()),
            date: Some("2021-02-31".into()),
            text: Some("Normal.".into()),
            frames: None,
            fps: None,
            extra: BTreeMap::new(),
        };
        let bytes = bincode::serde::encode_to_vec(&old, bincode::config::standard()).unwrap();
        db.put_cf(db.cf_handle("items").unwrap(), b"bad-date", bytes).unwrap();
        model.insert("bad-date".into(), record("bad-date", Kind::Report, Some("p1"), Some("s1"), None));
    }
    // A reader of it (no `lookup` column family at all) answers by scanning.
    let reader = Index::open_reader(dir.path()).unwrap();
    check_all(&reader, &model);
    drop(reader);
    // A passive open writes nothing: it answers by scanning, and `verify` says the keys are missing.
    let index = Index::open(dir.path(), IndexOptions { passive_open: true, ..Default::default() }).unwrap();
    let rec = index.get_item(&ItemId::from("bad-date")).unwrap().unwrap();
    assert_eq!((rec.date, rec.text.as_deref()), (None, Some("Normal.")), "a stored date that is no day reads as undated");
    check_all(&index, &model);
    let problems = index.verify().unwrap().problems;
    assert!(problems.len() == 1 && problems[0].contains("secondary keys") && problems[0].contains("missing"), "{problems:?}");
    drop(index);
    // A writer open fills them once; then the look-ups read only their matches.
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    assert!(index.verify().unwrap().ok(), "{:?}", index.verify().unwrap().problems);
    check_all(&index, &model);
    let before = index.records_decoded();
    assert_eq!(index.items_by_patient("p3").unwrap().len(), 7);
    assert_eq!(index.records_decoded() - before, 7);
}

#[derive(Clone, Debug)]
enum Op {
    Put { id: u8, patient: Option<u8>, study: Option<u8>, date: Option<u8>, kind: u8 },
    Delete { id: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..24, proptest::option::of(0u8..4), proptest::option::of(0u8..5), proptest::option::of(0u8..10), 0u8..3)
            .prop_map(|(id, patient, study, date, kind)| Op::Put { id, patient, study, date, kind }),
        1 => (0u8..24).prop_map(|id| Op::Delete { id }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn lookups_equal_a_model_after_random_batches(batches in proptest::collection::vec(proptest::collection::vec(op(), 1..8), 1..6)) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let mut model: BTreeMap<String, ItemRecord> = BTreeMap::new();
        for ops in batches {
            let mut b = index.batch();
            let mut deleted = Vec::new();
            for op in ops {
                match op {
                    Op::Put { id, patient, study, date, kind } => {
                        let p = patient.map(|p| format!("p{p}"));
                        let s = study.map(|s| format!("s{s}"));
                        let r = record(&format!("i{id}"), Kind::ALL[kind as usize], p.as_deref(), s.as_deref(), date.map(i64::from));
                        model.insert(r.id.0.clone(), r.clone());
                        b.put_item(r);
                    }
                    Op::Delete { id } => {
                        deleted.push(format!("i{id}"));
                        b.delete_item(format!("i{id}").as_str());
                    }
                }
            }
            // Deletes apply after the batch's puts.
            for d in deleted {
                model.remove(&d);
            }
            index.commit(b).unwrap();
            check_all(&index, &model);
        }
        let v = index.verify().unwrap();
        prop_assert!(v.ok(), "{:?}", v.problems);
    }
}
