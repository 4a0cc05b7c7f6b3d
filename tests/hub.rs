//! `--model hf:OWNER/NAME[@REV]` end to end: the built binary against a fake hub
//! (tests/support/fake_hub.py, stdlib Python on a loopback port) serving copies of the tiny
//! sample model in the hub's URL layout. Each test has its own `HF_HOME`; the hub environment
//! of the machine running the tests is removed from every run.

#![allow(clippy::unwrap_used)]

mod common;

use common::{json, root};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The private repo's token: it must never appear in anything echovault prints.
const TOKEN: &str = "hf_TEST_secret_7f3a9c41d2";
const C1: &str = "1111111111111111111111111111111111111111";
const C2: &str = "2222222222222222222222222222222222222222";
const TEXT: &str = "Normal left ventricular size and systolic function. Ejection fraction 62 %.";

/// Variables of the machine's own hub setup (and proxies, which ureq would use for loopback
/// too): none may leak into a run.
const CLEARED: [&str; 16] = [
    "ECHOVAULT_INDEX",
    "ECHOVAULT_MODEL",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "ALL_PROXY",
    "all_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
];

fn tiny() -> PathBuf {
    root().join("data-samples/echovault-tiny")
}

/// The fake hub, killed when dropped.
struct FakeHub {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl FakeHub {
    /// Serves `repos` (the manifest's "repos" object; see fake_hub.py).
    fn start(repos: Value) -> FakeHub {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("manifest.json");
        std::fs::write(&manifest, serde_json::to_vec(&json!({ "repos": repos })).unwrap()).unwrap();
        let venv = root().join(".venv/bin/python");
        let python = if venv.exists() { venv } else { PathBuf::from("python3") };
        let mut child = Command::new(python)
            .arg(root().join("tests/support/fake_hub.py"))
            .arg(&manifest)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tests/support/fake_hub.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("PORT ").unwrap_or_else(|| panic!("fake hub said {line:?}")).parse().unwrap();
        FakeHub { child, port, _dir: dir }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests served so far: {path, status, range, auth}.
    fn log(&self) -> Vec<Value> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(b"GET /_log HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let body = raw.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str(body).unwrap()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A repo holding `files` (name → local path) at each commit; `refs` names commits.
fn repo(refs: &[(&str, &str)], commits: &[(&str, Value)]) -> Value {
    json!({
        "refs": refs.iter().map(|(r, c)| (r.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
        "commits": commits.iter().map(|(c, f)| (c.to_string(), f.clone())).collect::<serde_json::Map<_, _>>(),
    })
}

/// The files of a model directory, as a fake-hub commit.
fn files_of(dir: &Path) -> Value {
    let mut m = serde_json::Map::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        m.insert(p.file_name().unwrap().to_str().unwrap().to_owned(), json!(p.to_str().unwrap()));
    }
    Value::Object(m)
}

/// A copy of the tiny model; `tweak` changes its files (the weights, a vocabulary...).
fn model_copy(dir: &Path, name: &str, tweak: impl FnOnce(&Path)) -> PathBuf {
    let m = dir.join(name);
    std::fs::create_dir_all(&m).unwrap();
    for e in std::fs::read_dir(tiny()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, m.join(p.file_name().unwrap())).unwrap();
    }
    tweak(&m);
    m
}

/// Other weights of the same shapes: bit 6 of every f16's low byte flipped (mantissa only, so
/// every value stays finite and moves by up to ~6 %).
fn perturb_weights(dir: &Path) {
    let p = dir.join("open_clip_model.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    let header = 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    for x in b[header..].iter_mut().step_by(2) {
        *x ^= 0x40;
    }
    std::fs::write(&p, b).unwrap();
}

/// Runs `echovault --device cpu ARGS` with `HF_HOME=home`, `HF_ENDPOINT=endpoint` and `env`.
fn run(home: &Path, endpoint: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_echovault"));
    c.args(["--device", "cpu"]).args(args);
    for v in CLEARED {
        c.env_remove(v);
    }
    c.env("HF_HOME", home).env("HF_ENDPOINT", endpoint).envs(env.iter().copied());
    c.output().expect("run echovault")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `embed --text TEXT` with `--model model` (and more arguments): the embedding.
fn embed(home: &Path, endpoint: &str, env: &[(&str, &str)], model: &str, more: &[&str]) -> Vec<f64> {
    let mut args = vec!["--model", model, "--json", "embed", "--text", TEXT];
    args.extend_from_slice(more);
    let o = run(home, endpoint, env, &args);
    assert!(o.status.success(), "{model}: {}", stderr(&o));
    serde_json::from_value(json(&o)["embedding"].clone()).unwrap()
}

fn cache(home: &Path, repo: &str) -> PathBuf {
    home.join("hub").join(repo)
}

fn sha256_hex(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn downloads_into_the_hub_cache_layout_then_runs_from_it_offline() {
    let mut hub = FakeHub::start(json!({ "owner/tiny": repo(&[("main", C1)], &[(C1, files_of(&tiny()))]) }));
    let home = tempfile::tempdir().unwrap();
    let local = embed(home.path(), &hub.endpoint(), &[], tiny().to_str().unwrap(), &[]);

    let o = run(home.path(), &hub.endpoint(), &[], &["--model", "hf:owner/tiny", "--json", "embed", "--text", TEXT]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first: Vec<f64> = serde_json::from_value(json(&o)["embedding"].clone()).unwrap();
    assert_eq!(first, local, "the hub copy embeds exactly as the directory it was served from");
    // Downloads are announced on stderr at the default log level.
    assert!(stderr(&o).contains("hf:owner/tiny@main: open_clip_model.safetensors: downloading"), "{}", stderr(&o));

    // The hub's cache layout: refs/main → commit; snapshot files are relative links into blobs/.
    let repo_dir = cache(home.path(), "models--owner--tiny");
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), C1);
    let snap = repo_dir.join("snapshots").join(C1);
    for f in ["open_clip_config.json", "open_clip_model.safetensors", "tokenizer.json"] {
        let link = std::fs::read_link(snap.join(f)).unwrap_or_else(|e| panic!("{f} is no symlink: {e}"));
        assert!(link.starts_with("../../blobs"), "{f} → {}", link.display());
        assert_eq!(std::fs::read(snap.join(f)).unwrap(), std::fs::read(tiny().join(f)).unwrap(), "{f}");
    }
    let weights_sha = sha256_hex(&tiny().join("open_clip_model.safetensors"));
    assert!(repo_dir.join("blobs").join(&weights_sha).is_file(), "large files are stored under their sha256");
    assert!(repo_dir.join(".no_exist").join(C1).join("template_vocab.txt").is_file(), "an absent file is recorded as huggingface_hub does");

    // What hf-hub asked: the listing, then each file (ranged), the weights through the redirect.
    let log = hub.log();
    let paths: Vec<&str> = log.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"/api/models/owner/tiny/revision/main"), "{paths:?}");
    assert!(!paths.iter().any(|p| p.ends_with("template_vocab.txt")), "the listing said it is absent: {paths:?}");
    assert!(log.iter().any(|r| r["path"] == format!("/cdn/{weights_sha}") && r["status"] == 206), "{log:?}");
    assert!(log.iter().all(|r| r["auth"] == false), "no token, no Authorization header");

    // The cache answers for every file: the next run asks the hub nothing...
    assert_eq!(embed(home.path(), &hub.endpoint(), &[], "hf:owner/tiny", &[]), local);
    assert_eq!(hub.log().len(), log.len(), "a complete cached snapshot needs no request");
    // ... and works with the hub gone.
    hub.stop();
    assert_eq!(embed(home.path(), &hub.endpoint(), &[], "hf:owner/tiny", &[]), local);
}

#[test]
fn a_revision_picks_its_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let other = model_copy(tmp.path(), "other", perturb_weights);
    let hub =
        FakeHub::start(json!({ "owner/tiny": repo(&[("main", C1), ("v1", C2)], &[(C1, files_of(&tiny())), (C2, files_of(&other))]) }));
    let home = tempfile::tempdir().unwrap();
    let ep = hub.endpoint();
    let (base, tweaked) =
        (embed(home.path(), &ep, &[], tiny().to_str().unwrap(), &[]), embed(home.path(), &ep, &[], other.to_str().unwrap(), &[]));
    assert_ne!(base, tweaked, "the two commits hold different models");

    // By commit first (downloaded), then by tag (already there: only the listing is asked, and
    // refs/v1 written), then the default branch.
    assert_eq!(embed(home.path(), &ep, &[], &format!("hf:owner/tiny@{C2}"), &[]), tweaked);
    let n = hub.log().len();
    assert_eq!(embed(home.path(), &ep, &[], "hf:owner/tiny@v1", &[]), tweaked);
    let asked: Vec<Value> = hub.log()[n..].iter().map(|r| r["path"].clone()).collect();
    assert_eq!(asked, [json!("/api/models/owner/tiny/revision/v1")]);
    assert_eq!(embed(home.path(), &ep, &[], "hf:owner/tiny", &[]), base);
    let repo_dir = cache(home.path(), "models--owner--tiny");
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/v1")).unwrap(), C2);
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), C1);
    assert!(repo_dir.join("snapshots").join(C2).join("open_clip_model.safetensors").is_file());

