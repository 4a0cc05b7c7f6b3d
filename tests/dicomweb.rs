//! The DICOMweb client against a real Orthanc (Debian's `orthanc` + `orthanc-dicomweb`, started
//! per test on a loopback port, tests/support/orthanc.rs): phantom studies uploaded through
//! Orthanc's REST API are found by QIDO-RS (counts, paging with a small limit, date and modality
//! filters) and retrieved by WADO-RS byte for byte; a stopped server, a missing instance, wrong
//! credentials and a flaky link give errors naming the UIDs and the HTTP status, or are retried.
//! `echovault ingest dicomweb:URL` indexes what a file ingest of the same files indexes, fetches
//! only what is new on a rerun, and resumes after the server stopped mid-run.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;
#[path = "support/orthanc.rs"]
mod orthanc;

use echovault::dicomweb::{Client, ClientOptions, Credentials, DicomWebError, Endpoint, InstanceRef, RetryPolicy, StudyQuery};
use echovault::index::StudyDate;
use echovault::media::dicom::DicomCine;
use orthanc::{Fault, FlakyProxy, Orthanc};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One uploaded file and what it holds.
#[derive(Clone, Debug)]
struct Uploaded {
    file: PathBuf,
    study: String,
    series: String,
    sop: String,
    date: StudyDate,
    modality: &'static str,
}

fn uids(file: &Path) -> (String, String, String) {
    let info = DicomCine::open(file).unwrap().info().clone();
    (info.study_uid.unwrap(), info.series_uid.unwrap(), info.sop_uid.unwrap())
}

/// `file` with every occurrence of each `from` replaced by its `to` (same length, so every
/// element length stays right).
fn patched(file: &Path, to: &Path, swaps: &[(&[u8], &[u8])]) {
    let mut bytes = std::fs::read(file).unwrap();
    for (from, with) in swaps {
        assert_eq!(from.len(), with.len());
        let mut found = 0;
        let mut i = 0;
        while let Some(at) = bytes[i..].windows(from.len()).position(|w| w == *from) {
            bytes[i + at..i + at + from.len()].copy_from_slice(with);
            i += at + from.len();
            found += 1;
        }
        assert!(found > 0, "{} holds no {:?}", file.display(), String::from_utf8_lossy(from));
    }
    std::fs::write(to, bytes).unwrap();
}

/// A UID of the same length: its last digit changed by `k`.
fn sibling(uid: &str, k: u8) -> String {
    let (head, last) = uid.split_at(uid.len() - 1);
    let d = last.as_bytes()[0] - b'0';
    format!("{head}{}", (d + k) % 10)
}

/// Phantom DICOM studies (`echovault phantom`) under `dir`, plus: a second instance in the first
/// study's series, a second series in that study, and one CT study (its Modality patched), which
/// a US search must leave out.
fn phantom_archive(dir: &Path, patients: u32, first_patient: u32) -> Vec<Uploaded> {
    let out = dir.join(format!("ph{first_patient}"));
    let o = Command::new(env!("CARGO_BIN_EXE_echovault"))
        .args(["phantom", "--out", out.to_str().unwrap(), "--patients", &patients.to_string()])
        .args(["--first-patient", &first_patient.to_string(), "--seed", &first_patient.to_string()])
        .args(["--studies", "2:2", "--size", "64", "--frames", "4", "--formats", "dicom-jpeg,dicom-native"])
        .env_remove("ECHOVAULT_INDEX")
        .output()
        .unwrap();
    assert!(o.status.success(), "phantom: {}", String::from_utf8_lossy(&o.stderr));
    let mut files = Vec::new();
    for line in std::fs::read_to_string(out.join("manifest.jsonl")).unwrap().lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        let file = out.join(m["file"].as_str().unwrap());
        let (study, series, sop) = uids(&file);
        assert_eq!(study, m["study"].as_str().unwrap());
        files.push(Uploaded { file, study, series, sop, date: m["date"].as_str().unwrap().parse().unwrap(), modality: "US" });
    }
    files.sort_by(|a, b| a.file.cmp(&b.file));
    let first = files[0].clone();
    let extra = |name: &str, swaps: &[(String, String)], modality: &'static str| {
        let to = out.join(name);
        let swaps: Vec<(&[u8], &[u8])> = swaps.iter().map(|(a, b)| (a.as_bytes(), b.as_bytes())).collect();
        patched(&first.file, &to, &swaps);
        let (study, series, sop) = uids(&to);
        Uploaded { file: to, study, series, sop, date: first.date, modality }
    };
    let same_series = extra("second-instance.dcm", &[(first.sop.clone(), sibling(&first.sop, 1))], "US");
    let other_series =
        extra("second-series.dcm", &[(first.sop.clone(), sibling(&first.sop, 2)), (first.series.clone(), sibling(&first.series, 1))], "US");
    let ct_swaps = [
        (first.sop.clone(), sibling(&first.sop, 3)),
        (first.series.clone(), sibling(&first.series, 2)),
        (first.study.clone(), sibling(&first.study, 1)),
        // Modality (0008,0060) CS "US", explicit VR little endian.
        ("\u{8}\u{0}`\u{0}CS\u{2}\u{0}US".to_owned(), "\u{8}\u{0}`\u{0}CS\u{2}\u{0}CT".to_owned()),
    ];
    let ct = extra("ct-study.dcm", &ct_swaps, "CT");
    assert_eq!(DicomCine::open(&ct.file).unwrap().info().modality.as_deref(), Some("CT"));
    files.extend([same_series, other_series, ct]);
    files
}

