//! Phantoms and training: `echovault phantom` writes what its manifest says (checked through
//! pydicom and the FFmpeg CLI, not only our own readers), `echovault train` learns (the loss
//! falls, the snapshot loads and fine-tunes), and the committed phantom-trained model
//! (`data-samples/echovault-phantom`) reads the clinical tasks on held-out phantom patients
//! through `echovault eval` (EF, devices, same patient, before/after an operation, report
//! retrieval), each table recomputed by the independent numpy implementation from the same
//! dumped embeddings.

#![allow(clippy::unwrap_used)]

mod common;

use common::{json, root};
use echovault::media::read_frames;
use echovault::model::{Clip, Precision};
use echovault::phantom::{ef_sentences, read_manifest};
use serde_json::{json, Value};
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

fn py_meta(path: &Path) -> Value {
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
    let meta: Value = serde_json::from_slice(&o.stdout).unwrap();
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

/// One eval run through the CLI, its table recomputed by `tools/tasks/tasks_ref.py` from the
/// dumped inputs: every row must agree (value and interval) to float tolerance.
fn eval_twice(index: &Path, dir: &Path, args: &[&str]) -> Value {
    let dump = dir.join(format!("dump-{}.json", args[0]));
    let models = both_models();
    let mut all = vec!["--json", "--index", index.to_str().unwrap()];
    all.extend(models.iter().map(String::as_str));
    all.push("eval");
    all.extend_from_slice(args);
    all.extend_from_slice(&["--resamples", "200", "--dump-inputs", dump.to_str().unwrap()]);
    let ours = json(&ev(&all));
    let out =
        Command::new(root().join(".venv/bin/python")).arg(root().join("tools/tasks/tasks_ref.py")).arg("eval").arg(&dump).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (a, b) = (ours["rows"].as_array().unwrap(), theirs["rows"].as_array().unwrap());
    assert_eq!(a.len(), b.len(), "{args:?}");
    for (x, y) in a.iter().zip(b) {
        assert!(x["metric"].as_str().unwrap().starts_with(y["metric"].as_str().unwrap()), "{x} vs {y}");
        assert_eq!(x["n"], y["n"], "{x} vs {y}");
        for k in ["value", "lo", "hi"] {
            match (x[k].as_f64(), y[k].as_f64()) {
                (Some(p), Some(q)) => assert!((p - q).abs() <= 1e-9 * (1.0 + p.abs()), "{args:?} {k}: {x} vs {y}"),
                (p, q) => assert_eq!(p.is_some(), q.is_some(), "{args:?} {k}: {x} vs {y}"),
            }
        }
    }
    println!("{}", ours["markdown"].as_str().unwrap());
    ours
}

/// The row of an eval's output whose task and metric start so.
fn row<'a>(eval: &'a Value, task: &str, metric: &str) -> &'a Value {
    let rows = eval["rows"].as_array().unwrap();
    rows.iter()
        .find(|r| r["task"].as_str().unwrap().starts_with(task) && r["metric"].as_str().unwrap().starts_with(metric))
        .unwrap_or_else(|| panic!("no row {task}/{metric} in {rows:?}"))
}

/// What the committed phantom model reads on held-out phantom patients, through `echovault eval`.
struct TaskFigures {
    all: serde_json::Map<String, Value>,
    ef_mae: f64,
    device_auc: HashMap<&'static str, f64>,
    same_patient_auc: f64,
    before_after_auc: f64,
    report_rank_fraction: f64,
}

fn phantom_set(out: &Path, first: &str, events: &str) {
    ev(&[
        "phantom",
        "--out",
        out.to_str().unwrap(),
        "--patients",
        "50",
        "--first-patient",
        first,
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
        "--valve",
        "0.3",
        "--events",
        events,
    ]);
}

/// `--model` for both phantom models, as the paper pairs them: zero-shot readings use the CLIP-BPE
/// one, similarity and retrieval the template-tokenizer one (EchoCLIP-R-style).
fn both_models() -> Vec<String> {
    ["echovault-phantom", "echovault-phantom-r"]
        .iter()
        .flat_map(|m| ["--model".to_owned(), root().join("data-samples").join(m).to_str().unwrap().to_owned()])
        .collect()
}

fn ingest(index: &Path, data: &Path) {
    let models = both_models();
    let mut args = vec!["--json", "--index", index.to_str().unwrap()];
    args.extend(models.iter().map(String::as_str));
    let s = json(&ev(&[
        &args[..],
        &["ingest", data.to_str().unwrap(), "--reports", data.join("reports.jsonl").to_str().unwrap(), "--progress", "none"][..],
    ]
    .concat()));
    assert!(s["failed"].as_array().unwrap().is_empty(), "{s}");
    assert_eq!(s["tokenizers"]["echovault-phantom-r"], "template", "{s}");
}

#[test]
fn the_phantom_model_reads_the_clinical_tasks_on_held_out_patients() {
    let f = measure();
    let all = &f.all;
    assert!(f.same_patient_auc >= 0.9, "same-patient AUC {:.3} < 0.9 ({all:?})", f.same_patient_auc);
    assert!(f.before_after_auc >= 0.8, "before/after AUC {:.3} < 0.8 ({all:?})", f.before_after_auc);
    assert!(f.report_rank_fraction <= 0.10, "true report at mean rank fraction {:.3} > 0.10 ({all:?})", f.report_rank_fraction);
    assert!(f.ef_mae <= 8.0, "EF MAE {:.2} > 8 ({all:?})", f.ef_mae);
    for (d, a) in &f.device_auc {
        assert!(*a >= 0.9, "{d} AUC {a:.3} < 0.9 ({all:?})");
    }
}

