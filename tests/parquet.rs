//! `echovault export --format parquet` and `echovault import`, against peers: pyarrow and
//! DuckDB read the files we write (tests/support/parquet_peer.py), and what they read is
//! compared with what the CLI says of the same index (`search --json` hits and scores, `info`);
//! pyarrow writes a file we import. Phantom DICOM cines with reports, the tiny sample model.

#![allow(clippy::unwrap_used)]

mod common;

use common::{echovault, json, root};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `parquet_peer.py ARGS...` with the project's venv.
fn peer(args: &[&str]) -> Value {
    let out = Command::new(root().join(".venv/bin/python")).arg(root().join("tests/support/parquet_peer.py")).args(args).output().unwrap();
    assert!(out.status.success(), "parquet_peer.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    if out.stdout.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Phantoms (3 patients, 2 studies each, DICOM with reports) ingested into `tmp/idx`; the
/// phantom directory and its manifest rows.
fn archive(tmp: &Path) -> (PathBuf, PathBuf, Vec<Value>) {
    let data = tmp.join("ph");
    let o = echovault(
        &tmp.join("unused"),
        &[
            "phantom",
            "--out",
            s(&data),
            "--patients",
            "3",
            "--studies",
            "2:2",
            "--size",
            "64",
            "--num-frames",
            "4",
            "--formats",
            "dicom-native",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let index = tmp.join("idx");
    let o =
        echovault(&index, &["ingest", s(&data.join("dicom")), "--reports", s(&data.join("reports.jsonl")), "--progress", "none", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json(&o)["ingested"], 6);
    let manifest =
        std::fs::read_to_string(data.join("manifest.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (index, data, manifest)
}

/// `export ARGS... --out FILE --json` (exit 0): its summary.
fn export(index: &Path, file: &Path, args: &[&str]) -> Value {
    let mut all = vec!["export", "--out", s(file), "--json"];
    all.extend_from_slice(args);
    let o = echovault(index, &all);
    assert_eq!(o.status.code(), Some(0), "export {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    json(&o)
}

/// The rows a peer read, by `space/id`.
fn by_key(read: &Value) -> BTreeMap<String, Value> {
    read["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (format!("{}/{}", r["space"].as_str().unwrap(), r["id"].as_str().unwrap()), r.clone()))
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn counts(index: &Path) -> Value {
    json(&echovault(index, &["info", "--json"]))["counts"].clone()
}

/// `search --id ID --kind KIND --exact` hits (with paths).
fn hits_like(index: &Path, id: &str, kind: &str) -> Vec<Value> {
    let o = echovault(index, &["search", "--id", id, "--kind", kind, "-k", "50", "--exact", "--json", "--with-paths"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    json(&o)["hits"].as_array().unwrap().clone()
}

#[test]
fn pyarrow_and_duckdb_read_what_the_cli_says_of_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let (index, data, manifest) = archive(tmp.path());
    let file = tmp.path().join("all.parquet");
    let summary = export(&index, &file, &["--format", "parquet", "--frames", "--with-paths"]);
    let c = counts(&index);
    assert_eq!(summary["rows"], 18, "{summary}");
    assert_eq!((c["video"].as_u64(), c["report"].as_u64(), c["study"].as_u64()), (Some(6), Some(6), Some(6)));
    let read = peer(&["read", s(&file)]);
    let rows = by_key(&read);
    assert_eq!(rows.len(), 18);

    // The metadata: format, the space and its model identity (the checkpoint's sha256), secret.
    let meta = &read["metadata"];
    assert_eq!(meta["echovault.format"], "echovault-export/1");
    assert_eq!(meta["echovault.rows"], "18");
    assert_eq!(meta["echovault.patient_keys"], "18", "every phantom item has a patient");
    assert_eq!(meta["echovault.secret_fingerprint"].as_str().unwrap().len(), 64);
    let spaces: Value = serde_json::from_str(meta["echovault.spaces"].as_str().unwrap()).unwrap();
    assert_eq!(spaces[0]["name"], "echovault-tiny");
    assert_eq!(spaces[0]["dim"], 64);
    let weights = std::fs::read(root().join("data-samples/echovault-tiny/open_clip_model.safetensors")).unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&weights));
    assert_eq!(spaces[0]["model"]["checkpoint"], sha.as_str());
    assert_eq!(floats(&spaces[0]["probe"]["text"]).len(), 64);
    assert_eq!(read["schema"]["vector"], "fixed_size_list<item: float>[64]");

    // DuckDB reads the same rows and vectors as pyarrow.
    let ddb = read["duckdb"]["rows"].as_array().unwrap();
    assert_eq!(ddb.len(), 18);
    for d in ddb {
        let r = &rows[&format!("{}/{}", d["space"].as_str().unwrap(), d["id"].as_str().unwrap())];
        for f in ["kind", "patient", "study", "date"] {
            assert_eq!(d[f], r[f], "{f} of {}", d["id"]);
        }
        assert_eq!(d["dim"], 64);
        assert_eq!(floats(&d["vector"]), floats(&r["vector"]));
    }
    assert_eq!(read["duckdb"]["by_kind"], serde_json::json!({"video": 6, "report": 6, "study": 6}));

    // What the CLI says: each hit's fields are its row's, each score the dot product of rows.
    for kind in ["video", "report", "study"] {
        let ids: Vec<&String> = rows.iter().filter(|(_, r)| r["kind"] == kind).map(|(k, _)| k).collect();
        let mut seen = BTreeSet::new();
        for q in &ids[..2] {
            let qv = floats(&rows[*q]["vector"]);
            let hits = hits_like(&index, rows[*q]["id"].as_str().unwrap(), kind);
            assert_eq!(hits.len(), 5, "{kind}");
            for h in &hits {
                let r = &rows[&format!("echovault-tiny/{}", h["id"].as_str().unwrap())];
                for f in ["kind", "patient", "date", "study", "source"] {
                    assert_eq!(h[f], r[f], "{f} of {kind} {}", h["id"]);
                }
                if kind == "video" {
                    assert_eq!(h["sop"], r["extra"]["sop_uid"], "{}", h["id"]);
                    assert!(r["source"].as_str().unwrap().starts_with(s(&data)));
                }
                let d = dot(&qv, &floats(&r["vector"]));
                assert!((h["score"].as_f64().unwrap() - d).abs() < 1e-4, "{kind} {q} → {}: search {} vs file {d}", h["id"], h["score"]);
                seen.insert(h["id"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(seen.len(), 6, "{kind}: every item of the file is one the index has");
    }
    // Frame embeddings: the video vector is the normalised mean of its frames (f16 precision).
    for r in rows.values().filter(|r| r["kind"] == "video") {
        let frames: Vec<Vec<f64>> = r["frame_embeddings"].as_array().unwrap().iter().map(floats).collect();
        assert_eq!(frames.len().to_string(), r["extra"]["embedded_frames"].as_str().unwrap());
        let mean: Vec<f64> = (0..64).map(|j| frames.iter().map(|f| f[j]).sum::<f64>()).collect();
        let cos = dot(&mean, &floats(&r["vector"])) / dot(&mean, &mean).sqrt();
        assert!(cos > 0.999, "{}: {cos}", r["id"]);
    }
    for r in rows.values().filter(|r| r["kind"] != "video") {
        assert!(r["frame_embeddings"].is_null());
    }
    // Reports carry their text; the manifest's patients are never in the file, only keys.
    assert!(rows.values().any(|r| r["kind"] == "report" && r["text"].as_str().is_some_and(|t| !t.is_empty())));
    let all = read["rows"].to_string();
    for m in &manifest {
        assert!(!all.contains(&format!("\"{}\"", m["patient"].as_str().unwrap())), "a raw patient id in the file");
    }
}

#[test]
fn export_filters_as_search_does_and_leaves_paths_out_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let (index, data, manifest) = archive(tmp.path());
    let full_file = tmp.path().join("full.parquet");
    export(&index, &full_file, &["--with-paths"]);
    let full = by_key(&peer(&["read", s(&full_file)]));
    let pick = |file: &str, args: &[&str]| -> BTreeSet<String> {
        let f = tmp.path().join(file);
        export(&index, &f, args);
        by_key(&peer(&["read", s(&f)])).into_keys().collect()
    };
    let expect =
        |keep: &dyn Fn(&Value) -> bool| -> BTreeSet<String> { full.iter().filter(|(_, r)| keep(r)).map(|(k, _)| k.clone()).collect() };

    // --patient KEY, and --patient-id MRN keyed with the index's secret.
    let video = full.values().find(|r| r["kind"] == "video").unwrap();
    let key = video["patient"].as_str().unwrap();
    let mrn = manifest.iter().find(|m| video["source"].as_str().unwrap().ends_with(m["file"].as_str().unwrap())).unwrap()["patient"]
        .as_str()
        .unwrap();
    let by_patient = pick("p.parquet", &["--patient", key]);
    assert_eq!(by_patient, expect(&|r| r["patient"] == key));
    assert_eq!(by_patient.len(), 6, "2 studies: 2 videos, 2 reports, 2 studies");
    assert_eq!(pick("mrn.parquet", &["--patient-id", mrn]), by_patient);
    // --since / --until with --kind, --study.
    let mut dates: Vec<&str> = full.values().filter_map(|r| r["date"].as_str()).collect();
    dates.sort();
    let mid = dates[dates.len() / 2];
    let since = pick("since.parquet", &["--since", mid, "--kind", "video"]);
    assert_eq!(since, expect(&|r| r["kind"] == "video" && r["date"].as_str().unwrap() >= mid));
    assert!(!since.is_empty() && since.len() < 6);
    let until = pick("until.parquet", &["--until", mid, "--kind", "report", "--kind", "study"]);
    assert_eq!(until, expect(&|r| r["kind"] != "video" && r["date"].as_str().unwrap() <= mid));
    let study = video["study"].as_str().unwrap();
    assert_eq!(pick("study.parquet", &["--study", study]), expect(&|r| r["study"] == study));

    // Without --with-paths: no source column, no path anywhere.
    let f = tmp.path().join("nopaths.parquet");
    export(&index, &f, &[]);
    let read = peer(&["read", s(&f)]);
    assert!(read["schema"].get("source").is_none(), "{}", read["schema"]);
    assert_eq!(read["metadata"]["echovault.with_paths"], "false");
    assert!(!read.to_string().contains(s(&data)), "a path in a file exported without --with-paths");

    // float16 vectors: the same values to half precision.
    let f = tmp.path().join("f16.parquet");
    let sum = export(&index, &f, &["--vector-type", "float16", "--frames"]);
    assert_eq!(sum["vector_type"], "float16");
    let half = peer(&["read", s(&f)]);
    assert_eq!(half["schema"]["vector"], "fixed_size_list<item: halffloat>[64]");
    for (k, r) in by_key(&half) {
        let (a, b) = (floats(&r["vector"]), floats(&full[&k]["vector"]));
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-3), "{k}");
    }
    // A space the index does not hold, a missing index: errors naming them.
    let o = echovault(&index, &["export", "--out", s(&tmp.path().join("x.parquet")), "--space", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("'nope'"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!tmp.path().join("x.parquet").exists());
}

/// The fields search shows of each hit, and its score, for every query.
fn answers(index: &Path, queries: &[(&str, &str)]) -> Vec<Vec<(String, String, i64)>> {
    queries
        .iter()
        .map(|(id, kind)| {
            hits_like(index, id, kind)
                .iter()
                .map(|h| {
                    let fields = format!("{} {} {} {} {}", h["kind"], h["patient"], h["date"], h["study"], h["source"]);
                    (h["id"].as_str().unwrap().to_owned(), fields, (h["score"].as_f64().unwrap() * 1e5).round() as i64)
                })
                .collect()
        })
        .collect()
}

#[test]
fn import_rebuilds_the_index_checks_model_and_secret_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (index, _, _) = archive(t);
    let file = t.join("all.parquet");
    export(&index, &file, &["--frames", "--with-paths"]);
    let import = |target: &Path, args: &[&str]| {
        let mut all = vec!["import", s(&file), "--json"];
        all.extend_from_slice(args);
        echovault(target, &all)
    };

    // The index's secret is stored in it: a new index would key patients with a new secret.
    let fresh = t.join("fresh");
    let o = import(&fresh, &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = json(&o)["error"].as_str().unwrap().to_owned();
    assert!(err.contains(s(&file)) && err.contains("--secret-file") && err.contains("--foreign-patient-keys"), "{err}");
    assert!(!fresh.exists(), "refused before the index was created");
    // Moved out of the index (same keys), the secret makes a new index that keys alike.
    let secret = t.join("secret.hex");
    let o = echovault(&index, &["repair", "--export-secret", s(&secret)]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let o = import(&fresh, &["--secret-file", s(&secret)]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let first = json(&o);
    assert_eq!((first["rows"].as_u64(), first["added"].as_u64(), first["updated"].as_u64()), (Some(18), Some(18), Some(0)), "{first}");
    assert_eq!(first["spaces_created"], serde_json::json!(["echovault-tiny"]));
    assert_eq!(counts(&fresh), counts(&index));
    // The same searches give the same hits, fields and scores.
    let rows = by_key(&peer(&["read", s(&file)]));
    let queries: Vec<(&str, &str)> = ["video", "report", "study"]
        .iter()
        .map(|k| (rows.values().find(|r| r["kind"] == *k).unwrap()["id"].as_str().unwrap(), *k))
        .collect();
    assert_eq!(answers(&fresh, &queries), answers(&index, &queries));
    let check = echovault(&fresh, &["repair", "--check", "--json"]);
    assert_eq!(check.status.code(), Some(0), "{}", String::from_utf8_lossy(&check.stdout));
    // Exported again, the imported index gives back the same rows.
    let again = t.join("again.parquet");
    export(&fresh, &again, &["--frames", "--with-paths"]);
    let back = by_key(&peer(&["read", s(&again)]));
    assert_eq!(back.len(), rows.len());
    for (k, r) in &rows {
        let b = &back[k];
        for f in ["kind", "study", "patient", "date", "num_frames", "fps", "text", "extra", "source", "frame_embeddings"] {
            assert_eq!(b[f], r[f], "{f} of {k}");
        }
        assert!(floats(&b["vector"]).iter().zip(floats(&r["vector"])).all(|(x, y)| (x - y).abs() < 1e-6), "{k}");
    }
    // A second import changes nothing.
    let second = json(&import(&fresh, &[]));
    assert_eq!(
        (second["added"].as_u64(), second["updated"].as_u64(), second["unchanged"].as_u64()),
        (Some(0), Some(0), Some(18)),
        "{second}"
    );
    assert_eq!(counts(&fresh), counts(&index));

    // A file pyarrow wrote (its own writer, our metadata kept) imports the same.
    let theirs = t.join("pyarrow.parquet");
    peer(&["rewrite", s(&file), s(&theirs)]);
    let other = t.join("from-pyarrow");
    let o = echovault(&other, &["import", s(&theirs), "--secret-file", s(&secret), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json(&o)["added"], 18);
    assert_eq!(answers(&other, &queries), answers(&index, &queries));

    // Another model's vectors for the same space name: refused, naming the file and both models.
    let alien = t.join("other-model.parquet");
    peer(&["rewrite", s(&file), s(&alien), "--other-model"]);
    let o = echovault(&fresh, &["import", s(&alien)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(s(&alien)) && err.contains("another model") && err.contains("probe") && err.contains("0000000000"), "{err}");
    assert_eq!(counts(&fresh), counts(&index));

    // Without frame embeddings: searchable, marked, and `repair --check` finds nothing wrong.
    let lean = t.join("lean.parquet");
    export(&index, &lean, &[]);
    let slim = t.join("slim");
    let o = echovault(&slim, &["import", s(&lean), "--secret-file", s(&secret), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let check = echovault(&slim, &["repair", "--check", "--json"]);
    assert_eq!(check.status.code(), Some(0), "{}", String::from_utf8_lossy(&check.stdout));
    let hits = hits_like(&slim, queries[0].0, "video");
    assert_eq!(hits.len(), 5);
    assert!(hits.iter().all(|h| h["source"].as_str().unwrap().starts_with("imported from")), "no paths in the file: {hits:?}");

    // --foreign-patient-keys takes keys made with another secret as they are.
    let foreign = t.join("foreign");
    let o = echovault(&foreign, &["import", s(&file), "--foreign-patient-keys", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(counts(&foreign), counts(&index));
    // Not a Parquet file: an error naming it.
    let junk = t.join("junk.parquet");
    std::fs::write(&junk, b"not parquet").unwrap();
    let o = echovault(&fresh, &["import", s(&junk)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains(s(&junk)));

    // Files without model probes: their checkpoints, where known, must agree.
    let (ca, cb) = ("a".repeat(64), "b".repeat(64));
    let (pa, pb) = (t.join("probeless-a.parquet"), t.join("probeless-b.parquet"));
    peer(&["rewrite", s(&file), s(&pa), "--no-probe", "--checkpoint", &ca]);
    peer(&["rewrite", s(&file), s(&pb), "--no-probe", "--checkpoint", &cb]);
    let both = t.join("both");
    let o = echovault(&both, &["import", s(&pa), s(&pb), "--secret-file", s(&secret)]);
    assert_eq!(o.status.code(), Some(1), "two models' files in one import");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(s(&pa)) && err.contains(s(&pb)) && err.contains(&ca[..12]) && err.contains(&cb[..12]), "{err}");
    assert!(!both.exists(), "refused before the index was created");
    // A space made from a probe-less file keeps its checkpoint as its identity: another
    // checkpoint's file is refused, with or without a probe, and nothing changes.
    let lone = t.join("lone");
    let o = echovault(&lone, &["import", s(&pa), "--secret-file", s(&secret)]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    for other in [&pb, &file] {
        let o = echovault(&lone, &["import", s(other), "--secret-file", s(&secret)]);
        assert_eq!(o.status.code(), Some(1), "{}", other.display());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(s(other)) && err.contains("another model") && err.contains(&ca[..12]), "{err}");
    }
    assert_eq!(counts(&lone), counts(&index));
    // Non-ASCII footer strings on the refusal paths: errors, not panics.
    let odd = t.join("odd-secret.parquet");
    peer(&["rewrite", s(&file), s(&odd), "--secret", &"é".repeat(20)]);
    let o = echovault(&fresh, &["import", s(&odd)]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&"é".repeat(12)));
    let odd = t.join("odd-model.parquet");
    peer(&["rewrite", s(&file), s(&odd), "--other-model", "--checkpoint", &"é".repeat(40)]);
    let o = echovault(&fresh, &["import", s(&odd)]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&"é".repeat(12)));
    // A dimension of 0 or an absurd one: refused, naming the file, before an index is made.
    for dim in ["0", "100000000"] {
        let bad = t.join(format!("dim-{dim}.parquet"));
        peer(&["rewrite", s(&file), s(&bad), "--dim", dim]);
        let target = t.join(format!("dim-{dim}"));
        let o = echovault(&target, &["import", s(&bad), "--secret-file", s(&secret)]);
        assert_eq!(o.status.code(), Some(1), "dim {dim}: {}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(s(&bad)) && err.contains(&format!("{dim}-d")), "{err}");
        assert!(!target.exists(), "dim {dim}: no index made");
    }
}