fn client(url: &str, page_size: usize, workers: usize, attempts: u32) -> Client {
    let options = ClientOptions {
        workers,
        page_size,
        retry: RetryPolicy { attempts, first_delay: Duration::from_millis(20), max_delay: Duration::from_millis(100) },
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    };
    Client::new(format!("dicomweb:{url}").parse::<Endpoint>().unwrap(), Credentials::None, options)
}

fn us(files: &[Uploaded]) -> Vec<&Uploaded> {
    files.iter().filter(|f| f.modality == "US").collect()
}

#[test]
fn qido_finds_and_wado_retrieves_what_orthanc_holds() {
    let dir = tempfile::tempdir().unwrap();
    let files = phantom_archive(dir.path(), 4, 1);
    let mut orthanc = Orthanc::start();
    for f in &files {
        orthanc.upload(&f.file);
    }
    let us_files = us(&files);
    let us_studies: BTreeSet<&str> = us_files.iter().map(|f| f.study.as_str()).collect();
    let all_studies: BTreeSet<&str> = files.iter().map(|f| f.study.as_str()).collect();
    assert_eq!((us_studies.len(), all_studies.len()), (8, 9));

    // Pages of 1, 2 and 3 studies (Orthanc 1.10 pages ModalitiesInStudy searches its own way)
    // and one page for all: always every US study, once.
    for page_size in [1, 2, 3, 100] {
        let c = client(&orthanc.dicomweb(), page_size, 2, 1);
        let found: Vec<String> = c.studies(&StudyQuery::default()).unwrap().into_iter().map(|s| s.study_uid).collect();
        let set: BTreeSet<&str> = found.iter().map(String::as_str).collect();
        assert_eq!(found.len(), set.len(), "page size {page_size}: a study came twice");
        assert_eq!(set, us_studies, "page size {page_size}");
        let every = c.studies(&StudyQuery { modality: None, ..StudyQuery::default() }).unwrap();
        assert_eq!(every.iter().map(|s| s.study_uid.as_str()).collect::<BTreeSet<_>>(), all_studies, "page size {page_size}");
    }

    // Series and instances per study, with a page of 1 so that the two-instance series pages.
    let c = client(&orthanc.dicomweb(), 1, 3, 1);
    let mut series_count = 0;
    let mut listed = BTreeSet::new();
    for study in &us_studies {
        let series = c.series(study, Some("US")).unwrap();
        let expected: BTreeSet<&str> = us_files.iter().filter(|f| f.study == *study).map(|f| f.series.as_str()).collect();
        assert_eq!(series.iter().map(|s| s.series_uid.as_str()).collect::<BTreeSet<_>>(), expected, "study {study}");
        series_count += series.len();
        // One search for the whole study lists the same instances.
        let whole: BTreeSet<String> = c.study_instances(study, Some("US")).unwrap().unwrap().into_iter().map(|i| i.sop_uid).collect();
        let expected: BTreeSet<String> = us_files.iter().filter(|f| f.study == *study).map(|f| f.sop.clone()).collect();
        assert_eq!(whole, expected, "study {study}");
        for s in &series {
            assert_eq!(s.modality.as_deref(), Some("US"));
            for i in c.instances(study, &s.series_uid).unwrap() {
                assert!(listed.insert(i.sop_uid.clone()), "instance {} listed twice", i.sop_uid);
            }
        }
    }
    assert_eq!(series_count, 9, "8 studies, the first with two series");
    assert_eq!(listed, us_files.iter().map(|f| f.sop.clone()).collect::<BTreeSet<_>>());

    // The walk and the parallel fetch: every US instance, its bytes exactly the file uploaded
    // (Orthanc keeps the file as received and the client asks for the stored transfer syntax).
    let fetched: Vec<_> = c.fetch(c.walk(StudyQuery::default())).collect::<Result<_, _>>().unwrap();
    assert_eq!(fetched.len(), 10);
    let by_sop: BTreeMap<&str, &Uploaded> = us_files.iter().map(|f| (f.sop.as_str(), *f)).collect();
    for got in &fetched {
        let want = by_sop[got.sop_uid.as_str()];
        assert_eq!((&got.study_uid, &got.series_uid), (&want.study, &want.series));
        assert_eq!(got.url, format!("{}/studies/{}/series/{}/instances/{}", orthanc.dicomweb(), want.study, want.series, want.sop));
        assert!(got.bytes == std::fs::read(&want.file).unwrap(), "{}: the bytes differ from the file uploaded", want.file.display());
    }
    assert_eq!(fetched.iter().map(|f| f.sop_uid.as_str()).collect::<BTreeSet<_>>(), by_sop.keys().copied().collect());

    // Date filters: since, until, both; matched against the phantom's truth.
    let mut dates: Vec<StudyDate> = us_files.iter().map(|f| f.date).collect();
    dates.sort();
    let (lo, hi) = (dates[2], dates[dates.len() - 3]);
    assert!(lo < hi);
    for (since, until) in [(Some(lo), None), (None, Some(hi)), (Some(lo), Some(hi))] {
        let q = StudyQuery { since, until, ..StudyQuery::default() };
        let got: BTreeSet<String> = client(&orthanc.dicomweb(), 2, 1, 1).studies(&q).unwrap().into_iter().map(|s| s.study_uid).collect();
        let want: BTreeSet<String> = us_files
            .iter()
            .filter(|f| since.is_none_or(|s| f.date >= s) && until.is_none_or(|u| f.date <= u))
            .map(|f| f.study.clone())
            .collect();
        assert!(!want.is_empty() && want.len() < us_studies.len(), "{since:?}..{until:?} selects some studies, not all");
        assert_eq!(got, want, "{since:?}..{until:?}");
    }

    // A missing instance: HTTP 404 naming its UIDs.
    let first = us_files[0];
    let missing = InstanceRef { study_uid: first.study.clone(), series_uid: first.series.clone(), sop_uid: sibling(&first.sop, 7) };
    let e = c.retrieve(&missing).unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&missing.study_uid) && msg.contains(&missing.series_uid) && msg.contains(&missing.sop_uid), "{msg}");
    assert!(msg.contains("HTTP 404"), "{msg}");

    // Orthanc stopped: the search fails naming what it searched, each retrieval naming its
    // instance, after the retries.
    orthanc.stop();
    let c2 = client(&orthanc.dicomweb(), 2, 2, 2);
    let e = c2.studies(&StudyQuery::default()).unwrap_err();
    assert!(matches!(e, DicomWebError::Transport { attempts: 2, .. }), "{e}");
    assert!(e.to_string().contains("study search"), "{e}");
    let refs: Vec<InstanceRef> = fetched.iter().map(|f| f.reference()).collect();
    let errors: Vec<DicomWebError> = c2.fetch(refs.clone().into_iter().map(Ok)).map(|r| r.unwrap_err()).collect();
    assert_eq!(errors.len(), refs.len());
    for e in &errors {
        let t = e.target().unwrap();
        let r = refs.iter().find(|r| Some(&r.sop_uid) == t.sop.as_ref()).unwrap();
        assert_eq!((t.study.as_ref(), t.series.as_ref()), (Some(&r.study_uid), Some(&r.series_uid)));
        let msg = e.to_string();
        assert!(msg.contains(&r.sop_uid) && msg.contains(&r.study_uid) && msg.contains("after 2 attempts"), "{msg}");
        assert_eq!(e.status(), None, "no server, no status: {msg}");
    }

    // Started again on the same storage: everything is back.
    orthanc.restart();
    assert_eq!(client(&orthanc.dicomweb(), 3, 1, 1).studies(&StudyQuery::default()).unwrap().len(), 8);
}

