//! Sharded ingest (`ingest --shard I/N`): the shards of a phantom export (DICOM and AVI, with
//! reports, studies of several videos and a broken file) are disjoint, every study's items lie in
//! the shard the documented rule names (first 8 bytes of SHA-256 of the study id, big-endian,
//! mod N — computed here from `sha2` directly, not through echovault), and together they hold
//! exactly the items and vectors of one ingest of everything; the files of other shards are
//! counted, not failed. Over DICOMweb (a real Orthanc, tests/support/orthanc.rs) a shard
//! retrieves only its own studies' instances. Bad `--shard` values are usage errors (exit 2).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;
#[path = "support/orthanc.rs"]
mod orthanc;

use echovault::index::{Index, ItemId, Kind};
use echovault::media::dicom::DicomCine;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The documented rule, written out again: shard of a study id among `n`.
fn shard_of(study: &str, n: u64) -> u64 {
    let d = Sha256::digest(study.as_bytes());
    u64::from_be_bytes(d[..8].try_into().unwrap()) % n
}

fn phantom(out: &Path, patients: u32, first: u32, formats: &str) {
    let o = Command::new(env!("CARGO_BIN_EXE_echovault"))
        .args(["phantom", "--out", out.to_str().unwrap(), "--patients", &patients.to_string()])
        .args(["--first-patient", &first.to_string(), "--seed", &first.to_string()])
        .args(["--studies", "2:3", "--size", "64", "--frames", "4", "--formats", formats])
        .env_remove("ECHOVAULT_INDEX")
        .output()
        .unwrap();
    assert!(o.status.success(), "phantom: {}", String::from_utf8_lossy(&o.stderr));
}

/// `file` copied to `to` with its SOPInstanceUID's last digit changed: a second video of the
/// same study (same length, so every element length stays right).
fn second_instance(file: &Path, to: &Path) {
    let sop = DicomCine::open(file).unwrap().info().sop_uid.clone().unwrap();
    let (head, last) = sop.split_at(sop.len() - 1);
    let other = format!("{head}{}", (last.as_bytes()[0] - b'0' + 1) % 10);
    let mut bytes = std::fs::read(file).unwrap();
    // Every occurrence: the file meta's MediaStorageSOPInstanceUID and the dataset's.
    let mut i = 0;
    while let Some(at) = bytes[i..].windows(sop.len()).position(|w| w == sop.as_bytes()) {
        bytes[i + at..i + at + sop.len()].copy_from_slice(other.as_bytes());
        i += at + sop.len();
    }
    std::fs::write(to, bytes).unwrap();
    assert_eq!(DicomCine::open(to).unwrap().info().sop_uid.as_deref(), Some(other.as_str()));
}

/// `echovault --json ingest ARGS... --progress none` with a shared secret file: exit code and
/// summary.
fn ingest(index: &Path, secret: &Path, args: &[&str]) -> (i32, Value) {
    let mut a = vec!["--json", "--secret-file", secret.to_str().unwrap(), "ingest", "--progress", "none", "--workers", "2"];
    a.extend_from_slice(args);
    let out = common::command(index, &a).env_remove("ECHOVAULT_SECRET_FILE").env_remove("ECHOVAULT_DICOMWEB_TOKEN").output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    assert!(code == 0 || code == 3, "ingest {args:?}: exit {code}\n{}", String::from_utf8_lossy(&out.stderr));
    (code, common::json(&out))
}

/// Every item of an index: id → (kind, study, patient key, date).
type Items = BTreeMap<String, (Kind, Option<String>, Option<String>, Option<String>)>;

fn items(index: &Path) -> Items {
    let ix = Index::open_reader(index).unwrap();
    ix.items(None).unwrap().into_iter().map(|r| (r.id.0.clone(), (r.kind, r.study, r.patient, r.date.map(|d| d.to_string())))).collect()
}

/// Every vector of an index, by space name, kind and item.
fn vectors(index: &Path, items: &Items) -> BTreeMap<(String, String), Vec<f32>> {
    let ix = Index::open_reader(index).unwrap();
    let mut out = BTreeMap::new();
    for space in ix.spaces() {
        for (id, (kind, ..)) in items {
            if let Some(v) = ix.get_vector(space.id, *kind, &ItemId(id.clone())).unwrap() {
                out.insert((space.name.clone(), id.clone()), v);
            }
        }
    }
    out
}

