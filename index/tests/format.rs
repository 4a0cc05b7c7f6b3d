//! Format versions: an index written by the format-2 code (`tests/fixtures/format-2`, see its
//! README) opens with today's code — a writer upgrades it in place, a reader reads it as it is —
//! and still gives every answer recorded when it was written; versions this build neither reads
//! nor upgrades are clear errors. Every test works on a copy: the fixture is never opened.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use echovault_index::{Filter, Index, IndexError, IndexOptions, ItemRecord, Kind, Query, StudyDate, FORMAT_VERSION};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-2")
}

/// Every file of the fixture's index, by name.
fn fixture_files() -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(fixture_dir().join("index")).unwrap() {
        let e = e.unwrap();
        files.insert(e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap());
    }
    files
}

/// A copy of the fixture's index in a new temporary directory (its `index/`), and the fixture's
/// files as they were, to check at the end that nothing changed them.
fn copy_fixture() -> (tempfile::TempDir, PathBuf, BTreeMap<String, Vec<u8>>) {
    let files = fixture_files();
    assert!(files.contains_key("CURRENT") && files.len() > 5, "fixture incomplete: {:?}", files.keys());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("index");
    std::fs::create_dir(&dir).unwrap();
    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    (tmp, dir, files)
}

fn assert_fixture_unchanged(before: &BTreeMap<String, Vec<u8>>) {
    assert!(fixture_files() == *before, "the fixture under {} was changed", fixture_dir().display());
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixture_dir().join("expected.json")).unwrap()).unwrap()
}

/// Opens the database at `dir` with RocksDB alone (every column family it has).
fn raw_db(dir: &Path) -> rocksdb::DB {
    let opts = rocksdb::Options::default();
    let cfs = rocksdb::DB::list_cf(&opts, dir).unwrap();
    rocksdb::DB::open_cf(&opts, dir, &cfs).unwrap()
}

/// The format version stored at `dir`.
fn stored_version(dir: &Path) -> u32 {
    let db = raw_db(dir);
    let v = db.get_cf(db.cf_handle("meta").unwrap(), b"format_version").unwrap().unwrap();
    u32::from_be_bytes(v.as_slice().try_into().unwrap())
}

fn set_version(dir: &Path, version: u32) {
    let db = raw_db(dir);
    db.put_cf(db.cf_handle("meta").unwrap(), b"format_version", version.to_be_bytes()).unwrap();
}

fn kind(name: &str) -> Kind {
    Kind::ALL.into_iter().find(|k| k.as_str() == name).unwrap()
}

fn filter(name: &str) -> Filter {
    match name {
        "none" => Filter::default(),
        "patient p2" => Filter { patient: Some("p2".into()), ..Filter::default() },
        "2021 to 2022" => Filter {
            since: Some(StudyDate::new(2021, 1, 1).unwrap()),
            until: Some(StudyDate::new(2022, 12, 31).unwrap()),
            ..Filter::default()
        },
        other => panic!("unknown filter {other} in expected.json"),
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{what}: {g} vs {w}");
    }
}