#[test]
fn credentials_from_the_environment_are_what_the_server_checks() {
    let dir = tempfile::tempdir().unwrap();
    let files = phantom_archive(dir.path(), 1, 50);
    let orthanc = Orthanc::start_with(Some(("echo", "s3cret-pass")));
    for f in &files {
        orthanc.upload(&f.file);
    }
    let endpoint: Endpoint = format!("dicomweb:{}", orthanc.dicomweb()).parse().unwrap();
    let env = |vars: &'static [(&'static str, &'static str)]| {
        Credentials::from_lookup(move |k| vars.iter().find(|(name, _)| *name == k).map(|(_, v)| v.to_string())).unwrap()
    };
    let with = |creds: Credentials| Client::new(endpoint.clone(), creds, ClientOptions::default()).studies(&StudyQuery::default());
    let none = with(Credentials::None).unwrap_err();
    assert_eq!(none.status(), Some(401), "{none}");
    let wrong = with(env(&[("ECHOVAULT_DICOMWEB_USER", "echo"), ("ECHOVAULT_DICOMWEB_PASSWORD", "wrong")])).unwrap_err();
    assert_eq!(wrong.status(), Some(401), "{wrong}");
    assert!(!wrong.to_string().contains("wrong") && !format!("{wrong:?}").contains("wrong"), "no password in errors: {wrong}");
    let right = with(env(&[("ECHOVAULT_DICOMWEB_USER", "echo"), ("ECHOVAULT_DICOMWEB_PASSWORD", "s3cret-pass")])).unwrap();
    assert_eq!(right.len(), 2);
}

