//! The web viewer in a real browser: `echovault serve` on an ephemeral loopback port over a
//! phantom index (the phantom-trained sample model, so searches can be checked against the
//! phantoms' truth), driven by headless Chromium through Selenium (tests/viewer/drive.py).
//! Screenshots go to target/viewer-screens/ (one per scenario, `-FAILED` on a failure).
//!
//! Needs Debian's chromium and chromium-driver and the .venv's selenium: `tools/setup` installs
//! them. Without them the test fails (it never skips).

#![allow(clippy::unwrap_used)]

mod common;

use common::root;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TOKEN: &str = "viewer-token-7d2e";
const SETUP: &str = "run tools/setup (installs chromium, chromium-driver and selenium)";
/// The phantom set: eight held-out patients (the model was trained on PHANTOM-00001..00800),
/// small cines, the default mix of DICOM (JPEG and native) and AVI.
const PHANTOM: &[(&str, &str)] = &[
    ("--patients", "8"),
    ("--first-patient", "90001"),
    ("--seed", "2026"),
    ("--studies", "2:3"),
    ("--pacemaker", "0.4"),
    ("--mitraclip", "0.25"),
    ("--events", "0.3"),
    ("--size", "64"),
    ("--frames", "16"),
];

fn model() -> PathBuf {
    root().join("data-samples/echovault-phantom")
}

fn python() -> PathBuf {
    root().join(".venv/bin/python")
}

/// Runs `echovault ARGS...` (no index or model: `phantom`).
fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_echovault"))
        .args(args)
        .env_remove("ECHOVAULT_INDEX")
        .env_remove("ECHOVAULT_MODEL")
        .env_remove("ECHOVAULT_TOKEN")
        .output()
        .expect("run echovault")
}

/// Runs `echovault --index INDEX --model <phantom model> --device cpu ARGS...`.
fn echovault(index: &Path, args: &[&str]) -> Output {
    let model = model();
    let mut all = vec!["--index", index.to_str().unwrap(), "--model", model.to_str().unwrap(), "--device", "cpu"];
    all.extend_from_slice(args);
    run(&all)
}

fn ok(out: &Output, what: &str) -> Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {s}"))
}

