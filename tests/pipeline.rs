//! The ingest pipeline end to end through the real binary, LibTorch, FFmpeg, dicom-rs and
//! RocksDB: kill -9 at random points and resume to the same index as an uninterrupted run, two
//! models in one run, frame embeddings stored, incremental runs, `--since`, duplicates by
//! content and by SOPInstanceUID, failures listed with exit code 3 and `echovault errors`.

#![allow(clippy::unwrap_used)]

mod common;

use common::{json, root};
use echovault::index::{Index, IndexOptions, ItemId, Kind, SpaceId};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

fn models() -> [PathBuf; 2] {
    [root().join("data-samples/echovault-phantom"), root().join("data-samples/echovault-tiny")]
}

/// `echovault --index INDEX --model PHANTOM --model TINY --device cpu ARGS...`
fn command(index: &Path, args: &[&str]) -> Command {
    let [a, b] = models();
    let mut c = Command::new(env!("CARGO_BIN_EXE_echovault"));
    c.args(["--index", index.to_str().unwrap(), "--device", "cpu", "--model", a.to_str().unwrap(), "--model", b.to_str().unwrap()])
        .args(args)
        .env_remove("ECHOVAULT_INDEX")
        .env_remove("ECHOVAULT_MODEL");
    c
}

fn run(index: &Path, args: &[&str]) -> Output {
    command(index, args).output().unwrap()
}

fn phantoms(out: &Path, patients: &str, extra: &[&str]) {
    let args =
        [&["--json", "phantom", "--out", out.to_str().unwrap(), "--patients", patients, "--size", "64", "--frames", "10"][..], extra]
            .concat();
    let o = Command::new(env!("CARGO_BIN_EXE_echovault")).args(&args).output().unwrap();
    assert!(o.status.success(), "phantom: {}", String::from_utf8_lossy(&o.stderr));
}

/// (study, patient key, date) of an item.
type Facts = (Option<String>, Option<String>, Option<String>);
/// Records with the patient key reduced to its presence, and the groups of items sharing one.
type Anonymous = (BTreeMap<String, (Option<String>, bool, Option<String>)>, BTreeSet<Vec<String>>);

/// Everything an index holds that a search can see: per space and kind, item → vector; per
/// video, its frame embeddings; every record.
struct Contents {
    spaces: Vec<u16>,
    vectors: BTreeMap<(u16, u8, String), Vec<f32>>,
    frames: BTreeMap<(u16, String), Vec<Vec<f32>>>,
    records: BTreeMap<String, Facts>,
}

fn contents(dir: &Path) -> Contents {
    let index = Index::open(dir, IndexOptions { passive_open: true, ..Default::default() }).unwrap();
    let spaces: Vec<SpaceId> = index.spaces().iter().map(|s| s.id).collect();
    assert!(spaces.len() <= 2, "at most one space per model");
    let mut c = Contents {
        spaces: spaces.iter().map(|s| s.0).collect(),
        vectors: BTreeMap::new(),
        frames: BTreeMap::new(),
        records: BTreeMap::new(),
    };
    for rec in index.items(None).unwrap() {
        c.records.insert(rec.id.0.clone(), (rec.study.clone(), rec.patient.clone(), rec.date.map(|d| d.to_string())));
        for &s in &spaces {
            if let Some(v) = index.get_vector(s, rec.kind, &rec.id).unwrap() {
                c.vectors.insert((s.0, rec.kind as u8, rec.id.0.clone()), v);
            }
            if let Some(f) = index.get_frames(s, &rec.id).unwrap() {
                c.frames.insert((s.0, rec.id.0.clone()), f);
            }
        }
    }
    let v = index.verify().unwrap();
    assert!(v.ok(), "graph and vectors agree: {v:?}");
    c
}

fn mean_unit(vs: &[&Vec<f32>]) -> Vec<f32> {
    let mut m = vec![0f32; vs[0].len()];
    for v in vs {
        m.iter_mut().zip(v.iter()).for_each(|(a, b)| *a += b);
    }
    let n = m.iter().map(|x| x * x).sum::<f32>().sqrt();
    m.into_iter().map(|x| x / n).collect()
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

/// Whatever moment a run was killed at, what is in the index is whole: every video has its
/// vector and frames in both spaces, every study vector is the mean of its videos there.
fn assert_consistent(c: &Contents) {
    let mut studies: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, (study, _, _)) in &c.records {
        if c.spaces.iter().any(|&s| c.vectors.contains_key(&(s, Kind::Video as u8, id.clone()))) {
            studies.entry(study.clone().unwrap()).or_default().push(id.clone());
        }
    }
    for (study, videos) in &studies {
        for &s in &c.spaces {
            let vs: Vec<&Vec<f32>> =
                videos.iter().map(|v| c.vectors.get(&(s, Kind::Video as u8, v.clone())).expect("video in both spaces")).collect();
            for v in videos {
                let f = c.frames.get(&(s, v.clone())).expect("frames stored with the video");
                let fm: Vec<&Vec<f32>> = f.iter().collect();
                assert!(
                    close(&mean_unit(&fm), c.vectors[&(s, Kind::Video as u8, v.clone())].as_slice(), 5e-3),
                    "video = mean of its frames"
                );
            }
            let sv = c.vectors.get(&(s, Kind::Study as u8, format!("study:{study}"))).expect("study vector written with its videos");
            assert!(close(&mean_unit(&vs), sv, 1e-5), "study {study} vector is the mean of its {} videos", vs.len());
        }
    }
}

