//! The clinical commands through the real binary with the phantom-trained sample model:
//! `zero-shot` on files (no index created) and on indexed videos (stored frames; `--store`),
//! `eval zero-shot` on an EchoNet-Dynamic style `FileList.csv`, `reid` and `timeline`.

#![allow(clippy::unwrap_used)]

mod common;

use common::{json, root};
use echovault::index::{Index, IndexOptions, Kind};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn ev(index: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_echovault"))
        .args(["--index", index.to_str().unwrap(), "--device", "cpu", "--model"])
        .arg(root().join("data-samples/echovault-phantom"))
        .args(args)
        .env_remove("ECHOVAULT_INDEX")
        .env_remove("ECHOVAULT_MODEL")
        .output()
        .unwrap()
}

fn ok(o: Output) -> Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    json(&o)
}

fn phantoms(out: &Path, extra: &[&str]) {
    let mut args = vec!["--json", "phantom", "--out", out.to_str().unwrap(), "--size", "64", "--frames", "12"];
    args.extend_from_slice(extra);
    let o = Command::new(env!("CARGO_BIN_EXE_echovault")).args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn zero_shot_on_files_and_on_indexed_videos() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    phantoms(&data, &["--patients", "3", "--studies", "2:2", "--formats", "avi,dicom-jpeg", "--pacemaker", "0.5"]);
    let manifest = echovault::phantom::read_manifest(&data.join("manifest.jsonl")).unwrap();
    let file = data.join(&manifest[0].file);
    let idx = dir.path().join("idx");

    // Files, no index: nothing is created; every built-in task reads.
    let out = ok(ev(&idx, &["--json", "zero-shot", file.to_str().unwrap()]));
    assert!(!idx.exists(), "zero-shot on files must not create an index");
    let listed = ok(ev(&idx, &["--json", "zero-shot", "--list-tasks"]));
    let tasks = listed["tasks"].as_object().unwrap();
    assert!(tasks.len() >= 10, "{listed}");
    let r = &out["results"][0];
    assert_eq!(r["frames"], 6, "zero-shot frames 0, 2, …, 10 of 12");
    assert_eq!(r["readings"].as_object().unwrap().len(), tasks.len());
    let ef = r["readings"]["ejection_fraction"]["value"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&ef), "{ef}");
    let class = r["readings"]["pericardial_effusion"]["class"].as_str().unwrap();
    assert!(tasks["pericardial_effusion"]["classes"].as_object().unwrap().contains_key(class));

    // Bad requests fail with a reason.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"x": {"mode": "binary", "prompts": []}}"#).unwrap();
    let o = ev(&idx, &["zero-shot", file.to_str().unwrap(), "--prompts", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.json"));
    let o = ev(&idx, &["zero-shot", file.to_str().unwrap(), "--task", "lvef_guess"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ejection_fraction"), "lists the tasks there are");
    let o = ev(&idx, &["--json", "zero-shot", dir.path().join("nope.avi").to_str().unwrap(), file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "one bad input of two: partial success");
    let v = json(&o);
    assert_eq!((v["results"].as_array().unwrap().len(), v["failed"].as_array().unwrap().len()), (1, 1));

    // Indexed: stored frames (f16) read like the decoded file; --store keeps the readings.
    ok(ev(&idx, &["--json", "ingest", data.to_str().unwrap(), "--progress", "none"]));
    let stored = ok(ev(&idx, &["--json", "zero-shot", "--all-indexed", "--store", "--task", "ejection_fraction,pacemaker"]));
    assert_eq!(stored["stored"], manifest.len(), "{stored}");
    let copy = dir.path().join("copy.avi");
    std::fs::copy(data.join(&manifest.iter().find(|t| t.file.ends_with(".avi")).unwrap().file), &copy).unwrap();
    let decoded = ok(ev(&idx, &["--json", "zero-shot", copy.to_str().unwrap(), "--task", "pacemaker"]));
    assert!(decoded["results"][0]["id"].is_null(), "a path the index does not know is decoded");
    let index = Index::open(&idx, IndexOptions { passive_open: true, ..Default::default() }).unwrap();
    let rec = index.items(Some(Kind::Video)).unwrap().into_iter().find(|r| r.source.ends_with(".avi")).unwrap();
    let from_index = stored["results"].as_array().unwrap().iter().find(|r| r["id"] == rec.id.0.as_str()).unwrap();
    let (a, b) = (
        from_index["readings"]["pacemaker"]["score"].as_f64().unwrap(),
        decoded["results"][0]["readings"]["pacemaker"]["score"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 2e-3, "stored frames read like the file: {a} vs {b}");
    assert_eq!(rec.extra["zero_shot.model"], "echovault-phantom");
    let kept: f64 = rec.extra["zero_shot.ejection_fraction"].parse().unwrap();
    assert_eq!(kept, from_index["readings"]["ejection_fraction"]["value"].as_f64().unwrap());
}

#[test]
fn eval_zero_shot_takes_an_echonet_filelist() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    phantoms(&data, &["--patients", "8", "--studies", "1:1", "--formats", "avi"]);
    let manifest = echovault::phantom::read_manifest(&data.join("manifest.jsonl")).unwrap();
    // EchoNet-Dynamic's layout: Videos/NAME.avi and FileList.csv (FileName without extension).
    let echonet = dir.path().join("EchoNet-Dynamic");
    std::fs::create_dir_all(echonet.join("Videos")).unwrap();
    let mut csv = String::from("FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split\n");
    for (i, t) in manifest.iter().enumerate() {
        let name = format!("0X{:04X}", 0xA000 + i);
        std::fs::copy(data.join(&t.file), echonet.join("Videos").join(format!("{name}.avi"))).unwrap();
        csv.push_str(&format!("{name},{},20,60,64,64,30,12,{}\n", t.ef, if i < 6 { "TEST" } else { "TRAIN" }));
    }
    csv.push_str("0XMISSING,50,20,60,64,64,30,12,TEST\n");
    std::fs::write(echonet.join("FileList.csv"), csv).unwrap();
    let idx = dir.path().join("no-index");
    let list = echonet.join("FileList.csv");
    let preds = dir.path().join("predictions.jsonl");
    let o = ev(
        &idx,
        &[
            "--json",
            "eval",
            "zero-shot",
            "--manifest",
            list.to_str().unwrap(),
            "--split",
            "test",
            "--resamples",
            "100",
            "--predictions",
            preds.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(3), "the missing video is a failed input: {}", String::from_utf8_lossy(&o.stderr));
    let v = json(&o);
    assert!(!idx.exists());
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "only EF is labelled: {v}");
    assert_eq!((rows[0]["task"].as_str(), rows[0]["n"].as_u64()), (Some("ejection_fraction"), Some(6)));
    let (mae, lo, hi) = (rows[0]["value"].as_f64().unwrap(), rows[0]["lo"].as_f64().unwrap(), rows[0]["hi"].as_f64().unwrap());
    assert!(lo < hi, "[{lo}, {hi}]");
    // The table's MAE is the mean error of the per-video predictions against FileList's EF.
    let preds: Vec<Value> = std::fs::read_to_string(&preds).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(preds.len(), 6);
    let errors: Vec<f64> = preds
        .iter()
        .map(|p| {
            let (v, l) =
                (p["readings"]["ejection_fraction"]["value"].as_f64().unwrap(), p["labels"]["ejection_fraction"].as_f64().unwrap());
            assert!((0.0..=100.0).contains(&v));
            (v - l).abs()
        })
        .collect();
    assert!((errors.iter().sum::<f64>() / 6.0 - mae).abs() < 1e-9, "{mae} vs {errors:?}");
    let truth: Vec<f64> = manifest[..6].iter().map(|t| t.ef).collect();
    let labels: Vec<f64> = preds.iter().map(|p| p["labels"]["ejection_fraction"].as_f64().unwrap()).collect();
    assert_eq!(labels, truth, "labels read from FileList.csv's EF column, TEST rows only");
    assert_eq!(rows[0]["paper"], "MAE 7.1 % (external)");
    let failed = v["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["input"].as_str().unwrap().contains("0XMISSING"), "{failed:?}");
    assert!(v["markdown"].as_str().unwrap().contains("| ejection_fraction | MAE (%) | 6 |"), "{}", v["markdown"]);
}

#[test]
fn reid_and_timeline_over_indexed_studies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    phantoms(&data, &["--patients", "4", "--studies", "3:3", "--formats", "dicom-jpeg,avi", "--events", "1"]);
    let idx = dir.path().join("idx");
    // Two models, as the paper uses them: a copy of the phantom model with a template
    // vocabulary plays EchoCLIP-R.
    let r_model = dir.path().join("phantom-r");
    std::fs::create_dir_all(&r_model).unwrap();
    for f in std::fs::read_dir(root().join("data-samples/echovault-phantom")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, r_model.join(f.file_name().unwrap())).unwrap();
    }
    std::fs::copy(root().join("data-samples/template-vocab.txt"), r_model.join("template_vocab.txt")).unwrap();
    let both = |args: &[&str]| {
        let mut all = vec!["--model", r_model.to_str().unwrap()];
        all.extend_from_slice(args);
        ev(&idx, &all)
    };
    ok(both(&[
        "--json",
        "ingest",
        data.to_str().unwrap(),
        "--reports",
        data.join("reports.jsonl").to_str().unwrap(),
        "--progress",
        "none",
    ]));
    // Zero-shot reads with the BPE model, similarity and retrieval use the template one.
    let f = data.join(&echovault::phantom::read_manifest(&data.join("manifest.jsonl")).unwrap()[0].file);
    assert_eq!(ok(both(&["--json", "zero-shot", f.to_str().unwrap(), "--task", "pacemaker"]))["model"], "echovault-phantom");
    assert_eq!(ok(both(&["--json", "eval", "retrieval", "--resamples", "10"]))["model"], "phantom-r");
    assert_eq!(ok(both(&["--json", "reid", f.to_str().unwrap()]))["space"], "phantom-r");
    let index = Index::open(&idx, IndexOptions { passive_open: true, ..Default::default() }).unwrap();
    let videos = index.items(Some(Kind::Video)).unwrap();
    assert!(videos.iter().any(|v| v.source.ends_with(".avi")), "the export has AVI videos");
    assert!(videos.iter().all(|v| v.patient.is_some()), "AVI videos take their patient from the report manifest");
    let patient_of: std::collections::HashMap<String, String> =
        echovault::phantom::read_manifest(&data.join("manifest.jsonl")).unwrap().into_iter().map(|t| (t.study, t.patient)).collect();
    let q = &videos[0];
    drop(index);

    let r = ok(ev(&idx, &["--json", "reid", "--video-id", q.id.as_str(), "-k", "5"]));
    let cands = r["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 5);
    for c in cands {
        assert_ne!(c["study"].as_str(), q.study.as_deref(), "the query's own study is not a candidate");
        assert_ne!(c["date"].as_str(), q.date.map(|d| d.to_string()).as_deref(), "studies of the same date are left out");
        // Same patient by the phantom's truth (study → patient), not by the keys compared.
        let truth_same = patient_of[c["study"].as_str().unwrap()] == patient_of[q.study.as_deref().unwrap()];
        assert_eq!(c["same_patient"].as_bool(), Some(truth_same), "{c}");
    }
    let scores: Vec<f64> = cands.iter().map(|c| c["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]));

    // A DICOM file the index does not hold (a copy elsewhere) still brings its study, date and
    // (keyed) patient from its header: its own study is left out, same-patient studies flagged.
    let dcm =
        echovault::phantom::read_manifest(&data.join("manifest.jsonl")).unwrap().into_iter().find(|t| t.file.ends_with(".dcm")).unwrap();
    let outside = dir.path().join("outside.dcm");
    std::fs::copy(data.join(&dcm.file), &outside).unwrap();
    let r = ok(ev(&idx, &["--json", "reid", outside.to_str().unwrap(), "-k", "11"]));
    assert_eq!(r["study"].as_str(), Some(dcm.study.as_str()), "{r}");
    assert_eq!(r["date"].as_str(), Some(dcm.date.as_str()));
    let key = r["patient"].as_str().unwrap();
    assert!(key.starts_with("p-") && !key.contains(&dcm.patient));
    let cands = r["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 11, "the 12 studies but its own");
    assert!(cands.iter().all(|c| c["study"].as_str() != Some(dcm.study.as_str())));
    let flagged = cands.iter().filter(|c| c["same_patient"] == true).count();
    let truth = cands.iter().filter(|c| patient_of[c["study"].as_str().unwrap()] == dcm.patient).count();
    assert_eq!(flagged, truth);
    assert_eq!(truth, 2, "the patient's two other studies are among the candidates");

    let events: Vec<Value> =
        std::fs::read_to_string(data.join("events.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let e = &events[0];
    let patient = e["patient"].as_str().unwrap();
    let t = ok(ev(&idx, &["--json", "timeline", "--patient-id", patient]));
    // (Phantom AVI study ids are file stems that contain the phantom's id; the key must not.)
    let key = t["patient"].as_str().unwrap();
    assert!(key.starts_with("p-") && !key.contains(patient), "the patient appears only as its key: {key}");
    let rows = t["studies"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows[0]["similarity"].is_null() && rows[1..].iter().all(|r| r["similarity"].is_f64()));
    let dates: Vec<&str> = rows.iter().map(|r| r["date"].as_str().unwrap()).collect();
    assert!(dates.windows(2).all(|w| w[0] <= w[1]), "{dates:?}");
    // Around the event: compared with the earliest study, after-event studies marked.
    let t = ok(ev(
        &idx,
        &["--json", "timeline", "--patient", t["patient"].as_str().unwrap(), "--event", e["date"].as_str().unwrap(), "--window", "2000"],
    ));
    let rows = t["studies"].as_array().unwrap();
    assert!(rows[1..].iter().all(|r| r["reference"] == rows[0]["date"]));
    let after = rows.iter().filter(|r| r["after_event"] == true).count();
    assert!(after >= 1 && after < rows.len(), "{t}");
    let o = ev(&idx, &["timeline", "--patient", "p-nobody"]);
    assert_eq!(o.status.code(), Some(1));
}