    let o = run(home.path(), &ep, &[], &["--model", "hf:owner/tiny@v9", "embed", "--text", TEXT]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("hf:owner/tiny@v9: no revision 'v9'"), "{}", stderr(&o));
}

#[test]
fn a_private_repo_needs_hf_token_which_is_never_shown() {
    let mut private = repo(&[("main", C1)], &[(C1, files_of(&tiny()))]);
    private["token"] = json!(TOKEN);
    let hub = FakeHub::start(json!({ "owner/private": private }));
    let home = tempfile::tempdir().unwrap();
    let ep = hub.endpoint();
    let args = ["-vv", "--model", "hf:owner/private", "--json", "embed", "--text", TEXT];

    let o = run(home.path(), &ep, &[], &args);
    assert_eq!(o.status.code(), Some(1));
    let err = json(&o)["error"].as_str().unwrap().to_owned();
    assert!(err.contains("hf:owner/private@main") && err.contains("HTTP 401") && err.contains("set HF_TOKEN"), "{err}");

    let wrong = "hf_WRONG_token_0000";
    let o = run(home.path(), &ep, &[("HF_TOKEN", wrong)], &args);
    assert_eq!(o.status.code(), Some(1));
    let err = json(&o)["error"].as_str().unwrap().to_owned();
    assert!(err.contains("HF_TOKEN is set but does not grant access"), "{err}");
    for out in [&o.stdout, &o.stderr] {
        assert!(!String::from_utf8_lossy(out).contains(wrong), "the token leaked: {}", String::from_utf8_lossy(out));
    }

    let o = run(home.path(), &ep, &[("HF_TOKEN", TOKEN)], &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Vec<f64> = serde_json::from_value(json(&o)["embedding"].clone()).unwrap();
    assert_eq!(got, embed(home.path(), &ep, &[], tiny().to_str().unwrap(), &[]));
    // Debug logs on (-vv, hf-hub's and ureq's included): still no token.
    assert!(stderr(&o).contains("DEBUG"), "debug logging was on");
    for out in [&o.stdout, &o.stderr] {
        assert!(!String::from_utf8_lossy(out).contains(TOKEN), "the token leaked: {}", String::from_utf8_lossy(out));
    }
    assert!(hub.log().iter().any(|r| r["auth"] == true && r["status"] == 200), "the token was sent");
}

#[test]
fn missing_repos_bad_specs_and_an_unreachable_hub_are_clear_errors() {
    let hub = FakeHub::start(json!({}));
    let home = tempfile::tempdir().unwrap();
    let fails = |endpoint: &str, model: &str| -> String {
        let o = run(home.path(), endpoint, &[], &["--model", model, "embed", "--text", TEXT]);
        assert_eq!(o.status.code(), Some(1), "{model}");
        stderr(&o)
    };
    let e = fails(&hub.endpoint(), "hf:owner/nope");
    assert!(e.contains("hf:owner/nope@main: no such repo at http://127.0.0.1"), "{e}");
    let e = fails(&hub.endpoint(), "hf:owner");
    assert!(e.contains("expected hf:OWNER/NAME[@REV]"), "{e}");
    let e = fails(&hub.endpoint(), "hf:owner/a--b");
    assert!(e.contains("'--'"), "{e}");
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let e = fails(&format!("http://{closed}"), "hf:owner/tiny");
    assert!(e.contains("cannot reach the hub at") && e.contains("holds no snapshot"), "{e}");
}

#[test]
fn hf_hub_offline_uses_the_cache_only() {
    let hub = FakeHub::start(json!({ "owner/tiny": repo(&[("main", C1)], &[(C1, files_of(&tiny()))]) }));
    let home = tempfile::tempdir().unwrap();
    let ep = hub.endpoint();
    let offline = [("HF_HUB_OFFLINE", "1")];
    let o = run(home.path(), &ep, &offline, &["--model", "hf:owner/tiny", "embed", "--text", TEXT]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("HF_HUB_OFFLINE is set"), "{}", stderr(&o));
    assert!(hub.log().is_empty(), "offline asked the hub: {:?}", hub.log());

    let online = embed(home.path(), &ep, &[], "hf:owner/tiny", &[]);
    let n = hub.log().len();
    assert_eq!(embed(home.path(), &ep, &offline, "hf:owner/tiny", &[]), online);
    assert_eq!(hub.log().len(), n);
}

#[test]
fn a_mirror_without_the_listing_api_is_asked_for_each_file() {
    let mut mirror = repo(&[("main", C1)], &[(C1, files_of(&tiny()))]);
    mirror["api"] = json!(false);
    let hub = FakeHub::start(json!({ "owner/mirror": mirror }));
    let home = tempfile::tempdir().unwrap();
    let ep = hub.endpoint();
    assert_eq!(embed(home.path(), &ep, &[], "hf:owner/mirror", &[]), embed(home.path(), &ep, &[], tiny().to_str().unwrap(), &[]));
    let log = hub.log();
    let status_of = |suffix: &str| log.iter().find(|r| r["path"].as_str().unwrap().ends_with(suffix)).map(|r| r["status"].clone());
    assert_eq!(status_of("/revision/main"), Some(json!(404)), "{log:?}");
    assert_eq!(status_of("/resolve/main/template_vocab.txt"), Some(json!(404)), "{log:?}");
    let repo_dir = cache(home.path(), "models--owner--mirror");
    assert!(repo_dir.join(".no_exist").join(C1).join("template_vocab.txt").is_file());
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), C1);
    embed(home.path(), &ep, &[], "hf:owner/mirror", &[]);
    assert_eq!(hub.log().len(), log.len(), "the 404 is remembered");
}