#[test]
fn killed_at_random_points_an_ingest_resumes_to_the_same_index() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    phantoms(&export, "12", &["--studies", "2:2", "--formats", "dicom-jpeg,avi,dicom-native"]);
    let reports = export.join("reports.jsonl");
    let n = echovault::phantom::read_manifest(&export.join("manifest.jsonl")).unwrap().len() as u64;
    assert_eq!(n, 24, "12 patients × 2 studies");
    let args = ["--json", "ingest", export.to_str().unwrap(), "--reports", reports.to_str().unwrap(), "--progress", "log"];

    // The uninterrupted run.
    let whole = dir.path().join("whole");
    let t0 = Instant::now();
    let o = run(&whole, &args);
    let full_time = t0.elapsed();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary = json(&o);
    assert_eq!(summary["ingested"], summary["found"]);
    assert_eq!(summary["ingested"].as_u64(), Some(n));
    assert_eq!(summary["spaces"].as_array().unwrap().len(), 2);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("ingest: {n}/{n} files")),
        "a final progress line when stderr is not a terminal"
    );
    let reference = contents(&whole);
    assert_consistent(&reference);

    // Killed at random moments, each run resuming the last, until 10 runs died mid-way and 5 of
    // them left the index part-written (a run that got to the end before its kill starts the
    // chain again on an empty index; the machine's load moves where a given delay lands).
    let resumed = dir.path().join("resumed");
    let mut rng = StdRng::seed_from_u64(2026);
    let mut kills = Vec::new();
    let mut partial = 0;
    for _ in 0..80 {
        let delay = full_time.mul_f64(rng.random_range(0.1..0.7));
        let mut child = command(&resumed, &args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if resumed.join("CURRENT").exists() {
            let c = contents(&resumed);
            assert_consistent(&c);
            let videos = c.vectors.keys().filter(|(s, k, _)| *s == c.spaces[0] && *k == Kind::Video as u8).count() as u64;
            if !finished && videos > 0 && videos < n {
                partial += 1;
            }
        }
        if finished {
            std::fs::remove_dir_all(&resumed).unwrap();
        } else {
            kills.push(delay);
            if kills.len() >= 10 && partial >= 5 {
                break;
            }
        }
    }
    assert!(kills.len() >= 10, "10 runs were killed mid-way ({})", kills.len());
    assert!(partial >= 5, "at least 5 kills left the index part-written ({partial})");
    let o = run(&resumed, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let last = json(&o);
    assert_eq!(last["ingested"].as_u64().unwrap() + last["skipped"].as_u64().unwrap(), n, "{last}");
    let after = contents(&resumed);
    assert_consistent(&after);

    // The same items, records, vectors and frames as the uninterrupted run. Patient keys are
    // keyed hashes under each index's own secret: compare which items share a patient.
    let anonymous = |c: &Contents| -> Anonymous {
        let mut groups: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (id, (_, p, _)) in &c.records {
            if let Some(p) = p {
                groups.entry(p).or_default().push(id.clone());
            }
        }
        let recs = c.records.iter().map(|(id, (s, p, d))| (id.clone(), (s.clone(), p.is_some(), d.clone()))).collect();
        (recs, groups.into_values().collect())
    };
    assert_eq!(anonymous(&after), anonymous(&reference));
    assert_eq!(after.vectors.keys().collect::<Vec<_>>(), reference.vectors.keys().collect::<Vec<_>>());
    for (k, v) in &reference.vectors {
        assert!(close(v, &after.vectors[k], 1e-5), "{k:?} differs after resuming");
    }
    assert_eq!(after.frames.len(), reference.frames.len());
    for (k, f) in &reference.frames {
        let g = &after.frames[k];
        assert!(f.len() == g.len() && f.iter().zip(g).all(|(a, b)| close(a, b, 2e-3)), "{k:?} frames differ");
    }
    // Searches answer alike (the same hits, in the same order).
    for q in ["severely reduced left ventricular ejection fraction", "pacemaker lead in the right ventricle", "normal study"] {
        for kind in ["video", "report", "study"] {
            let a = json(&run(&whole, &["--json", "search", "--text", q, "--kind", kind, "-k", "8"]));
            let b = json(&run(&resumed, &["--json", "search", "--text", q, "--kind", kind, "-k", "8"]));
            let ids = |v: &Value| v["hits"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
            assert_eq!(ids(&a), ids(&b), "{kind} hits for {q:?}");
            assert_eq!(ids(&a).len(), 8);
        }
    }
    // Nothing is done twice: a further run skips everything without reading a file.
    let again = json(&run(&resumed, &args));
    assert_eq!((again["ingested"].as_u64(), again["skipped"].as_u64(), again["reports"].as_u64()), (Some(0), Some(n), Some(0)), "{again}");
    println!("kill delays: {kills:?} of an uninterrupted {full_time:?}; {partial} left the index part-written");
}

#[test]
fn incremental_runs_since_duplicates_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all");
    phantoms(&all, "8", &["--studies", "2:2", "--formats", "dicom-jpeg,avi"]);
    let reports = all.join("reports.jsonl");
    let manifest = echovault::phantom::read_manifest(&all.join("manifest.jsonl")).unwrap();
    let total = manifest.len();
    assert_eq!(total, 16);

    // --since on a fresh index: exactly the studies dated on or after the day.
    let mut dates: Vec<&str> = manifest.iter().map(|t| t.date.as_str()).collect();
    dates.sort();
    let since = dates[dates.len() / 2];
    let newer = manifest.iter().filter(|t| t.date.as_str() >= since).count();
    let idx = dir.path().join("since");
    let o = run(&idx, &["--json", "ingest", all.to_str().unwrap(), "--reports", reports.to_str().unwrap(), "--since", since]);
    let s = json(&o);
    assert_eq!(s["ingested"].as_u64().unwrap() as usize, newer, "{s}");
    assert_eq!(s["outside_since"].as_u64().unwrap() as usize, total - newer);
    assert!(newer > 0 && newer < total);
    let index = Index::open(&idx, IndexOptions { passive_open: true, ..Default::default() }).unwrap();
    for rec in index.items(Some(Kind::Video)).unwrap() {
        assert!(rec.date.unwrap().to_string().as_str() >= since, "{:?} is older than --since", rec.date);
    }
    drop(index);
    let bad = run(&idx, &["ingest", all.to_str().unwrap(), "--since", "2024-13-01"]);
    assert_eq!(bad.status.code(), Some(2), "a bad flag value is a usage error");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("--since") && err.contains("'2024-13-01' is not a date: there is no month 13"), "{err}");

    // A growing export: the second run embeds only what is new.
    let export = dir.path().join("export");
    std::fs::create_dir_all(export.join("avi")).unwrap();
    let avis: BTreeSet<PathBuf> = manifest.iter().filter(|t| t.file.ends_with(".avi")).map(|t| all.join(&t.file)).collect();
    let videos: Vec<&PathBuf> = avis.iter().collect();
    let k = videos.len();
    assert!(k >= 5, "{k} AVIs");
    let copy = |p: &Path| {
        std::fs::copy(p, export.join("avi").join(p.file_name().unwrap())).unwrap();
    };
    videos[..3].iter().for_each(|p| copy(p));
    let idx = dir.path().join("grow");
    let first = json(&run(&idx, &["--json", "ingest", export.to_str().unwrap()]));
    assert_eq!(first["ingested"], 3);
    videos[3..].iter().for_each(|p| copy(p));
    let second = json(&run(&idx, &["--json", "ingest", export.to_str().unwrap()]));
    assert_eq!((second["ingested"].as_u64(), second["skipped"].as_u64()), (Some(k as u64 - 3), Some(3)), "{second}");

    // The same content under another name is indexed once.
    std::fs::copy(videos[0], export.join("copy-of-first.avi")).unwrap();
    let third = json(&run(&idx, &["--json", "ingest", export.to_str().unwrap()]));
    assert_eq!((third["ingested"].as_u64(), third["skipped"].as_u64()), (Some(0), Some(k as u64 + 1)), "{third}");

    // The same DICOM instance re-exported (other bytes, same SOPInstanceUID) is indexed once.
    let dcm_dir = dir.path().join("dicom");
    std::fs::create_dir_all(&dcm_dir).unwrap();
    let one = all.join(&manifest.iter().find(|t| t.file.ends_with(".dcm")).unwrap().file);
    std::fs::copy(&one, dcm_dir.join("a.dcm")).unwrap();
    let first = json(&run(&idx, &["--json", "ingest", dcm_dir.to_str().unwrap()]));
    assert_eq!(first["ingested"], 1);
    let mut bytes = std::fs::read(&one).unwrap();
    bytes[7] ^= 0xff; // the 128-byte preamble: no meaning to DICOM, a new content hash
    std::fs::write(dcm_dir.join("b.dcm"), &bytes).unwrap();
    let second = json(&run(&idx, &["--json", "ingest", dcm_dir.to_str().unwrap()]));
    assert_eq!((second["ingested"].as_u64(), second["duplicates"].as_u64()), (Some(0), Some(1)), "{second}");

    // Bad files fail alone, with their reasons, exit code 3, and stay listed until fixed.
    std::fs::write(export.join("broken.avi"), b"not a video at all").unwrap();
    std::fs::write(export.join("truncated.dcm"), &std::fs::read(&one).unwrap()[..600]).unwrap();
    let o = run(&idx, &["--json", "ingest", export.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let s = json(&o);
    let failed: Vec<&str> = s["failed"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(failed.len(), 2, "{s}");
    assert!(failed.iter().any(|p| p.ends_with("broken.avi")) && failed.iter().any(|p| p.ends_with("truncated.dcm")));
    let errs = json(&run(&idx, &["--json", "errors"]));
    let listed = errs["errors"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{errs}");
    assert!(listed.iter().all(|e| !e["reason"].as_str().unwrap().is_empty()));
    let text = run(&idx, &["errors"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("broken.avi"));
    // Fixed: the good file under the bad name clears its error (and is a duplicate of content
    // already indexed, so nothing is embedded twice).
    std::fs::copy(videos[1], export.join("broken.avi")).unwrap();
    std::fs::remove_file(export.join("truncated.dcm")).unwrap();
    let o = run(&idx, &["--json", "ingest", export.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let errs = json(&run(&idx, &["--json", "errors"]));
    let left: Vec<&str> = errs["errors"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(left.len(), 1, "only the removed file's error remains: {left:?}");
    assert!(left[0].ends_with("truncated.dcm"));

    // Frames are kept per video (f16), one row per embedded frame.
    let index = Index::open(&idx, IndexOptions { passive_open: true, ..Default::default() }).unwrap();
    let rec = index.items(Some(Kind::Video)).unwrap().remove(0);
    let n: usize = rec.extra["embedded_frames"].parse().unwrap();
    for s in index.spaces() {
        let f = index.get_frames(s.id, &ItemId(rec.id.0.clone())).unwrap().unwrap();
        assert_eq!(f.len(), n);
        assert_eq!(f[0].len(), s.dim);
    }
}

/// A copy of the tiny sample model under `name`, with `vocab` as its `template_vocab.txt`.
fn template_model(dir: &Path, name: &str, vocab: &str) -> PathBuf {
    let m = dir.join(name);
    std::fs::create_dir_all(&m).unwrap();
    let tiny = root().join("data-samples/echovault-tiny");
    for f in std::fs::read_dir(&tiny).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, m.join(f.file_name().unwrap())).unwrap();
    }
    std::fs::write(m.join("template_vocab.txt"), vocab).unwrap();
    m
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn a_model_directory_with_a_template_vocabulary_embeds_reports_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    phantoms(&export, "4", &["--studies", "1:1", "--formats", "avi"]);
    let vocab = std::fs::read_to_string(root().join("data-samples/template-vocab.txt")).unwrap();
    let r = template_model(dir.path(), "tiny-r", &vocab);
    let tiny = root().join("data-samples/echovault-tiny");
    let idx = dir.path().join("idx");
    let base = |primary: &Path, second: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_echovault"));
        c.args(["--index", idx.to_str().unwrap(), "--device", "cpu", "--model", primary.to_str().unwrap()]);
        if let Some(s) = second {
            c.args(["--model", s.to_str().unwrap()]);
        }
        c.env_remove("ECHOVAULT_INDEX").env_remove("ECHOVAULT_MODEL");
        c
    };
    let reports = export.join("reports.jsonl");
    let o = base(&tiny, Some(&r))
        .args(["--json", "ingest", export.to_str().unwrap(), "--reports", reports.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = json(&o);
    assert_eq!(s["tokenizers"]["echovault-tiny"], "clip-bpe", "{s}");
    assert_eq!(s["tokenizers"]["tiny-r"], "template", "{s}");
    assert_eq!(s["reports"], 4);

    let index = Index::open(&idx, IndexOptions { passive_open: true, ..Default::default() }).unwrap();
    let space = |name: &str| index.spaces().iter().find(|s| s.name == name).unwrap().id;
    let (bpe, tmpl) = (space("echovault-tiny"), space("tiny-r"));
    let reports: Vec<_> = index.items(Some(Kind::Report)).unwrap();
    assert_eq!(reports.len(), 4);
    let vocab_file = root().join("data-samples/template-vocab.txt");
    for rec in &reports {
        let text = rec.text.clone().unwrap();
        let stored_t = index.get_vector(tmpl, Kind::Report, &rec.id).unwrap().unwrap();
        let stored_b = index.get_vector(bpe, Kind::Report, &rec.id).unwrap().unwrap();
        // The same vector `embed` gives with the vocabulary named explicitly, and with the
        // template model's directory (which finds its vocabulary itself).
        let explicit = base(&tiny, None)
            .args(["--json", "embed", "--text", &text, "--template-vocab", vocab_file.to_str().unwrap()])
            .output()
            .unwrap();
        let by_dir = base(&r, None).args(["--json", "embed", "--text", &text]).output().unwrap();
        let plain = base(&tiny, None).args(["--json", "embed", "--text", &text]).output().unwrap();
        let vec_of = |o: &Output| -> Vec<f32> { serde_json::from_value(json(o)["embedding"].clone()).unwrap() };
        assert!(close(&vec_of(&explicit), &stored_t, 1e-5), "report embedded with the template tokenizer");
        assert!(close(&vec_of(&by_dir), &stored_t, 1e-5));
        assert!(close(&vec_of(&plain), &stored_b, 1e-5), "the BPE space keeps CLIP BPE");
        assert!(cos(&stored_t, &stored_b) < 0.999, "the two tokenizations give different vectors");
    }
    drop(index);
    // Searches in the template space tokenise the query with the vocabulary too.
    let text = reports[0].text.clone().unwrap();
    let o = base(&r, None).args(["--json", "search", "--text", &text, "--kind", "report", "-k", "1"]).output().unwrap();
    let hits = json(&o);
    assert_eq!(hits["hits"][0]["id"].as_str(), Some(reports[0].id.0.as_str()), "{hits}");
    assert!(hits["hits"][0]["score"].as_f64().unwrap() > 0.9999);

    // A report the template tokenizer refuses (a literal `<#>`) fails alone, named by its
    // reports file and study; the other report of the manifest is embedded; the run exits 3.
    let bad = dir.path().join("bad-reports.jsonl");
    let line = |study: &str, text: &str| serde_json::json!({"study": study, "text": text}).to_string();
    std::fs::write(&bad, [line("S-BAD", "LV EJECTION FRACTION IS <#>%."), line("S-GOOD", "MILD MITRAL REGURGITATION.")].join("\n"))
        .unwrap();
    let o =
        base(&tiny, Some(&r)).args(["--json", "ingest", export.to_str().unwrap(), "--reports", bad.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let s = json(&o);
    assert_eq!(s["reports"], 1, "{s}");
    let failed = s["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{s}");
    let (path, reason) = (failed[0]["path"].as_str().unwrap(), failed[0]["reason"].as_str().unwrap());
    assert!(path.contains("bad-reports.jsonl") && path.contains("S-BAD"), "{path}");
    assert!(reason.contains("tiny-r") && reason.contains("<#>"), "{reason}");
    let errors = json(&base(&tiny, None).args(["--json", "errors"]).output().unwrap());
    assert!(errors["errors"].as_array().unwrap().iter().any(|e| e["path"] == path), "{errors}");
    // Mended, the report is embedded and its error row goes.
    std::fs::write(&bad, [line("S-BAD", "LV EJECTION FRACTION IS 40%."), line("S-GOOD", "MILD MITRAL REGURGITATION.")].join("\n")).unwrap();
    let o =
        base(&tiny, Some(&r)).args(["--json", "ingest", export.to_str().unwrap(), "--reports", bad.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let errors = json(&base(&tiny, None).args(["--json", "errors"]).output().unwrap());
    assert!(!errors["errors"].as_array().unwrap().iter().any(|e| e["path"] == path), "{errors}");

    // A vocabulary the text tower cannot hold is refused when the model loads, naming the file.
    let big: String = (0..49_500).map(|i| format!("PHRASE NUMBER W{i:05X}\n")).collect();
    let huge = template_model(dir.path(), "tiny-huge", &big);
    let o = base(&huge, None).args(["ingest", export.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("template_vocab.txt") && err.contains("vocab_size 49408"), "{err}");
}

/// Runs `f` on a thread and waits at most `secs` for it: a hang fails the test instead of
/// stalling the suite.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs)).expect("the ingest ended instead of hanging")
}

fn engine(idx: &Path, model: &Path) -> echovault::engine::Engine {
    echovault::engine::Engine::open(&echovault::engine::EngineConfig {
        index_dir: idx.to_owned(),
        secret_file: None,
        model_dir: model.to_owned(),
        extra_models: vec![],
        space: None,
        device: tch::Device::Cpu,
        channel_order: Default::default(),
        sampling: echovault::media::FrameSampling::ALL,
        frame_batch: 8,
        max_frames: echovault::media::DEFAULT_MAX_FRAMES,
        mask: echovault::media::MaskMode::Off,
        template_vocab: None,
        vectors: None,
    })
    .unwrap()
}

#[test]
fn a_failing_stage_ends_the_run_with_an_error_and_a_rerun_completes() {
    use echovault::ingest::{ingest, IngestOptions};
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    phantoms(&export, "6", &["--studies", "2:2", "--formats", "avi,dicom-jpeg"]);
    let opts = IngestOptions { reports: Some(export.join("reports.jsonl")), workers: 2, queue: 1, ..Default::default() };
    let tiny = root().join("data-samples/echovault-tiny");
    let idx = dir.path().join("idx");

    // The writer panics (here: in the caller's progress callback) after three files.
    let (i2, e2, o2, t2) = (idx.clone(), export.clone(), opts.clone(), tiny.clone());
    let r = within(120, move || {
        let engine = engine(&i2, &t2);
        let r = ingest(&engine, &[e2], &o2, |p| assert!(p.done < 3, "progress callback gives up"));
        r.map(|s| s.ingested).map_err(|e| e.to_string())
    });
    let err = r.expect_err("a panicking writer fails the run");
    assert!(err.contains("write stage") && err.contains("panicked"), "{err}");

    // The embed stage fails (a tokenizer whose ids the text tower does not have: reports cannot
    // be embedded) once the videos are done: the run ends with that error.
    let big: String = (0..49_500).map(|i| format!("PHRASE NUMBER W{i:05X}\n")).collect();
    let vocab = dir.path().join("big-vocab.txt");
    std::fs::write(&vocab, big).unwrap();
    let (i2, e2, o2, t2) = (idx.clone(), export.clone(), opts.clone(), tiny.clone());
    let r = within(120, move || {
        let mut engine = engine(&i2, &t2);
        engine.embedders[0].tokenizer =
            echovault::tokenize::TextTokenizer::Template(Box::new(echovault::tokenize::TemplateTokenizer::load(&vocab, 77).unwrap()));
        ingest(&engine, &[e2], &o2, |_| {}).map(|s| s.ingested).map_err(|e| e.to_string())
    });
    let err = r.expect_err("a failing embed stage fails the run");
    assert!(err.contains("vocabulary"), "{err}");

    // What was committed is whole, and a normal run finishes the job.
    let c = contents(&idx);
    assert_consistent(&c);
    let r = within(300, move || {
        let engine = engine(&idx, &tiny);
        ingest(&engine, &[export], &opts, |_| {}).map_err(|e| e.to_string())
    });
    let s = r.unwrap();
    assert_eq!(s.ingested + s.skipped, 12, "{s:?}");
    assert_eq!(s.reports + s.reports_unchanged, 12);
    assert!(s.failed.is_empty(), "{:?}", s.failed);
}

#[cfg(unix)]
#[test]
fn failures_of_the_walk_are_reported_as_they_come_and_count_as_done() {
    use echovault::ingest::{ingest, IngestOptions};
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    phantoms(&export, "1", &["--studies", "1:1", "--formats", "dicom-native"]);
    std::fs::write(export.join("IM_BROKEN.dcm"), "a text file").unwrap();
    std::os::unix::fs::symlink("self.dcm", export.join("self.dcm")).unwrap();
    std::fs::write(export.join("notes.md"), "not media").unwrap();
    let idx = dir.path().join("idx");
    let tiny = root().join("data-samples/echovault-tiny");
    let (s, seen, last) = within(120, move || {
        let engine = engine(&idx, &tiny);
        let (mut seen, mut last) = (Vec::new(), None);
        let s = ingest(&engine, &[export], &IngestOptions::default(), |p| {
            seen.extend(p.failure.as_ref().map(|f| f.path.clone()));
            last = Some((p.done, p.found, p.failed));
        })
        .unwrap();
        (s, seen, last)
    });
    assert_eq!(s.ingested, 1, "{s:?}");
    let mut failed: Vec<&str> = s.failed.iter().map(|f| f.path.rsplit('/').next().unwrap()).collect();
    failed.sort_unstable();
    assert_eq!(failed, ["IM_BROKEN.dcm", "self.dcm"], "{s:?}");
    assert_eq!(seen.len(), 2, "each failure reported live: {seen:?}");
    assert_eq!(last, Some((3, 3, 2)), "done reaches found");
    let ignored: Vec<&str> = s.ignored.iter().map(|p| p.rsplit('/').next().unwrap()).collect();
    assert!(ignored.contains(&"notes.md") && ignored.contains(&"manifest.jsonl"), "{ignored:?}");
}

// ---- The frame bound and LibTorch failures in the embed stage (issue 20) ----

/// `echovault --json --index INDEX --model MODEL --device cpu ingest ARGS...` with one model.
fn ingest_with(index: &Path, model: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_echovault"));
    c.args(["--json", "--index", index.to_str().unwrap(), "--device", "cpu", "--model", model.to_str().unwrap(), "ingest"])
        .args(args)
        .args(["--progress", "none"])
        .env_remove("ECHOVAULT_INDEX")
        .env_remove("ECHOVAULT_MODEL");
    c
}

/// A video's record extras, stored frame embeddings and video vector.
type Stored = (BTreeMap<String, String>, Vec<Vec<f32>>, Vec<f32>);

/// What a one-model index stores of each video, by source.
fn videos_of(index: &Path) -> BTreeMap<String, Stored> {
    let index = Index::open(index, IndexOptions { passive_open: true, ..Default::default() }).unwrap();
    let space = index.spaces()[0].id;
    index
        .items(Some(Kind::Video))
        .unwrap()
        .into_iter()
        .map(|rec| {
            let frames = index.get_frames(space, &rec.id).unwrap().unwrap();
            let v = index.get_vector(space, Kind::Video, &rec.id).unwrap().unwrap();
            (rec.source.clone(), (rec.extra.clone(), frames, v))
        })
        .collect()
}

/// `ingest --max-frames 4` of 10-frame cines thins them evenly and records it: a DICOM cine
/// (NumberOfFrames known up front) keeps every 3rd frame (`sampling` 0::3: 0, 3, 6, 9); the
/// phantom AVI, whose header counts ticks rather than frames, is thinned as its frames come,
/// doubling the step (0::4: 0, 4, 8). Each records `frames_selected` 10 and `max_frames` 4, and
/// its stored frames are the unbounded run's frames at those rows (same model, same frames); its
/// video vector their mean. Without the flag (default 512) the cines are whole and record no bound.
#[test]
fn ingest_bounds_the_frames_of_a_video_evenly_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    phantoms(&export, "1", &["--studies", "2:2", "--formats", "avi,dicom-jpeg"]);
    let tiny = root().join("data-samples/echovault-tiny");
    let e = export.to_str().unwrap();
    let capped = dir.path().join("capped");
    let o = ingest_with(&capped, &tiny, &[e, "--max-frames", "4"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole = dir.path().join("whole");
    let o = ingest_with(&whole, &tiny, &[e]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (capped, whole) = (videos_of(&capped), videos_of(&whole));
    assert_eq!(capped.len(), 2, "an AVI and a DICOM cine");
    for (source, (extra, frames, v)) in &capped {
        let step = if source.ends_with(".avi") { 4 } else { 3 };
        let rows: Vec<usize> = (0..10).step_by(step).collect();
        assert_eq!(extra.get("sampling").cloned(), Some(format!("0::{step}")), "{source}");
        assert_eq!(extra.get("frames_selected").map(String::as_str), Some("10"), "{source}");
        assert_eq!(extra.get("max_frames").map(String::as_str), Some("4"), "{source}");
        assert_eq!(extra.get("embedded_frames").cloned(), Some(rows.len().to_string()), "{source}");
        let (whole_extra, whole_frames, _) = &whole[source];
        assert_eq!((whole_frames.len(), whole_extra.get("sampling").map(String::as_str)), (10, Some("0::1")), "{source}");
        assert!(!whole_extra.contains_key("frames_selected") && !whole_extra.contains_key("max_frames"));
        assert_eq!(frames.len(), rows.len());
        for (f, &r) in frames.iter().zip(&rows) {
            assert!(close(f, &whole_frames[r], 2e-3), "{source}: stored row is frame {r} (f16 storage)");
        }
        let picked: Vec<&Vec<f32>> = rows.iter().map(|&r| &whole_frames[r]).collect();
        assert!(close(v, &mean_unit(&picked), 2e-3), "{source}: the video vector is the mean of its kept frames");
    }
}

/// A real LibTorch allocation failure on CPU: the sample model's weights with a 1024 px input
/// (ConvNeXt takes any size), so one forward pass of 12 frames needs about a gigabyte more than
/// one of 3, ingested under a data-segment limit (`prlimit --data`). Limits are tried from low
/// to high; at the first under which the run succeeds, the batch of 12 could not be allocated
/// and was retried in halves (LibTorch's message in the warning), both videos were ingested,
/// nothing panicked, and the vectors equal those of an unlimited run. Runs under lower limits
/// end without a panic: a video LibTorch cannot embed even one frame at a time is a failure
/// row quoting LibTorch (exit 3 when the other was ingested, 1 when none was); no run under
/// any limit ends by a signal or another exit code.
#[cfg(target_os = "linux")]
#[test]
fn a_batch_libtorch_cannot_allocate_is_retried_in_halves_and_the_run_goes_on() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        panic!("prlimit (util-linux) is needed on PATH");
    }
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny-1024");
    std::fs::create_dir(&model).unwrap();
    let tiny = root().join("data-samples/echovault-tiny");
    for f in ["open_clip_model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny.join(f), model.join(f)).unwrap();
    }
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(tiny.join("open_clip_config.json")).unwrap()).unwrap();
    cfg["model_cfg"]["vision_cfg"]["image_size"] = 1024.into();
    std::fs::write(model.join("open_clip_config.json"), cfg.to_string()).unwrap();
    let export = dir.path().join("export");
    let o = Command::new(env!("CARGO_BIN_EXE_echovault"))
        .args(["phantom", "--out", export.to_str().unwrap(), "--patients", "2", "--studies", "1:1", "--size", "64"])
        .args(["--num-frames", "12", "--formats", "avi"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let args = [export.to_str().unwrap(), "--batch", "12", "--workers", "1"];
    let reference = dir.path().join("reference");
    let o = ingest_with(&reference, &model, &args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference = videos_of(&reference);
    assert_eq!(reference.len(), 2);

    let mut limit_mb = 400.0f64;
    let mut tried = Vec::new();
    loop {
        assert!(limit_mb < 8000.0, "no data limit up to 8 GB let the ingest through: {tried:?}");
        let index = dir.path().join(format!("limited-{}", limit_mb as u64));
        let c = ingest_with(&index, &model, &args);
        let c = Command::new("prlimit")
            .arg(format!("--data={}", (limit_mb * 1024.0 * 1024.0) as u64))
            .arg("--")
            .arg(c.get_program())
            .args(c.get_args())
            .env_remove("ECHOVAULT_INDEX")
            .env_remove("ECHOVAULT_MODEL")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&c.stderr).into_owned();
        let code = c.status.code();
        tried.push((limit_mb as u64, code));
        // Under every limit the program ends the run itself: never by a signal (an abort, a
        // segfault: `code` is then None) nor with another code, which the loop would otherwise
        // step over to the next limit.
        assert!(matches!(code, Some(0 | 1 | 3)), "limit {limit_mb:.0} MB: ended by {} (tried {tried:?}): {err}", c.status);
        if code == Some(0) {
            assert!(!err.contains("panicked"), "{err}");
            let s = json(&c);
            assert_eq!((s["ingested"].as_u64(), s["failed"].as_array().unwrap().len()), (Some(2), 0), "{s}");
            assert!(
                err.contains("LibTorch failed on a batch of 12") && err.contains("retrying in batches of"),
                "limit {limit_mb} MB: {err}"
            );
            assert!(err.contains("can't allocate memory") || err.contains("not enough memory"), "LibTorch's own message: {err}");
            for (source, (_, _, v)) in videos_of(&index) {
                assert!(close(&v, &reference[&source].2, 1e-4), "{source}: halved batches give the same vector");
            }
            break;
        }
        if matches!(code, Some(1 | 3)) {
            // Ended by the program itself: never by a panic, and a video that failed names LibTorch.
            assert!(!err.contains("panicked"), "limit {limit_mb} MB: {err}");
            let summary = serde_json::from_slice::<Value>(&c.stdout).ok().filter(|s| s.get("ingested").is_some());
            if let Some(s) = summary {
                for f in s["failed"].as_array().into_iter().flatten() {
                    let reason = f["reason"].as_str().unwrap_or_default().to_lowercase();
                    assert!(reason.contains("libtorch"), "{f}");
                    assert!(!reason.contains("frame #"), "LibTorch's C++ stack trace left out: {f}");
                }
                // Exit 3: something was done (a video or the sidecar reports).
                if code == Some(3) {
                    assert!(s["ingested"].as_u64().unwrap() + s["reports"].as_u64().unwrap() > 0, "{s}");
                }
                let failed_videos =
                    s["failed"].as_array().unwrap().iter().filter(|f| f["path"].as_str().unwrap().ends_with(".avi")).count();
                assert_eq!(s["ingested"].as_u64().unwrap() as usize + failed_videos, 2, "every video accounted for: {s}");
            }
        }
        limit_mb *= 1.15;
    }
}