fn errors(index: &Path) -> Vec<Value> {
    let out = common::echovault(index, &["--json", "errors"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    common::json(&out)["errors"].as_array().unwrap().clone()
}

#[test]
fn three_shards_of_a_phantom_export_are_disjoint_and_add_up_to_one_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    phantom(&export, 5, 1, "dicom-jpeg,avi,dicom-native");
    // Studies of two videos: a second instance beside two DICOM studies' first.
    let mut firsts: Vec<PathBuf> = Vec::new();
    for patient in std::fs::read_dir(export.join("dicom")).unwrap() {
        for study in std::fs::read_dir(patient.unwrap().path()).unwrap() {
            firsts.push(study.unwrap().path().join("IM0001.dcm"));
        }
    }
    firsts.sort();
    assert!(firsts.len() >= 4, "{firsts:?}");
    for f in &firsts[..3] {
        second_instance(f, &f.with_file_name("IM0002.dcm"));
    }
    // A file named as DICOM that is none: its study is unknown, so it goes by its file name.
    std::fs::write(export.join("broken.dcm"), b"not a DICOM file").unwrap();
    let secret = dir.path().join("secret.hex");
    let reports = export.join("reports.jsonl");
    let reports_arg = ["--reports", reports.to_str().unwrap()];

    let single = dir.path().join("single");
    let (code, all) = ingest(&single, &secret, &[&[export.to_str().unwrap()][..], &reports_arg].concat());
    assert_eq!(code, 3, "the broken file fails: {all}");
    assert_eq!(all["failed"].as_array().unwrap().len(), 1, "{all}");
    assert_eq!((all["other_shard_files"].as_u64(), all["other_shard_studies"].as_u64()), (Some(0), Some(0)), "{all}");
    let single_items = items(&single);
    let studies: BTreeSet<&str> = single_items.values().filter(|v| v.0 == Kind::Study).filter_map(|v| v.1.as_deref()).collect();
    let video_count = single_items.values().filter(|v| v.0 == Kind::Video).count();
    assert!(studies.len() >= 10 && video_count == studies.len() + 3, "{} studies, {video_count} videos", studies.len());
    assert!(single_items.values().any(|v| v.0 == Kind::Report));
    let found = all["found"].as_u64().unwrap();
    assert_eq!(found as usize, video_count + 1, "{all}");

    let n = 3u64;
    let mut union: BTreeMap<String, u64> = BTreeMap::new();
    let mut shard_vectors = BTreeMap::new();
    let mut ingested = 0;
    for i in 0..n {
        let index = dir.path().join(format!("shard{i}"));
        let shard = format!("{i}/{n}");
        let (code, s) = ingest(&index, &secret, &[&[export.to_str().unwrap()][..], &reports_arg, &["--shard", &shard]].concat());
        let shard_items = items(&index);
        // The broken file is this shard's failure, or another shard's file: never both.
        let owns_broken = shard_of("broken.dcm", n) == i;
        assert_eq!(code, if owns_broken { 3 } else { 0 }, "shard {shard}: {s}");
        assert_eq!(s["failed"].as_array().unwrap().len(), usize::from(owns_broken), "shard {shard}: {s}");
        assert_eq!(errors(&index).len(), usize::from(owns_broken), "shard {shard}");
        // Every item of the shard belongs there by the rule: a study never splits, and its
        // report goes with it.
        let mut own_studies = BTreeSet::new();
        for (id, (kind, study, ..)) in &shard_items {
            let study = study.as_deref().unwrap_or_else(|| panic!("{id} has no study"));
            assert_eq!(shard_of(study, n), i, "shard {shard} holds {kind:?} {id} of study {study}");
            own_studies.insert(study.to_owned());
            assert!(union.insert(id.clone(), i).is_none(), "{id} is in two shards");
        }
        // Counted: the other shards' files (their videos and, by name, the broken file) and
        // studies; their items were not read.
        let own_videos = shard_items.values().filter(|v| v.0 == Kind::Video).count() as u64;
        let own_files = own_videos + u64::from(owns_broken);
        assert_eq!(s["ingested"].as_u64(), Some(own_videos), "shard {shard}: {s}");
        assert_eq!(s["other_shard_files"].as_u64(), Some(found - own_files), "shard {shard}: {s}");
        assert_eq!(s["other_shard_studies"].as_u64(), Some((studies.len() - own_studies.len()) as u64), "shard {shard}: {s}");
        assert!(own_videos > 0, "shard {shard} is empty: pick other phantoms");
        ingested += own_videos;
        shard_vectors.extend(vectors(&index, &shard_items));
        // The text summary says what the other shards had.
        let out = common::command(&index, &["--secret-file", secret.to_str().unwrap(), "ingest", "--progress", "none"])
            .args([export.to_str().unwrap(), "--shard", &shard])
            .env_remove("ECHOVAULT_SECRET_FILE")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("shard {shard}: passed over {} files", found - own_files)), "{text}");
    }
    assert_eq!(ingested as usize, video_count);
    // Together: exactly the items of one ingest, with the same records (patient keys match
    // under the shared secret file) and the same vectors.
    let union_items: Items = (0..n).flat_map(|i| items(&dir.path().join(format!("shard{i}")))).collect();
    assert_eq!(union.keys().collect::<Vec<_>>(), single_items.keys().collect::<Vec<_>>());
    assert_eq!(union_items, single_items);
    let single_vectors = vectors(&single, &single_items);
    assert_eq!(single_vectors.keys().collect::<Vec<_>>(), shard_vectors.keys().collect::<Vec<_>>());
    for (key, v) in &single_vectors {
        let w = &shard_vectors[key];
        let worst = v.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // Frames are batched differently in a shard; the forward pass may round differently.
        assert!(worst < 1e-4, "{key:?}: differs by {worst}");
    }
}

