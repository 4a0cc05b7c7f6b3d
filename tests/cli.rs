//! End-to-end: the built `echovault` binary over the committed samples, through FFmpeg,
//! LibTorch, the tokenizer, RocksDB and the HNSW graph. Each step asserts what a broken link would change.

#![allow(clippy::unwrap_used)]

mod common;

use common::{echovault, json, root};

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

fn clips() -> PathBuf {
    root().join("data-samples/clips")
}

fn content_id(p: &Path) -> String {
    hex::encode(&Sha256::digest(std::fs::read(p).unwrap())[..16])
}

fn sample_videos() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(clips()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e != "txt")).collect();
    v.sort();
    v
}

/// `ingest --vector-type float16`: the space's vectors are stored (and its graphs held) as
/// halves; a later ingest that does not say keeps them so; asking for float32 then is refused.
#[test]
fn a_space_ingested_as_float16_stays_float16() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("idx");
    let one = tmp.path().join("one");
    std::fs::create_dir(&one).unwrap();
    for name in ["a4c_normal_01.avi", "a4c_normal_01.txt"] {
        std::fs::copy(clips().join(name), one.join(name)).unwrap();
    }
    let out = echovault(&index, &["ingest", one.to_str().unwrap(), "--vector-type", "float16", "--json"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["ingested"], 1);
    // The rest of the samples, the vector type left at auto.
    let out = echovault(&index, &["ingest", clips().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["ingested"], 5);
    let precisions = || -> Vec<(String, String)> {
        let info = json(&echovault(&index, &["info", "--json"]));
        info["graphs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| (g["collection"].as_str().unwrap().to_owned(), g["precision"].as_str().unwrap().to_owned()))
            .collect()
    };
    let held = precisions();
    // f16 only when every stored vector of the collection is f16.
    assert!(held.len() == 3 && held.iter().all(|(_, p)| p == "f16"), "{held:?}");
    // Searches still find each video first, at a cosine within the halves' rounding of 1.
    for v in sample_videos() {
        let r = json(&echovault(&index, &["search", "--video", v.to_str().unwrap(), "-k", "3", "--json"]));
        let hits = r["hits"].as_array().unwrap();
        assert_eq!(hits[0]["id"], content_id(&v), "{r}");
        assert!((hits[0]["score"].as_f64().unwrap() - 1.0).abs() < 2e-3, "{r}");
    }
    // float32 into a float16 space: refused, nothing written.
    let out = echovault(&index, &["ingest", clips().to_str().unwrap(), "--vector-type", "float32"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--vector-type float32") && err.contains("holds float16 vectors"), "{err}");
    assert_eq!(precisions(), held);
    // A new index, the type not given: float32.
    let other = tmp.path().join("idx32");
    assert_eq!(echovault(&other, &["ingest", one.to_str().unwrap()]).status.code(), Some(0));
    let info = json(&echovault(&other, &["info", "--json"]));
    assert!(info["graphs"].as_array().unwrap().iter().all(|g| g["precision"] == "f32"), "{info}");
}

#[test]
fn ingest_reopen_and_search_the_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("idx");
    let videos = sample_videos();
    assert_eq!(videos.len(), 6, "3 AVI + 3 MP4 samples");

    let out = echovault(&index, &["ingest", clips().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let s = json(&out);
    assert_eq!(s["ingested"], 6);
    assert_eq!(s["reports"], 6);
    assert_eq!(s["failed"].as_array().unwrap().len(), 0);
    let mut ids: Vec<String> = s["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    let mut expected: Vec<String> = videos.iter().map(|p| content_id(p)).collect();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected, "video ids are content hashes");

    // A second process reopens the index from disk.
    let info = json(&echovault(&index, &["info", "--json"]));
    assert_eq!(info["counts"]["video"], 6);
    assert_eq!(info["counts"]["report"], 6);
    assert_eq!(info["counts"]["study"], 6);
    assert_eq!(info["spaces"][0]["name"], "echovault-tiny");
    assert_eq!(info["spaces"][0]["dim"], 64);
    assert_eq!(info["format_version"], echovault::index::FORMAT_VERSION, "the format the index is in");

    // Re-running is idempotent: everything is skipped, nothing duplicated.
    let again = json(&echovault(&index, &["ingest", clips().to_str().unwrap(), "--json"]));
    assert_eq!(again["ingested"], 0);
    assert_eq!(again["skipped"], 6);
    assert_eq!(json(&echovault(&index, &["info", "--json"]))["counts"]["video"], 6);

    // Ingest ended with a checkpoint: the next open loads every graph from its snapshot.
    let info = json(&echovault(&index, &["info", "--json"]));
    let graphs = info["graphs"].as_array().unwrap();
    assert_eq!(graphs.len(), 3, "video, report and study graphs: {graphs:?}");
    assert!(graphs.iter().all(|g| g["how"] == "snapshot" && g["replayed"] == 0), "{graphs:?}");
    // ... laid out from its links, the vectors read straight into the nodes (the direct load).
    let phases = |g: &serde_json::Value| -> Vec<String> {
        g["phases_ms"].as_array().unwrap().iter().map(|p| p[0].as_str().unwrap().to_owned()).collect()
    };
    assert!(graphs.iter().all(|g| phases(g).contains(&"links".to_owned())), "{graphs:?}");
    // `repair --check` verifies and changes nothing; `repair` rebuilds and still verifies.
    let check = echovault(&index, &["repair", "--check", "--json"]);
    assert_eq!(check.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&check.stderr));
    let check = json(&check);
    assert_eq!((check["ok"].as_bool(), check["checked_only"].as_bool()), (Some(true), Some(true)));
    assert_eq!(check["live"]["echovault-tiny/video"], 6);
    let repaired = json(&echovault(&index, &["repair", "--json"]));
    assert_eq!(repaired["ok"], true);
    assert_eq!(repaired["stored"]["echovault-tiny/report"], 6);

    // Every video finds itself first, with cosine 1.
    for v in &videos {
        let out = echovault(&index, &["search", "--video", v.to_str().unwrap(), "-k", "3", "--json", "--with-paths"]);
        assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
        let r = json(&out);
        let hits = r["hits"].as_array().unwrap();
        assert_eq!(hits.len(), 3);
        assert_eq!(hits[0]["id"], content_id(v), "{} should find itself", v.display());
        assert_eq!(hits[0]["kind"], "video");
        assert_eq!(hits[0]["source"], v.display().to_string());
        assert!((hits[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);
        assert!(hits[1]["score"].as_f64().unwrap() < hits[0]["score"].as_f64().unwrap());
    }
    // Without --with-paths, --json carries no source path (PACS paths carry names and MRNs).
    let r = json(&echovault(&index, &["search", "--text", "pacemaker", "-k", "3", "--json"]));
    assert!(!r.to_string().contains("data-samples/clips"), "{r}");
    assert_eq!(r["hits"].as_array().unwrap().len(), 3);

    // Text → report: a report's own text finds that report first; text → video returns videos.
    let report = std::fs::read_to_string(clips().join("a4c_pacer_03.txt")).unwrap();
    let r = json(&echovault(&index, &["search", "--text", report.trim(), "--kind", "report", "-k", "6", "--json"]));
    let hits = r["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 6);
    assert_eq!(hits[0]["id"], "report:a4c_pacer_03");
    assert!((hits[0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-4);
    let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "sorted by score: {scores:?}");
    let r = json(&echovault(&index, &["search", "--text", "pacemaker lead", "-k", "10", "--json"]));
    let hits = r["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 6);
    assert!(hits.iter().all(|h| h["kind"] == "video"));

    // --like an indexed video excludes the video itself.
    let first = content_id(&videos[0]);
    let r = json(&echovault(&index, &["search", "--like", &first, "-k", "10", "--json"]));
    let hits = r["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 5);
    assert!(hits.iter().all(|h| h["id"] != first.as_str()));
}

#[test]
fn bad_files_are_reported_and_do_not_stop_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::copy(clips().join("a4c_normal_04.mp4"), input.join("good.mp4")).unwrap();
    std::fs::write(input.join("empty.avi"), b"").unwrap();
    std::fs::write(input.join("text.mp4"), b"this is not a video at all").unwrap();
    let index = tmp.path().join("idx");
    let out = echovault(&index, &["ingest", input.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(3), "partial success exit code");
    let s = json(&out);
    assert_eq!(s["ingested"], 1);
    let failed = s["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().any(|f| f["path"].as_str().unwrap().ends_with("empty.avi") && f["reason"].as_str().unwrap().contains("empty")));
    assert!(failed.iter().any(|f| f["path"].as_str().unwrap().ends_with("text.mp4")));
    let info = json(&echovault(&index, &["info", "--json"]));
    assert_eq!(info["counts"]["video"], 1);
    assert_eq!(info["errors"], 2);
}

#[test]
fn errors_and_usage_have_their_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("none");
    let out = echovault(&index, &["search", "--text", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no index at"));
    let out = echovault(&index, &["search"]);
    assert_eq!(out.status.code(), Some(2), "missing query is a usage error");
    let out = echovault(&index, &["ingest", "/nonexistent/export"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/export"));
}

/// `echovault SUB... --help` as text (no index or model given).
fn help(sub: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_echovault")).args(sub).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{sub:?} --help");
    String::from_utf8(out.stdout).unwrap()
}

/// Whether a help text offers `--flag` (as an option, not in prose).
fn offers(text: &str, flag: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start();
        // `  -v, --verbose...`: the long flag after a short one.
        let l = if l.len() > 4 && l.starts_with('-') && &l[2..4] == ", " { &l[4..] } else { l };
        l.split([' ', '.', '=']).next() == Some(flag)
    })
}

#[test]
fn a_subcommand_help_lists_only_the_flags_it_uses() {
    let model_flags = ["--model", "--device", "--template-vocab", "--space"];
    for sub in [&["info"][..], &["errors"], &["repair"], &["inspect"], &["phantom"]] {
        let h = help(sub);
        for f in model_flags.iter().chain(&["--batch", "--channel-order", "--sampling"]) {
            assert!(!offers(&h, f), "{sub:?} --help offers {f}, which it does not use:\n{h}");
        }
    }
    assert!(offers(&help(&["info"]), "--index"));
    assert!(!offers(&help(&["phantom"]), "--index"), "phantom writes files, no index");
    for sub in [&["ingest"][..], &["search"], &["zero-shot"], &["reid"], &["timeline"], &["eval", "reid"], &["serve"]] {
        let h = help(sub);
        for f in model_flags.iter().chain(&["--index"]) {
            assert!(offers(&h, f), "{sub:?} --help lacks {f}:\n{h}");
        }
    }
    let t = help(&["timeline"]);
    assert!(!offers(&t, "--batch") && !offers(&t, "--frames"), "timeline embeds no video:\n{t}");
    let e = help(&["embed"]);
    assert!(offers(&e, "--model") && offers(&e, "--frames") && !offers(&e, "--index") && !offers(&e, "--space"), "{e}");
    let k = help(&["tokenize"]);
    assert!(offers(&k, "--model") && !offers(&k, "--device"), "{k}");
    // One name per idea: --id for an indexed item, -k without --k, --frames / --num-frames.
    let s = help(&["search"]);
    assert!(offers(&s, "--id") && !offers(&s, "--like") && !s.contains("--k "), "{s}");
    let r = help(&["reid"]);
    assert!(offers(&r, "--id") && !offers(&r, "--video-id") && !offers(&r, "--study-id"), "{r}");
    let p = help(&["phantom"]);
    assert!(offers(&p, "--num-frames") && !offers(&p, "--frames"), "{p}");
}

/// The subcommands `echovault --help` lists (eval's own subcommands expanded).
fn subcommands() -> Vec<Vec<String>> {
    let listed = |h: &str| -> Vec<String> {
        let body = h.split("Commands:").nth(1).unwrap().split("\n\n").next().unwrap();
        body.lines().filter_map(|l| l.split_whitespace().next()).filter(|c| *c != "help").map(str::to_owned).collect()
    };
    let mut out = Vec::new();
    for c in listed(&help(&[])) {
        if c == "eval" {
            out.extend(listed(&help(&["eval"])).into_iter().map(|e| vec!["eval".to_owned(), e]));
        }
        out.push(vec![c]);
    }
    out
}

#[test]
fn every_subcommand_help_ends_with_examples_it_accepts() {
    let subs = subcommands();
    assert!(subs.len() >= 20, "{subs:?}");
    for sub in &subs {
        let sub: Vec<&str> = sub.iter().map(String::as_str).collect();
        let h = help(&sub);
        let examples =
            h.trim_end().rsplit_once("Examples:\n").map(|(_, e)| e).unwrap_or_else(|| panic!("{sub:?} --help has no examples:\n{h}"));
        let lines: Vec<&str> = examples.lines().collect();
        assert!((2..=3).contains(&lines.len()), "{sub:?}: {lines:?}");
        for l in lines {
            let words: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(&words[..1 + sub.len()], &[&["echovault"][..], &sub].concat()[..], "{sub:?}: {l}");
            // Every flag an example uses is one the command it runs offers (`eval`'s examples
            // run its subcommands).
            let path: Vec<&str> =
                words[1..].iter().take(2).copied().take_while(|w| subs.iter().any(|s| s.last().is_some_and(|l| l == w))).collect();
            let own = if path == sub { h.clone() } else { help(&path) };
            for w in words.iter().filter(|w| w.starts_with("--")) {
                assert!(offers(&own, w), "{sub:?} example uses {w}, which its --help does not offer: {l}");
            }
        }
    }
}

#[test]
fn old_flag_spellings_still_parse_and_bad_values_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("none");
    // Accepted by the parser (then refused for the missing index: exit 1, not the usage 2).
    for args in [
        &["search", "--like", "abc", "--k", "3"][..],
        &["--sampling", "zero-shot", "search", "--text", "x"],
        &["search", "--text", "x", "--sampling", "0:10:2", "--batch", "4"],
        &["reid", "--video-id", "abc"],
        &["reid", "--study-id", "abc", "--k", "2"],
        &["reid", "--id", "abc"],
    ] {
        let out = echovault(&index, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no index at"), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Options given after the subcommand win over those before it.
    let other = tmp.path().join("other");
    let out = echovault(&index, &["info", "--index", other.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(other.to_str().unwrap()), "{}", String::from_utf8_lossy(&out.stderr));
    for args in [
        &["search", "--text", "x", "-k", "0"][..],
        &["reid", "--id", "x", "-k", "0"],
        &["search", "--text", "x", "--device", "gpu"],
        &["--device", "gpu", "info"],
        &["search", "--text", "x", "--batch", "0"],
        &["info", "--device", "cpu"],
    ] {
        let out = echovault(&index, args);
        assert_eq!(out.status.code(), Some(2), "{args:?} is a usage error: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn partial_only_when_something_succeeded_and_each_error_said_once() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("idx");
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    // Every input failed: an error (1), not a partial success (3); the summary still prints.
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("empty.avi"), b"").unwrap();
    let out = echovault(&index, &["ingest", bad.to_str().unwrap(), "--json", "--progress", "none"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(json(&out)["failed"].as_array().unwrap().len(), 1);
    let good = clips().join("a4c_normal_04.mp4");
    let out = echovault(&index, &["zero-shot", "/nonexistent/a.avi", "--task", "pacemaker"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = echovault(&index, &["zero-shot", good.to_str().unwrap(), "/nonexistent/a.avi", "--task", "pacemaker", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let failed = &json(&out)["failed"][0];
    assert_eq!(failed["input"], "/nonexistent/a.avi");
    assert_eq!(failed["reason"].as_str().unwrap().matches("No such file").count(), 1, "{failed}");
    assert!(!failed["reason"].as_str().unwrap().contains("/nonexistent/a.avi"), "the input is not repeated: {failed}");

    // A library error quoting an io error says it once.
    let out = echovault(&index, &["ingest", "/nonexistent/export"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).matches("No such file or directory").count(), 1, "{}", stderr(&out));
    // A manifest without a column every row needs: one error naming it, not one per row.
    let m = tmp.path().join("videos.jsonl");
    std::fs::write(&m, "{\"file\": \"a.avi\"}\n{\"file\": \"b.avi\"}\n{\"file\": \"c.avi\"}\n").unwrap();
    let out = echovault(&tmp.path().join("none"), &["eval", "reid", "--manifest", m.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("patient") && err.contains("videos.jsonl") && !err.contains("videos.jsonl:2"), "{err}");
    assert!(out.stdout.is_empty(), "no table of failures: {}", String::from_utf8_lossy(&out.stdout));

    // Usage errors with --json: JSON on stdout, exit 2.
    for args in [
        &["--json", "search", "--text", "x", "-k", "0"][..],
        &["search", "--json", "--text", "x", "--device", "gpu"],
        &["info", "--json", "--bogus"],
    ] {
        let out = echovault(&index, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let v = json(&out);
        assert_eq!(v["usage"], true, "{v}");
        assert!(!v["error"].as_str().unwrap().is_empty(), "{v}");
    }
    // No colour codes in logs or errors written to a pipe or file.
    let out = echovault(&tmp.path().join("none"), &["-vv", "info"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no index at") && !stderr(&out).contains('\x1b'), "{:?}", stderr(&out));
    let out = echovault(&index, &["search", "--bogus"]);
    assert!(!stderr(&out).contains('\x1b'), "{:?}", stderr(&out));
}

#[test]
fn embed_tokenize_and_bench_print_their_json() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("unused");
    let e = json(&echovault(&index, &["embed", "--text", "mild mitral regurgitation", "--json"]));
    assert_eq!(e["dim"], 64);
    let v: Vec<f64> = e["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(v.len(), 64);
    assert!((v.iter().map(|x| x * x).sum::<f64>().sqrt() - 1.0).abs() < 1e-5);
    let clip = clips().join("a4c_normal_04.mp4");
    let e = json(&echovault(&index, &["embed", "--video", clip.to_str().unwrap(), "--per-frame", "--frames", "zero-shot", "--json"]));
    assert_eq!(e["frames"].as_array().unwrap().len(), 12, "frames 0..24 step 2");
    let t = json(&echovault(&index, &["tokenize", "--text", "EF 55 %", "--json"]));
    let ids = t["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[0], 49406);
    let vocab = root().join("data-samples/template-vocab.txt");
    let t = json(&echovault(
        &index,
        &["tokenize", "--template-vocab", vocab.to_str().unwrap(), "--text", "Mild mitral regurgitation. Patient was anxious.", "--json"],
    ));
    let ids: Vec<i64> = t["ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    // 52 phrases: T = 57, start 57 + 132, end 57 + 133; line 16 is id 20; MILD is value 107.
    assert_eq!(&ids[..5], &[189, 20, 57 + 107, 190, 0], "start, the phrase on line 16, its value, end, padding");
    assert_eq!(t["tokenizer"], "template");
    assert_eq!(t["tokens"], serde_json::json!(["[START]", "<#> MITRAL REGURGITATION. ", "<MILD>", "[END]"]));
    assert_eq!(t["unknown"], serde_json::json!(["PATIENT IS ANXIOUS. "]), "the sentence no phrase covers");
    let b = json(&echovault(&index, &["bench-embed", "--batch", "2", "--iters", "3", "--json"]));
    let mut keys: Vec<&str> = b.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["batch", "device", "dim", "frames", "frames_per_s", "iters", "median_s", "model", "precision"], "{b}");
    assert_eq!((b["batch"].as_u64(), b["iters"].as_u64(), b["frames"].as_u64()), (Some(2), Some(3), Some(6)), "{b}");
    assert_eq!((b["device"].as_str(), b["precision"].as_str(), b["dim"].as_u64()), (Some("Cpu"), Some("f32"), Some(64)), "{b}");
    assert_eq!(b["model"], root().join("data-samples/echovault-tiny").display().to_string());
    let median = b["median_s"].as_f64().unwrap();
    assert!(median > 0.0 && median < 60.0, "{b}");
    assert!((b["frames_per_s"].as_f64().unwrap() - 2.0 / median).abs() < 1e-6 * (2.0 / median), "batch / median: {b}");
}

#[test]
fn a_space_refuses_vectors_of_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("idx");
    let run = |model: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_echovault"))
            .args(["--index", idx.to_str().unwrap(), "--device", "cpu", "--model"])
            .arg(root().join(model))
            .args(args)
            .env_remove("ECHOVAULT_INDEX")
            .env_remove("ECHOVAULT_MODEL")
            .output()
            .unwrap()
    };
    let o = run("data-samples/echovault-tiny", &["--space", "echo", "ingest", clips().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The same model again, in a new process (its probe recomputed): accepted.
    let o = run("data-samples/echovault-tiny", &["--space", "echo", "search", "--text", "pacemaker"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let vectors_in = |space: &str| {
        let index =
            echovault::index::Index::open(&idx, echovault::index::IndexOptions { passive_open: true, ..Default::default() }).unwrap();
        let s = index.space(space).unwrap().id;
        let items = index.items(Some(echovault::index::Kind::Video)).unwrap();
        items.iter().filter(|r| index.get_vector(s, r.kind, &r.id).unwrap().is_some()).count()
    };
    let before = vectors_in("echo");
    assert_eq!(before, sample_videos().len());
    // Another model with the same dimension into the same space: refused, nothing written.
    let o = run("data-samples/echovault-phantom", &["--space", "echo", "search", "--text", "pacemaker"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("space 'echo'") && err.contains("another model") && err.contains("echovault-phantom"), "{err}");
    let o = run("data-samples/echovault-phantom", &["--space", "echo", "ingest", clips().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another model"));
    assert_eq!(vectors_in("echo"), before, "the refused model wrote nothing into the space");
    // Its own space in the same index is fine.
    let o = run("data-samples/echovault-phantom", &["ingest", clips().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_model_directory_without_tokenizer_json_uses_the_builtin_clip_bpe() {
    // An open_clip hub repo as downloaded: open_clip_config.json and weights, no tokenizer.json.
    let tmp = tempfile::tempdir().unwrap();
    let bare = tmp.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    for f in std::fs::read_dir(root().join("data-samples/echovault-tiny")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, bare.join(f.file_name().unwrap())).unwrap();
    }
    std::fs::remove_file(bare.join("tokenizer.json")).unwrap();
    let run = |model: &Path, args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_echovault"))
            .args(["--index", tmp.path().join("unused").to_str().unwrap(), "--device", "cpu", "--model"])
            .arg(model)
            .args(args)
            .env_remove("ECHOVAULT_INDEX")
            .env_remove("ECHOVAULT_MODEL")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        json(&o)
    };
    let with = root().join("data-samples/echovault-tiny");
    let texts = [
        "Mild mitral regurgitation.",
        "\u{201c}Severe\u{201d} TR; PASP \u{2248} 45 mmHg \u{2014} \u{fb01}brosis &amp; caf\u{e9}",
        &"LVEF 35 %. ".repeat(30),
    ];
    let mut seen = Vec::new();
    for text in texts {
        let a = run(&with, &["embed", "--text", text, "--json"]);
        let b = run(&bare, &["embed", "--text", text, "--json"]);
        assert_eq!(a["embedding"].as_array().map(Vec::len), Some(64));
        assert_eq!(a["embedding"], b["embedding"], "{text}");
        assert_eq!(run(&with, &["tokenize", "--text", text, "--json"])["ids"], run(&bare, &["tokenize", "--text", text, "--json"])["ids"]);
        seen.push(b["embedding"].clone());
    }
    assert!(seen[0] != seen[1] && seen[1] != seen[2], "different texts embed differently");
}

#[test]
fn zero_shot_reads_a_prompt_file_of_the_reference_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("unused");
    let prompts = root().join("tests/fixtures/prompts_reference_schema.json");
    let clip = clips().join("a4c_pacer_03.avi");
    let out = echovault(&index, &["--json", "zero-shot", clip.to_str().unwrap(), "--prompts", prompts.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let v = json(&out);
    assert_eq!(v["prompts"], prompts.display().to_string());
    let r = &v["results"][0]["readings"];
    assert_eq!(r.as_object().unwrap().len(), 6, "{v}");
    let ef = r["ejection_fraction"]["value"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&ef), "{ef}");
    let pa = r["pulmonary_artery_pressure"]["value"].as_f64().unwrap();
    assert!((10.0..=90.0).contains(&pa), "{pa}");
    assert!(r["pacemaker"]["score"].is_f64() && r["pacemaker"].get("present").is_none(), "no threshold in the file: {r}");
    let classes =
        |task: &str| -> Vec<String> { r[task]["scores"].as_array().unwrap().iter().map(|s| s[0].as_str().unwrap().to_owned()).collect() };
    assert_eq!(classes("pericardial_effusion"), ["none", "small", "moderate", "large"]);
    assert_eq!(classes("left_ventricle_size"), ["normal", "mildly dilated", "3"]);
    assert!(classes("left_ventricle_size").contains(&r["left_ventricle_size"]["class"].as_str().unwrap().to_owned()));
    // The built-in pacemaker task has the reference's threshold: present is reported.
    let out = json(&echovault(&index, &["--json", "zero-shot", clip.to_str().unwrap(), "--task", "pacemaker"]));
    let p = &out["results"][0]["readings"]["pacemaker"];
    assert_eq!(p["present"].as_bool(), Some(p["score"].as_f64().unwrap() > 0.298), "{p}");
    // Text output: values to one decimal with their unit, scores to three, present/absent where
    // the task has a threshold; JSON keeps every digit.
    let tasks = ["--task", "ejection_fraction,pulmonary_artery_pressure,pacemaker,tavr"];
    let all = json(&echovault(&index, &[&["--json", "zero-shot", clip.to_str().unwrap()][..], &tasks].concat()));
    let r = &all["results"][0]["readings"];
    let text = String::from_utf8(echovault(&index, &[&["zero-shot", clip.to_str().unwrap()][..], &tasks].concat()).stdout).unwrap();
    let value = |t: &str| r[t]["value"].as_f64().unwrap();
    let score = |t: &str| r[t]["score"].as_f64().unwrap();
    assert!(value("ejection_fraction").fract() != 0.0 && format!("{}", value("ejection_fraction")).len() > 4, "full precision: {r}");
    let present = if r["pacemaker"]["present"] == true { "present" } else { "absent" };
    for want in [
        format!("ejection_fraction={:.1} %", value("ejection_fraction")),
        format!("pulmonary_artery_pressure={:.1} mmHg", value("pulmonary_artery_pressure")),
        format!("pacemaker={:.3} ({present})", score("pacemaker")),
        format!("tavr={:.3}", score("tavr")),
    ] {
        assert!(text.split_whitespace().collect::<Vec<_>>().join(" ").contains(&want), "{want} in {text}");
    }
    assert!(r["tavr"].get("present").is_none() && !text.contains(&format!("tavr={:.3} (", score("tavr"))), "no threshold: {text}");
    // A misspelt field names its task and field.
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, r#"{"tavr": {"mode": "binary", "label_source": ["A TAVR IS SEEN."]}}"#).unwrap();
    let out = echovault(&index, &["zero-shot", clip.to_str().unwrap(), "--prompts", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("task 'tavr'") && err.contains("unknown field `label_source`"), "{err}");
}

#[test]
fn an_echoclip_r_directory_without_its_vocabulary_takes_template_vocab() {
    // An EchoCLIP-R-style checkpoint as a hub repo holds it: weights and config (a text tower of
    // 191 ids, too small for CLIP BPE), no template_vocab.txt.
    let tmp = tempfile::tempdir().unwrap();
    let with = root().join("data-samples/echovault-phantom-r");
    let bare = tmp.path().join("phantom-r-bare");
    std::fs::create_dir(&bare).unwrap();
    for f in ["open_clip_config.json", "open_clip_model.safetensors"] {
        std::fs::copy(with.join(f), bare.join(f)).unwrap();
    }
    let vocab = root().join("data-samples/template-vocab.txt");
    let run = |models: &[&Path], args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_echovault"));
        c.args(["--index", tmp.path().join("idx").to_str().unwrap(), "--device", "cpu"]);
        for m in models {
            c.arg("--model").arg(m);
        }
        c.args(args).env_remove("ECHOVAULT_INDEX").env_remove("ECHOVAULT_MODEL").output().unwrap()
    };
    let text = "Moderate mitral regurgitation. LV ejection fraction is 35%.";
    // Without a vocabulary it is refused, with the way out named.
    let o = run(&[&bare], &["embed", "--text", text, "--json"]);
    let err = json(&o)["error"].as_str().unwrap().to_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("vocab_size 191") && err.contains("--template-vocab"), "{err}");
    // With --template-vocab it embeds exactly as the directory holding the file.
    let a = json(&run(&[&with], &["embed", "--text", text, "--json"]));
    let b = json(&run(&[&bare], &["--template-vocab", vocab.to_str().unwrap(), "embed", "--text", text, "--json"]));
    assert_eq!(a["embedding"].as_array().map(Vec::len), Some(64));
    assert_eq!(a["embedding"], b["embedding"]);
    // With two models, the vocabulary goes to the one that needs it, not to the CLIP-BPE model.
    let bpe = root().join("data-samples/echovault-phantom");
    let s = json(&run(
        &[&bpe, &bare],
        &["--template-vocab", vocab.to_str().unwrap(), "--json", "ingest", clips().to_str().unwrap(), "--progress", "none"],
    ));
    assert_eq!(s["tokenizers"]["echovault-phantom"], "clip-bpe", "{s}");
    assert_eq!(s["tokenizers"]["phantom-r-bare"], "template", "{s}");
    // A model with CLIP's 49,408-row tower (as the published EchoCLIP-R has) cannot be told
    // from a CLIP-BPE model: with several models the vocabulary must name it.
    let big_tower = tmp.path().join("tiny-r");
    std::fs::create_dir(&big_tower).unwrap();
    for f in ["open_clip_config.json", "open_clip_model.safetensors"] {
        std::fs::copy(root().join("data-samples/echovault-tiny").join(f), big_tower.join(f)).unwrap();
    }
    let tiny = root().join("data-samples/echovault-tiny");
    let ingest = |vocab_arg: &str| {
        run(&[&tiny, &big_tower], &["--template-vocab", vocab_arg, "--json", "ingest", clips().to_str().unwrap(), "--progress", "none"])
    };
    let o = ingest(vocab.to_str().unwrap());
    assert_eq!(o.status.code(), Some(1));
    assert!(json(&o)["error"].as_str().unwrap().contains("--template-vocab MODEL="), "{}", json(&o));
    let o = ingest(&format!("nosuch={}", vocab.display()));
    assert!(json(&o)["error"].as_str().unwrap().contains("no --model is named 'nosuch'"), "{}", json(&o));
    let s = json(&ingest(&format!("tiny-r={}", vocab.display())));
    assert_eq!(s["tokenizers"]["tiny-r"], "template", "{s}");
    assert_eq!(s["tokenizers"]["echovault-tiny"], "clip-bpe", "{s}");
    // A vocabulary whose end id the tower cannot hold is refused with both numbers:
    // 100 phrases → T = 105, end id 105 + 133 = 238 > 190.
    let big = tmp.path().join("big.txt");
    std::fs::write(&big, (0..100).map(|i| format!("PHRASE {i} \n")).collect::<String>()).unwrap();
    let o = run(&[&bare], &["--template-vocab", big.to_str().unwrap(), "embed", "--text", text]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("end id 238") && err.contains("vocab_size 191"), "{err}");
}

/// `echovault phantom` cines (one study per patient, `frames` frames of 64²) in `formats`, by
/// their manifest order.
fn phantom_cines(out: &Path, patients: usize, frames: usize, formats: &str) -> Vec<PathBuf> {
    let o = echovault(
        &out.join("unused-index"),
        &[
            "phantom",
            "--out",
            out.to_str().unwrap(),
            "--patients",
            &patients.to_string(),
            "--studies",
            "1:1",
            "--size",
            "64",
            "--frames",
            &frames.to_string(),
            "--formats",
            formats,
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out.join("manifest.jsonl"))
        .unwrap()
        .lines()
        .map(|l| out.join(serde_json::from_str::<serde_json::Value>(l).unwrap()["file"].as_str().unwrap()))
        .collect()
}

/// Runs the binary like [`echovault`], killed after `secs` (a walk that never ends fails the
/// test instead of hanging it).
fn echovault_within(index: &Path, args: &[&str], secs: u64) -> std::process::Output {
    let mut child = common::command(index, args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed().as_secs() > secs {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("echovault {args:?} still running after {secs} s; stderr: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn search_and_embed_take_the_dicom_cines_ingest_takes() {
    let tmp = tempfile::tempdir().unwrap();
    let cines = phantom_cines(&tmp.path().join("ph"), 2, 6, "dicom-native,dicom-jpeg");
    assert_eq!(cines.len(), 2);
    let index = tmp.path().join("idx");
    let out = echovault(&index, &["ingest", tmp.path().join("ph/dicom").to_str().unwrap(), "--json"]);
    assert_eq!(json(&out)["ingested"], 2, "stderr: {}", String::from_utf8_lossy(&out.stderr));
    for (i, cine) in cines.iter().enumerate() {
        // Recognised by content, as ingest recognises it: no extension needed.
        let query = tmp.path().join(format!("query-{i}"));
        std::fs::copy(cine, &query).unwrap();
        let out = echovault(&index, &["search", "--video", query.to_str().unwrap(), "-k", "1", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}: {}", cine.display(), String::from_utf8_lossy(&out.stderr));
        let hit = &json(&out)["hits"][0];
        assert_eq!(hit["id"], content_id(cine), "{} finds itself", cine.display());
        assert!((hit["score"].as_f64().unwrap() - 1.0).abs() < 1e-4, "{hit}");
        let out = echovault(&index, &["embed", "--video", query.to_str().unwrap(), "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}: {}", cine.display(), String::from_utf8_lossy(&out.stderr));
        let e = json(&out);
        assert_eq!((e["frames_decoded"].as_u64(), e["frames_embedded"].as_u64()), (Some(6), Some(6)), "{e}");
        assert_eq!(e["embedding"].as_array().unwrap().len(), 64);
    }
}

#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::copy(clips().join("a4c_normal_04.mp4"), input.join("a.mp4")).unwrap();
    let index = tmp.path().join("idx");
    assert_eq!(echovault(&index, &["ingest", input.to_str().unwrap()]).status.code(), Some(0));
    for args in [&["search", "--text", "normal left ventricle", "-k", "5"][..], &["info"][..]] {
        let mut child =
            common::command(&index, args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        // `| head -0`: the reader is gone before the first line is printed.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert_ne!(out.status.code(), Some(101), "{args:?}");
        // Killed by SIGPIPE (13), as `cat` and `grep` are: the shell reports 141.
        assert!(out.status.signal() == Some(13) || out.status.code() == Some(0), "{args:?}: {:?}", out.status);
    }
}

#[cfg(unix)]
#[test]
fn every_file_of_an_export_is_accounted_for_once() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let cines = phantom_cines(&tmp.path().join("ph"), 2, 6, "dicom-native");
    let export = tmp.path().join("export");
    std::fs::create_dir_all(export.join("bad")).unwrap();
    std::fs::create_dir_all(export.join("loops")).unwrap();
    let good = std::fs::read(&cines[0]).unwrap();
    std::fs::write(export.join("good.dcm"), &good).unwrap();
    // One SOPInstanceUID in three files that differ (the last pixel byte): one video.
    let twin = std::fs::read(&cines[1]).unwrap();
    for (i, name) in ["IM_A", "IM_B", "IM_C"].iter().enumerate() {
        let mut b = twin.clone();
        *b.last_mut().unwrap() ^= i as u8;
        std::fs::write(export.join(name), b).unwrap();
    }
    std::fs::write(export.join("IM_BROKEN.dcm"), "this is a text file, not an image").unwrap();
    std::fs::write(export.join("empty.dcm"), b"").unwrap();
    let mut magic = good.clone();
    magic[128..132].copy_from_slice(b"DICX");
    std::fs::write(export.join("magic.dcm"), magic).unwrap();
    std::fs::write(export.join("preamble.dcm"), [&[0u8; 128][..], b"DICM"].concat()).unwrap();
    symlink("self.dcm", export.join("self.dcm")).unwrap();
    std::fs::write(export.join("bad/broken.dcm"), &good[..good.len() / 3]).unwrap();
    std::fs::write(export.join("readme.txt"), "export notes").unwrap();
    std::fs::write(export.join("Thumbs.db"), [0u8; 64]).unwrap();
    // A folder with two links to itself.
    symlink(".", export.join("loops/again")).unwrap();
    symlink("..", export.join("loops/up")).unwrap();

    let index = tmp.path().join("idx");
    // The bad folder a second time, spelled another way: still one row.
    let dotted = format!("{}/./bad", export.display());
    let out = echovault_within(&index, &["ingest", export.to_str().unwrap(), &dotted, "--json"], 120);
    let v = json(&out);
    assert_eq!(out.status.code(), Some(3), "{v}");
    assert_eq!((v["ingested"].as_u64(), v["duplicates"].as_u64()), (Some(2), Some(2)), "one video per SOPInstanceUID: {v}");
    let failed: Vec<(String, String)> = v["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap().to_owned(), f["reason"].as_str().unwrap().to_owned()))
        .collect();
    let reason = |name: &str| -> &str {
        let rows: Vec<&(String, String)> = failed.iter().filter(|(p, _)| p.ends_with(name)).collect();
        assert_eq!(rows.len(), 1, "{name} is one failure row: {failed:?}");
        &rows[0].1
    };
    assert!(reason("/IM_BROKEN.dcm").contains("DICM"));
    assert!(reason("/empty.dcm").contains("empty"));
    assert!(reason("/magic.dcm").contains("DICM"));
    assert!(!reason("/preamble.dcm").is_empty());
    assert!(reason("/self.dcm").contains("cannot read"));
    assert!(!reason("/bad/broken.dcm").is_empty());
    assert_eq!(failed.len(), 6, "{failed:?}");
    assert!(failed.iter().all(|(p, _)| !p.contains("/./")), "paths are tidied: {failed:?}");
    let ignored: Vec<&str> = v["ignored"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    for name in ["/readme.txt", "/Thumbs.db"] {
        assert_eq!(ignored.iter().filter(|p| p.ends_with(name)).count(), 1, "{name}: {ignored:?}");
    }
    // Six inputs (good, the three twins, the bare preamble, the broken one), four walk failures.
    assert_eq!(v["found"], 10, "{v}");
    // `errors` holds one row per failed file, the one under `export/./bad` included.
    let errors = json(&echovault(&index, &["errors", "--json"]));
    assert_eq!(errors["errors"].as_array().unwrap().len(), 6, "{errors}");
    // Text output counts the ignored files.
    let out = echovault_within(&index, &["ingest", &dotted], 60);
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed 1; ignored 0"), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(json(&echovault(&index, &["errors", "--json"]))["errors"].as_array().unwrap().len(), 6);
}

#[test]
fn a_video_cut_short_records_and_warns_how_many_frames_it_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let avi = phantom_cines(&tmp.path().join("ph"), 1, 32, "avi").remove(0);
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let full = std::fs::read(&avi).unwrap();
    std::fs::write(input.join("whole.avi"), &full).unwrap();
    std::fs::write(input.join("cut.avi"), &full[..full.len() / 2]).unwrap();
    let index = tmp.path().join("idx");
    let out = echovault(&index, &["ingest", input.to_str().unwrap(), "--json"]);
    let v = json(&out);
    assert_eq!(v["ingested"], 2, "{v}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let idx = echovault::index::Index::open_reader(&index).unwrap();
    let extra = |name: &str| {
        let id = content_id(&input.join(name));
        idx.get_item(&echovault::index::ItemId(id)).unwrap().unwrap().extra
    };
    let (whole, cut) = (extra("whole.avi"), extra("cut.avi"));
    let count = |m: &std::collections::BTreeMap<String, String>, k: &str| -> usize { m[k].parse().unwrap() };
    assert_eq!(count(&whole, "frames_decoded"), 32, "{whole:?}");
    assert!(count(&whole, "frames_announced").abs_diff(32) <= 1, "{whole:?}");
    assert_eq!(cut["frames_announced"], whole["frames_announced"], "the header is in the first half: {cut:?}");
    let (decoded, announced) = (count(&cut, "frames_decoded"), count(&cut, "frames_announced"));
    assert!(decoded > 0 && decoded + 1 < announced, "{cut:?}");
    assert!(stderr.contains(&format!("decoded {decoded} frames where its container announces {announced}")), "{stderr}");
    assert_eq!(stderr.matches("container announces").count(), 1, "the whole file is not warned about: {stderr}");
}

/// `echovault --index INDEX --device cpu ARGS...` in `cwd` (no --model, none in the environment).
fn without_model(cwd: &Path, index: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_echovault"))
        .current_dir(cwd)
        .args(["--index", index.to_str().unwrap(), "--device", "cpu"])
        .args(args)
        .env_remove("ECHOVAULT_INDEX")
        .env_remove("ECHOVAULT_MODEL")
        .output()
        .unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn read_commands_use_the_model_that_filled_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    // Run where no ./data-samples exists: the sample-model default cannot stand in.
    let cwd = tmp.path().join("elsewhere");
    std::fs::create_dir(&cwd).unwrap();
    let model = tmp.path().join("echo-a");
    copy_dir(&root().join("data-samples/echovault-tiny"), &model);
    let index = tmp.path().join("idx");
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let out = without_model(&cwd, &index, &["--model", model.to_str().unwrap(), "ingest", clips().to_str().unwrap(), "--progress", "none"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // One space: --model may be omitted; the space is the model's.
    let out = without_model(&cwd, &index, &["search", "--text", "pacemaker", "-k", "3", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["hits"].as_array().unwrap().len(), 3);
    let first = json(&out)["hits"][0]["id"].as_str().unwrap().to_owned();
    for args in [&["reid", "--id", &first, "-k", "2", "--json"][..], &["zero-shot", "--id", &first, "--task", "pacemaker", "--json"]] {
        let out = without_model(&cwd, &index, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    // Without an index that remembers one, the old message.
    let out = without_model(&cwd, &tmp.path().join("none"), &["search", "--text", "x"]);
    assert_eq!(out.status.code(), Some(1));

    // A second space: the user names one.
    let other = tmp.path().join("echo-b");
    copy_dir(&root().join("data-samples/echovault-tiny"), &other);
    let out = without_model(
        &cwd,
        &index,
        &["--model", other.to_str().unwrap(), "--space", "second", "ingest", clips().to_str().unwrap(), "--progress", "none"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = without_model(&cwd, &index, &["search", "--text", "pacemaker"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("--space") && err.contains("'echo-a'") && err.contains("'second'") && err.contains("echo-b"), "{err}");
    let out = without_model(&cwd, &index, &["search", "--text", "pacemaker", "--space", "second", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["space"], "second", "{}", String::from_utf8_lossy(&out.stdout));

    // A changed checkpoint, then a directory that is gone: clear errors, before any model loads.
    let weights = other.join("open_clip_model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes.extend_from_slice(b"    ");
    std::fs::write(&weights, bytes).unwrap();
    let out = without_model(&cwd, &index, &["search", "--text", "pacemaker", "--space", "second"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("changed since it filled space 'second'"), "{}", stderr(&out));
    std::fs::remove_dir_all(&model).unwrap();
    let out = without_model(&cwd, &index, &["timeline", "--patient", "x", "--space", "echo-a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no longer exists") && stderr(&out).contains("echo-a"), "{}", stderr(&out));
}

#[test]
fn hits_show_patient_date_and_study_and_an_mrn_is_keyed_from_flag_env_or_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ph");
    let files = phantom_cines(&data, 2, 4, "dicom-native");
    let index = tmp.path().join("idx");
    let out = echovault(&index, &["ingest", data.join("dicom").to_str().unwrap(), "--progress", "none"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let truth: Vec<serde_json::Value> =
        std::fs::read_to_string(data.join("manifest.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mrn = truth[0]["patient"].as_str().unwrap().to_owned();
    let all = json(&echovault(&index, &["search", "--text", "heart", "-k", "10", "--json", "--with-paths"]));
    let hits = all["hits"].as_array().unwrap();
    assert_eq!(hits.len(), files.len());
    let key = hits.iter().find(|h| h["source"].as_str().unwrap().ends_with(truth[0]["file"].as_str().unwrap())).unwrap()["patient"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(key, mrn);

    // Text: each hit line names its patient key, study date and study.
    let text = String::from_utf8(echovault(&index, &["search", "--text", "heart", "-k", "10"]).stdout).unwrap();
    for h in hits {
        let line = text.lines().find(|l| l.contains(h["id"].as_str().unwrap())).unwrap();
        for field in ["patient", "date", "study"] {
            assert!(line.contains(h[field].as_str().unwrap()), "{field} of {h} missing from: {line}");
        }
    }

    // --patient-id MRN filters as --patient KEY does; from the flag, the environment or stdin.
    let by_key = json(&echovault(&index, &["search", "--text", "heart", "--patient", &key, "--json"]));
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["hits"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap().to_owned()).collect()
    };
    assert!(!ids(&by_key).is_empty() && ids(&by_key).len() < hits.len());
    let out = echovault(&index, &["search", "--text", "heart", "--patient-id", &mrn, "--json"]);
    assert_eq!(ids(&json(&out)), ids(&by_key));
    let timeline_by_key = json(&echovault(&index, &["timeline", "--patient", &key, "--json"]));
    assert_eq!(timeline_by_key["patient"], key.as_str());
    // timeline needs a patient: it falls back to ECHOVAULT_PATIENT_ID and says so (not the id).
    let mut c = common::command(&index, &["timeline", "--json"]);
    let from_env = c.env("ECHOVAULT_PATIENT_ID", &mrn).output().unwrap();
    assert!(String::from_utf8_lossy(&from_env.stderr).contains("ECHOVAULT_PATIENT_ID"), "{}", String::from_utf8_lossy(&from_env.stderr));
    // search reads it only when asked (`--patient-id env`): a value left in the environment
    // does not filter a plain search.
    let mut c = common::command(&index, &["search", "--text", "heart", "-k", "10", "--json"]);
    let unasked = c.env("ECHOVAULT_PATIENT_ID", &mrn).output().unwrap();
    assert_eq!(ids(&json(&unasked)).len(), hits.len(), "{}", String::from_utf8_lossy(&unasked.stderr));
    assert!(!String::from_utf8_lossy(&unasked.stderr).contains("ECHOVAULT_PATIENT_ID"));
    let mut c = common::command(&index, &["search", "--text", "heart", "--patient-id", "env", "--json"]);
    let asked = c.env("ECHOVAULT_PATIENT_ID", &mrn).output().unwrap();
    assert_eq!(ids(&json(&asked)), ids(&by_key));
    let mut c = common::command(&index, &["search", "--text", "heart", "--patient-id", "env"]);
    let unset = c.env_remove("ECHOVAULT_PATIENT_ID").output().unwrap();
    assert_eq!(unset.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unset.stderr).contains("ECHOVAULT_PATIENT_ID is not set"),
        "{}",
        String::from_utf8_lossy(&unset.stderr)
    );
    let mut c = common::command(&index, &["search", "--text", "heart", "--patient-id", "-", "--json"]);
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), format!("{mrn}\n").as_bytes()).unwrap();
    let from_stdin = child.wait_with_output().unwrap();
    assert_eq!(json(&from_env), timeline_by_key);
    assert_eq!(ids(&json(&from_stdin)), ids(&by_key));
    for o in [&out, &from_env, &from_stdin, &asked] {
        let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(!all.contains(&mrn), "the MRN is never printed: {all}");
    }
    // Neither a key nor an id: a usage error.
    assert_eq!(echovault(&index, &["timeline"]).status.code(), Some(2));
}

#[test]
fn phantom_refuses_a_non_empty_out_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ph");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = ["phantom", "--out", out.to_str().unwrap(), "--patients", "1", "--studies", "1:1", "--size", "32"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(["--num-frames", "2", "--formats", "dicom-native"].iter().chain(extra).map(|s| s.to_string()));
        v
    };
    let run = |a: &[String]| echovault(&tmp.path().join("unused-index"), &a.iter().map(String::as_str).collect::<Vec<_>>());
    let o = run(&args(&[]));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is not empty") && err.contains("--force") && err.contains(out.to_str().unwrap()), "{err}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1, "nothing written");
    let o = run(&args(&["--force"]));
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("manifest.jsonl").is_file() && out.join("notes.txt").is_file());
    // A new directory, or an empty one, needs no --force.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = echovault(
        &tmp.path().join("unused-index"),
        &["phantom", "--out", empty.to_str().unwrap(), "--patients", "1", "--studies", "1:1", "--size", "32", "--num-frames", "2"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A FIFO in an export (opening one blocks until something writes to it) and a device named on
/// the command line are failure rows, never read: the run ends; no reason repeats its input.
#[cfg(unix)]
#[test]
fn a_fifo_or_a_device_is_a_failure_row_and_never_read() {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    std::fs::create_dir(&export).unwrap();
    std::fs::copy(clips().join("a4c_normal_04.mp4"), export.join("a.mp4")).unwrap();
    let fifo = export.join("pipe.avi");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let index = tmp.path().join("idx");
    let out = echovault_within(&index, &["ingest", export.to_str().unwrap(), "/dev/null", "--json", "--progress", "none"], 120);
    let v = json(&out);
    assert_eq!(out.status.code(), Some(3), "{v}");
    assert_eq!(v["ingested"], 1, "{v}");
    let failed = v["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{v}");
    for f in failed {
        let (path, reason) = (f["path"].as_str().unwrap(), f["reason"].as_str().unwrap());
        assert!(reason.contains("not a regular file") && !reason.contains(path), "{f}");
    }
    // Text output and `errors`: `path: reason`, the path once.
    let text = String::from_utf8(echovault_within(&index, &["ingest", "/dev/null"], 60).stdout).unwrap();
    let line = text.lines().find(|l| l.contains("failed: /dev/null")).unwrap();
    assert_eq!(line.matches("/dev/null").count(), 1, "{line}");
    let errors = String::from_utf8(echovault(&index, &["errors"]).stdout).unwrap();
    assert_eq!(errors.matches(fifo.to_str().unwrap()).count(), 1, "{errors}");
}

/// `--max-frames` bounds the frames a task reads from a video file as it bounds ingest's: a
/// zero-shot of an unindexed 24-frame clip reads 2 frames with `--max-frames 2`, all 24 without.
#[test]
fn max_frames_bounds_the_files_a_task_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("unused");
    let prompts = root().join("data-samples/phantom-prompts.json");
    let clip = clips().join("a4c_normal_01.avi");
    let run = |extra: &[&str]| {
        let mut args = vec!["--json", "zero-shot", clip.to_str().unwrap(), "--prompts", prompts.to_str().unwrap(), "--frames", "all"];
        args.extend_from_slice(extra);
        let out = echovault(&index, &args);
        assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
        json(&out)["results"][0]["frames"].as_u64().unwrap()
    };
    assert_eq!(run(&[]), 24);
    assert_eq!(run(&["--max-frames", "2"]), 2);
    assert_eq!(run(&["--max-frames", "8"]), 8);
}