#[test]
fn retries_ride_over_error_statuses_and_cut_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let files = phantom_archive(dir.path(), 1, 60);
    let orthanc = Orthanc::start();
    for f in &files {
        orthanc.upload(&f.file);
    }
    let native = files.iter().max_by_key(|f| std::fs::metadata(&f.file).unwrap().len()).unwrap();
    let size = std::fs::metadata(&native.file).unwrap().len() as usize;
    assert!(size > 20_000, "a body long enough to cut: {size}");
    let target = InstanceRef { study_uid: native.study.clone(), series_uid: native.series.clone(), sop_uid: native.sop.clone() };
    let proxy = FlakyProxy::start(orthanc.port);
    let url = format!("http://127.0.0.1:{}/dicom-web", proxy.port);

    // 503, 502, a body cut after its first 10 kB, then the real answer: four attempts suffice.
    proxy.inject(&[Fault::Status(503), Fault::Status(502), Fault::CutAfter(10_000)]);
    let got = client(&url, 10, 1, 4).retrieve(&target).unwrap();
    assert_eq!(got.bytes, std::fs::read(&native.file).unwrap());
    assert_eq!(proxy.pending(), 0);

    // Three attempts do not: the last error is the cut body, naming the instance.
    proxy.inject(&[Fault::Status(503), Fault::Status(503), Fault::CutAfter(10_000)]);
    let e = client(&url, 10, 1, 3).retrieve(&target).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DicomWebError::Transport { attempts: 3, .. }), "{msg}");
    assert!(msg.contains(&native.sop) && msg.contains("after 3 attempts"), "{msg}");

    // Two 503s with two attempts: the status, named.
    proxy.inject(&[Fault::Status(503), Fault::Status(503)]);
    let e = client(&url, 10, 1, 2).studies(&StudyQuery::default()).unwrap_err();
    assert_eq!(e.status(), Some(503), "{e}");
    assert!(e.to_string().contains("after 2 attempts"), "{e}");

    // A 4xx is final at once: one connection, no retry.
    proxy.inject(&[Fault::Status(403)]);
    let before = *proxy.connections.lock().unwrap();
    let e = client(&url, 10, 1, 4).studies(&StudyQuery::default()).unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(!e.to_string().contains("attempts"), "{e}");
    assert_eq!(*proxy.connections.lock().unwrap() - before, 1);
}