#[test]
fn a_bad_shard_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("nothing");
    std::fs::create_dir(&export).unwrap();
    for (bad, says) in [
        ("3/3", "numbered from 0"),
        ("3/3", "1-based"),
        ("4/3", "0 to 2"),
        ("0/0", "at least 1"),
        ("1", "I/N"),
        ("-1/2", "whole number"),
        ("one/2", "whole number"),
    ] {
        let out = common::echovault(&dir.path().join("ix"), &["ingest", export.to_str().unwrap(), &format!("--shard={bad}")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--shard {bad}: {err}");
        assert!(err.contains("--shard") && err.contains(says), "--shard {bad}: {err}");
    }
    assert!(!dir.path().join("ix").exists(), "a usage error creates no index");
}

#[test]
fn a_dicomweb_shard_retrieves_only_its_own_studies() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    phantom(&export, 4, 40, "dicom-jpeg,dicom-native");
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for line in std::fs::read_to_string(export.join("manifest.jsonl")).unwrap().lines() {
        let m: Value = serde_json::from_str(line).unwrap();
        files.push((export.join(m["file"].as_str().unwrap()), m["study"].as_str().unwrap().to_owned()));
    }
    let orthanc = orthanc::Orthanc::start();
    for (f, _) in &files {
        orthanc.upload(f);
    }
    let proxy = orthanc::FlakyProxy::start(orthanc.port);
    let source = format!("dicomweb:http://127.0.0.1:{}/dicom-web", proxy.port);
    let studies: BTreeSet<&str> = files.iter().map(|(_, s)| s.as_str()).collect();
    let secret = dir.path().join("secret.hex");
    let n = 2u64;
    let mut union = BTreeSet::new();
    for i in 0..n {
        let own: Vec<&(PathBuf, String)> = files.iter().filter(|(_, s)| shard_of(s, n) == i).collect();
        let own_studies: BTreeSet<&str> = own.iter().map(|(_, s)| s.as_str()).collect();
        assert!(!own.is_empty(), "shard {i}/{n} is empty: pick other phantoms");
        let before = proxy.retrievals.load(std::sync::atomic::Ordering::SeqCst);
        let index = dir.path().join(format!("web{i}"));
        let (code, s) = ingest(&index, &secret, &[&source, "--shard", &format!("{i}/{n}")]);
        let fetched = proxy.retrievals.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert_eq!(code, 0, "{s}");
        assert_eq!(fetched, own.len(), "shard {i}/{n} retrieved only its studies' instances: {s}");
        assert_eq!(s["found"].as_u64(), Some(own.len() as u64), "{s}");
        assert_eq!(s["ingested"].as_u64(), Some(own.len() as u64), "{s}");
        assert_eq!(s["other_shard_studies"].as_u64(), Some((studies.len() - own_studies.len()) as u64), "{s}");
        assert_eq!(s["other_shard_files"].as_u64(), Some(0), "never listed: {s}");
        let ids: BTreeSet<String> = s["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
        let want: BTreeSet<String> = own.iter().map(|(f, _)| echovault::ingest::content_id(f).unwrap()).collect();
        assert_eq!(ids, want, "shard {i}/{n}");
        let got_studies: BTreeSet<String> = items(&index).values().filter_map(|v| v.1.clone()).collect();
        assert_eq!(got_studies, own_studies.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
        union.extend(ids);
    }
    assert_eq!(union.len(), files.len(), "the shards together fetched every instance once");
}
