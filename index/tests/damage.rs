//! A damaged index: each column family's table file with flipped bytes, truncated or deleted;
//! `CURRENT`, the MANIFEST and the write-ahead log damaged. For each: opening fails with
//! "damaged … run `echovault repair`" (and never creates an empty index over it) or the table
//! check names the file; `salvage` + `Index::repair` end with an index that opens and checks
//! clean, keeping everything that survived; derivable tables (slots, graph, lookup) come back
//! whole. Reads change no byte of the index and work without write permission.

// The matrix prints what each damage cost (`--nocapture`).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use echovault_index::{check_storage, salvage, Durability, Index, IndexError, IndexOptions, ItemRecord, Kind, Query, StudyDate};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const D: usize = 16;
/// Videos in the fixture: enough that the vector, frame and record tables span many blocks.
const N: usize = 600;
/// Videos whose vector is replaced once (tombstones in `graph`).
const REPLACED: usize = 60;

fn unit(rng: &mut StdRng) -> Vec<f32> {
    let v: Vec<f32> = (0..D).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// An index of `N` videos (patient, study, date, vector, 4 frame embeddings, an ingest-log
/// entry each), some vectors replaced and some errors recorded; flushed and compacted so that
/// every column family is a table file.
fn fixture(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(24);
    let index = Index::open(dir, IndexOptions::default()).unwrap();
    let space = index.ensure_space("s", D).unwrap();
    let mut vectors = BTreeMap::new();
    for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
        let mut b = index.batch();
        for &i in chunk {
            let id = format!("v{i:04}");
            let mut r = ItemRecord::new(id.as_str(), Kind::Video, format!("/export/{id}.dcm"));
            r.patient = Some(format!("p{}", i % 37));
            r.study = Some(format!("s{}", i / 3));
            r.date = StudyDate::new(2020, 1, 1 + (i % 28) as u8).ok();
            b.put_item(r);
            let v = unit(&mut rng);
            b.put_vector(space, id.as_str(), Kind::Video, v.clone());
            b.put_frames(space, id.as_str(), (0..4).map(|_| unit(&mut rng)).collect());
            b.put_log(&format!("file:/export/{id}.dcm"), Some(format!("{{\"id\":\"{id}\"}}").as_bytes()));
            if i % 30 == 0 {
                b.put_error(&format!("/export/bad{i}.dcm"), Some("not a DICOM file"));
            }
            vectors.insert(id, v);
        }
        index.commit(b).unwrap();
    }
    let mut b = index.batch();
    for i in 0..REPLACED {
        let id = format!("v{:04}", i * 7);
        let v = unit(&mut rng);
        b.put_vector(space, id.as_str(), Kind::Video, v.clone());
        vectors.insert(id, v);
    }
    index.commit(b).unwrap();
    index.checkpoint().unwrap();
    index.compact().unwrap();
    vectors
}

/// The table files of each column family (name → files), from RocksDB's own list.
fn tables(dir: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let opts = rocksdb::Options::default();
    let cfs = rocksdb::DB::list_cf(&opts, dir).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut o = rocksdb::Options::default();
    o.set_db_log_dir(logs.path());
    let db = rocksdb::DB::open_cf_for_read_only(&o, dir, &cfs, false).unwrap();
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for f in db.live_files().unwrap() {
        out.entry(f.column_family_name).or_default().push(dir.join(f.name.trim_start_matches('/')));
    }
    out
}

/// Flips 16 bytes inside the first data block of `file` (data blocks start the file).
fn flip(file: &Path) {
    let mut b = std::fs::read(file).unwrap();
    assert!(b.len() > 200, "{} is too small to damage a data block", file.display());
    for x in &mut b[24..40] {
        *x ^= 0x5a;
    }
    std::fs::write(file, b).unwrap();
}

fn truncate(file: &Path) {
    let len = std::fs::metadata(file).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(file).unwrap().set_len(len / 2).unwrap();
}

/// What an index answers: items, items found first by their own vector, duplicate hits.
#[derive(Debug, Default, PartialEq, Eq)]
struct Survey {
    items: usize,
    found: usize,
    duplicates: usize,
    by_patient: usize,
}

