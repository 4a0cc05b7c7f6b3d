//! `echovault serve` end to end: the real binary on an ephemeral loopback port, driven by a real
//! HTTP client (reqwest). Answers are compared with what the CLI prints for the same question
//! on the same index; ingest jobs are checked against an uninterrupted CLI ingest of the same
//! inputs.

#![allow(clippy::unwrap_used)]

mod common;

use common::{echovault, json, root};
use reqwest::blocking::{multipart, Client, Response};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TOKEN: &str = "test-token-3f9a";

fn clips() -> PathBuf {
    root().join("data-samples/clips")
}

/// A running `echovault serve`, killed when dropped.
struct Server {
    child: Child,
    base: String,
    stderr: PathBuf,
}

impl Server {
    /// Starts the server on `index` with `args` after `serve`; `Err` holds its exit code and
    /// stderr when it exits instead of listening.
    fn try_start(index: &Path, args: &[&str]) -> Result<Server, (Option<i32>, String)> {
        let stderr = index.with_file_name(format!("serve-{}.log", rand_suffix()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_echovault"))
            .args(["--index", index.to_str().unwrap(), "--model"])
            .arg(root().join("data-samples/echovault-tiny"))
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
        let read_log = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(addr) => {
                // Bound to every interface: reach it through loopback.
                let addr = addr.replace("0.0.0.0", "127.0.0.1");
                Ok(Server { child, base: format!("http://{addr}"), stderr })
            }
            Err(_) => {
                let status = child.wait().unwrap();
                Err((status.code(), read_log(&stderr)))
            }
        }
    }

    fn start(index: &Path, args: &[&str]) -> Server {
        Server::try_start(index, args).unwrap_or_else(|(code, err)| panic!("server did not start (exit {code:?}): {err}"))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends `signal` (`-TERM`, `-KILL`) and waits for the exit code (`None`: killed).
    fn signal(mut self, signal: &str) -> Option<i32> {
        let ok = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {signal}");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < deadline, "server did not exit after {signal}: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(300)).build().unwrap()
}

/// Status and JSON body of a response.
fn answer(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

fn post(c: &Client, s: &Server, path: &str, body: &str) -> (u16, Value) {
    answer(c.post(s.url(path)).header("content-type", "application/json").body(body.to_owned()).send().unwrap())
}

fn get(c: &Client, s: &Server, path: &str) -> (u16, Value) {
    answer(c.get(s.url(path)).send().unwrap())
}

/// An index of the six sample clips and their reports, ingested by the CLI.
fn sample_index(dir: &Path) -> PathBuf {
    let index = dir.join("idx");
    let out = echovault(&index, &["ingest", clips().to_str().unwrap(), "--progress", "none", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    index
}

/// `info --json` without the per-open timings (two opens of one index differ only there).
fn without_millis(mut v: Value) -> Value {
    for g in v["graphs"].as_array_mut().unwrap() {
        let g = g.as_object_mut().unwrap();
        assert!(g.remove("millis").is_some() && g.remove("phases_ms").is_some(), "{g:?}");
    }
    v
}

#[test]
fn search_and_info_answer_exactly_what_the_cli_prints() {
    let tmp = tempfile::tempdir().unwrap();
    let index = sample_index(tmp.path());
    let avi = clips().join("a4c_pacer_03.avi");
    let first_id = json(&echovault(&index, &["search", "--video", avi.to_str().unwrap(), "-k", "1", "--json"]))["hits"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cli_info = json(&echovault(&index, &["info", "--json"]));
    // The CLI's answers first: the server then holds the index.
    let questions: Vec<(Vec<&str>, Value)> = vec![
        (vec!["--text", "pacemaker lead", "-k", "4"], json!({"text": "pacemaker lead", "k": 4})),
        (vec!["--text", "normal function", "--kind", "report", "-k", "3"], json!({"text": "normal function", "kind": "report", "k": 3})),
        (vec!["--like", &first_id, "--kind", "study"], json!({"like": first_id, "kind": "study"})),
        (vec!["--text", "dilated", "--study", "a4c_normal_01"], json!({"text": "dilated", "study": "a4c_normal_01"})),
        (
            vec!["--text", "dilated", "--group-by", "study", "--group-size", "2", "-k", "3"],
            json!({"text": "dilated", "group_by": "study", "group_size": 2, "k": 3}),
        ),
        (vec!["--text", "dilated", "--exact", "-k", "2"], json!({"text": "dilated", "exact": true, "k": 2})),
    ];
    let cli: Vec<Value> = questions
        .iter()
        .map(|(args, _)| json(&echovault(&index, &[&["search", "--json", "--with-paths"][..], &args[..]].concat())))
        .collect();
    let cli_video = json(&echovault(&index, &["search", "--video", avi.to_str().unwrap(), "-k", "3", "--json", "--with-paths"]));

    // Source paths are in the answers only with --show-paths (or the admin token): as the CLI's.
    let s = Server::start(&index, &["--listen", "127.0.0.1:0", "--show-paths"]);
    let c = client();
    for ((args, body), expected) in questions.iter().zip(&cli) {
        let (status, got) = post(&c, &s, "/v1/search", &body.to_string());
        assert_eq!(status, 200, "{args:?}: {got}");
        assert_eq!(&got, expected, "server and CLI differ for {args:?}");
        assert!(got["hits"].as_array().or(got["groups"].as_array()).is_some_and(|h| !h.is_empty()), "{got}");
    }
    // A video as a multipart upload: named as the CLI names its path.
    let form = multipart::Form::new()
        .part("video", multipart::Part::file(&avi).unwrap().file_name(avi.to_str().unwrap().to_owned()))
        .text("k", "3");
    let (status, got) = answer(c.post(s.url("/v1/search")).multipart(form).send().unwrap());
    assert_eq!(status, 200, "{got}");
    assert_eq!(got, cli_video);
    assert_eq!(got["hits"][0]["id"], first_id.as_str(), "the uploaded video finds itself");
    // A query vector: the first hit's own vector is not served, so take a text's embedding.
    let e = json(&echovault(&index, &["embed", "--text", "pacemaker lead", "--json"]));
    let (status, by_vector) = post(&c, &s, "/v1/search", &json!({"vector": e["embedding"], "k": 4}).to_string());
    assert_eq!(status, 200, "{by_vector}");
    assert_eq!(by_vector["query"], json!({"vector": {"dim": 64}}));
    let ids = |v: &Value| v["hits"].as_array().unwrap().iter().map(|h| h["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&by_vector), ids(&cli[0]), "the text's vector finds what the text finds");

    // info = info --json (the graphs' load timings aside: each open times its own).
    let (status, info) = get(&c, &s, "/v1/info");
    assert_eq!(status, 200);
    assert_eq!(without_millis(info), without_millis(cli_info));
    let (status, health) = get(&c, &s, "/v1/health");
    assert_eq!((status, health["status"].as_str(), health["space"].as_str()), (200, Some("ok"), Some("echovault-tiny")));

    // Items by id; the search's hit record is the item's.
    let (status, item) = get(&c, &s, &format!("/v1/items/{first_id}"));
    assert_eq!(status, 200, "{item}");
    assert_eq!((item["id"].as_str(), item["kind"].as_str()), (Some(first_id.as_str()), Some("video")));
    assert_eq!(item["source"], avi.display().to_string());
    assert_eq!(item["study"], "a4c_pacer_03");

    // The same text twice: the second embedding comes from the cache.
    for _ in 0..2 {
        assert_eq!(post(&c, &s, "/v1/search", r#"{"text": "cached query text"}"#).0, 200);
    }
    let metrics = c.get(s.url("/v1/metrics")).send().unwrap().text().unwrap();
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let searches = questions.len() + 2 /* video, vector */ + 2;
    assert_eq!(value("echovault_http_requests_total{route=\"/v1/search\",method=\"POST\",status=\"200\"}"), searches as f64);
    assert_eq!(value("echovault_http_request_duration_seconds_count{route=\"/v1/search\"}"), searches as f64);
    // Four distinct texts were embedded; "dilated" was asked three times, "cached query text" twice.
    assert_eq!(value("echovault_text_cache_misses_total"), 4.0);
    assert_eq!(value("echovault_text_cache_hits_total"), 3.0);
    // The request log names routes, never the query text or the item id asked for.
    let log = s.log();
    assert!(log.contains("POST /v1/search 200"), "{log}");
    assert!(log.contains("GET /v1/items/{id} 200"), "{log}");
    assert!(!log.contains("pacemaker lead") && !log.contains(&first_id), "{log}");
}

#[test]
fn bad_requests_get_4xx_json_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let index = sample_index(tmp.path());
    let s = Server::start(&index, &["--listen", "127.0.0.1:0", "--max-body", "2000", "--max-upload", "20000"]);
    let c = client();
    let refused = |(status, body): (u16, Value), want_status: u16, want_field: Option<&str>| {
        assert_eq!(status, want_status, "{body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
        assert_eq!(body["field"].as_str(), want_field, "{body}");
        body["error"].as_str().unwrap().to_owned()
    };
    let search = |body: &str| post(&c, &s, "/v1/search", body);
    assert!(refused(search(r#"{"text": "mitral""#), 400, None).starts_with("malformed JSON"));
    assert!(refused(search(r#"["text"]"#), 400, None).contains("JSON object"));
    assert!(refused(search("{}"), 400, None).contains("give a query"));
    assert!(refused(search(r#"{"text": "x", "limit": 3}"#), 400, Some("limit")).contains("unknown field"));
    assert!(refused(search(r#"{"text": "x", "kind": "frame"}"#), 400, Some("kind")).contains("frame"));
    refused(search(r#"{"text": "x", "k": 0}"#), 400, Some("k"));
    assert!(refused(search(r#"{"text": "  "}"#), 400, Some("text")).contains("empty"));
    refused(search(r#"{"text": "x", "k": "ten"}"#), 400, Some("k"));
    assert!(refused(search(r#"{"text": "x", "since": "2021-02-31"}"#), 400, Some("since")).contains("2021-02-31"));
    refused(search(r#"{"text": "x", "group_size": 2}"#), 400, Some("group_size"));
    refused(search(r#"{"text": "x", "group_by": "hospital"}"#), 400, Some("group_by"));
    refused(search(r#"{"vector": [0.5, 0.5]}"#), 400, Some("vector"));
    assert!(refused(search(r#"{"like": "no-such-item"}"#), 404, Some("like")).contains("no-such-item"));
    refused(get(&c, &s, "/v1/items/no-such-item"), 404, Some("id"));
    refused(get(&c, &s, "/v1/no-such-endpoint"), 404, None);
    refused(answer(c.delete(s.url("/v1/info")).send().unwrap()), 405, None);
    // Bodies and uploads above the limits: 413, still JSON.
    let big = json!({"text": "x".repeat(3000)}).to_string();
    assert!(refused(search(&big), 413, None).contains("2000"));
    let upload = multipart::Form::new().part("video", multipart::Part::bytes(vec![0u8; 3_000_000]).file_name("big.avi"));
    let (status, body) = answer(c.post(s.url("/v1/search")).multipart(upload).send().unwrap());
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["field"], "video");
    // A file that is no video: the upload is refused, the server goes on.
    let junk = multipart::Form::new().part("video", multipart::Part::bytes(b"not a video".to_vec()).file_name("junk.avi"));
    let why = refused(answer(c.post(s.url("/v1/search")).multipart(junk).send().unwrap()), 422, Some("video"));
    assert!(why.starts_with("junk.avi: ") && !why.contains("echovault-upload"), "names the upload, not its temporary file: {why}");
    let junk = multipart::Form::new().part("video", multipart::Part::bytes(b"not a video".to_vec()).file_name("junk.avi"));
    let why = refused(answer(c.post(s.url("/v1/reid")).multipart(junk).send().unwrap()), 422, Some("video"));
    assert!(why.contains("junk.avi") && !why.contains("echovault-upload"), "a task's error names the upload too: {why}");
    let no_video = multipart::Form::new().text("k", "3");
    refused(answer(c.post(s.url("/v1/search")).multipart(no_video).send().unwrap()), 400, Some("video"));
    assert_eq!(get(&c, &s, "/v1/health").0, 200, "still serving");
    assert_eq!(s.signal("-TERM"), Some(0), "an idle server exits 0 on SIGTERM");
}

#[test]
fn a_token_guards_the_server_off_loopback_and_the_admin_endpoints_always() {
    let tmp = tempfile::tempdir().unwrap();
    let index = sample_index(tmp.path());
    // Every interface without a token: refused before anything is served.
    let (code, err) = Server::try_start(&index, &["--listen", "0.0.0.0:0"]).err().expect("must not start");
    assert_eq!(code, Some(1));
    assert!(err.contains("--token") && err.contains("0.0.0.0"), "{err}");

    let c = client();
    let s = Server::start(&index, &["--listen", "0.0.0.0:0", "--token", TOKEN]);
    let (status, body) = get(&c, &s, "/v1/health");
    assert_eq!(status, 401, "{body}");
    let r = c.get(s.url("/v1/health")).bearer_auth("wrong-token-000").send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let (status, body) = answer(c.get(s.url("/v1/health")).bearer_auth(TOKEN).send().unwrap());
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, _) = answer(c.post(s.url("/v1/search")).bearer_auth(TOKEN).body(r#"{"text": "x"}"#).send().unwrap());
    assert_eq!(status, 200);
    drop(s);

    // On loopback reads are open, the admin endpoints need the token.
    let s = Server::start(&index, &["--listen", "127.0.0.1:0", "--token", TOKEN]);
    assert_eq!(get(&c, &s, "/v1/health").0, 200);
    assert_eq!(get(&c, &s, "/v1/ingest").0, 401);
    let (status, jobs) = answer(c.get(s.url("/v1/ingest")).bearer_auth(TOKEN).send().unwrap());
    assert_eq!((status, jobs["jobs"].as_array().map(Vec::len)), (200, Some(0)));
    let (status, body) = answer(c.get(s.url("/v1/ingest/999")).bearer_auth(TOKEN).send().unwrap());
    assert_eq!((status, body["field"].as_str()), (404, Some("job")), "{body}");
    let (status, body) = answer(c.get(s.url("/v1/ingest/first")).bearer_auth(TOKEN).send().unwrap());
    assert_eq!((status, body["field"].as_str()), (400, Some("job")), "{body}");
    let (status, body) = answer(c.post(s.url("/v1/ingest")).bearer_auth(TOKEN).body(r#"{"paths": ["/no/such/dir"]}"#).send().unwrap());
    assert_eq!((status, body["field"].as_str()), (400, Some("paths")), "{body}");
    let (status, body) = answer(c.post(s.url("/v1/ingest")).bearer_auth(TOKEN).body(r#"{"paths": []}"#).send().unwrap());
    assert_eq!((status, body["field"].as_str()), (400, Some("paths")), "{body}");
    // repair over HTTP answers what `repair --json` prints; its checks pass on a sound index.
    let (status, check) = answer(c.post(s.url("/v1/repair")).bearer_auth(TOKEN).body(r#"{"check": true}"#).send().unwrap());
    assert_eq!(status, 200, "{check}");
    assert_eq!((check["ok"].as_bool(), check["checked_only"].as_bool()), (Some(true), Some(true)), "{check}");
    assert_eq!(check["live"]["echovault-tiny/video"], 6);
    let (status, repaired) = answer(c.post(s.url("/v1/repair")).bearer_auth(TOKEN).send().unwrap());
    assert_eq!((status, repaired["ok"].as_bool(), repaired["checked_only"].as_bool()), (200, Some(true), Some(false)), "{repaired}");
    assert_eq!(post(&c, &s, "/v1/repair", "{}").0, 401);
    assert_eq!(post(&c, &s, "/v1/search", r#"{"text": "after repair", "k": 6}"#).1["hits"].as_array().map(Vec::len), Some(6));
    drop(s);
    let cli = json(&echovault(&index, &["repair", "--check", "--json"]));
    assert_eq!(cli, check, "POST /v1/repair {{check}} = repair --check --json");
    // Without a token at all, admin endpoints are closed.
    let s = Server::start(&index, &["--listen", "127.0.0.1:0"]);
    let (status, body) = post(&c, &s, "/v1/ingest", &json!({"paths": [clips()]}).to_string());
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--token"), "{body}");
}

/// Every frame of `file` decoded by the ffmpeg CLI (the peer), as `(width, height, rgb)`.
fn ffmpeg_frames(file: &Path, width: usize, height: usize) -> Vec<Vec<u8>> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("ffmpeg (tools/setup installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout.chunks(width * height * 3).map(<[u8]>::to_vec).collect()
}

#[test]
fn the_viewer_serves_its_pages_and_cine_thumbnails() {
    let tmp = tempfile::tempdir().unwrap();
    // The clips copied, so one source can be taken away later.
    let sources = tmp.path().join("clips");
    std::fs::create_dir(&sources).unwrap();
    for e in std::fs::read_dir(clips()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, sources.join(p.file_name().unwrap())).unwrap();
    }
    let index = tmp.path().join("idx");
    let o = echovault(&index, &["ingest", sources.to_str().unwrap(), "--progress", "none", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let s = Server::start(&index, &["--listen", "127.0.0.1:0"]);
    let c = client();

    // One page for every viewer path, with its assets; a strict CSP on each.
    let page = c.get(s.url("/")).send().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'self'"), "{csp}");
    let html = page.text().unwrap();
    assert!(html.contains("/assets/app.js") && html.contains("/assets/style.css"), "{html}");
    for path in ["/?q=mitral", "/study/a4c_pacer_03", "/ingest"] {
        let r = c.get(s.url(path)).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert_eq!(r.text().unwrap(), html, "{path}: the same page");
    }
    for (asset, ct) in [("app.js", "text/javascript"), ("style.css", "text/css"), ("placeholder.svg", "image/svg+xml")] {
        let r = c.get(s.url(&format!("/assets/{asset}"))).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{asset}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(ct), "{asset}");
        assert!(!r.bytes().unwrap().is_empty());
    }
    assert_eq!(get(&c, &s, "/assets/nothing.js").0, 404);
    let (status, viewer) = get(&c, &s, "/v1/viewer");
    assert_eq!(status, 200);
    assert_eq!(
        (viewer["show_paths"].as_bool(), viewer["token_needed"].as_bool(), viewer["admin"].as_bool()),
        (Some(false), Some(false), Some(false))
    );
    assert_eq!((viewer["thumb"]["cell_width"].as_u64(), viewer["thumb"]["cell_height"].as_u64()), (Some(160), Some(120)));

    // A clip's thumbnail: 16 of its 24 frames, evenly spaced, each in a 160×120 cell.
    let avi = sources.join("a4c_pacer_03.avi");
    let id = video_of(&c, &s, "a4c_pacer_03");
    let thumb = |etag: Option<&str>| {
        let mut r = c.get(s.url(&format!("/v1/items/{id}/thumb")));
        if let Some(t) = etag {
            r = r.header("if-none-match", t);
        }
        r.send().unwrap()
    };
    let r = thumb(None);
    assert_eq!(r.status().as_u16(), 200);
    let h = |r: &Response, name: &str| r.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(h(&r, "content-type"), "image/jpeg");
    assert_eq!(h(&r, "x-echovault-frames"), "16");
    assert_eq!(h(&r, "x-echovault-duration-ms"), "960", "24 frames at 25 fps");
    assert_eq!(h(&r, "x-echovault-cache"), "miss");
    let etag = h(&r, "etag");
    let jpeg = r.bytes().unwrap().to_vec();
    let sprite = image::load_from_memory(&jpeg).unwrap().to_rgb8();
    assert_eq!(sprite.dimensions(), (16 * 160, 120));
    // Against the peer: ffmpeg's frames, letterboxed as the viewer does (112×96 → 140×120 at
    // x 10). Each cell is its own frame (JPEG-close) and closer to it than to another frame.
    let frames = ffmpeg_frames(&avi, 112, 96);
    assert_eq!(frames.len(), 24);
    let scaled: Vec<image::RgbImage> = frames
        .iter()
        .map(|f| {
            image::imageops::resize(
                &image::RgbImage::from_raw(112, 96, f.clone()).unwrap(),
                140,
                120,
                image::imageops::FilterType::Triangle,
            )
        })
        .collect();
    let mad = |cell: usize, frame: usize| -> f64 {
        let mut sum = 0.0;
        for y in 0..120 {
            for x in 0..140 {
                let a = sprite.get_pixel(cell as u32 * 160 + 10 + x, y).0;
                let b = scaled[frame].get_pixel(x, y).0;
                sum += (0..3).map(|k| (f64::from(a[k]) - f64::from(b[k])).abs()).sum::<f64>();
            }
        }
        sum / (120.0 * 140.0 * 3.0)
    };
    let picks: Vec<usize> = (0..16).map(|j| j * 24 / 16).collect();
    let (mut own, mut other) = (0.0, 0.0);
    for (j, &f) in picks.iter().enumerate() {
        let m = mad(j, f);
        assert!(m < 6.0, "cell {j} differs from ffmpeg's frame {f} by {m:.2} on average");
        own += m;
        other += mad(j, picks[(j + 8) % 16]);
    }
    assert!(own < other * 0.8, "cells match their own frames ({own:.1}) better than others ({other:.1})");
    // The bars beside the 140-pixel picture are black.
    assert!(sprite.get_pixel(3, 60).0.iter().all(|&v| v < 24) && sprite.get_pixel(156, 60).0.iter().all(|&v| v < 24));

    // The second time from the disk cache, byte for byte; a client holding it gets 304.
    let r = thumb(None);
    assert_eq!(h(&r, "x-echovault-cache"), "hit");
    assert_eq!(r.bytes().unwrap().to_vec(), jpeg);
    assert_eq!(thumb(Some(&etag)).status().as_u16(), 304);
    let cached: Vec<_> =
        walk(&index.join("viewer-cache/thumbs")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "jpg")).collect();
    assert_eq!(cached.len(), 1, "{cached:?}");

    // A source moved away: 404 naming the reason, not the path; a report has no cine.
    let moved_id = video_of(&c, &s, "a4c_normal_01");
    std::fs::rename(sources.join("a4c_normal_01.avi"), tmp.path().join("elsewhere.avi")).unwrap();
    let (status, body) = answer(c.get(s.url(&format!("/v1/items/{moved_id}/thumb"))).send().unwrap());
    assert_eq!((status, body["reason"].as_str(), body["field"].as_str()), (404, Some("missing-source"), Some("source")), "{body}");
    assert!(!body["error"].as_str().unwrap().contains(sources.to_str().unwrap()), "no path: {body}");
    let (status, study) = get(&c, &s, "/v1/studies/a4c_pacer_03");
    assert_eq!(status, 200);
    let report = study["items"].as_array().unwrap().iter().find(|i| i["kind"] == "report").unwrap()["id"].as_str().unwrap().to_owned();
    let (status, body) = answer(c.get(s.url(&format!("/v1/items/{report}/thumb"))).send().unwrap());
    assert_eq!((status, body["reason"].as_str()), (400, Some("not-video")), "{body}");
    assert_eq!(get(&c, &s, "/v1/items/no-such-item/thumb").0, 404);

    let metrics = c.get(s.url("/v1/metrics")).send().unwrap().text().unwrap();
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name} in\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("echovault_thumb_cache_misses_total"), 1.0);
    assert_eq!(value("echovault_thumb_cache_hits_total"), 1.0, "the 304 is answered before the cache is read");
    assert_eq!(value("echovault_thumb_failures_total"), 2.0, "the moved source and the report");
    assert_eq!(value("echovault_thumb_frames_total"), 16.0);
    assert_eq!(value("echovault_thumb_cache_bytes"), jpeg.len() as f64);
    assert!(value("echovault_thumb_seconds_total") > 0.0);
    drop(s);

    // With --thumb-cache-mb 0 nothing is kept; off loopback the pages need no token but the API does.
    std::fs::remove_dir_all(index.join("viewer-cache")).unwrap();
    let s = Server::start(&index, &["--listen", "0.0.0.0:0", "--token", TOKEN, "--thumb-cache-mb", "0", "--show-paths"]);
    assert_eq!(c.get(s.url("/")).send().unwrap().status().as_u16(), 200);
    assert_eq!(c.get(s.url("/assets/app.js")).send().unwrap().status().as_u16(), 200);
    assert_eq!(get(&c, &s, "/v1/viewer").0, 401);
    let (status, viewer) = answer(c.get(s.url("/v1/viewer")).bearer_auth(TOKEN).send().unwrap());
    assert_eq!(
        (status, viewer["show_paths"].as_bool(), viewer["token_needed"].as_bool(), viewer["admin"].as_bool()),
        (200, Some(true), Some(true), Some(true))
    );
    for _ in 0..2 {
        let r = c.get(s.url(&format!("/v1/items/{id}/thumb"))).bearer_auth(TOKEN).send().unwrap();
        assert_eq!(h(&r, "x-echovault-cache"), "miss");
    }
    assert!(!index.join("viewer-cache/thumbs").exists());
}

/// The id of the video of `study` (the sample clips: one video per study), by `GET /v1/studies`.
fn video_of(c: &Client, s: &Server, study: &str) -> String {
    let (status, v) = get(c, s, &format!("/v1/studies/{study}"));
    assert_eq!(status, 200, "{v}");
    v["items"].as_array().unwrap().iter().find(|i| i["kind"] == "video").unwrap()["id"].as_str().unwrap().to_owned()
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `patients` phantom patients' studies as AVI files (64 px, 16 frames) with their report
/// manifest, under `dir`.
fn phantom_set(dir: &Path, patients: usize) -> PathBuf {
    let out = dir.join("phantom");
    let o = echovault(
        &dir.join("unused-index"),
        &[
            "phantom",
            "--out",
            out.to_str().unwrap(),
            "--patients",
            &patients.to_string(),
            "--size",
            "64",
            "--frames",
            "16",
            "--formats",
            "avi",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// What `info --json` counts after an uninterrupted CLI ingest of the phantom set.
fn reference_counts(dir: &Path, set: &Path) -> (Value, Value) {
    let index = dir.join("reference");
    let reports = set.join("reports.jsonl");
    let o = echovault(&index, &["ingest", set.to_str().unwrap(), "--reports", reports.to_str().unwrap(), "--progress", "none", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let info = json(&echovault(&index, &["info", "--json"]));
    assert!(info["counts"]["video"].as_u64().unwrap() > 20, "{info}");
    (info["counts"].clone(), info["vectors"].clone())
}

fn submit_job(c: &Client, s: &Server, set: &Path) -> u64 {
    let body = json!({"paths": [set], "reports": set.join("reports.jsonl")});
    let r = c.post(s.url("/v1/ingest")).bearer_auth(TOKEN).json(&body).send().unwrap();
    let location = r.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
    let (status, job) = answer(r);
    assert_eq!(status, 202, "{job}");
    assert_eq!(location, Some(format!("/v1/ingest/{}", job["id"])));
    job["id"].as_u64().unwrap()
}

fn job(c: &Client, s: &Server, id: u64) -> Value {
    let (status, job) = answer(c.get(s.url(&format!("/v1/ingest/{id}"))).bearer_auth(TOKEN).send().unwrap());
    assert_eq!(status, 200, "{job}");
    job
}

/// Polls job `id` until `until` holds.
fn wait_job(c: &Client, s: &Server, id: u64, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let j = job(c, s, id);
        if until(&j) {
            return j;
        }
        assert!(j["state"] != "failed", "job failed: {j}");
        assert!(Instant::now() < deadline, "job {id} did not get there: {j}\n{}", s.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn info_counts(c: &Client, s: &Server) -> (Value, Value) {
    let (status, info) = get(c, s, "/v1/info");
    assert_eq!(status, 200, "{info}");
    (info["counts"].clone(), info["vectors"].clone())
}

#[test]
fn searches_run_while_an_ingest_job_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let set = phantom_set(tmp.path(), 30);
    let reference = reference_counts(tmp.path(), &set);
    let index = tmp.path().join("served");
    let s = Server::start(&index, &["--listen", "127.0.0.1:0", "--token", TOKEN]);
    let c = client();
    let id = submit_job(&c, &s, &set);
    // Beside the server, the CLI reads (a reader opens beside the writer) and may not write.
    let o = echovault(&index, &["search", "--text", "pacemaker lead", "-k", "1000", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let o = echovault(&index, &["ingest", set.to_str().unwrap(), "--progress", "none"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("being written") && err.contains("echovault serve"), "{err}");
    // Eight clients search until the job ends: every answer is 200, and what each one sees
    // only grows (every batch committed before a search began is in its answer).
    let seen: Vec<Vec<(usize, u64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (c, s) = (client(), &s);
                scope.spawn(move || {
                    let mut seen = Vec::new();
                    loop {
                        let done = job(&c, s, id)["state"] == "done";
                        let q = if t % 2 == 0 {
                            json!({"text": "pacemaker lead", "k": 1000})
                        } else {
                            json!({"text": "mitral", "kind": "report", "k": 1000})
                        };
                        let (status, r) = post(&c, s, "/v1/search", &q.to_string());
                        assert_eq!(status, 200, "{r}");
                        let (status, info) = get(&c, s, "/v1/info");
                        assert_eq!(status, 200, "{info}");
                        let hits = r["hits"].as_array().unwrap().len();
                        seen.push((hits, info["counts"]["video"].as_u64().unwrap_or(0)));
                        if done {
                            return seen;
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let finished = job(&c, &s, id);
    assert_eq!(finished["state"], "done", "{finished}");
    let videos = reference.0["video"].as_u64().unwrap();
    assert_eq!(finished["summary"]["ingested"], videos, "{finished}");
    assert_eq!(finished["summary"]["failed"], json!([]));
    for (t, s) in seen.iter().enumerate() {
        assert!(s.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1), "client {t} saw counts shrink: {s:?}");
    }
    let during = seen.iter().flatten().filter(|(_, v)| *v > 0 && *v < videos).count();
    assert!(during > 0, "no search ran while the job was writing: {seen:?}");
    assert_eq!(info_counts(&c, &s), reference, "the job left the index as the CLI's ingest does");
    let metrics = c.get(s.url("/v1/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.lines().any(|l| l == format!("echovault_ingest_videos_total {videos}")), "{metrics}");
    assert!(metrics.lines().any(|l| l == "echovault_ingest_jobs_total{outcome=\"done\"} 1"), "{metrics}");
    // Studies and patients through the index's secondary keys, as the phantom manifest has them.
    let manifest: Vec<Value> =
        std::fs::read_to_string(set.join("manifest.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut raw_patients: Vec<&str> = manifest.iter().map(|m| m["patient"].as_str().unwrap()).collect();
    raw_patients.sort();
    raw_patients.dedup();
    let (status, patients) = get(&c, &s, "/v1/patients");
    assert_eq!(status, 200, "{patients}");
    let keys: Vec<&str> = patients["patients"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(keys.len(), raw_patients.len(), "{patients}");
    assert!(keys.iter().all(|k| !k.contains("PHANTOM")), "patient keys are pseudonymous: {keys:?}");
    let first = &manifest[0];
    let study_url = s.url(&format!("/v1/studies/{}", first["study"].as_str().unwrap()));
    // Source paths only for the admin token (the server runs without --show-paths).
    let (status, open) = answer(c.get(&study_url).send().unwrap());
    assert_eq!(status, 200, "{open}");
    assert!(open["items"].as_array().unwrap().iter().all(|i| i.get("source").is_none()), "no paths without the token: {open}");
    let (status, study) = answer(c.get(&study_url).bearer_auth(TOKEN).send().unwrap());
    assert_eq!(status, 200, "{study}");
    let items = study["items"].as_array().unwrap();
    let mut kinds: Vec<&str> = items.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(kinds, ["report", "study", "video"], "{study}");
    assert!(items.iter().all(|i| i["date"] == first["date"] && i["study"] == first["study"]), "{study}");
    assert!(items.iter().all(|i| i["patient"] == items[0]["patient"] && keys.contains(&i["patient"].as_str().unwrap())), "{study}");
    let video = items.iter().find(|i| i["kind"] == "video").unwrap();
    assert!(video["source"].as_str().unwrap().ends_with(first["file"].as_str().unwrap()), "{video}");
    assert_eq!(get(&c, &s, "/v1/studies/no-such-study").0, 404);
    // Resubmitting the same inputs finds everything done.
    let again = submit_job(&c, &s, &set);
    let j = wait_job(&c, &s, again, |j| j["state"] == "done");
    assert_eq!((j["summary"]["ingested"].as_u64(), j["summary"]["skipped"].as_u64()), (Some(0), Some(videos)), "{j}");
}

/// The job list the index keeps, read with the server stopped.
fn persisted_jobs(index: &Path) -> Value {
    let idx = echovault::index::Index::open(index, echovault::index::IndexOptions { passive_open: true, ..Default::default() }).unwrap();
    serde_json::from_slice(&idx.get_log(echovault::serve::jobs::JOBS_KEY).unwrap().unwrap()).unwrap()
}

#[test]
fn a_job_resumes_after_kill_9_and_after_sigterm_with_nothing_lost_or_doubled() {
    let tmp = tempfile::tempdir().unwrap();
    let set = phantom_set(tmp.path(), 50);
    let reference = reference_counts(tmp.path(), &set);
    let videos = reference.0["video"].as_u64().unwrap();
    let c = client();
    let args = ["--listen", "127.0.0.1:0", "--token", TOKEN];

    // kill -9 mid-job; the restarted server runs the job again and it completes.
    let index = tmp.path().join("killed");
    let s = Server::start(&index, &args);
    let id = submit_job(&c, &s, &set);
    let before = wait_job(&c, &s, id, |j| j["progress"]["ingested"].as_u64() >= Some(5));
    assert_eq!(s.signal("-KILL"), None);
    assert!(before["progress"]["ingested"].as_u64().unwrap() < videos, "killed too late to test anything: {before}");
    let s = Server::start(&index, &args);
    let after = wait_job(&c, &s, id, |j| j["state"] == "done");
    assert_eq!(after["runs"], 2, "{after}");
    assert_eq!(after["summary"]["failed"], json!([]));
    let resumed = after["summary"]["ingested"].as_u64().unwrap();
    assert!(resumed < videos && resumed + after["summary"]["skipped"].as_u64().unwrap() == videos, "{after}");
    assert_eq!(info_counts(&c, &s), reference, "counts after kill -9 and resume equal an uninterrupted run");
    drop(s);

    // SIGTERM mid-job: the running batch is committed, the server exits 0, the job is left
    // interrupted and resumes at the next start.
    let index = tmp.path().join("terminated");
    let s = Server::start(&index, &args);
    let id = submit_job(&c, &s, &set);
    wait_job(&c, &s, id, |j| j["progress"]["ingested"].as_u64() >= Some(5));
    let asked = Instant::now();
    assert_eq!(s.signal("-TERM"), Some(0));
    assert!(asked.elapsed() < Duration::from_secs(60), "SIGTERM took {:?}", asked.elapsed());
    let jobs = persisted_jobs(&index);
    let j = &jobs.as_array().unwrap()[0];
    assert_eq!(j["state"], "interrupted", "{jobs}");
    let written = j["progress"]["ingested"].as_u64().unwrap();
    assert!(written >= 5 && written < videos, "{j}");
    let counts = json(&echovault(&index, &["info", "--json"]))["counts"].clone();
    assert_eq!(counts["video"], written, "every video the job reported is committed, and no other");
    let s = Server::start(&index, &args);
    let after = wait_job(&c, &s, id, |j| j["state"] == "done");
    assert_eq!((after["runs"].as_u64(), after["summary"]["ingested"].as_u64()), (Some(2), Some(videos - written)), "{after}");
    assert_eq!(info_counts(&c, &s), reference, "counts after SIGTERM and resume equal an uninterrupted run");
}

#[test]
fn the_tasks_answer_what_their_commands_print() {
    let tmp = tempfile::tempdir().unwrap();
    let set = phantom_set(tmp.path(), 10);
    let index = tmp.path().join("idx");
    let reports = set.join("reports.jsonl");
    let o = echovault(&index, &["ingest", set.to_str().unwrap(), "--reports", reports.to_str().unwrap(), "--progress", "none"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest: Vec<Value> =
        std::fs::read_to_string(set.join("manifest.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let file = set.join(manifest[0]["file"].as_str().unwrap());
    let video_id = json(&echovault(&index, &["search", "--video", file.to_str().unwrap(), "-k", "1", "--json"]))["hits"][0].clone();
    let (video_id, patient) = (video_id["id"].as_str().unwrap().to_owned(), video_id["patient"].as_str().unwrap().to_owned());
    let study = manifest[0]["study"].as_str().unwrap();
    // A label manifest whose rows name absolute paths, as an uploaded manifest's must.
    let absolute = tmp.path().join("absolute.jsonl");
    let rows: Vec<String> = manifest
        .iter()
        .map(|m| {
            let mut m = m.clone();
            m["file"] = json!(set.join(m["file"].as_str().unwrap()));
            m.to_string()
        })
        .collect();
    std::fs::write(&absolute, rows.join("\n")).unwrap();
    let (m, events, f, abs) =
        (set.join("manifest.jsonl"), set.join("events.jsonl"), file.to_str().unwrap().to_owned(), absolute.to_str().unwrap().to_owned());
    let (m, events) = (m.to_str().unwrap(), events.to_str().unwrap());

    // (CLI arguments, endpoint, JSON body); the CLI runs first, on the same index.
    let questions: Vec<(Vec<&str>, &str, Value)> = vec![
        (
            vec!["zero-shot", "--id", &video_id, "--task", "ejection_fraction,pacemaker"],
            "/v1/zero-shot",
            json!({"ids": [video_id], "task": ["ejection_fraction", "pacemaker"]}),
        ),
        (vec!["zero-shot", &f], "/v1/zero-shot", json!({"videos": [f]})),
        (vec!["reid", "--video-id", &video_id, "-k", "3"], "/v1/reid", json!({"video_id": video_id, "k": 3})),
        (vec!["reid", "--study-id", study], "/v1/reid", json!({"study_id": study})),
        (vec!["timeline", "--patient", &patient], "/v1/timeline", json!({"patient": patient})),
        (vec!["timeline", "--patient-id", "PHANTOM-00001"], "/v1/timeline", json!({"patient_id": "PHANTOM-00001"})),
        (
            vec!["eval", "zero-shot", "--manifest", m, "--resamples", "50"],
            "/v1/eval",
            json!({"eval": "zero-shot", "manifest": m, "resamples": 50}),
        ),
        (vec!["eval", "reid", "--manifest", m, "--resamples", "50"], "/v1/eval", json!({"eval": "reid", "manifest": m, "resamples": 50})),
        (
            vec!["eval", "transitions", "--manifest", events, "--window", "1500", "--resamples", "50"],
            "/v1/eval",
            json!({"eval": "transitions", "manifest": events, "window": 1500, "resamples": 50}),
        ),
        (vec!["eval", "retrieval", "--resamples", "50"], "/v1/eval", json!({"eval": "retrieval", "resamples": 50})),
    ];
    let run = |args: &[&str]| {
        let o = echovault(&index, &[&["--json"][..], args].concat());
        assert!(o.status.code() == Some(0) || o.status.code() == Some(3), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        json(&o)
    };
    let cli: Vec<Value> = questions.iter().map(|(args, _, _)| run(args)).collect();
    // An upload is a file the index does not hold at that path (an indexed video is known by its
    // content and its path): the CLI's equal question is a copy elsewhere.
    let copy = tmp.path().join("copy.avi");
    std::fs::copy(&file, &copy).unwrap();
    let copy = copy.to_str().unwrap();
    let cli_upload_reid = run(&["reid", copy]);
    let cli_upload_zs = run(&["zero-shot", copy, "--task", "pacemaker"]);
    let cli_upload_eval = run(&["eval", "zero-shot", "--manifest", &abs, "--resamples", "50"]);
    let cli_timeline_event = run(&["timeline", "--patient", &patient, "--event", "2019-01-01", "--window", "400"]);

    let s = Server::start(&index, &["--listen", "127.0.0.1:0", "--token", TOKEN]);
    let c = client();
    // Questions naming server paths need the admin token: send it with every one.
    let post_admin = |path: &str, body: &str| {
        answer(c.post(s.url(path)).bearer_auth(TOKEN).header("content-type", "application/json").body(body.to_owned()).send().unwrap())
    };
    for ((args, path, body), expected) in questions.iter().zip(&cli) {
        let (status, got) = post_admin(path, &body.to_string());
        assert_eq!(status, 200, "{args:?}: {got}");
        assert_eq!(&got, expected, "server and CLI differ for {args:?}");
    }
    assert!(cli[2]["candidates"].as_array().is_some_and(|c| c.len() == 3), "{}", cli[2]);
    assert!(cli[6]["rows"].as_array().is_some_and(|r| !r.is_empty()), "{}", cli[6]);
    // Uploads, named as the CLI names its paths.
    let upload = |field: &str, p: &str| {
        multipart::Part::file(p)
            .unwrap()
            .file_name(p.to_owned())
            .mime_str("application/octet-stream")
            .map(|part| (field.to_owned(), part))
            .unwrap()
    };
    let form = |parts: Vec<(String, multipart::Part)>, texts: &[(&str, &str)]| {
        let mut f = multipart::Form::new();
        for (n, p) in parts {
            f = f.part(n, p);
        }
        for (n, v) in texts {
            f = f.text(n.to_string(), v.to_string());
        }
        f
    };
    let send = |path: &str, f: multipart::Form| answer(c.post(s.url(path)).multipart(f).send().unwrap());
    let send_admin = |path: &str, f: multipart::Form| answer(c.post(s.url(path)).bearer_auth(TOKEN).multipart(f).send().unwrap());
    let (status, got) = send("/v1/reid", form(vec![upload("video", copy)], &[]));
    assert_eq!((status, &got), (200, &cli_upload_reid));
    let (status, got) = send("/v1/zero-shot", form(vec![upload("video", copy)], &[("task", r#"["pacemaker"]"#)]));
    assert_eq!((status, &got), (200, &cli_upload_zs));
    // An uploaded manifest whose rows name server files reads them: admin only.
    let (status, got) = send("/v1/eval", form(vec![upload("manifest", &abs)], &[("eval", "zero-shot"), ("resamples", "50")]));
    assert_eq!(status, 401, "{got}");
    let (status, got) = send_admin("/v1/eval", form(vec![upload("manifest", &abs)], &[("eval", "zero-shot"), ("resamples", "50")]));
    assert_eq!((status, &got), (200, &cli_upload_eval));
    assert!(!got.to_string().contains("echovault-upload-"), "the answer names the upload, not its temporary file: {got}");
    // A patient's timeline by URL, with the event as a query parameter.
    let (status, got) = get(&c, &s, &format!("/v1/patients/{patient}?event=2019-01-01&window=400"));
    assert_eq!((status, &got), (200, &cli_timeline_event));

    // Refusals name the field; unknown ids are 404.
    let refused = |(status, body): (u16, Value), want: u16, field: &str| {
        assert_eq!((status, body["field"].as_str()), (want, Some(field)), "{body}");
    };
    refused(post(&c, &s, "/v1/reid", r#"{"video_id": "no-such-video"}"#), 404, "video_id");
    refused(post(&c, &s, "/v1/reid", r#"{"study_id": "no-such-study"}"#), 404, "study_id");
    refused(post(&c, &s, "/v1/reid", &json!({"video_id": video_id, "k": 0}).to_string()), 400, "k");
    refused(get(&c, &s, "/v1/patients/no-such-patient"), 404, "patient");
    refused(get(&c, &s, &format!("/v1/patients/{patient}?event=2019-02-30")), 400, "event");
    refused(get(&c, &s, &format!("/v1/patients/{patient}?colour=red")), 400, "colour");
    let (status, both) = post(&c, &s, "/v1/timeline", r#"{"patient": "a", "patient_id": "b"}"#);
    assert_eq!(status, 400, "{both}");
    assert!(both["error"].as_str().unwrap().contains("one of them"), "{both}");
    refused(post(&c, &s, "/v1/eval", r#"{"manifest": "m.jsonl"}"#), 400, "eval");
    refused(post(&c, &s, "/v1/eval", r#"{"eval": "accuracy"}"#), 400, "eval");
    refused(post(&c, &s, "/v1/eval", r#"{"eval": "reid"}"#), 400, "manifest");
    refused(post(&c, &s, "/v1/eval", r#"{"eval": "retrieval", "max_pairs": 3}"#), 400, "max_pairs");
    refused(post(&c, &s, "/v1/zero-shot", r#"{"ids": [], "frames": "every"}"#), 400, "frames");
    // An id the index lacks is one failed input of the readings, as in the CLI (exit 3 there).
    let (status, zs) = post(&c, &s, "/v1/zero-shot", r#"{"ids": ["no-such-video"]}"#);
    assert_eq!((status, zs["failed"][0]["input"].as_str()), (200, Some("no-such-video")), "{zs}");
    // Server paths in task requests are admin-only (JSON and form alike); nothing is read.
    for (path, body) in [
        ("/v1/reid", json!({"video": "/dev/zero"})),
        ("/v1/zero-shot", json!({"videos": ["/dev/zero"]})),
        ("/v1/zero-shot", json!({"ids": [video_id], "prompts": "/dev/zero"})),
        ("/v1/eval", json!({"eval": "reid", "manifest": "/dev/zero"})),
        ("/v1/eval", json!({"eval": "transitions", "manifest": events, "studies": "/dev/zero"})),
    ] {
        let (status, got) = post(&c, &s, path, &body.to_string());
        assert_eq!(status, 401, "{path} {body}: {got}");
    }
    assert_eq!(send("/v1/zero-shot", form(vec![], &[("videos", r#"["/dev/zero"]"#)])).0, 401);
    assert_ne!(send("/v1/reid", form(vec![], &[("video", "/dev/zero")])).0, 200);
    // Even with the token, what is not a regular file is refused, not read.
    let (status, got) = post_admin("/v1/reid", r#"{"video": "/dev/zero"}"#);
    assert!(status == 400 && got["error"].as_str().unwrap().contains("not a regular file"), "{got}");
    let (status, got) = post_admin("/v1/eval", r#"{"eval": "reid", "manifest": "/dev/zero"}"#);
    assert!(status == 400 && got["error"].as_str().unwrap().contains("not a regular file"), "{got}");
    // Request sizes are bounded.
    refused(post(&c, &s, "/v1/reid", &json!({"video_id": video_id, "k": 1_000_000_000_000u64}).to_string()), 400, "k");
    refused(post(&c, &s, "/v1/search", r#"{"text": "mitral", "k": 1000000000000}"#), 400, "k");
    refused(post(&c, &s, "/v1/search", r#"{"text": "mitral", "k": 9000, "group_by": "study"}"#), 400, "group_size");
    refused(post(&c, &s, "/v1/search", &json!({"text": "a".repeat(10_001)}).to_string()), 400, "text");
    refused(post(&c, &s, "/v1/eval", r#"{"eval": "retrieval", "resamples": 1000000000000}"#), 400, "resamples");
    refused(post(&c, &s, "/v1/timeline", &json!({"patient": patient, "window": -1}).to_string()), 400, "window");
    // Keeping readings in the index writes: only with the token.
    let store = json!({"ids": [video_id], "task": ["pacemaker"], "store": true}).to_string();
    assert_eq!(post(&c, &s, "/v1/zero-shot", &store).0, 401);
    let (status, stored) = answer(c.post(s.url("/v1/zero-shot")).bearer_auth(TOKEN).body(store).send().unwrap());
    assert_eq!((status, stored["stored"].as_u64()), (200, Some(1)), "{stored}");
    let (_, item) = get(&c, &s, &format!("/v1/items/{video_id}"));
    assert!(item["extra"]["zero_shot.pacemaker"].is_string(), "{item}");
}

#[test]
fn an_uploaded_dicom_cine_is_searched_as_the_cli_searches_it() {
    let tmp = tempfile::tempdir().unwrap();
    let index = sample_index(tmp.path());
    let out = tmp.path().join("ph");
    let o = echovault(
        &tmp.path().join("unused-index"),
        &[
            "phantom",
            "--out",
            out.to_str().unwrap(),
            "--patients",
            "1",
            "--studies",
            "1:1",
            "--size",
            "64",
            "--frames",
            "6",
            "--formats",
            "dicom-jpeg",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let dcm = walk(&out.join("dicom")).pop().unwrap();
    let cli = echovault(&index, &["search", "--video", dcm.to_str().unwrap(), "-k", "3", "--json", "--with-paths"]);
    assert_eq!(cli.status.code(), Some(0), "{}", String::from_utf8_lossy(&cli.stderr));
    // --show-paths: the hits' source paths, as the CLI prints them.
    let s = Server::start(&index, &["--listen", "127.0.0.1:0", "--show-paths"]);
    // Named as the CLI names its path; the server saves it under a name of its own, and DICOM is
    // recognised by content.
    let form = multipart::Form::new()
        .part("video", multipart::Part::file(&dcm).unwrap().file_name(dcm.to_str().unwrap().to_owned()))
        .text("k", "3");
    let (status, got) = answer(client().post(s.url("/v1/search")).multipart(form).send().unwrap());
    assert_eq!(status, 200, "{got}");
    assert_eq!(got, json(&cli));
    assert_eq!(got["hits"].as_array().unwrap().len(), 3, "{got}");
}
