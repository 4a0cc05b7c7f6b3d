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

/// Damage to one file of a sample index, as the matrix applies it.
#[derive(Clone, Copy, Debug)]
enum Harm {
    /// 16 bytes flipped in the first data block of the column family's table.
    Flip(&'static str),
    /// The column family's table cut to half its length.
    Truncate(&'static str),
    /// The column family's table deleted.
    Delete(&'static str),
    /// 8 bytes flipped in the middle of the write-ahead log (nothing flushed yet).
    Wal,
    /// The write-ahead log cut (nothing flushed yet) at the start of the record that holds its
    /// middle byte (`true`: at a record boundary), or in the middle of that record.
    WalCut(bool),
    /// 8 bytes flipped in the middle of the MANIFEST.
    Manifest,
    /// The OPTIONS file deleted (RocksDB does not need it to open).
    Options,
}

fn harm(index: &Path, h: Harm) {
    let table = |cf: &str| index.join(echovault::index::table_files(index).unwrap().into_iter().find(|(c, _)| c == cf).unwrap().1);
    let named = |prefix: &str| {
        std::fs::read_dir(index)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .unwrap()
    };
    let flip = |file: &Path, at: usize, n: usize| {
        let mut b = std::fs::read(file).unwrap();
        for x in &mut b[at..at + n] {
            *x ^= 0x5a;
        }
        std::fs::write(file, b).unwrap();
    };
    match h {
        Harm::Flip(cf) => flip(&table(cf), 24, 16),
        Harm::Truncate(cf) => {
            let f = table(cf);
            let len = std::fs::metadata(&f).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len / 2).unwrap();
        }
        Harm::Delete(cf) => std::fs::remove_file(table(cf)).unwrap(),
        Harm::Wal => {
            let wal = wal_of(index);
            let len = std::fs::metadata(&wal).unwrap().len() as usize;
            flip(&wal, len / 2, 8);
        }
        Harm::WalCut(boundary) => {
            let wal = wal_of(index);
            let len = std::fs::metadata(&wal).unwrap().len() as usize;
            let records = wal_records(&std::fs::read(&wal).unwrap());
            let &(start, end) = records.iter().find(|(s, e)| *s <= len / 2 && len / 2 < *e).unwrap();
            let at = if boundary { start } else { (start + end) / 2 };
            std::fs::OpenOptions::new().write(true).open(&wal).unwrap().set_len(at as u64).unwrap();
        }
        Harm::Manifest => {
            let m = named("MANIFEST-");
            let len = std::fs::metadata(&m).unwrap().len() as usize;
            flip(&m, len / 2, 8);
        }
        Harm::Options => std::fs::remove_file(named("OPTIONS-")).unwrap(),
    }
}

/// The index's write-ahead log (the largest, where there are several).
fn wal_of(index: &Path) -> PathBuf {
    std::fs::read_dir(index)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
}

/// Where each logical record (one committed batch) of a write-ahead log starts and ends, from
/// its physical records' headers (RocksDB's log format: 32 KiB blocks; checksum, 2-byte length,
/// type; type 1 a whole record, 2 to 4 its first, middle and last fragments).
fn wal_records(b: &[u8]) -> Vec<(usize, usize)> {
    const BLOCK: usize = 32 * 1024;
    let mut out = Vec::new();
    let mut start = None;
    let mut pos = 0;
    while pos + 7 <= b.len() {
        if BLOCK - pos % BLOCK < 7 {
            pos += BLOCK - pos % BLOCK; // a block's padding
            continue;
        }
        let len = usize::from(u16::from_le_bytes([b[pos + 4], b[pos + 5]]));
        let kind = b[pos + 6];
        assert!((1..=4).contains(&kind), "record type {kind} at {pos}: not the log format this test reads");
        if kind == 1 || kind == 2 {
            start = Some(pos);
        }
        pos += 7 + len;
        if kind == 1 || kind == 4 {
            out.push((start.take().unwrap(), pos));
        }
    }
    out
}

/// Copies the index directory `from` to `to` (files and folders).
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

/// Every column family of the index.
const FAMILIES: [&str; 9] = ["meta", "items", "vectors", "slots", "graph", "ingest_log", "errors", "frames", "lookup"];

#[test]
fn each_damage_is_reported_repaired_and_restored_by_a_re_ingest() {
    let tmp = tempfile::tempdir().unwrap();
    // Two pristine indexes, each damaged in copies: one compacted (every column family a table
    // file), one as a fresh ingest leaves it (everything still in the write-ahead log).
    let compacted = sample_index(&tmp.path().join("compacted"));
    let fresh = tmp.path().join("fresh/idx");
    assert_eq!(code(&echovault(&fresh, &["ingest", clips().to_str().unwrap(), "--progress", "none"])), 0);
    let before = answers(&compacted);
    assert_eq!(answers(&fresh), before);
    let with_table: Vec<String> = echovault::index::table_files(&compacted).unwrap().into_iter().map(|(cf, _)| cf).collect();
    let mut cases: Vec<Harm> = ["items", "vectors", "slots", "graph", "ingest_log", "lookup"].into_iter().map(Harm::Flip).collect();
    for cf in FAMILIES {
        if with_table.iter().any(|c| c == cf) {
            cases.push(Harm::Truncate(cf));
            cases.push(Harm::Delete(cf));
        } else {
            eprintln!("`{cf}` has no table file in the sample index: not truncated or deleted");
        }
    }
    cases.extend([Harm::Wal, Harm::WalCut(true), Harm::WalCut(false), Harm::Manifest, Harm::Options]);
    // ECHOVAULT_DAMAGE_CASES=meta,Wal runs only the cases whose debug name contains one of them
    // (while working on one; the suite runs them all).
    if let Ok(only) = std::env::var("ECHOVAULT_DAMAGE_CASES") {
        cases.retain(|h| only.split(',').any(|w| format!("{h:?}").contains(w)));
    }
    let t0 = std::time::Instant::now();
    for (n, h) in cases.iter().copied().enumerate() {
        let index = tmp.path().join(format!("case{n}"));
        copy_dir(if matches!(h, Harm::Wal | Harm::WalCut(_)) { &fresh } else { &compacted }, &index);
        harm(&index, h);
        let check = echovault(&index, &["repair", "--check"]);
        let text = String::from_utf8_lossy(&check.stdout).into_owned();
        if matches!(h, Harm::Options) {
            assert_eq!(code(&check), 0, "{h:?}: {text}");
        } else {
            assert_eq!(code(&check), 1, "{h:?}: the check passed over the damage: {text}");
        }
        if let Harm::WalCut(_) = h {
            // Cut at a record boundary or in a record, the log replays quietly up to the cut:
            // the writer's sequence mark says committed batches were lost, and every command
            // stops at the damage.
            assert!(text.contains("the write-ahead log was cut") && text.contains("rolled back"), "{h:?}: {text}");
            let info = echovault(&index, &["info"]);
            let err = String::from_utf8_lossy(&info.stderr);
            assert!(code(&info) != 0 && err.contains("the write-ahead log was cut") && err.contains("echovault repair"), "{h:?}: {err}");
        }
        if let Harm::Truncate(cf) | Harm::Delete(cf) = h {
            // The check names the column family, the file's key range and what it held.
            let report = json(&echovault(&index, &["repair", "--check", "--json"]));
            let damaged = report["damaged"].as_array().unwrap();
            assert!(damaged.iter().any(|d| d["column_family"] == cf && d["range"].is_array()), "{h:?}: {report}");
            if matches!(cf, "frames" | "vectors" | "items") {
                let lost = damaged.iter().find(|d| d["column_family"] == cf).unwrap()["lost"].as_str().unwrap().to_owned();
                // One table each: the 6 videos' frames; the 18 items' (6 videos, studies, reports)
                // records and vectors.
                let all = if cf == "frames" { "6 " } else { "18 " };
                assert!(lost.starts_with(all), "{h:?}: {lost}");
                assert!(text.contains(&lost), "{h:?}: {text}");
            }
        }
        let mut repair = echovault(&index, &["repair", "--json"]);
        if matches!(h, Harm::Truncate("meta") | Harm::Delete("meta")) {
            // The patient-key secret is gone: refused until the user accepts a new one.
            let err = format!("{}{}", String::from_utf8_lossy(&repair.stdout), String::from_utf8_lossy(&repair.stderr));
            assert_ne!(code(&repair), 0, "{h:?}: repaired without asking about the lost secret");
            assert!(err.contains("--new-secret"), "{h:?}: {err}");
            repair = echovault(&index, &["repair", "--new-secret", "--json"]);
        }
        assert_eq!(code(&repair), 0, "{h:?}: {}", String::from_utf8_lossy(&repair.stderr));
        let report = json(&repair);
        assert_eq!(report["ok"], true, "{h:?}: {report}");
        assert_eq!(code(&echovault(&index, &["repair", "--check"])), 0, "{h:?}: not clean after the repair");
        let lost = report["reingest"].as_array().unwrap().len();
        let out = echovault(&index, &["ingest", clips().to_str().unwrap(), "--progress", "none", "--json"]);
        assert_eq!(code(&out), 0, "{h:?}: {}", String::from_utf8_lossy(&out.stderr));
        let summary = json(&out);
        let after = answers(&index);
        eprintln!(
            "{h:?}: check said {:?}; repair listed {lost} inputs to re-ingest; re-ingest embedded {}",
            text.lines().next(),
            summary["ingested"]
        );
        assert_eq!(after, before, "{h:?}: the re-ingest did not restore the index");
        no_duplicates(&after.1);
        no_duplicates(&after.2);
        // The list names videos and the sidecar reports (`.txt`) that lost their vectors.
        let listed: Vec<&str> = report["reingest"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let reports = listed.iter().filter(|p| p.ends_with(".txt")).count() as u64;
        assert!(summary["reports"].as_u64().unwrap() >= reports, "{h:?}: listed reports not embedded again: {summary} {report}");
        let lost = lost - reports as usize;
        let ingested = summary["ingested"].as_u64().unwrap();
        if let Harm::WalCut(_) = h {
            // The batches after the cut are gone with their ingest-log entries and names: the
            // repair says how many updates were rolled back; the re-ingest embeds them too.
            assert!(report["salvage"]["rolled_back"].as_str().is_some_and(|r| r.contains("rolled back")), "{h:?}: {report}");
            assert!(ingested > lost as u64, "{h:?}: nothing was rolled back? {summary} {report}");
        } else {
            assert_eq!(ingested, lost as u64, "{h:?}: not exactly the listed inputs: {summary} {report}");
        }
        assert_eq!(json(&echovault(&index, &["repair", "--check", "--json"]))["ok"], true, "{h:?}");
        std::fs::remove_dir_all(&index).unwrap();
    }
    eprintln!("damage matrix: {} cases in {:.0} s", cases.len(), t0.elapsed().as_secs_f64());
}

#[test]
fn a_repair_after_kill_9_mid_ingest_keeps_what_an_open_shows() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("idx");
    let before = answers(&sample_index(&tmp.path().join("whole")));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_echovault"))
        .args(["--index", index.to_str().unwrap(), "--model", root().join("data-samples/echovault-tiny").to_str().unwrap()])
        .args(["--device", "cpu", "ingest", clips().to_str().unwrap(), "--progress", "none", "--workers", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the first batches are written (the write-ahead log has grown), if it is
    // still running by then.
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(20) {
        let wal: u64 = std::fs::read_dir(&index)
            .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "log")).map(|e| e.metadata().unwrap().len()).sum())
            .unwrap_or(0);
        if wal > 4096 || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let shown = json(&echovault(&index, &["info", "--json"]))["counts"]["video"].as_u64().unwrap();
    let repair = echovault(&index, &["repair", "--json"]);
    assert_eq!(code(&repair), 0, "{}", String::from_utf8_lossy(&repair.stderr));
    let kept = json(&echovault(&index, &["info", "--json"]))["counts"]["video"].as_u64().unwrap();
    assert_eq!(kept, shown, "the repair lost videos a plain open showed: {}", json(&repair));
    let out = echovault(&index, &["ingest", clips().to_str().unwrap(), "--progress", "none", "--json"]);
    assert_eq!(code(&out), 0);
    eprintln!("killed with {shown} videos shown; re-ingest embedded {}", json(&out)["ingested"]);
    let after = answers(&index);
    assert_eq!(after.0, before.0);
    assert_eq!(after.1, before.1);
    assert_eq!(after.2, before.2);
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

/// `POST /v1/repair` on a running `echovault serve` whose frames table is damaged: the check
/// answers (200, not ok, the table named), a repair is refused with 409 (a salvage needs the
/// index to itself: stop the server, run `echovault repair`) and changes nothing; the CLI's
/// repair then salvages it.
#[test]
fn a_server_refuses_a_repair_that_needs_a_salvage_and_says_how() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let index = sample_index(tmp.path());
    let frames = echovault::index::table_files(&index).unwrap().into_iter().find(|(cf, _)| cf == "frames").unwrap().1;
    harm(&index, Harm::Flip("frames"));
    let before = std::fs::read(index.join(&frames)).unwrap();
    const TOKEN: &str = "repair-test-token-7c1e";
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_echovault"))
        .args(["--index", index.to_str().unwrap(), "--model", root().join("data-samples/echovault-tiny").to_str().unwrap()])
        .args(["--device", "cpu", "serve", "--listen", "127.0.0.1:0", "--token", TOKEN])
        .env_remove("ECHOVAULT_INDEX")
        .env_remove("ECHOVAULT_MODEL")
        .env_remove("ECHOVAULT_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let addr = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.split("listening on http://").nth(1).map(|a| a.split_whitespace().next().unwrap_or("").to_owned()));
    let Some(addr) = addr else {
        child.kill().unwrap();
        panic!("the server did not start: {:?}", child.wait());
    };
    let c = reqwest::blocking::Client::builder().timeout(std::time::Duration::from_secs(300)).build().unwrap();
    let post = |body: &str| {
        let r = c.post(format!("http://{addr}/v1/repair")).bearer_auth(TOKEN).body(body.to_owned()).send().unwrap();
        (r.status().as_u16(), serde_json::from_str::<Value>(&r.text().unwrap()).unwrap())
    };
    let (status, check) = post(r#"{"check": true}"#);
    let (refused, err) = post("{}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!((status, &check["ok"]), (200, &Value::Bool(false)), "{check}");
    assert_eq!(check["damaged"][0]["column_family"], "frames", "{check}");
    assert_eq!(refused, 409, "{err}");
    let msg = err["error"].as_str().unwrap();
    assert!(msg.contains("stop the server and run `echovault repair`") && msg.contains(&frames) && msg.contains("`frames`"), "{msg}");
    assert_eq!(std::fs::read(index.join(&frames)).unwrap(), before, "the refused repair changed the damaged table");
    let repair = echovault(&index, &["repair", "--json"]);
    assert_eq!(code(&repair), 0, "{}", String::from_utf8_lossy(&repair.stderr));
    assert_eq!(json(&echovault(&index, &["repair", "--check", "--json"]))["ok"], true);
}