fn survey(index: &Index, vectors: &BTreeMap<String, Vec<f32>>) -> Survey {
    let mut s = Survey { items: index.items(Some(Kind::Video)).unwrap().len(), ..Survey::default() };
    let Some(space) = index.spaces().first().map(|s| s.id) else { return s };
    for (id, v) in vectors {
        let mut q = Query::new(space, Kind::Video, v.clone(), 5);
        q.exact = true;
        let hits = index.search_ids(&q).unwrap();
        let distinct: BTreeSet<&str> = hits.iter().map(|(h, _)| h.0.as_str()).collect();
        s.duplicates += hits.len() - distinct.len();
        if hits.first().is_some_and(|(h, _)| h.0 == *id) {
            s.found += 1;
        }
    }
    s.by_patient = (0..37).map(|p| index.items_by_patient(&format!("p{p}")).unwrap().len()).sum();
    s
}

/// The write-ahead log the last writer session wrote to: the newest (highest-numbered) one
/// that is not empty. The largest is not it where an obsolete log (an earlier session's, its
/// memtable flushed at the next open) is still waiting for RocksDB's background purge.
fn current_wal(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log") && std::fs::metadata(p).unwrap().len() > 0)
        .max_by_key(|p| p.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0))
        .unwrap()
}

/// Salvages and repairs `dir` as `echovault repair` does; the result must check clean, twice.
fn salvage_and_repair(dir: &Path, new_secret: bool) -> echovault_index::Salvage {
    let s = salvage(dir, new_secret).unwrap();
    {
        let index = Index::open(dir, IndexOptions::default()).unwrap();
        let v = index.repair().unwrap();
        assert!(v.ok(), "after repair: {:?}\n{s:?}", v.problems);
    }
    assert!(check_storage(dir).unwrap().is_empty());
    let index = Index::open_reader(dir).unwrap();
    let v = index.verify().unwrap();
    assert!(v.ok(), "reopened: {:?}", v.problems);
    s
}

#[test]
fn a_missing_current_fails_every_open_and_never_becomes_an_empty_index() {
    let dir = tempfile::tempdir().unwrap();
    let vectors = fixture(dir.path());
    let whole = survey(&Index::open_reader(dir.path()).unwrap(), &vectors);
    std::fs::remove_file(dir.path().join("CURRENT")).unwrap();
    for round in 0..2 {
        let errs = [
            Index::open(dir.path(), IndexOptions::default()).unwrap_err(),
            Index::open_reader(dir.path()).unwrap_err(),
            echovault_index::peek_secret(dir.path()).unwrap_err(),
            check_storage(dir.path()).unwrap_err(),
        ];
        for e in errs {
            assert!(matches!(e, IndexError::Damaged { .. }), "round {round}: {e}");
            assert!(e.to_string().contains("run `echovault repair"), "{e}");
            assert!(e.to_string().contains("CURRENT is missing"), "{e}");
        }
        assert!(!dir.path().join("CURRENT").exists(), "round {round}: an open created a database over the damage");
    }
    let s = salvage_and_repair(dir.path(), false);
    assert!(s.rocksdb_repair.is_some(), "{s:?}");
    assert_eq!(survey(&Index::open_reader(dir.path()).unwrap(), &vectors), whole);
}

#[test]
fn a_garbage_current_or_a_missing_manifest_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let vectors = fixture(dir.path());
    let whole = survey(&Index::open_reader(dir.path()).unwrap(), &vectors);
    let current = std::fs::read_to_string(dir.path().join("CURRENT")).unwrap();
    std::fs::write(dir.path().join("CURRENT"), b"\x07garbage").unwrap();
    let e = Index::open(dir.path(), IndexOptions::default()).unwrap_err();
    assert!(e.to_string().contains("CURRENT does not name a MANIFEST"), "{e}");
    std::fs::write(dir.path().join("CURRENT"), "MANIFEST-999999\n").unwrap();
    let e = Index::open_reader(dir.path()).unwrap_err();
    assert!(e.to_string().contains("MANIFEST-999999, which is missing"), "{e}");
    // Put back, the index is whole: nothing was created or changed meanwhile.
    std::fs::write(dir.path().join("CURRENT"), &current).unwrap();
    assert_eq!(survey(&Index::open_reader(dir.path()).unwrap(), &vectors), whole);
    // Garbage again: repair rebuilds the MANIFEST from the tables.
    std::fs::write(dir.path().join("CURRENT"), b"\x07garbage").unwrap();
    salvage_and_repair(dir.path(), false);
    assert_eq!(survey(&Index::open_reader(dir.path()).unwrap(), &vectors), whole);
}

