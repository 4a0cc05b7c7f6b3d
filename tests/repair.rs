//! `echovault repair` on a real index of the sample clips: damage (a flipped frame-embeddings
//! table, a deleted `CURRENT`), `repair --check` reports it and exits 1, `repair` recovers what
//! survives and lists what was lost, and a re-ingest of the same clips restores the original
//! counts, frame embeddings and search answers, with no duplicates. Reads (`info`, `search`,
//! `errors`, `repair --check`) run as an unprivileged user on an index it cannot write.

// The matrix prints what each damage cost (`--nocapture`).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use common::{echovault, json, root};
use echovault::index::{Index, IndexOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn clips() -> PathBuf {
    root().join("data-samples/clips")
}

/// The sample clips ingested, then flushed and compacted: every column family is a table file.
fn sample_index(dir: &Path) -> PathBuf {
    let index = dir.join("idx");
    let out = echovault(&index, &["ingest", clips().to_str().unwrap(), "--progress", "none", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    Index::open(&index, IndexOptions::default()).unwrap().compact().unwrap();
    index
}

/// What the index answers: counts, and the ids and scores of a text search and a video search.
fn answers(index: &Path) -> (Value, Value, Value) {
    let info = json(&echovault(index, &["info", "--json"]));
    let text = json(&echovault(index, &["search", "--text", "dilated left ventricle", "-k", "20", "--json"]));
    let avi = clips().join("a4c_pacer_03.avi");
    let video = json(&echovault(index, &["search", "--video", avi.to_str().unwrap(), "-k", "20", "--json"]));
    let hits = |v: &Value| -> Value {
        v["hits"].as_array().unwrap().iter().map(|h| serde_json::json!([h["id"], h["score"]])).collect::<Vec<_>>().into()
    };
    (serde_json::json!({"counts": info["counts"], "vectors": info["vectors"]}), hits(&text), hits(&video))
}

fn no_duplicates(hits: &Value) {
    let ids: Vec<&str> = hits.as_array().unwrap().iter().map(|h| h[0].as_str().unwrap()).collect();
    let distinct: std::collections::BTreeSet<&&str> = ids.iter().collect();
    assert_eq!(ids.len(), distinct.len(), "{ids:?}");
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn a_flipped_frames_table_is_found_repaired_and_re_ingested() {
    let tmp = tempfile::tempdir().unwrap();
    let index = sample_index(tmp.path());
    let before = answers(&index);
    let frames = echovault::index::table_files(&index).unwrap().into_iter().find(|(cf, _)| cf == "frames").unwrap().1;
    let file = index.join(&frames);
    let mut b = std::fs::read(&file).unwrap();
    for x in &mut b[24..40] {
        *x ^= 0x5a;
    }
    std::fs::write(&file, b).unwrap();

    let check = echovault(&index, &["repair", "--check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    eprintln!("repair --check:\n{text}");
    assert_eq!(code(&check), 1, "{text}");
    assert!(text.contains(&frames) && text.contains("`frames`") && text.contains("zero-shot"), "{text}");
    let check = json(&echovault(&index, &["repair", "--check", "--json"]));
    assert_eq!(check["ok"], false);
    assert_eq!(check["damaged"][0]["column_family"], "frames");

    let repair = echovault(&index, &["repair", "--json"]);
    assert_eq!(code(&repair), 0, "{}", String::from_utf8_lossy(&repair.stderr));
    let report = json(&repair);
    eprintln!("repair --json: {report}");
    assert_eq!(report["ok"], true, "{report}");
    let lost: Vec<&str> = report["reingest"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(!lost.is_empty() && lost.len() < 6, "{report}");
    assert!(lost.iter().all(|p| p.starts_with(clips().to_str().unwrap())), "{lost:?}");
    let info = json(&echovault(&index, &["info", "--json"]));
    assert_eq!(info["counts"]["video"].as_u64().unwrap(), 6 - lost.len() as u64, "{info}");
    assert_eq!(code(&echovault(&index, &["repair", "--check"])), 0);

    let out = echovault(&index, &["ingest", clips().to_str().unwrap(), "--progress", "none", "--json"]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let summary = json(&out);
    eprintln!("re-ingest: {summary}");
    assert_eq!(summary["ingested"].as_u64().unwrap(), lost.len() as u64, "exactly the lost videos are embedded again: {summary}");
    let after = answers(&index);
    assert_eq!(after, before);
    no_duplicates(&after.1);
    no_duplicates(&after.2);
    // The frame embeddings are back: every video has them again.
    let check = json(&echovault(&index, &["repair", "--check", "--json"]));
    assert_eq!(check["ok"], true, "{check}");
}

#[test]
fn a_deleted_current_fails_every_command_until_repair_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let index = sample_index(tmp.path());
    let before = answers(&index);
    std::fs::remove_file(index.join("CURRENT")).unwrap();
    for _ in 0..2 {
        for args in
            [&["info"][..], &["search", "--text", "dilated"], &["errors"], &["ingest", clips().to_str().unwrap(), "--progress", "none"]]
        {
            let out = echovault(&index, args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_ne!(code(&out), 0, "{args:?} answered over the damage");
            assert!(err.contains("this index is damaged") && err.contains("echovault repair"), "{args:?}: {err}");
        }
        assert!(!index.join("CURRENT").exists());
    }
    let check = echovault(&index, &["repair", "--check"]);
    assert_eq!(code(&check), 1);
    assert!(String::from_utf8_lossy(&check.stdout).contains("CURRENT is missing"));
    let repair = echovault(&index, &["repair"]);
    let text = String::from_utf8_lossy(&repair.stdout);
    assert_eq!(code(&repair), 0, "{text}{}", String::from_utf8_lossy(&repair.stderr));
    assert!(text.contains("RocksDB's repair rebuilt it"), "{text}");
    assert_eq!(answers(&index), before);
    let out = json(&echovault(&index, &["ingest", clips().to_str().unwrap(), "--progress", "none", "--json"]));
    assert_eq!(out["ingested"], 0, "{out}");
}

#[test]
fn reads_work_on_an_index_the_user_cannot_write() {
    // Root ignores permissions: the reads run as `nobody` (setpriv) on a root-owned index.
    let root_user = std::process::Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    if !root_user || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("not root or no setpriv: nothing to run as another user");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let index = sample_index(tmp.path());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let listing = |p: &Path| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
            .collect();
        v.sort();
        v
    };
    let files = listing(&index);
    let avi = clips().join("a4c_pacer_03.avi");
    for args in [
        &["info"][..],
        &["search", "--text", "dilated", "--json"],
        &["search", "--video", avi.to_str().unwrap()],
        &["errors"],
        &["repair", "--check"],
    ] {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_echovault"), "--index"])
            .arg(&index)
            .args(["--model", root().join("data-samples/echovault-tiny").to_str().unwrap(), "--device", "cpu"])
            .args(args)
            .env("HOME", "/tmp")
            .env_remove("ECHOVAULT_INDEX")
            .env_remove("ECHOVAULT_MODEL")
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{args:?} as nobody: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(listing(&index), files, "a read changed the index directory");
}
