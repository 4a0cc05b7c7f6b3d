//! The task algorithms (DESIGN §6) against an independent numpy implementation written from the
//! design text (`tools/tasks/tasks_ref.py`), fed the same embeddings and scores: zero-shot
//! binary, regression and categorical readings, AUC, and bootstrap intervals (the same seeded
//! resamples, so the intervals must agree too).

#![allow(clippy::unwrap_used)]

mod common;

use common::root;
use echovault::tasks::metrics::{auc, bootstrap, mae};
use echovault::tasks::zeroshot::{binary_score, categorical, regression_estimate};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use std::process::Command;

fn unit(rng: &mut StdRng, d: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn close(a: f64, b: &Value, tol: f64) -> bool {
    b.as_f64().is_some_and(|b| (a - b).abs() <= tol)
}

#[test]
fn task_algorithms_match_an_independent_numpy_implementation() {
    let mut rng = StdRng::seed_from_u64(8);
    let mut cases = Vec::new();
    let mut ours: Vec<Value> = Vec::new();
    for t in 0..12 {
        let d = 16 + t;
        let frames: Vec<Vec<f32>> = (0..1 + t % 5).map(|_| unit(&mut rng, d)).collect();
        let prompts: Vec<Vec<f32>> = (0..1 + t % 3).map(|_| unit(&mut rng, d)).collect();
        ours.push(json!(binary_score(&frames, &prompts)));
        cases.push(json!({"op": "binary", "frames": frames, "prompts": prompts}));
        let n = 11 + t * 7;
        let values: Vec<f64> = (0..n).map(|i| i as f64 * 100.0 / (n - 1) as f64).collect();
        let mut prompts: Vec<Vec<f32>> = (0..n).map(|_| unit(&mut rng, d)).collect();
        // Exact ties: some prompts repeat an earlier one (ranked in prompt order on both sides).
        for k in (3..n).step_by(4) {
            prompts[k] = prompts[k - 3].clone();
        }
        ours.push(json!(regression_estimate(&frames, &prompts, &values, 0.2)));
        cases.push(json!({"op": "regression", "frames": frames, "prompts": prompts, "values": values, "head": 0.2}));
        let mut classes: Vec<Vec<Vec<f32>>> = (0..2 + t % 3).map(|_| (0..1 + t % 2).map(|_| unit(&mut rng, d)).collect()).collect();
        if t % 2 == 0 {
            // A tie for the best class: a later class repeats the first (the first wins).
            let last = classes.len() - 1;
            classes[last] = classes[0].clone();
            let best_is_first = categorical(&frames, &classes).map(|(b, _)| b);
            assert_ne!(best_is_first, Some(last), "equal scores go to the first class");
        }
        ours.push(categorical(&frames, &classes).map_or(Value::Null, |(best, scores)| json!({"best": best, "scores": scores})));
        cases.push(json!({"op": "categorical", "frames": frames, "classes": classes}));
        // Scores with ties (rounded), labels unbalanced.
        let m = 20 + t * 9;
        let scores: Vec<f64> = (0..m).map(|_| (rng.random_range(0.0..1.0f64) * 20.0).round() / 20.0).collect();
        let labels: Vec<u8> = (0..m).map(|i| u8::from(rng.random_range(0.0..1.0f64) < 0.3 + 0.2 * scores[i])).collect();
        let split = |idx: &[usize]| {
            let pos: Vec<f64> = idx.iter().filter(|&&i| labels[i] == 1).map(|&i| scores[i]).collect();
            let neg: Vec<f64> = idx.iter().filter(|&&i| labels[i] == 0).map(|&i| scores[i]).collect();
            (pos, neg)
        };
        let (pos, neg) = split(&(0..m).collect::<Vec<_>>());
        ours.push(json!(auc(&pos, &neg)));
        cases.push(json!({"op": "auc", "pos": pos, "neg": neg}));
        let seed = 1000 + t as u64;
        let est = bootstrap(m, 200, seed, |idx| {
            let (p, n) = split(idx);
            auc(&p, &n)
        });
        ours.push(json!(est));
        cases.push(json!({"op": "bootstrap_auc", "scores": scores, "labels": labels, "resamples": 200, "seed": seed}));
        let pred: Vec<f64> = (0..m).map(|_| rng.random_range(10.0..80.0)).collect();
        let truth: Vec<f64> = pred.iter().map(|p| p + rng.random_range(-15.0..15.0)).collect();
        let est = bootstrap(m, 200, seed, |idx| {
            let p: Vec<f64> = idx.iter().map(|&i| pred[i]).collect();
            let t: Vec<f64> = idx.iter().map(|&i| truth[i]).collect();
            mae(&p, &t)
        });
        ours.push(json!(est));
        cases.push(json!({"op": "bootstrap_mae", "pred": pred, "truth": truth, "resamples": 200, "seed": seed}));
    }
    let theirs = python(&cases);
    assert_eq!(theirs.len(), ours.len());
    let mut checked = 0;
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        let op = cases[i]["op"].as_str().unwrap();
        match op {
            "binary" | "auc" => assert!(close(a.as_f64().unwrap(), b, 1e-6), "{op} #{i}: {a} vs {b}"),
            "regression" => assert!(close(a.as_f64().unwrap(), b, 1e-9), "{op} #{i}: {a} vs {b}"),
            "categorical" => {
                assert_eq!(a["best"], b["best"], "{op} #{i}");
                assert_eq!(a["scores"].as_array().unwrap().len(), b["scores"].as_array().unwrap().len(), "{op} #{i}");
                for (x, y) in a["scores"].as_array().unwrap().iter().zip(b["scores"].as_array().unwrap()) {
                    assert!(close(x.as_f64().unwrap(), y, 1e-6), "{op} #{i}: {x} vs {y}");
                }
            }
            _ => {
                for k in ["value", "lo", "hi"] {
                    assert!(close(a[k].as_f64().unwrap(), &b[k], 1e-9), "{op} #{i} {k}: {a} vs {b}");
                }
                assert_eq!(a["undefined"], b["undefined"], "{op} #{i}");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 72);
}

fn python(cases: &[Value]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cases.json");
    std::fs::write(&input, json!({ "cases": cases }).to_string()).unwrap();
    let out = Command::new(root().join(".venv/bin/python")).arg(root().join("tools/tasks/tasks_ref.py")).arg(&input).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["results"].as_array().unwrap().clone()
}

fn floats_close(a: &Value, b: &Value) -> bool {
    let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() <= 1e-12)
}

#[test]
fn reid_transitions_timeline_and_retrieval_match_the_numpy_implementation() {
    use echovault::tasks::pairs::{reid_pairs, retrieval_ranks, timeline, transition_scores, Event, Visit};
    let mut rng = StdRng::seed_from_u64(21);
    let mut cases = Vec::new();
    let mut ours = Vec::new();
    for t in 0..6 {
        let d = 8 + t;
        // Patients with a few studies each; vectors of a patient near its own centre.
        let n = 12 + t * 5;
        let centres: Vec<Vec<f32>> = (0..5).map(|_| unit(&mut rng, d)).collect();
        let mut vectors = Vec::new();
        let (mut patients, mut studies) = (Vec::new(), Vec::new());
        for i in 0..n {
            let p = rng.random_range(0..5usize);
            let noise = unit(&mut rng, d);
            let v: Vec<f32> = centres[p].iter().zip(&noise).map(|(c, e)| c + 0.6 * e).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            vectors.push(v.into_iter().map(|x| x / norm).collect::<Vec<f32>>());
            patients.push(format!("p{p}"));
            studies.push(format!("s{p}-{}", i % 3));
        }
        for max_pairs in [10_000, 40] {
            let r = reid_pairs(&vectors, &patients, &studies, max_pairs, 77 + t as u64);
            ours.push(serde_json::to_value(&r).unwrap());
            cases.push(json!({"op": "reid_pairs", "vectors": vectors, "patients": patients, "studies": studies, "max_pairs": max_pairs, "seed": 77 + t as u64}));
        }
        let visits: Vec<Visit> =
            (0..n).map(|i| Visit { patient: patients[i].clone(), day: rng.random_range(0..2000), vector: vectors[i].clone() }).collect();
        let events: Vec<Event> = (0..4)
            .map(|e| Event {
                patient: format!("p{}", e % 5),
                day: rng.random_range(200..1800),
                kind: ["heart_transplant", "valve"][e % 2].into(),
            })
            .collect();
        let vj: Vec<Value> = visits.iter().map(|v| json!({"patient": v.patient, "day": v.day, "vector": v.vector})).collect();
        let ej: Vec<Value> = events.iter().map(|e| json!({"patient": e.patient, "day": e.day, "kind": e.kind})).collect();
        let window = 300 + 200 * t as i64;
        ours.push(serde_json::to_value(transition_scores(&visits, &events, window)).unwrap());
        cases.push(json!({"op": "transitions", "visits": vj, "events": ej, "window": window}));
        let mut mine: Vec<Visit> = visits.iter().filter(|v| v.patient == "p0").cloned().collect();
        mine.sort_by_key(|v| v.day);
        let mj: Vec<Value> = mine.iter().map(|v| json!({"patient": v.patient, "day": v.day, "vector": v.vector})).collect();
        for event in [None, Some(900i64)] {
            ours.push(serde_json::to_value(timeline(&mine, event, window, 0.05)).unwrap());
            cases.push(json!({"op": "timeline", "visits": mj, "event": event, "window": window, "drop": 0.05}));
        }
        // Reports: one per study; some studies with two videos.
        let reports: Vec<Vec<f32>> = (0..n.div_ceil(2)).map(|_| unit(&mut rng, d)).collect();
        let truth: Vec<usize> = (0..n).map(|i| i / 2).collect();
        let videos: Vec<Vec<f32>> = truth
            .iter()
            .map(|&r| {
                let e = unit(&mut rng, d);
                let v: Vec<f32> = reports[r].iter().zip(&e).map(|(a, b)| a + 0.8 * b).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect();
        ours.push(serde_json::to_value(retrieval_ranks(&videos, &reports, &truth)).unwrap());
        cases.push(json!({"op": "retrieval", "videos": videos, "reports": reports, "truth": truth}));
    }
    let theirs = python(&cases);
    assert_eq!(theirs.len(), ours.len());
    let mut scored = 0;
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        match cases[i]["op"].as_str().unwrap() {
            "reid_pairs" => {
                for k in ["same_study", "same_patient", "different"] {
                    assert!(floats_close(&a[k], &b[k]), "#{i} {k}");
                }
                assert_eq!(a["sampled"], b["sampled"]);
            }
            "transitions" | "timeline" => {
                let (x, y) = (a.as_array().unwrap(), b.as_array().unwrap());
                assert_eq!(x.len(), y.len(), "#{i}");
                for (p, q) in x.iter().zip(y) {
                    for (k, v) in p.as_object().unwrap() {
                        match (v.as_f64(), q[k].as_f64()) {
                            (Some(m), Some(n)) if k == "similarity" => assert!((m - n).abs() <= 1e-12, "#{i} {k}"),
                            _ => assert_eq!(v, &q[k], "#{i} {k}: {p} vs {q}"),
                        }
                    }
                    scored += 1;
                }
            }
            _ => {
                assert_eq!(a["video_to_report"], b["video_to_report"], "#{i}");
                assert_eq!(a["report_to_video"], b["report_to_video"], "#{i}");
            }
        }
    }
    assert!(scored > 30, "enough transitions and timeline rows compared ({scored})");
}

#[test]
fn presence_is_strictly_above_the_threshold_as_numpy_reads_it() {
    use echovault::tasks::zeroshot::{read, EmbeddedTask, Reading};
    // Two-dimensional f32 vectors: each product is exact in f64 and the sum is rounded once, so
    // both sides compute the same score bit for bit and a threshold equal to it is a true tie.
    let mut rng = StdRng::seed_from_u64(298);
    let (mut cases, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let frames = vec![unit(&mut rng, 2)];
        let prompts = vec![unit(&mut rng, 2)];
        let score = binary_score(&frames, &prompts).unwrap();
        for threshold in [score, score - 1e-9, score + 1e-9, 0.298] {
            let present = match read(&frames, &EmbeddedTask::Binary(prompts.clone(), Some(threshold))) {
                Some(Reading::Binary { present, .. }) => present,
                other => panic!("{other:?}"),
            };
            ours.push(json!(present));
            cases.push(json!({"op": "present", "frames": frames, "prompts": prompts, "threshold": threshold}));
        }
    }
    let theirs = python(&cases);
    assert_eq!(ours, theirs);
    // Every fourth case is a tie: absent on both sides.
    assert!(ours.iter().step_by(4).all(|p| p == &json!(false)));
    assert!(ours.iter().skip(1).step_by(4).all(|p| p == &json!(true)));
}

#[test]
fn eval_zero_shot_reads_a_prompt_file_of_the_reference_schema() {
    // The committed sample clips with their drawn truth (tools/make_samples.py), an effusion label
    // per clip named as the file's value_mapping names classes.
    let clips = [
        ("a4c_normal_01.avi", 62, false, "none"),
        ("a4c_reduced_02.avi", 28, false, "small"),
        ("a4c_pacer_03.avi", 45, true, "moderate"),
        ("a4c_normal_04.mp4", 58, false, "large"),
        ("a4c_reduced_05.mp4", 35, true, "none"),
        ("a4c_hyperdynamic_06.mp4", 75, false, "small"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("labels.jsonl");
    let lines: Vec<String> = clips
        .iter()
        .map(|(f, ef, pacer, pe)| {
            json!({"file": root().join("data-samples/clips").join(f), "EF": ef, "pacemaker": pacer, "pericardial_effusion": pe}).to_string()
        })
        .collect();
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    let prompts = root().join("tests/fixtures/prompts_reference_schema.json");
    let (dump, preds) = (dir.path().join("dump.json"), dir.path().join("predictions.jsonl"));
    let args = [
        "--json",
        "eval",
        "zero-shot",
        "--manifest",
        manifest.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--resamples",
        "50",
        "--dump-inputs",
        dump.to_str().unwrap(),
        "--predictions",
        preds.to_str().unwrap(),
    ];
    let o = common::echovault(&dir.path().join("no-index"), &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = common::json(&o);
    // The labelled tasks only, each over the six clips.
    let rows = ours["rows"].as_array().unwrap();
    let tasks: Vec<(&str, &str, u64)> =
        rows.iter().map(|r| (r["task"].as_str().unwrap(), r["metric"].as_str().unwrap(), r["n"].as_u64().unwrap())).collect();
    assert_eq!(tasks, [("ejection_fraction", "MAE", 6), ("pacemaker", "AUC", 6), ("pericardial_effusion", "accuracy", 6)], "{ours}");
    // Class labels are indices into the classes in ascending value order: none, small, moderate, large.
    let labels: Vec<f64> = std::fs::read_to_string(&preds)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["labels"]["pericardial_effusion"].as_f64().unwrap())
        .collect();
    assert_eq!(labels, [0.0, 1.0, 2.0, 3.0, 0.0, 1.0]);
    let dumped: Value = serde_json::from_str(&std::fs::read_to_string(&dump).unwrap()).unwrap();
    let effusion = dumped["tasks"].as_array().unwrap().iter().find(|t| t["name"] == "pericardial_effusion").unwrap();
    let sizes: Vec<usize> = effusion["classes"].as_array().unwrap().iter().map(|c| c.as_array().unwrap().len()).collect();
    assert_eq!(sizes, [1, 2, 1, 1], "prompts per class (value 1 has two)");
    // The table, recomputed by the numpy reference from the dumped embeddings and labels.
    let out =
        Command::new(root().join(".venv/bin/python")).arg(root().join("tools/tasks/tasks_ref.py")).arg("eval").arg(&dump).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let theirs = theirs["rows"].as_array().unwrap();
    assert_eq!(rows.len(), theirs.len());
    for (x, y) in rows.iter().zip(theirs) {
        assert!(x["metric"].as_str().unwrap().starts_with(y["metric"].as_str().unwrap()), "{x} vs {y}");
        assert_eq!(x["n"], y["n"]);
        for k in ["value", "lo", "hi"] {
            match (x[k].as_f64(), y[k].as_f64()) {
                (Some(p), Some(q)) => assert!((p - q).abs() <= 1e-9 * (1.0 + p.abs()), "{k}: {x} vs {y}"),
                (p, q) => assert_eq!(p.is_some(), q.is_some(), "{k}: {x} vs {y}"),
            }
        }
    }
}

/// `eval … --dump-inputs` writes patient keys, never a manifest's raw ids (keyed with the
/// index's secret as `timeline --patient-id` keys an MRN; a run's own secret without an index),
/// and the dump still recomputes to the same table; an AUC row over fewer than 10 positives is
/// marked; an empty transitions table names the window that would hold studies.
#[test]
fn eval_dumps_keep_patient_ids_out_and_thin_or_empty_tables_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let clips: Vec<std::path::PathBuf> =
        ["a4c_normal_01.avi", "a4c_reduced_02.avi", "a4c_pacer_03.avi", "a4c_normal_04.mp4", "a4c_reduced_05.mp4"]
            .iter()
            .map(|f| root().join("data-samples/clips").join(f))
            .collect();
    // Three patients; the first two have two studies a year apart.
    let rows = [
        ("MRN-RAW-1111", "2020-01-10"),
        ("MRN-RAW-1111", "2021-01-10"),
        ("MRN-RAW-2222", "2020-03-01"),
        ("MRN-RAW-2222", "2020-09-01"),
        ("MRN-RAW-3333", "2020-05-05"),
    ];
    let manifest = dir.path().join("videos.jsonl");
    let lines: Vec<String> = clips
        .iter()
        .zip(rows)
        .enumerate()
        .map(|(i, (f, (p, d)))| json!({"file": f, "patient": p, "study": format!("S{i}"), "date": d}).to_string())
        .collect();
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    let raw_ids = ["MRN-RAW-1111", "MRN-RAW-2222", "MRN-RAW-3333"];
    let eval = |index: &std::path::Path, args: &[&str]| -> (Value, String) {
        let dump = dir.path().join("dump.json");
        let mut all = vec!["--json", "eval"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--resamples", "20", "--dump-inputs", dump.to_str().unwrap()]);
        let o = common::echovault(index, &all);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        (common::json(&o), std::fs::read_to_string(&dump).unwrap())
    };

    // No index: keys of this run's own secret; pairs of one patient stay pairs of one patient.
    let (v, text) = eval(&dir.path().join("no-index"), &["reid", "--manifest", manifest.to_str().unwrap()]);
    for raw in raw_ids {
        assert!(!text.contains(raw), "{raw} in the dump");
    }
    let dumped: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dumped["patient_keys"], "this run");
    let keys: Vec<&str> = dumped["patients"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(keys.iter().all(|k| k.starts_with("p-")), "{keys:?}");
    assert!(keys[0] == keys[1] && keys[2] == keys[3] && keys[0] != keys[2] && keys[4] != keys[0] && keys[4] != keys[2], "{keys:?}");
    // The numpy reference recomputes the same table from the keyed dump.
    let dump = dir.path().join("dump.json");
    let out =
        Command::new(root().join(".venv/bin/python")).arg(root().join("tools/tasks/tasks_ref.py")).arg("eval").arg(&dump).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (x, y) in v["rows"].as_array().unwrap().iter().zip(theirs["rows"].as_array().unwrap()) {
        assert_eq!(x["n"], y["n"]);
        match (x["value"].as_f64(), y["value"].as_f64()) {
            (Some(p), Some(q)) => assert!((p - q).abs() <= 1e-9, "{x} vs {y}"),
            (p, q) => assert_eq!(p.is_some(), q.is_some(), "{x} vs {y}"),
        }
    }
    // Two same-patient pairs: the AUC row is marked, in JSON and in the Markdown.
    let auc = &v["rows"][0];
    assert_eq!(
        (auc["metric"].as_str(), auc["positives"].as_u64(), auc["few_positives"].as_bool()),
        (Some("AUC"), Some(2), Some(true)),
        "{auc}"
    );
    assert!(v["rows"][1].get("few_positives").is_none(), "mean rows have no positives: {}", v["rows"][1]);
    let md = v["markdown"].as_str().unwrap();
    assert!(md.contains(&format!("| AUC | {} † |", auc["n"])) && md.contains("† fewer than 10 positives"), "{md}");

    // With an index: keys of the index's secret, the keys search and timeline show.
    let index = dir.path().join("idx");
    let o = common::echovault(&index, &["ingest", root().join("data-samples/clips").to_str().unwrap(), "--progress", "none"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let secret = *echovault::index::Index::open_reader(&index).unwrap().secret().unwrap();
    let (_, text) = eval(&index, &["reid", "--manifest", manifest.to_str().unwrap()]);
    let dumped: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dumped["patient_keys"], "index");
    let want: Vec<String> = rows.iter().map(|(p, _)| echovault::pseudonym::patient_key(&secret, p)).collect();
    assert_eq!(dumped["patients"], json!(want));

    // Transitions over the manifest's studies: an event 100 days after MRN-RAW-2222's first study
    // (2020-03-01), the second 84 days later; within ±30 days nothing is scored.
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, json!({"patient": "MRN-RAW-2222", "date": "2020-06-09", "event": "valve replacement"}).to_string()).unwrap();
    let studies = ["transitions", "--manifest", events.to_str().unwrap(), "--studies", manifest.to_str().unwrap()];
    let (v, text) = eval(&index, &[&studies[..], &["--window", "30"]].concat());
    for raw in raw_ids {
        assert!(!text.contains(raw), "{raw} in the transitions dump");
    }
    assert_eq!(v["rows"][0]["n"], 0, "{v}");
    let note = v["note"].as_str().unwrap();
    // Needs the study before (100 days) and another (84 days after): ±100 days.
    assert!(note.contains("±30 days") && note.contains("nearest lies 100 days away") && note.contains("--window"), "{note}");
    assert!(v["markdown"].as_str().unwrap().contains(note));
    let (v, _) = eval(&index, &[&studies[..], &["--window", "100"]].concat());
    assert_eq!(v["rows"][0]["n"], 1, "the window the note named scores the event: {v}");
    assert!(v["note"].is_null(), "{v}");
}