#[test]
fn a_damaged_manifest_is_repaired_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let vectors = fixture(dir.path());
    let whole = survey(&Index::open_reader(dir.path()).unwrap(), &vectors);
    let current = std::fs::read_to_string(dir.path().join("CURRENT")).unwrap();
    let manifest = dir.path().join(current.trim());
    let mut b = std::fs::read(&manifest).unwrap();
    let mid = b.len() / 2;
    for x in &mut b[mid..mid + 8] {
        *x ^= 0xff;
    }
    std::fs::write(&manifest, b).unwrap();
    let e = Index::open(dir.path(), IndexOptions::default()).unwrap_err();
    assert!(matches!(e, IndexError::Damaged { .. }), "{e}");
    assert!(matches!(Index::open_reader(dir.path()).unwrap_err(), IndexError::Damaged { .. }));
    salvage_and_repair(dir.path(), false);
    assert_eq!(survey(&Index::open_reader(dir.path()).unwrap(), &vectors), whole);
}

#[test]
fn flipped_bytes_in_each_column_familys_table_are_found_and_salvaged() {
    let mut seen = BTreeSet::new();
    for cf in ["items", "vectors", "slots", "graph", "ingest_log", "errors", "frames", "lookup", "meta"] {
        let dir = tempfile::tempdir().unwrap();
        let vectors = fixture(dir.path());
        let whole = survey(&Index::open_reader(dir.path()).unwrap(), &vectors);
        let files = tables(dir.path());
        let file = &files.get(cf).unwrap_or_else(|| panic!("no table of {cf}: {files:?}"))[0];
        flip(file);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        // The check names the file and its column family, whether or not the index opens.
        let damaged = check_storage(dir.path()).unwrap();
        assert!(damaged.iter().any(|d| d.file == name && d.column_family == cf), "{cf}: {damaged:?}");
        let d = damaged.iter().find(|d| d.file == name).unwrap();
        assert!(d.unreadable.is_some_and(|n| n > 0 && n <= d.entries), "{cf}: {d:?}");
        match Index::open_reader(dir.path()) {
            Ok(index) => {
                let v = index.verify().unwrap();
                assert!(!v.ok());
                assert!(v.problems.iter().any(|p| p.contains(&name) && p.contains(&format!("`{cf}`"))), "{cf}: {:?}", v.problems);
            }
            Err(e) => assert!(matches!(e, IndexError::Damaged { .. }), "{cf}: {e}"),
        }
        if cf == "meta" {
            // The secret lived in the damaged block: refused, nothing of ours changed.
            let e = salvage(dir.path(), false).unwrap_err();
            assert!(matches!(e, IndexError::SecretLost { .. }), "{e}");
            assert!(check_storage(dir.path()).unwrap().iter().any(|d| d.file == name));
        }
        let s = salvage_and_repair(dir.path(), cf == "meta");
        let rewritten = s.rewritten.iter().find(|r| r.column_family == cf).unwrap_or_else(|| panic!("{cf}: {s:?}"));
        assert!(rewritten.lost > 0 || rewritten.unreadable_blocks, "{cf}: {s:?}");
        let after = survey(&Index::open_reader(dir.path()).unwrap(), &vectors);
        eprintln!("{cf}: {rewritten:?}, before {whole:?}, after {after:?}");
        assert_eq!(after.duplicates, 0, "{cf}");
        match cf {
            // Derivable or not searched: everything answers as before.
            "slots" | "graph" | "lookup" | "ingest_log" | "errors" | "frames" | "meta" => assert_eq!(after, whole, "{cf}"),
            // Lost records take their vectors with them; lost vectors leave their records.
            "items" => assert!(after.items < whole.items && after.found == after.items && after.found > 0, "{after:?}"),
            "vectors" => assert!(after.items == whole.items && after.found < whole.found && after.found > 0, "{after:?}"),
            _ => unreachable!(),
        }
        if cf == "meta" {
            assert!(s.meta.iter().any(|m| m.contains("secret")), "{s:?}");
            assert_eq!(Index::open_reader(dir.path()).unwrap().spaces()[0].name, "recovered-1");
        }
        seen.insert(cf);
    }
    assert_eq!(seen.len(), 9);
}