#[test]
fn a_download_whose_bytes_differ_from_the_announced_sha256_is_refused() {
    let mut bad = repo(&[("main", C1)], &[(C1, files_of(&tiny()))]);
    bad["corrupt"] = json!(true);
    let hub = FakeHub::start(json!({ "owner/bad": bad }));
    let home = tempfile::tempdir().unwrap();
    let o = run(home.path(), &hub.endpoint(), &[], &["--model", "hf:owner/bad", "embed", "--text", TEXT]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("open_clip_model.safetensors: the downloaded bytes have sha256"), "{}", stderr(&o));
    let snap = cache(home.path(), "models--owner--bad").join("snapshots").join(C1);
    assert!(!snap.join("open_clip_model.safetensors").exists(), "the bad file is not left for the next run");
}

#[test]
fn ingest_names_each_hub_models_space_after_its_repo() {
    let tmp = tempfile::tempdir().unwrap();
    let vocab = root().join("data-samples/template-vocab.txt");
    let r = model_copy(tmp.path(), "r", |m| {
        std::fs::copy(&vocab, m.join("template_vocab.txt")).unwrap();
    });
    let hub = FakeHub::start(json!({
        "owner/tiny": repo(&[("main", C1)], &[(C1, files_of(&tiny()))]),
        "owner/tiny-r": repo(&[("main", C2)], &[(C2, files_of(&r))]),
    }));
    let home = tempfile::tempdir().unwrap();
    let ep = hub.endpoint();
    // The repo's template_vocab.txt came along: the EchoCLIP-R tokenizer is used.
    let template = embed(home.path(), &ep, &[], tiny().to_str().unwrap(), &["--template-vocab", vocab.to_str().unwrap()]);
    assert_eq!(embed(home.path(), &ep, &[], "hf:owner/tiny-r", &[]), template);
    assert_ne!(embed(home.path(), &ep, &[], "hf:owner/tiny", &[]), template);

    let idx = tmp.path().join("idx");
    let clip = root().join("data-samples/clips/a4c_normal_01.avi");
    let o = run(
        home.path(),
        &ep,
        &[],
        &[
            "--index",
            idx.to_str().unwrap(),
            "--model",
            "hf:owner/tiny",
            "--model",
            "hf:owner/tiny-r",
            "--json",
            "ingest",
            clip.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(s["ingested"], 1, "{s}");
    assert_eq!(s["tokenizers"], json!({ "tiny": "clip-bpe", "tiny-r": "template" }), "{s}");
    let info = json(&run(home.path(), &ep, &[], &["--index", idx.to_str().unwrap(), "--json", "info"]));
    let mut names: Vec<&str> = info["spaces"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["tiny", "tiny-r"], "{info}");

    // --space still names the primary model's space.
    let idx2 = tmp.path().join("idx2");
    let o = run(
        home.path(),
        &ep,
        &[],
        &["--index", idx2.to_str().unwrap(), "--model", "hf:owner/tiny", "--space", "echoclip", "--json", "ingest", clip.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["tokenizers"], json!({ "echoclip": "clip-bpe" }));
}

#[test]
fn a_repo_without_tokenizer_json_uses_the_built_in_clip_bpe() {
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["open_clip_config.json", "open_clip_model.safetensors"] {
        std::fs::copy(tiny().join(f), bare.join(f)).unwrap();
    }
    let hub = FakeHub::start(json!({ "owner/bare": repo(&[("main", C1)], &[(C1, files_of(&bare))]) }));
    let home = tempfile::tempdir().unwrap();
    let ep = hub.endpoint();
    // The sample's tokenizer.json is CLIP's own BPE: the built-in one gives the same ids.
    assert_eq!(embed(home.path(), &ep, &[], "hf:owner/bare", &[]), embed(home.path(), &ep, &[], tiny().to_str().unwrap(), &[]));
    let repo_dir = cache(home.path(), "models--owner--bare");
    assert!(repo_dir.join(".no_exist").join(C1).join("tokenizer.json").is_file());
    assert!(!repo_dir.join("snapshots").join(C1).join("tokenizer.json").exists());
    let n = hub.log().len();
    embed(home.path(), &ep, &[], "hf:owner/bare", &[]);
    assert_eq!(hub.log().len(), n, "the absent tokenizer.json is remembered: no request");
}
