//! PHI through the real binary: the patient-key secret kept outside the index
//! (`--secret-file` / `ECHOVAULT_SECRET_FILE`: no byte of it under the index, a wrong one
//! refused, commands that key patient ids need it), and source paths (PACS folders carry MRNs)
//! never in the logs, at the default level or with `-v` — `errors` shows them.

#![allow(clippy::unwrap_used)]

mod common;

use common::root;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `echovault --index IDX ARGS…` with the phantom sample model on the CPU, the environment's
/// index, model and secret file unset.
fn ev(index: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_echovault"));
    c.args(["--index", index.to_str().unwrap(), "--device", "cpu", "--model"])
        .arg(root().join("data-samples/echovault-phantom"))
        .args(args)
        .env_remove("ECHOVAULT_INDEX")
        .env_remove("ECHOVAULT_MODEL")
        .env_remove("ECHOVAULT_SECRET_FILE")
        .env_remove("ECHOVAULT_LOG");
    c
}

fn run(mut c: impl std::borrow::BorrowMut<Command>) -> Output {
    c.borrow_mut().output().unwrap()
}

fn ok(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    common::json(o)
}

/// Phantom DICOM studies (every file carries a PatientID) under `out`; the first patient's id.
fn phantoms(out: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_echovault"))
        .args(["--json", "phantom", "--out", out.to_str().unwrap(), "--size", "64", "--frames", "8"])
        .args(["--patients", "2", "--studies", "2:2", "--formats", "dicom-jpeg"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap().lines().next().unwrap().to_owned();
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    v["patient"].as_str().unwrap().to_owned()
}

/// Every file under `dir` holding `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_holding(&p, needle));
        } else if std::fs::read(&p).unwrap().windows(needle.len()).any(|w| w == needle) {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_secret_file_keeps_the_secret_out_of_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let patient = phantoms(&data);
    let (idx, secret) = (dir.path().join("idx"), dir.path().join("keys/secret.hex"));
    std::fs::create_dir_all(secret.parent().unwrap()).unwrap();

    // Through the environment: the file is written with a new secret on the first ingest.
    let o = run(ev(&idx, &["--json", "ingest", data.to_str().unwrap()]).env("ECHOVAULT_SECRET_FILE", &secret));
    assert_eq!(ok(&o)["ingested"], 4, "{}", String::from_utf8_lossy(&o.stdout));
    let hex = std::fs::read_to_string(&secret).unwrap().trim().to_owned();
    assert_eq!(hex.len(), 64);
    let bytes: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    assert_eq!(files_holding(dir.path(), hex.as_bytes()), vec![secret.clone()], "the search finds the secret where it is");
    assert!(files_holding(&idx, &bytes).is_empty() && files_holding(&idx, hex.as_bytes()).is_empty(), "no secret in the index");

    // The flag: the patient's two studies, under a key that is not the id.
    let t = ok(&run(ev(&idx, &["--json", "timeline", "--secret-file", secret.to_str().unwrap(), "--patient-id", &patient])));
    let key = t["patient"].as_str().unwrap().to_owned();
    assert!(key.starts_with("p-") && !key.contains(&patient), "{key}");
    assert_eq!(t["studies"].as_array().unwrap().len(), 2, "{t}");
    // The key alone needs no secret; keying an id does.
    let t = ok(&run(ev(&idx, &["--json", "timeline", "--patient", &key])));
    assert_eq!(t["studies"].as_array().unwrap().len(), 2, "{t}");
    let o = run(&mut ev(&idx, &["timeline", "--patient-id", &patient]));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("keeps its patient-key secret outside") && err.contains("--secret-file"), "{err}");
    // Searches that key nothing work without it.
    let s = ok(&run(ev(&idx, &["--json", "search", "--text", "apical four chamber", "-k", "2"])));
    assert_eq!(s["hits"].as_array().map(Vec::len), Some(2), "{s}");

    // A wrong secret is refused, for reading and for writing (nothing is ingested).
    let wrong = dir.path().join("wrong.hex");
    std::fs::write(&wrong, format!("{}\n", "5a".repeat(32))).unwrap();
    for args in [&["timeline", "--patient-id", patient.as_str()][..], &["ingest", data.to_str().unwrap()]] {
        let o = run(ev(&idx, args).env("ECHOVAULT_SECRET_FILE", &wrong));
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("wrong.hex") && err.contains("fingerprint differs"), "{err}");
    }
    // An ingest without it stops before reading a file.
    let o = run(&mut ev(&idx, &["ingest", data.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--secret-file"));
    // inspect shows the key ingest stored: with the file, and null without it.
    let dcm = std::fs::read_to_string(data.join("manifest.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(dcm.lines().next().unwrap()).unwrap();
    let file = data.join(first["file"].as_str().unwrap());
    let i = ok(&run(ev(&idx, &["--json", "inspect", "--secret-file", secret.to_str().unwrap(), file.to_str().unwrap()])));
    assert_eq!(i["patient_key"].as_str(), Some(key.as_str()), "{i}");
    let i = ok(&run(ev(&idx, &["--json", "inspect", file.to_str().unwrap()])));
    assert!(i["patient_key"].is_null(), "{i}");
    // The flag wins over the environment.
    let o = run(ev(&idx, &["--json", "timeline", "--secret-file", secret.to_str().unwrap(), "--patient-id", &patient])
        .env("ECHOVAULT_SECRET_FILE", &wrong));
    assert_eq!(ok(&o)["patient"].as_str(), Some(key.as_str()));
}

#[test]
fn repair_moves_a_stored_secret_out_with_the_same_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let patient = phantoms(&data);
    let idx = dir.path().join("idx");
    ok(&run(ev(&idx, &["--json", "ingest", data.to_str().unwrap()])));
    let before = ok(&run(ev(&idx, &["--json", "timeline", "--patient-id", &patient])));
    let file = dir.path().join("secret.hex");
    ok(&run(ev(&idx, &["--json", "repair", "--export-secret", file.to_str().unwrap()])));
    let hex = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_eq!(hex.len(), 64);
    let bytes: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    assert!(files_holding(&idx, &bytes).is_empty() && files_holding(&idx, hex.as_bytes()).is_empty(), "no secret left in the index");
    let o = run(ev(&idx, &["timeline", "--patient-id", &patient]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--secret-file"), "{}", String::from_utf8_lossy(&o.stderr));
    let after = ok(&run(ev(&idx, &["--json", "timeline", "--secret-file", file.to_str().unwrap(), "--patient-id", &patient])));
    assert_eq!(after["patient"], before["patient"], "the same patient key");
    assert_eq!(after["studies"], before["studies"]);
    // Once only; never over an existing file.
    let o = run(ev(&idx, &["repair", "--export-secret", dir.path().join("again.hex").to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn source_paths_stay_out_of_the_logs() {
    const MARKER: &str = "MRN123456";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join(MARKER).join("echo");
    phantoms(&data);
    // Failures too: a text file named as DICOM, an empty one, a cut container.
    std::fs::write(data.join("IM_BROKEN.dcm"), "not a DICOM file").unwrap();
    std::fs::write(data.join(format!("{MARKER}.dcm")), b"").unwrap();
    let idx = dir.path().join("idx");
    for verbose in [None, Some("-v")] {
        let mut args: Vec<&str> = verbose.into_iter().collect();
        args.extend(["ingest", data.to_str().unwrap()]);
        let o = run(&mut ev(&idx, &args));
        assert_eq!(o.status.code(), Some(3), "some ingested, some failed: {}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains(MARKER), "a source path in the log ({verbose:?}):\n{err}");
        if verbose.is_some() {
            assert!(!err.trim().is_empty(), "-v logs something");
        }
    }
    // Debug logging (-vv) names them: the check above would see a leaked path.
    let o = run(ev(&idx, &["-vv", "ingest", data.to_str().unwrap()]));
    assert!(String::from_utf8_lossy(&o.stderr).contains(MARKER), "{}", String::from_utf8_lossy(&o.stderr));
    // The administrator's tool shows them.
    let o = run(&mut ev(&idx, &["errors"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(MARKER) && out.contains("IM_BROKEN.dcm"), "{out}");
}