/// Every answer recorded by the format-2 code, asked of `index`. Without `frames`, the frame
/// embeddings are expected gone (an index from before the frames column family).
fn assert_answers(index: &Index, frames: bool) {
    let want = expected();
    assert_eq!(want["format_version"], 2);
    assert_eq!(serde_json::to_value(index.counts().unwrap()).unwrap(), want["counts"]);
    assert_eq!(serde_json::to_value(index.spaces()).unwrap(), want["spaces"]);
    let mut items = index.items(None).unwrap();
    items.sort_by(|a, b| a.id.cmp(&b.id));
    let want_items: Vec<ItemRecord> = serde_json::from_value(want["items"].clone()).unwrap();
    assert_eq!(items.len(), 118);
    assert_eq!(items, want_items);
    assert_eq!(serde_json::to_value(index.errors().unwrap()).unwrap(), want["errors"]);
    let log: Vec<(String, String)> =
        index.log_entries("file:").unwrap().into_iter().map(|(k, v)| (k, String::from_utf8(v).unwrap())).collect();
    assert_eq!(serde_json::to_value(log).unwrap(), want["log"]);
    let mut p2: Vec<String> = index.items_by_patient("p2").unwrap().into_iter().map(|r| r.id.0).collect();
    let mut want_p2: Vec<String> = serde_json::from_value(want["patient_p2"].clone()).unwrap();
    p2.sort();
    want_p2.sort();
    assert_eq!(p2, want_p2);
    let alpha = index.space("alpha").unwrap().id;
    let v = index.get_vector(alpha, Kind::Video, &"v003".into()).unwrap().unwrap();
    assert_close(&v, &floats(&want["vector_alpha_video_v003"]), "vector of v003");
    let got_frames = index.get_frames(alpha, &"v012".into()).unwrap();
    if frames {
        let got_frames = got_frames.unwrap();
        let want_frames = want["frames_alpha_v012"].as_array().unwrap();
        assert_eq!(got_frames.len(), want_frames.len());
        for (g, w) in got_frames.iter().zip(want_frames) {
            assert_close(g, &floats(w), "frame of v012");
        }
    } else {
        assert_eq!(got_frames, None);
    }
    let searches = want["searches"].as_array().unwrap();
    assert_eq!(searches.len(), 12);
    for s in searches {
        let what = format!("search {} {} {}", s["space"], s["kind"], s["filter"]);
        let space = index.space(s["space"].as_str().unwrap()).unwrap().id;
        let q = Query {
            filter: filter(s["filter"].as_str().unwrap()),
            ..Query::new(space, kind(s["kind"].as_str().unwrap()), floats(&s["vector"]), 5)
        };
        let hits = index.search(&q).unwrap();
        let want_hits = s["hits"].as_array().unwrap();
        assert!(!want_hits.is_empty(), "{what}");
        assert_eq!(
            hits.iter().map(|h| h.id.0.as_str()).collect::<Vec<_>>(),
            want_hits.iter().map(|h| h["id"].as_str().unwrap()).collect::<Vec<_>>(),
            "{what}"
        );
        for (h, w) in hits.iter().zip(want_hits) {
            assert!((h.score - w["score"].as_f64().unwrap() as f32).abs() < 1e-4, "{what}: {} vs {}", h.score, w["score"]);
        }
    }
}

#[test]
fn a_writer_upgrades_a_format_2_index_in_place_and_every_recorded_answer_holds() {
    let (_tmp, dir, before) = copy_fixture();
    assert_eq!(stored_version(&dir), 2);
    {
        let index = Index::open(&dir, IndexOptions::default()).unwrap();
        assert_eq!(index.format_version().unwrap(), FORMAT_VERSION, "what the handle says it is in");
        assert_answers(&index, true);
        // The snapshots the format-2 code wrote load as they are: nothing rebuilt, nothing replayed.
        let loads = index.graph_loads();
        assert_eq!(loads.len(), 4, "{loads:?}");
        for l in loads {
            assert!(l.how == "snapshot" && l.replayed == 0, "{l:?}");
        }
        assert!(index.verify().unwrap().ok());
    }
    assert_eq!(stored_version(&dir), FORMAT_VERSION);
    assert_eq!(FORMAT_VERSION, 3);
    // Upgraded once: it opens again as an index of this format, for writers and readers.
    {
        let index = Index::open(&dir, IndexOptions::default()).unwrap();
        assert_answers(&index, true);
    }
    let reader = Index::open_reader(&dir).unwrap();
    assert_answers(&reader, true);
    assert_fixture_unchanged(&before);
}

#[test]
fn readers_and_passive_opens_read_a_complete_format_2_index_as_it_is() {
    let (_tmp, dir, before) = copy_fixture();
    {
        let reader = Index::open_reader(&dir).unwrap();
        assert_eq!(reader.format_version().unwrap(), 2);
        assert_answers(&reader, true);
    }
    assert_eq!(stored_version(&dir), 2, "a reader upgraded the index");
    {
        let index = Index::open(&dir, IndexOptions { passive_open: true, ..IndexOptions::default() }).unwrap();
        assert_eq!(index.format_version().unwrap(), 2, "info on an index no writer has opened yet");
        assert_answers(&index, true);
    }
    assert_eq!(stored_version(&dir), 2, "a passive open upgraded the index");
    assert_fixture_unchanged(&before);
}