#[test]
fn a_truncated_or_deleted_table_fails_the_open_and_repair_keeps_the_rest() {
    for (cf, how) in [("frames", "truncated"), ("vectors", "deleted"), ("graph", "deleted"), ("items", "truncated")] {
        let dir = tempfile::tempdir().unwrap();
        let vectors = fixture(dir.path());
        let whole = survey(&Index::open_reader(dir.path()).unwrap(), &vectors);
        let files = tables(dir.path())[cf].clone();
        let file = files[0].clone();
        if how == "deleted" {
            std::fs::remove_file(&file).unwrap();
        } else {
            truncate(&file);
        }
        for _ in 0..2 {
            let e = Index::open(dir.path(), IndexOptions::default()).unwrap_err();
            assert!(matches!(e, IndexError::Damaged { .. }), "{cf} {how}: {e}");
            let e = Index::open_reader(dir.path()).unwrap_err();
            assert!(matches!(e, IndexError::Damaged { .. }), "{cf} {how}: {e}");
        }
        // The check names the file, its column family, its key range and what it held.
        let found = check_storage(dir.path()).unwrap();
        let d = found.iter().find(|d| d.file == file.file_name().unwrap().to_str().unwrap()).unwrap_or_else(|| panic!("{found:?}"));
        assert_eq!(d.column_family, cf);
        assert!(d.range.is_some(), "{d:?}");
        let held = match cf {
            "frames" => Some(format!("{N} videos' frame embeddings (space 1) lost")),
            "vectors" => Some(format!("{N} items' vectors lost")),
            "items" => Some(format!("{N} items' records lost (counted from their vectors' mappings)")),
            _ => None,
        };
        if files.len() == 1 {
            assert_eq!(d.lost, held, "{}", d.describe());
        }
        eprintln!("{}", d.describe());
        let s = salvage_and_repair(dir.path(), false);
        assert!(s.rocksdb_repair.is_some(), "{s:?}");
        let after = survey(&Index::open_reader(dir.path()).unwrap(), &vectors);
        eprintln!("{cf} {how}: {s:?}, after {after:?}");
        assert_eq!(after.duplicates, 0);
        match cf {
            "graph" => assert_eq!(after, whole),
            "frames" => assert_eq!(after, whole),
            "vectors" => assert!(after.items == whole.items && after.found == 0, "{after:?}"),
            "items" => assert!(after.items == 0 && after.found == 0, "{after:?}"),
            _ => unreachable!(),
        }
    }
}

#[test]
fn a_damaged_write_ahead_log_fails_the_open_instead_of_rolling_back_silently() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    {
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = index.ensure_space("s", D).unwrap();
        for i in 0..40 {
            let mut b = index.batch();
            let id = format!("w{i}");
            b.put_item(ItemRecord::new(id.as_str(), Kind::Video, "x"));
            b.put_vector(space, id.as_str(), Kind::Video, unit(&mut rng));
            index.commit(b).unwrap();
        }
    }
    let wal = current_wal(dir.path());
    let mut b = std::fs::read(&wal).unwrap();
    let at = b.len() / 3;
    for x in &mut b[at..at + 8] {
        *x ^= 0xff;
    }
    std::fs::write(&wal, b).unwrap();
    let e = Index::open(dir.path(), IndexOptions::default()).unwrap_err();
    assert!(matches!(e, IndexError::Damaged { .. }), "{e}");
    assert!(matches!(Index::open_reader(dir.path()).unwrap_err(), IndexError::Damaged { .. }));
    let s = salvage_and_repair(dir.path(), false);
    assert!(s.wal_damaged.is_some() && s.rocksdb_repair.is_none(), "{s:?}");
    let n = Index::open_reader(dir.path()).unwrap().items(None).unwrap().len();
    // The records before the damage are kept (those after it in the same 32 KiB log block
    // cannot be framed again); the salvage said so, where an open used to be silent.
    assert!(n > 0 && n < 40, "{n}");
}