fn measure() -> TaskFigures {
    let dir = tempfile::tempdir().unwrap();
    // Patients the model never saw (training used 1..800 with seed 7): one set with operations
    // between studies (transitions, EF, devices, retrieval), one without (re-identification:
    // a transplanted heart is another heart).
    let data = dir.path().join("held-out");
    phantom_set(&data, "50001", "0.6");
    let steady = dir.path().join("steady");
    phantom_set(&steady, "60001", "0");
    let (index, index2) = (dir.path().join("index"), dir.path().join("index-steady"));
    ingest(&index, &data);
    ingest(&index2, &steady);
    assert!(read_manifest(&data.join("manifest.jsonl")).unwrap().iter().any(|t| !t.after_events.is_empty()), "the held-out set has events");

    // The prompt file shipped for the phantom model (checked against the reports' phrasing by
    // `the_shipped_phantom_prompts_phrase_findings_as_the_reports_do`).
    let prompt_file = root().join("data-samples/phantom-prompts.json");
    let manifest = data.join("manifest.jsonl");
    let zs = eval_twice(
        &index,
        dir.path(),
        &["zero-shot", "--manifest", manifest.to_str().unwrap(), "--prompts", prompt_file.to_str().unwrap()],
    );
    let reid = eval_twice(&index2, dir.path(), &["reid", "--manifest", steady.join("manifest.jsonl").to_str().unwrap()]);
    let events = data.join("events.jsonl");
    // Studies here are 2 to 24 months apart: a window of ±4 years holds each patient's history.
    let tr = eval_twice(&index, dir.path(), &["transitions", "--manifest", events.to_str().unwrap(), "--window", "1500"]);
    let rt = eval_twice(&index, dir.path(), &["retrieval"]);

    // Zero-shot reads with the CLIP-BPE model; re-identification, transitions and retrieval
    // with the template-tokenizer one.
    assert_eq!(zs["model"], "echovault-phantom", "{}", zs["model"]);
    for e in [&reid, &tr, &rt] {
        assert_eq!(e["model"], "echovault-phantom-r", "{}", e["model"]);
    }
    let v = |r: &Value| r["value"].as_f64().unwrap_or(f64::NAN);
    let mut device_auc = HashMap::new();
    for d in ["pacemaker", "mitraclip", "valve"] {
        device_auc.insert(d, v(row(&zs, d, "AUC")));
    }
    let f = TaskFigures {
        all: serde_json::Map::new(),
        ef_mae: v(row(&zs, "ejection_fraction", "MAE")),
        device_auc,
        same_patient_auc: v(row(&reid, "same patient vs", "AUC")),
        before_after_auc: v(row(&tr, if tr["rows"].as_array().unwrap().len() > 1 { "all events" } else { "" }, "AUC")),
        report_rank_fraction: v(row(&rt, "video → report", "mean rank")) / rt["reports"].as_f64().unwrap(),
    };
    let all = json!({
        "ef_mae": f.ef_mae, "device_auc": f.device_auc, "same_patient_auc": f.same_patient_auc,
        "before_after_auc": f.before_after_auc, "report_rank_fraction": f.report_rank_fraction,
        "mcmrr": v(row(&rt, "video ↔ report", "MCMRR")),
    });
    println!("phantom task figures: {all}");
    TaskFigures { all: all.as_object().unwrap().clone(), ..f }
}

/// `data-samples/phantom-prompts.json`, the prompt file the demo and the viewer read phantoms
/// with, in the reports' own phrasing: EF as the reports state it, one prompt per value 10..=80
/// by 5; each device phrase in the context of a report's first sentences, one prompt per
/// function grade (a prompt ensemble: alone, a device phrase's similarity also tracks how well
/// the heart pumps, which has nothing to do with the device).
#[test]
fn the_shipped_phantom_prompts_phrase_findings_as_the_reports_do() {
    let file: Value = serde_json::from_str(&std::fs::read_to_string(root().join("data-samples/phantom-prompts.json")).unwrap()).unwrap();
    let values: Vec<f64> = (10..=80).step_by(5).map(f64::from).collect();
    let ef = &file["ejection_fraction"];
    assert_eq!(ef["mode"], "regression");
    assert_eq!(ef["values"], json!(values));
    assert_eq!(ef["prompts"], json!(values.iter().map(|v| ef_sentences(*v)).collect::<Vec<_>>()));
    for (task, phrase) in [
        ("pacemaker", "A PACEMAKER LEAD IS SEEN IN THE RIGHT HEART."),
        ("mitraclip", "A MITRACLIP IS SEEN ON THE MITRAL LEAFLETS."),
        ("valve", "A TRANSCATHETER AORTIC VALVE PROSTHESIS IS PRESENT."),
    ] {
        let want: Vec<String> = [20.0, 35.0, 45.0, 60.0, 75.0].iter().map(|ef| format!("{} {phrase}", ef_sentences(*ef))).collect();
        assert_eq!(file[task]["prompts"], json!(want), "{task}");
        assert_eq!(file[task]["mode"], "binary", "{task}");
    }
    // The file loads as a prompt file.
    echovault::tasks::readings::list_tasks(Some(&root().join("data-samples/phantom-prompts.json"))).unwrap();
}
