//! Readers never write (issue 17, item 1), through the real binary with the phantom-trained
//! sample model: every read command leaves the index directory byte-identical; a model whose
//! space the index lacks is an error listing the spaces it holds; reads run while an `ingest`
//! writes the same index and see counts only grow; a second `ingest` is told who writes.

#![allow(clippy::unwrap_used)]

mod common;

use common::{json, root};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn ev_cmd(index: &Path, model: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_echovault"));
    c.args(["--index", index.to_str().unwrap(), "--device", "cpu", "--model"])
        .arg(root().join("data-samples").join(model))
        .args(args)
        .env_remove("ECHOVAULT_INDEX")
        .env_remove("ECHOVAULT_MODEL");
    c
}

fn ev(index: &Path, args: &[&str]) -> Output {
    ev_cmd(index, "echovault-phantom", args).output().unwrap()
}

fn ok(o: Output) -> Value {
    assert!(o.status.success(), "exit {:?}: {}", o.status.code(), String::from_utf8_lossy(&o.stderr));
    json(&o)
}

/// Phantom studies of `patients` patients, `size` pixels and `frames` frames.
fn phantoms(out: &Path, patients: &str, size: &str, frames: &str) {
    let args = ["--json", "phantom", "--out", out.to_str().unwrap(), "--size", size, "--frames", frames, "--patients", patients];
    let o = Command::new(env!("CARGO_BIN_EXE_echovault"))
        .args(args)
        .args(["--studies", "2:3", "--formats", "avi,dicom-jpeg"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Every file under `dir` (recursively) with the SHA-256 of its bytes.
fn hashes(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            out.extend(hashes(&e.path()).into_iter().map(|(k, v)| (format!("{name}/{k}"), v)));
        } else {
            out.insert(name, hex::encode(Sha256::digest(std::fs::read(e.path()).unwrap())));
        }
    }
    out
}

#[test]
fn read_commands_change_no_byte_and_a_missing_space_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    phantoms(&data, "4", "64", "12");
    let idx = dir.path().join("idx");
    let reports = data.join("reports.jsonl");
    let ingest = ok(ev(&idx, &["--json", "ingest", data.to_str().unwrap(), "--reports", reports.to_str().unwrap(), "--progress", "none"]));
    let id = ingest["ids"][0].as_str().unwrap().to_owned();
    let manifest = data.join("manifest.jsonl");
    let patient = echovault::phantom::read_manifest(&manifest).unwrap()[0].patient.clone();
    let before = hashes(&idx);
    assert!(before.contains_key("CURRENT") && before.len() >= 5, "{before:?}");
    assert!(!before.contains_key("echovault-writer.json"), "the writer removed its record when it closed");

    let m = manifest.to_str().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["search", "--text", "normal left ventricular size", "-k", "3"],
        vec!["search", "--like", &id, "-k", "3", "--kind", "study"],
        vec!["info"],
        vec!["errors"],
        vec!["zero-shot", "--all-indexed", "--task", "pacemaker"],
        vec!["reid", "--video-id", &id, "-k", "3"],
        vec!["timeline", "--patient-id", &patient],
        vec!["eval", "retrieval", "--resamples", "5"],
        vec!["eval", "reid", "--manifest", m, "--resamples", "5"],
        vec!["repair", "--check"],
    ];
    for c in &commands {
        let mut args = vec!["--json"];
        args.extend(c);
        let out = ok(ev(&idx, &args));
        assert!(out.is_object(), "{c:?}: {out}");
        assert_eq!(hashes(&idx), before, "`{}` changed the index directory", c.join(" "));
    }
    // The search found something, and `repair --check` judged the index sound.
    let hits = ok(ev(&idx, &["--json", "search", "--text", "normal", "-k", "3"]));
    assert_eq!(hits["hits"].as_array().unwrap().len(), 3, "{hits}");

    // Another model (space `echovault-tiny`) on this index: a clear error naming the space the
    // index holds, and still nothing written (no space created, no probe stored).
    for c in [&["search", "--text", "normal"][..], &["timeline", "--patient-id", &patient], &["reid", "--video-id", &id]] {
        let o = ev_cmd(&idx, "echovault-tiny", c).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{c:?}: {err}");
        assert!(err.contains("holds no embedding space 'echovault-tiny'") && err.contains("it holds: 'echovault-phantom' (64-d)"), "{err}");
        assert_eq!(hashes(&idx), before, "{c:?}");
    }
    let o = ev(&dir.path().join("nothing"), &["search", "--text", "normal"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!dir.path().join("nothing").exists(), "a read command creates no index");
}

#[test]
fn reads_run_while_an_ingest_writes_and_a_second_writer_is_told_who_writes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Large enough frames (7,000 in all) for the ingest to last several reads.
    phantoms(&data, "30", "112", "96");
    let idx = dir.path().join("idx");
    // A first study, so that there is an index to read from the start.
    let first = dir.path().join("first");
    std::fs::create_dir(&first).unwrap();
    let avi = std::fs::read_dir(data.join("avi")).unwrap().next().unwrap().unwrap().path();
    std::fs::copy(&avi, first.join(avi.file_name().unwrap())).unwrap();
    ok(ev(&idx, &["--json", "ingest", first.to_str().unwrap(), "--progress", "none"]));
    let total = echovault::phantom::read_manifest(&data.join("manifest.jsonl")).unwrap().len();
    assert!(total >= 60, "{total} videos: enough for the ingest to outlast several reads");

    let mut writer =
        ev_cmd(&idx, "echovault-phantom", &["--json", "ingest", data.to_str().unwrap(), "--workers", "1", "--progress", "none"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let t0 = Instant::now();
    // Once it writes (its writer record is there), a second writer is refused, told who writes.
    let record = idx.join("echovault-writer.json");
    while !std::fs::read_to_string(&record).is_ok_and(|r| r.contains(&format!("\"pid\":{}", writer.id()))) {
        assert!(writer.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(120), "the ingest never wrote its record");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = ev(&idx, &["ingest", first.to_str().unwrap(), "--progress", "none"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(writer.try_wait().unwrap().is_none(), "the ingest ended too soon for this test");
    assert_eq!(o.status.code(), Some(1), "{err}");
    let who = format!("is being written by another process (pid {}, `echovault ingest`, since ", writer.id());
    assert!(err.contains(&who), "{err}");

    let (mut hits, mut videos, mut reads) = (0usize, 0u64, 0usize);
    let mut seen_while_running = Vec::new();
    while writer.try_wait().unwrap().is_none() {
        let s = ok(ev(&idx, &["--json", "search", "--text", "normal left ventricular size", "-k", "1000"]));
        let n = s["hits"].as_array().unwrap().len();
        assert!(n >= hits, "search hits went from {hits} down to {n}");
        hits = n;
        let info = ok(ev(&idx, &["--json", "info"]));
        let v = info["counts"]["video"].as_u64().unwrap();
        assert!(v >= videos, "video count went from {videos} down to {v}");
        videos = v;
        seen_while_running.push(v);
        reads += 1;
        assert!(t0.elapsed() < Duration::from_secs(600), "the ingest did not finish");
    }
    let out = writer.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(reads >= 2, "only {reads} reads during the ingest");
    assert!(seen_while_running.iter().any(|&v| v > 1 && v < total as u64), "reads saw the ingest part-way: {seen_while_running:?}");
    // Afterwards: everything, the writer record gone.
    let info = ok(ev(&idx, &["--json", "info"]));
    assert_eq!(info["counts"]["video"].as_u64().unwrap(), total as u64);
    assert!(!idx.join("echovault-writer.json").exists());
}