/// Where each committed batch's record ends in a write-ahead log (RocksDB's log format: 32 KiB
/// blocks of records with a 7-byte header: checksum, 2-byte length, type 1 whole, 2 to 4 the
/// first, middle and last fragments).
fn record_ends(b: &[u8]) -> Vec<usize> {
    const BLOCK: usize = 32 * 1024;
    let (mut out, mut pos) = (Vec::new(), 0);
    while pos + 7 <= b.len() {
        if BLOCK - pos % BLOCK < 7 {
            pos += BLOCK - pos % BLOCK;
            continue;
        }
        let (len, kind) = (usize::from(u16::from_le_bytes([b[pos + 4], b[pos + 5]])), b[pos + 6]);
        assert!((1..=4).contains(&kind), "record type {kind}: not the log format this test reads");
        pos += 7 + len;
        if kind == 1 || kind == 4 {
            out.push(pos);
        }
    }
    out
}

/// A write-ahead log cut at a record boundary (or inside a record) replays quietly up to the
/// cut; the sequence mark the writer keeps says committed batches were lost: every open fails
/// as damaged, saying so; the salvage reports what was rolled back and acknowledges it; a
/// writer that closes normally (or is reopened) is never taken for a cut one.
#[test]
fn a_cut_write_ahead_log_is_reported_not_silently_rolled_back() {
    for in_a_record in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = StdRng::seed_from_u64(9);
        for round in 0..2 {
            // Two writer sessions: a reopen after a clean close reports nothing.
            let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
            let space = index.ensure_space("s", D).unwrap();
            for i in 0..20 {
                let mut b = index.batch();
                let id = format!("w{round}-{i}");
                b.put_item(ItemRecord::new(id.as_str(), Kind::Video, "x"));
                b.put_vector(space, id.as_str(), Kind::Video, unit(&mut rng));
                index.commit(b).unwrap();
            }
        }
        assert_eq!(Index::open_reader(dir.path()).unwrap().items(None).unwrap().len(), 40);
        let wal = current_wal(dir.path());
        let ends = record_ends(&std::fs::read(&wal).unwrap());
        // The last 5 batches cut off: at the end of the 6th record from the end, or 10 bytes
        // into the 5th.
        let at = ends[ends.len() - 6] + if in_a_record { 10 } else { 0 };
        std::fs::OpenOptions::new().write(true).open(&wal).unwrap().set_len(at as u64).unwrap();
        for e in [
            Index::open_reader(dir.path()).unwrap_err(),
            check_storage(dir.path()).unwrap_err(),
            Index::open(dir.path(), IndexOptions::default()).unwrap_err(),
            // Still damaged after a writer's open replayed the log (and deleted it).
            Index::open(dir.path(), IndexOptions::default()).unwrap_err(),
        ] {
            let IndexError::Damaged { detail, .. } = &e else { panic!("{e}") };
            assert!(detail.contains("the write-ahead log was cut") && detail.contains("rolled back"), "{in_a_record}: {detail}");
        }
        let s = salvage_and_repair(dir.path(), false);
        assert!(s.rolled_back.as_deref().is_some_and(|r| r.contains("committed updates")), "{s:?}");
        assert!(!s.clean());
        let n = Index::open_reader(dir.path()).unwrap().items(None).unwrap().len();
        assert_eq!(n, 35, "{in_a_record}: the batches before the cut are kept");
        assert!(salvage(dir.path(), false).unwrap().clean(), "the loss is recorded once");
    }
}