/// `echovault phantom --out OUT` with the test's options, those in `changed` replaced or added
/// (clap refuses an option given twice); the manifest's lines.
fn phantom(out: &Path, changed: &[(&str, &str)]) -> Vec<Value> {
    let mut options: Vec<(&str, &str)> = PHANTOM.iter().filter(|(k, _)| !changed.iter().any(|(c, _)| c == k)).copied().collect();
    options.extend_from_slice(changed);
    let mut args = vec!["phantom", "--out", out.to_str().unwrap(), "--json"];
    for (k, v) in &options {
        args.extend([*k, *v]);
    }
    ok(&run(&args), "echovault phantom");
    std::fs::read_to_string(out.join("manifest.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A running `echovault serve`, killed when dropped.
struct Server {
    child: Child,
    base: String,
    stderr: PathBuf,
}

impl Server {
    fn start(index: &Path, args: &[&str]) -> Server {
        let stderr = index.with_file_name("serve.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_echovault"))
            .args(["--index", index.to_str().unwrap(), "--model"])
            .arg(model())
            .args(["--device", "cpu", "-v", "serve"])
            .args(args)
            .env_remove("ECHOVAULT_INDEX")
            .env_remove("ECHOVAULT_MODEL")
            .env_remove("ECHOVAULT_TOKEN")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(addr) => Server { child, base: format!("http://{}", addr.replace("0.0.0.0", "127.0.0.1")), stderr },
            Err(_) => {
                let status = child.wait().unwrap();
                panic!("server did not start (exit {:?}): {}", status.code(), std::fs::read_to_string(&stderr).unwrap_or_default())
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails (never skips) when the browser or Selenium is missing.
fn require_browser() {
    for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(Path::new(bin).exists(), "{bin} is missing: {SETUP}");
    }
    assert!(python().exists(), "{} is missing: {SETUP}", python().display());
    let out = Command::new(python()).args(["-c", "import selenium"]).output().unwrap();
    assert!(out.status.success(), "no selenium in .venv ({}): {SETUP}", String::from_utf8_lossy(&out.stderr).trim());
}

/// GET `url` with the admin token (records carry their source paths only for it).
fn get_json(url: &str) -> Value {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    let r = client.get(url).bearer_auth(TOKEN).send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    assert_eq!(status, 200, "GET {url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"))
}

#[test]
fn the_viewer_in_a_real_browser() {
    require_browser();
    let tmp = tempfile::tempdir().unwrap();
    let phantoms = tmp.path().join("phantoms");
    let manifest = phantom(&phantoms, &[]);
    assert!(manifest.len() >= 16, "{} phantom videos", manifest.len());
    let pacers = manifest.iter().filter(|t| t["devices"].as_array().unwrap().iter().any(|d| d == "pacemaker")).count();
    assert!(pacers >= 4, "the phantom set has {pacers} pacemaker videos; the device search needs some");

    // Every phantom study holds one video. For the missing-source check the test needs a study
    // with two: the same phantom patient made again at another frame rate gives other AVI bytes
    // of the same study (an AVI's name is its study id). The study chosen: an AVI of a patient
    // without devices (the device search ranks it low), whose patient has studies enough.
    let mut per_patient: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &manifest {
        *per_patient.entry(t["patient"].as_str().unwrap()).or_default() += 1;
    }
    let missing_truth = manifest
        .iter()
        .filter(|t| t["format"] == "avi" && t["devices"].as_array().unwrap().is_empty())
        .max_by_key(|t| (per_patient[t["patient"].as_str().unwrap()], std::cmp::Reverse(t["file"].as_str().unwrap().to_owned())))
        .expect("no AVI phantom without devices (change the seed)");
    let patient = missing_truth["patient"].as_str().unwrap();
    let number = patient.trim_start_matches("PHANTOM-").trim_start_matches('0');
    let twin_set = tmp.path().join("twin-gen");
    let twins = phantom(&twin_set, &[("--patients", "1"), ("--first-patient", number), ("--formats", "avi"), ("--fps", "25")]);
    let twin = twins.iter().find(|t| t["study"] == missing_truth["study"]).expect("the patient made again has the study");
    assert_eq!(twin["devices"], missing_truth["devices"], "the same patient, the same truth");
    let twin_dir = tmp.path().join("twin");
    std::fs::create_dir_all(&twin_dir).unwrap();
    let twin_file = twin_dir.join(Path::new(twin["file"].as_str().unwrap()).file_name().unwrap());
    std::fs::rename(twin_set.join(twin["file"].as_str().unwrap()), &twin_file).unwrap();

    // Ingested by the CLI with the reports (dates, patients of the AVI studies).
    let index = tmp.path().join("idx");
    let reports = phantoms.join("reports.jsonl");
    let summary = ok(
        &echovault(
            &index,
            &[
                "ingest",
                phantoms.to_str().unwrap(),
                twin_dir.to_str().unwrap(),
                "--reports",
                reports.to_str().unwrap(),
                "--progress",
                "none",
                "--json",
            ],
        ),
        "echovault ingest",
    );
    assert_eq!(summary["ingested"], manifest.len() + 1, "{summary}");
    assert_eq!(summary["failed"].as_array().map(Vec::len), Some(0), "{summary}");

    // A folder for the ingest page: two videos of a patient the index does not hold yet.
    let more = tmp.path().join("more");
    phantom(&more, &[("--patients", "1"), ("--first-patient", "90201"), ("--studies", "2:2"), ("--formats", "avi,dicom-jpeg")]);

    // As tools/demo serves it: the prompt file that reads phantoms.
    let prompts = root().join("data-samples/phantom-prompts.json");
    let s = Server::start(&index, &["--listen", "127.0.0.1:0", "--token", TOKEN, "--prompts", prompts.to_str().unwrap()]);

    // The twin's item id, then its source moved away before the browser ever asked for its
    // thumbnail (the missing scenario runs first).
    let study = missing_truth["study"].as_str().unwrap();
    let rec = get_json(&s.url(&format!("/v1/studies/{study}")));
    let videos: Vec<&Value> = rec["items"].as_array().unwrap().iter().filter(|i| i["kind"] == "video").collect();
    assert_eq!(videos.len(), 2, "study {study} has its phantom video and its twin: {rec}");
    let missing_id = videos
        .iter()
        .find(|v| v["source"].as_str() == twin_file.to_str())
        .unwrap_or_else(|| panic!("no video of {study} from {}: {rec}", twin_file.display()))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let moved = tmp.path().join("moved-away.avi");
    std::fs::rename(&twin_file, &moved).unwrap();

    let screens = root().join("target/viewer-screens");
    std::fs::create_dir_all(&screens).unwrap();
    for old in std::fs::read_dir(&screens).unwrap().map_while(Result::ok) {
        if old.path().extension().is_some_and(|e| e == "png") {
            let _ = std::fs::remove_file(old.path());
        }
    }
    let started = Instant::now();
    // coreutils' timeout bounds a browser that hangs (each check waits with its own limit).
    let out = Command::new("timeout")
        .args(["--kill-after=30", "1200"])
        .arg(python())
        .arg(root().join("tests/viewer/drive.py"))
        .args(["--base", s.base.as_str(), "--phantoms", phantoms.to_str().unwrap(), "--screens", screens.to_str().unwrap()])
        .args(["--scenario", "missing", "device", "drop", "study", "keyboard", "tablet", "phi", "ingest"])
        .args(["--missing-id", missing_id.as_str(), "--missing-study", study])
        .args(["--token", TOKEN, "--ingest-path", more.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    println!("{stderr}");
    let log = s.log();
    let tail = &log[log.char_indices().rev().nth(6000).map_or(0, |(i, _)| i)..];
    assert!(
        out.status.success(),
        "the browser checks failed (exit {:?}, {:.0} s; screenshots in {}):\n{stdout}\n{stderr}\nserver log (end):\n{tail}",
        out.status.code(),
        started.elapsed().as_secs_f64(),
        screens.display()
    );
    let lines: Vec<Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    for name in ["missing", "device", "drop", "study", "keyboard", "tablet", "phi", "ingest"] {
        let found = lines.iter().find(|l| l["scenario"] == name).unwrap_or_else(|| panic!("no result for {name}: {stdout}"));
        assert_eq!(found["ok"], true, "{found}");
        assert!(screens.join(format!("{name}.png")).exists(), "no screenshot for {name}");
    }
    assert!(!log.contains("panicked"), "{tail}");
}