/// The summary a `--json` ingest printed, with its exit code.
fn ingest(index: &Path, source: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let (code, summary, _) = ingest_logged(index, source, extra);
    (code, summary)
}

/// [`ingest`] at the default log level, with what it wrote on stderr.
fn ingest_logged(index: &Path, source: &str, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args = vec!["--json", "ingest", source, "--progress", "none"];
    args.extend_from_slice(extra);
    let out = common::command(index, &args).env_remove("ECHOVAULT_DICOMWEB_TOKEN").env_remove("ECHOVAULT_LOG").output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(code == 0 || code == 3, "ingest {source}: exit {code}\n{stderr}");
    (code, common::json(&out), stderr)
}

fn ids(summary: &serde_json::Value) -> BTreeSet<String> {
    summary["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

fn search(index: &Path, text: &str) -> Vec<serde_json::Value> {
    let out = common::echovault(index, &["--json", "search", "--text", text, "-k", "20", "--kind", "video", "--with-paths"]);
    assert!(out.status.success(), "search: {}", String::from_utf8_lossy(&out.stderr));
    let hits = common::json(&out)["hits"].as_array().unwrap().clone();
    // Without --with-paths a hit's WADO-RS URL goes with its source (the same string).
    let out = common::echovault(index, &["--json", "search", "--text", text, "-k", "20", "--kind", "video"]);
    let hidden = common::json(&out)["hits"].as_array().unwrap().clone();
    assert_eq!(hidden.len(), hits.len());
    for h in &hidden {
        assert!(h.get("source").is_none() && h.get("url").is_none(), "{h}");
    }
    hits
}

#[test]
fn ingest_over_dicomweb_equals_a_file_ingest_fetches_only_what_is_new_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (phantom_archive(dir.path(), 2, 70), phantom_archive(dir.path(), 2, 80), phantom_archive(dir.path(), 2, 90));
    let mut orthanc = Orthanc::start();
    for f in &a {
        orthanc.upload(&f.file);
    }
    let proxy = FlakyProxy::start(orthanc.port);
    let base = format!("http://127.0.0.1:{}/dicom-web", proxy.port);
    let source = format!("dicomweb:{base}");

    // The same US instances as files, in a folder of their own (the CT study is not one of them).
    let files = dir.path().join("a-files");
    std::fs::create_dir(&files).unwrap();
    for (i, f) in us(&a).iter().enumerate() {
        std::fs::copy(&f.file, files.join(format!("{i}.dcm"))).unwrap();
    }
    let (file_index, web_index) = (dir.path().join("files-index"), dir.path().join("web-index"));
    let (code, by_file) = ingest(&file_index, files.to_str().unwrap(), &[]);
    assert_eq!((code, by_file["ingested"].as_u64()), (0, Some(6)), "{by_file}");
    let (code, by_web) = ingest(&web_index, &source, &["--workers", "2"]);
    assert_eq!(code, 0, "{by_web}");
    assert_eq!((by_web["found"].as_u64(), by_web["ingested"].as_u64()), (Some(6), Some(6)), "{by_web}");
    assert_eq!(ids(&by_web), ids(&by_file), "the same content ids");
    assert_eq!(proxy.retrievals.load(std::sync::atomic::Ordering::SeqCst), 6);

    // The same hits with the same scores; DICOMweb hits carry the UIDs and the WADO-RS URL.
    let by_sop: BTreeMap<&str, &Uploaded> = us(&a).into_iter().map(|f| (f.sop.as_str(), f)).collect();
    for text in ["A PACEMAKER LEAD IS SEEN IN THE RIGHT HEART.", "SEVERELY REDUCED LEFT VENTRICULAR SYSTOLIC FUNCTION."] {
        let (theirs, ours) = (search(&file_index, text), search(&web_index, text));
        assert_eq!((theirs.len(), ours.len()), (6, 6));
        // Keyed by id: the second instance is a copy of the first's pixels (a tie, in either order).
        let scores = |hits: &[serde_json::Value]| -> BTreeMap<String, f64> {
            hits.iter().map(|h| (h["id"].as_str().unwrap().to_owned(), h["score"].as_f64().unwrap())).collect()
        };
        let (f_scores, w_scores) = (scores(&theirs), scores(&ours));
        assert_eq!(f_scores.keys().collect::<Vec<_>>(), w_scores.keys().collect::<Vec<_>>(), "{text}");
        for (id, f) in &f_scores {
            assert!((f - w_scores[id]).abs() < 1e-6, "{id}: {f} vs {}", w_scores[id]);
        }
        for w in &ours {
            let f = theirs.iter().find(|f| f["id"] == w["id"]).unwrap();
            assert_eq!((&f["study"], &f["series"], &f["sop"]), (&w["study"], &w["series"], &w["sop"]));
            let u = by_sop[w["sop"].as_str().unwrap()];
            assert_eq!(w["study"], u.study.as_str());
            assert_eq!(w["series"], u.series.as_str());
            assert_eq!(w["url"], format!("{base}/studies/{}/series/{}/instances/{}", u.study, u.series, u.sop));
            assert!(f.get("url").is_none(), "a file's hit has no WADO-RS URL: {f}");
        }
    }

    // More studies on the server: a rerun retrieves those alone.
    for f in &b {
        orthanc.upload(&f.file);
    }
    let before = proxy.retrievals.load(std::sync::atomic::Ordering::SeqCst);
    let (code, again) = ingest(&web_index, &source, &["--workers", "2"]);
    assert_eq!(code, 0, "{again}");
    assert_eq!((again["found"].as_u64(), again["ingested"].as_u64(), again["skipped"].as_u64()), (Some(12), Some(6), Some(6)), "{again}");
    assert_eq!(proxy.retrievals.load(std::sync::atomic::Ordering::SeqCst) - before, 6, "only the new instances were fetched");
    assert_eq!(ids(&again), us(&b).iter().map(|f| echovault::ingest::content_id(&f.file).unwrap()).collect::<BTreeSet<_>>());

    // Orthanc killed as the third retrieval of the next run arrives (one worker: the first two
    // are in): those two are indexed, the rest fail naming their UIDs, exit 3 ...
    for f in &c {
        orthanc.upload(&f.file);
    }
    let pid = orthanc.pid().unwrap();
    proxy.on_retrieval(3, move || {
        Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    });
    let (code, cut, log) = ingest_logged(&web_index, &source, &["--workers", "1"]);
    assert_eq!(code, 3, "{cut}");
    // The retries are logged at the default level without a UID or URL (they may be shared):
    // those are in the failure rows (stdout, the index's errors) and at debug.
    assert!(log.contains("trying again"), "{log}");
    let uids = [&a, &b, &c].into_iter().flatten().flat_map(|u| [&u.study, &u.series, &u.sop]);
    for uid in uids {
        assert!(!log.contains(uid.as_str()), "stderr names {uid}:\n{log}");
    }
    assert!(!log.contains("/studies"), "stderr shows a URL:\n{log}");
    assert_eq!(cut["ingested"].as_u64(), Some(2), "{cut}");
    let failed = cut["failed"].as_array().unwrap();
    assert!(!failed.is_empty());
    // The walk lists every study again (known instances are skipped once listed): a study of
    // any upload may be the one whose listing failed.
    let all_us: Vec<&Uploaded> = [&a, &b, &c].into_iter().flat_map(|x| us(x)).collect();
    for f in failed {
        let (key, reason) = (f["path"].as_str().unwrap(), f["reason"].as_str().unwrap());
        assert!(key.starts_with(&format!("{base}/studies")), "{f}");
        // An instance's failure names its three UIDs; a study that could not be listed, its UID;
        // the next page of studies, the search.
        let named = all_us.iter().any(|u| {
            (reason.contains(&u.sop) && reason.contains(&u.series) && reason.contains(&u.study))
                || (key.ends_with(&u.study) && reason.contains(&u.study))
        }) || (key == format!("{base}/studies") && reason.starts_with("study search"));
        assert!(named, "{f}");
        assert!(reason.contains("after 4 attempts"), "retried: {f}");
    }
    let errors = common::json(&common::echovault(&web_index, &["--json", "errors"]))["errors"].as_array().unwrap().len();
    assert_eq!(errors, failed.len());

    // ... and once Orthanc is back, the rerun fetches the rest and clears the errors.
    orthanc.restart();
    let (code, resumed) = ingest(&web_index, &source, &["--workers", "2"]);
    assert_eq!(code, 0, "{resumed}");
    assert_eq!((resumed["ingested"].as_u64(), resumed["skipped"].as_u64()), (Some(4), Some(14)), "{resumed}");
    let errors = common::json(&common::echovault(&web_index, &["--json", "errors"]));
    assert_eq!(errors["errors"].as_array().unwrap().len(), 0, "{errors}");
    let info = common::json(&common::echovault(&web_index, &["--json", "info"]));
    assert_eq!(info["counts"]["video"].as_u64(), Some(18), "{info}");
}

#[test]
fn a_ct_series_of_a_us_study_is_left_out_and_a_non_image_is_fetched_once() {
    let dir = tempfile::tempdir().unwrap();
    let files = phantom_archive(dir.path(), 1, 60);
    let first = files[0].clone();
    let out = first.file.parent().unwrap();
    // In the first US study: a CT series (Modality is a series attribute, which a study-wide
    // instance search returns only when asked) and an instance with no Rows (not an image).
    let ct = out.join("ct-series.dcm");
    patched(
        &first.file,
        &ct,
        &[
            (first.sop.as_bytes(), sibling(&first.sop, 6).as_bytes()),
            (first.series.as_bytes(), sibling(&first.series, 3).as_bytes()),
            (b"\x08\x00\x60\x00CS\x02\x00US", b"\x08\x00\x60\x00CS\x02\x00CT"),
        ],
    );
    let no_image = out.join("no-rows.dcm");
    // Rows (0028,0010) US renamed (0028,000F): no Rows, so not an image.
    patched(
        &first.file,
        &no_image,
        &[(first.sop.as_bytes(), sibling(&first.sop, 7).as_bytes()), (b"\x28\x00\x10\x00US", b"\x28\x00\x0f\x00US")],
    );
    let orthanc = Orthanc::start();
    for f in files.iter().map(|f| &f.file).chain([&ct, &no_image]) {
        orthanc.upload(f);
    }
    let c = client(&orthanc.dicomweb(), 100, 1, 1);
    let listed = c.study_instances(&first.study, Some("US")).unwrap().expect("Orthanc names each instance's series");
    let sops: BTreeSet<&str> = listed.iter().map(|r| r.sop_uid.as_str()).collect();
    assert!(!sops.contains(sibling(&first.sop, 6).as_str()), "the CT series is left out: {sops:?}");
    assert!(sops.contains(sibling(&first.sop, 7).as_str()) && sops.contains(first.sop.as_str()), "{sops:?}");

    let proxy = FlakyProxy::start(orthanc.port);
    let source = format!("dicomweb:http://127.0.0.1:{}/dicom-web", proxy.port);
    let index = dir.path().join("index");
    let (code, first_run) = ingest(&index, &source, &[]);
    assert_eq!(code, 0, "{first_run}");
    let not_images = first_run["not_images"].as_array().unwrap();
    assert_eq!(not_images.len(), 1, "{first_run}");
    assert!(not_images[0]["path"].as_str().unwrap().ends_with(&sibling(&first.sop, 7)), "{first_run}");
    let fetched = proxy.retrievals.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(fetched as u64, first_run["found"].as_u64().unwrap(), "{first_run}");
    // The rerun retrieves nothing: the non-image is remembered like the videos.
    let (code, again) = ingest(&index, &source, &[]);
    assert_eq!(code, 0, "{again}");
    assert_eq!(proxy.retrievals.load(std::sync::atomic::Ordering::SeqCst), fetched, "{again}");
    assert_eq!(again["skipped"].as_u64(), first_run["found"].as_u64(), "{again}");
}