/// Ingest commits are buffered and synced once a second: a power cut may take the log's tail
/// after the last sync while the sequence mark's page (written after every commit) reached the
/// disk. Losing only buffered commits is no damage: every open works (a warning) and a rerun
/// redoes them; losing a synced one still is.
#[test]
fn a_lost_buffered_tail_is_no_damage_a_lost_synced_batch_is() {
    // (batches cut off the log's end, of which the last 5 were never synced)
    for lost in [5, 3, 8] {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = StdRng::seed_from_u64(10);
        {
            let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
            let space = index.ensure_space("s", D).unwrap();
            for i in 0..25 {
                if i == 20 {
                    index.sync().unwrap();
                }
                let mut b = index.batch();
                let id = format!("b{i}");
                b.put_item(ItemRecord::new(id.as_str(), Kind::Video, "x"));
                b.put_vector(space, id.as_str(), Kind::Video, unit(&mut rng));
                index.commit_with(b, Durability::Buffered).unwrap();
            }
        }
        let wal = current_wal(dir.path());
        let ends = record_ends(&std::fs::read(&wal).unwrap());
        std::fs::OpenOptions::new().write(true).open(&wal).unwrap().set_len(ends[ends.len() - 1 - lost] as u64).unwrap();
        if lost <= 5 {
            assert_eq!(Index::open_reader(dir.path()).unwrap().items(None).unwrap().len(), 25 - lost);
            check_storage(dir.path()).unwrap();
            assert_eq!(Index::open(dir.path(), IndexOptions::default()).unwrap().items(None).unwrap().len(), 25 - lost);
            assert!(salvage(dir.path(), false).unwrap().clean(), "{lost}: nothing synced was lost");
        } else {
            for e in [
                Index::open_reader(dir.path()).unwrap_err(),
                check_storage(dir.path()).unwrap_err(),
                Index::open(dir.path(), IndexOptions::default()).unwrap_err(),
            ] {
                let IndexError::Damaged { detail, .. } = &e else { panic!("{e}") };
                assert!(detail.contains("the write-ahead log was cut") && detail.contains("buffered after them"), "{detail}");
            }
            let s = salvage_and_repair(dir.path(), false);
            assert!(s.rolled_back.as_deref().is_some_and(|r| r.contains("committed updates synced to disk")), "{s:?}");
            assert_eq!(Index::open_reader(dir.path()).unwrap().items(None).unwrap().len(), 17);
        }
    }
}

#[test]
fn a_salvage_of_an_index_that_opens_keeps_everything() {
    // The last batches live only in the write-ahead log (RocksDB does not flush on close), as
    // after a killed ingest: a salvage must not hand such a database to RocksDB's repair.
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    {
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        let space = index.space("s").unwrap().id;
        let mut b = index.batch();
        b.put_item(ItemRecord::new("late", Kind::Video, "x"));
        b.put_vector(space, "late", Kind::Video, vec![1.0; D]);
        index.commit(b).unwrap();
    }
    let wal: u64 =
        walk(dir.path()).iter().filter(|p| p.extension().is_some_and(|e| e == "log")).map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(wal > 0, "the last batch is not in a write-ahead log");
    let whole = Index::open_reader(dir.path()).unwrap().items(None).unwrap().len();
    assert_eq!(whole, N + 1);
    let s = salvage_and_repair(dir.path(), false);
    assert!(s.clean(), "{s:?}");
    assert_eq!(Index::open_reader(dir.path()).unwrap().items(None).unwrap().len(), whole);
}

/// Every file of `dir` with its bytes.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walk(dir) {
        out.insert(e.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&e).unwrap());
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn reads_and_checks_change_no_byte_of_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let vectors = fixture(dir.path());
    let before = contents(dir.path());
    {
        let index = Index::open_reader(dir.path()).unwrap();
        survey(&index, &vectors);
        assert!(index.verify().unwrap().ok());
        assert!(check_storage(dir.path()).unwrap().is_empty());
        echovault_index::peek_secret(dir.path()).unwrap().unwrap();
    }
    assert_eq!(contents(dir.path()).keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>());
    assert!(contents(dir.path()) == before, "a read changed a file of the index");
}

/// Environment variable naming the index [`read_only_child`] reads.
const RO_INDEX: &str = "ECHOVAULT_TEST_READ_ONLY_INDEX";

/// The child half of [`reads_work_without_write_permission`]: does nothing unless that test
/// runs it (as an unprivileged user) with [`RO_INDEX`] set.
#[test]
fn read_only_child() {
    let Some(dir) = std::env::var_os(RO_INDEX) else { return };
    let dir = PathBuf::from(dir);
    assert!(std::fs::File::create(dir.join("probe")).is_err(), "the child can write the index");
    let index = Index::open_reader(&dir).unwrap();
    assert_eq!(index.items(None).unwrap().len(), N);
    assert!(index.verify().unwrap().ok());
    assert!(check_storage(&dir).unwrap().is_empty());
    echovault_index::peek_secret(&dir).unwrap().unwrap();
    println!("read-only child ok");
}