#[test]
fn a_format_2_index_from_before_the_frames_and_lookup_column_families_needs_a_writer() {
    let (_tmp, dir, before) = copy_fixture();
    // As the first format-2 indexes were: no `frames`, no `lookup`, no lookup version.
    {
        let mut db = raw_db(&dir);
        db.delete_cf(db.cf_handle("meta").unwrap(), b"lookup_version").unwrap();
        db.drop_cf("frames").unwrap();
        db.drop_cf("lookup").unwrap();
    }
    let err = Index::open_reader(&dir).unwrap_err();
    assert!(matches!(err, IndexError::FormatUpgradeNeeded { found: 2, expected: FORMAT_VERSION, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&dir.display().to_string()) && msg.contains("`echovault repair --index"), "{msg}");
    assert_eq!(stored_version(&dir), 2);
    // A passive open writes nothing: it neither creates the missing column families nor reads
    // the index as if it had them.
    let families = || rocksdb::DB::list_cf(&rocksdb::Options::default(), &dir).unwrap();
    let old_families = families();
    assert!(!old_families.iter().any(|c| c == "frames"), "{old_families:?}");
    let err = Index::open(&dir, IndexOptions { passive_open: true, ..IndexOptions::default() }).unwrap_err();
    assert!(matches!(err, IndexError::FormatUpgradeNeeded { found: 2, .. }), "{err}");
    assert_eq!(families(), old_families, "a passive open created column families");
    {
        let index = Index::open(&dir, IndexOptions::default()).unwrap();
        // The frames are gone with their column family; everything else holds, the patient
        // look-ups from keys filled at the upgrade.
        assert_answers(&index, false);
        assert!(index.verify().unwrap().ok());
    }
    assert_eq!(stored_version(&dir), FORMAT_VERSION);
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &dir).unwrap();
    assert!(cfs.iter().any(|c| c == "frames") && cfs.iter().any(|c| c == "lookup"), "{cfs:?}");
    assert_answers(&Index::open_reader(&dir).unwrap(), false);
    assert_fixture_unchanged(&before);
}

#[test]
fn versions_older_than_2_or_newer_than_this_one_are_clear_errors() {
    for (version, who) in [(1, "an older"), (99, "a newer")] {
        let (_tmp, dir, before) = copy_fixture();
        set_version(&dir, version);
        // Without the column families format 2 came to have: a writer's open must not add them
        // to an index of a format it does not know.
        {
            let mut db = raw_db(&dir);
            db.drop_cf("frames").unwrap();
        }
        let families = || rocksdb::DB::list_cf(&rocksdb::Options::default(), &dir).unwrap();
        let old_families = families();
        let writer = Index::open(&dir, IndexOptions::default()).unwrap_err();
        assert_eq!(families(), old_families, "a refused open created column families");
        let reader = Index::open_reader(&dir).unwrap_err();
        for err in [writer, reader] {
            assert!(matches!(err, IndexError::FormatVersion { found, expected: FORMAT_VERSION, .. } if found == version), "{err}");
            let msg = err.to_string();
            for part in [
                dir.display().to_string(),
                format!("format version {version}"),
                format!("reads version {FORMAT_VERSION}"),
                format!("written by {who} echovault"),
                "new --index directory".to_owned(),
            ] {
                assert!(msg.contains(&part), "{part:?} not in: {msg}");
            }
        }
        assert_eq!(stored_version(&dir), version, "a refused open changed the version");
        assert_fixture_unchanged(&before);
    }
}

#[test]
fn an_index_of_this_format_missing_a_column_family_is_damaged_for_readers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("index");
    drop(Index::open(&dir, IndexOptions::default()).unwrap());
    {
        let mut db = raw_db(&dir);
        db.drop_cf("frames").unwrap();
    }
    let families = || rocksdb::DB::list_cf(&rocksdb::Options::default(), &dir).unwrap();
    let old_families = families();
    for err in [
        Index::open_reader(&dir).unwrap_err(),
        Index::open(&dir, IndexOptions { passive_open: true, ..IndexOptions::default() }).unwrap_err(),
    ] {
        assert!(matches!(&err, IndexError::Damaged { detail, .. } if detail.contains("`frames` is missing")), "{err}");
    }
    assert_eq!(families(), old_families, "a reader or a passive open created a column family");
    // The writer's open creates it, empty, and the index reads again.
    drop(Index::open(&dir, IndexOptions::default()).unwrap());
    assert!(families().iter().any(|c| c == "frames"));
    Index::open_reader(&dir).unwrap();
}