#[test]
fn reads_work_without_write_permission() {
    // Root ignores permissions: the reads run in a child process as `nobody` (setpriv), on an
    // index directory root owns. Where that is impossible (not root, no setpriv) the test says
    // so and checks only `reads_and_checks_change_no_byte_of_the_index`'s promise.
    let root = std::process::Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    let setpriv = Path::new("/usr/bin/setpriv").exists();
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    if !(root && setpriv) {
        eprintln!("not root or no setpriv: the read-only child is not run");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "read_only_child", "--nocapture", "--test-threads=1"])
        .env(RO_INDEX, dir.path())
        .env("TMPDIR", "/tmp")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("read-only child ok"), "{text}");
}

/// A place that cannot hold a new index (its parent does not exist) is a storage error naming
/// it, never "this index is damaged: run repair" (there was nothing to damage).
#[test]
fn creating_where_no_index_can_be_is_not_called_damage() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().join("no").join("such").join("parent").join("idx");
    match Index::open(&at, IndexOptions::default()) {
        Ok(_) => {} // RocksDB created the parents: fine too.
        Err(e) => {
            assert!(!matches!(e, IndexError::Damaged { .. }), "{e}");
            assert!(!e.to_string().contains("repair"), "{e}");
        }
    }
}

/// Copies the files of `from` into `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_salvage_killed_at_any_moment_leaves_the_old_index_or_is_finished_by_the_next() {
    // Two damaged column families (records and frame embeddings), salvaged by a child process
    // killed with SIGKILL at random moments; the next salvage must end where an uninterrupted
    // one does.
    let tmp = tempfile::tempdir().unwrap();
    let damaged = tmp.path().join("damaged");
    let vectors = fixture(&damaged);
    let t = tables(&damaged);
    flip(&t["items"][0]);
    flip(&t["frames"][0]);
    let reference = tmp.path().join("reference");
    copy_dir(&damaged, &reference);
    let t0 = std::time::Instant::now();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_evindex")).arg("salvage").arg(&reference).status().unwrap();
    assert!(status.success());
    let took = t0.elapsed();
    salvage_and_repair(&reference, false);
    let want = survey(&Index::open_reader(&reference).unwrap(), &vectors);
    assert!(want.items > 0 && want.items < N, "{want:?}");
    let mut rng = StdRng::seed_from_u64(5);
    let (mut interrupted, mut marked) = (0, 0);
    for trial in 0..12 {
        let dir = tmp.path().join(format!("trial{trial}"));
        copy_dir(&damaged, &dir);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_evindex")).arg("salvage").arg(&dir).spawn().unwrap();
        std::thread::sleep(took.mul_f64(rng.random_range(0.0..1.1)));
        child.kill().unwrap();
        let finished = child.wait().unwrap().success();
        if !finished {
            interrupted += 1;
            if dir.join("echovault-salvage.json").exists() {
                marked += 1;
                // Half-salvaged: nothing opens it but the next salvage.
                let e = Index::open(&dir, IndexOptions::default()).unwrap_err();
                assert!(matches!(e, IndexError::Damaged { ref detail, .. } if detail.contains("interrupted")), "{e}");
                assert!(matches!(Index::open_reader(&dir).unwrap_err(), IndexError::Damaged { .. }));
            } else {
                // Killed before it changed anything, or after it finished: the old damage is
                // still found, or the storage is whole.
                let found = check_storage(&dir).unwrap();
                assert!(found.is_empty() || found.iter().any(|d| d.column_family == "items" || d.column_family == "frames"), "{found:?}");
            }
        }
        salvage_and_repair(&dir, false);
        let got = survey(&Index::open_reader(&dir).unwrap(), &vectors);
        assert_eq!(got, want, "trial {trial}: the salvage after the kill ended elsewhere");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!(
        "salvage of {N} videos with 2 damaged tables: {:.0} ms in a child; 12 kills, {interrupted} interrupted it, {marked} of them mid-salvage (mark left)",
        took.as_secs_f64() * 1e3
    );
    assert!(marked > 0, "no kill fell inside the salvage's rewrite");
}
