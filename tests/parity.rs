//! Parity with the Python reference stack, run on the same inputs in the same test:
//! open_clip (PyTorch) for embeddings and CLIP BPE ids, an OpenCV implementation of the
//! reference preprocessing, and an independent Python implementation of the template tokenizer.
//! The Python side runs from the project venv (`tools/setup` creates it).

#![allow(clippy::unwrap_used)]

use echovault::media::{ChannelOrder, Frame, Preprocess};
use echovault::model::{clip, Clip, Precision};
use echovault::tokenize::{ClipBpe, TemplateTokenizer};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(p.exists(), "{} missing: run tools/setup", p.display());
    p
}

fn run_py(script: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(python())
        .arg(root().join("tools/parity").join(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A cached random-init open_clip checkpoint (regenerated when absent) laid out as an open_clip
/// hub repo: `open_clip_config.json` and `torch.save` of the model's own `state_dict()` by the
/// pinned torch, no tokenizer.json; `flags` go to make_checkpoint.py.
fn checkpoint(which: &str, seed: u64, flags: &[&str]) -> PathBuf {
    let name = [format!("{which}-{seed}-hub")].into_iter().chain(flags.iter().map(|f| f.trim_start_matches('-').to_owned()));
    let dir = root().join("target/parity-cache").join(name.collect::<Vec<_>>().join("-"));
    if !dir.join("open_clip_pytorch_model.bin").exists() {
        let mut args = vec![which.to_owned(), seed.to_string(), dir.to_str().unwrap().to_owned()];
        args.extend(flags.iter().map(|f| f.to_string()));
        run_py("make_checkpoint.py", &args.iter().map(String::as_str).collect::<Vec<_>>(), None);
    }
    dir
}

/// The tiny checkpoint with bf16/f16 parameters, transposed and shared-storage views at offsets,
/// a stride-0 parameter, `module.` keys (DataParallel's state dict).
const TINY_LAYOUTS: [&str; 2] = ["--layouts", "--module-prefix"];

fn report_sentences(n: usize, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let subjects = [
        "Left ventricular ejection fraction",
        "LVEF",
        "The right ventricle",
        "Mitral valve",
        "Aortic root",
        "TAPSE",
        "E/e'",
        "PASP",
        "The IVC",
    ];
    let verbs = ["is", "measures", "was estimated at", "appears", "≈", "is ~", "remains"];
    let extras = [
        "mmHg",
        "cm/s",
        "m/s",
        "%",
        "mL/m²",
        "cm²",
        "°",
        "± 5",
        "(normal)",
        "[prior: 45%]",
        "— unchanged",
        "café-au-lait",
        "naïve",
        "µm",
        "“severe”",
        "it’s",
        "&amp;",
        "Ångström",
        "≥ 2",
        "x2.5",
        "1,234",
        "3.14159",
        "#7",
        "@home",
        "e.g.",
        "N/A",
        "🙂",
        "ﬁbrosis",
        "ＥＦ",
    ];
    (0..n)
        .map(|i| {
            let mut s = format!(
                "{} {} {}",
                subjects[rng.random_range(0..subjects.len())],
                verbs[rng.random_range(0..verbs.len())],
                rng.random_range(0..200)
            );
            if rng.random_bool(0.5) {
                s.push_str(&format!(".{}", rng.random_range(0..100)));
            }
            for _ in 0..rng.random_range(0..4) {
                s.push(' ');
                s.push_str(extras[rng.random_range(0..extras.len())]);
            }
            if i % 10 == 0 {
                s = s.repeat(20); // far past 77 tokens
            }
            if i % 7 == 0 {
                s = s.to_uppercase();
            }
            s
        })
        .collect()
}

#[test]
fn clip_bpe_ids_equal_open_clip() {
    let tok = ClipBpe::load(&root().join("data-samples/echovault-tiny"), 77).unwrap();
    let texts = report_sentences(240, 7);
    let ours: Vec<Vec<i64>> = texts.iter().map(|t| tok.encode(t).unwrap()).collect();
    let theirs: Vec<Vec<i64>> =
        serde_json::from_str(&run_py("tokenize_ref.py", &[], Some(&serde_json::to_string(&texts).unwrap()))).unwrap();
    let mismatched: Vec<&String> = texts.iter().zip(ours.iter().zip(&theirs)).filter(|(_, (a, b))| a != b).map(|(t, _)| t).collect();
    assert!(mismatched.is_empty(), "{} of {} differ, e.g. {:?}", mismatched.len(), texts.len(), mismatched.first());
    assert!(ours.iter().filter(|r| r[76] == 49407).count() >= 20, "long texts were truncated");
}

/// open_clip's `tokenize` ids of `texts` (77 each).
fn open_clip_ids(texts: &[String]) -> Vec<Vec<i64>> {
    serde_json::from_str(&run_py("tokenize_ref.py", &[], Some(&serde_json::to_string(texts).unwrap()))).unwrap()
}

/// Asserts `tok` gives `theirs` for every text; names the first text that differs.
fn assert_ids(what: &str, tok: &ClipBpe, texts: &[String], theirs: &[Vec<i64>]) {
    assert_eq!(texts.len(), theirs.len());
    let ours: Vec<Vec<i64>> = texts.iter().map(|t| tok.encode(t).unwrap()).collect();
    let bad: Vec<usize> = (0..texts.len()).filter(|&i| ours[i] != theirs[i]).collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} differ, e.g. {:?}: {:?} vs {:?}",
        bad.len(),
        texts.len(),
        texts[bad[0]],
        ours[bad[0]],
        theirs[bad[0]]
    );
}

#[test]
fn clip_bpe_builtin_ids_equal_open_clip() {
    let tok = ClipBpe::builtin(77).unwrap();
    let texts = report_sentences(240, 7);
    assert_ids("built-in", &tok, &texts, &open_clip_ids(&texts));
    // A model directory without tokenizer.json (an open_clip hub repo as downloaded) gets it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(root().join("data-samples/echovault-tiny/open_clip_config.json"), dir.path().join("open_clip_config.json")).unwrap();
    assert!(ClipBpe::load(dir.path(), 77).unwrap().is_builtin());
}

#[test]
fn clip_bpe_builtin_equals_the_sample_tokenizer_json() {
    let file = ClipBpe::load(&root().join("data-samples/echovault-tiny/tokenizer.json"), 77).unwrap();
    let reports = std::fs::read_dir(root().join("data-samples/clips")).unwrap().map(|e| e.unwrap().path());
    let reports = reports.filter(|p| p.extension().is_some_and(|x| x == "txt")).map(|p| std::fs::read_to_string(p).unwrap());
    let texts: Vec<String> = report_sentences(240, 7).into_iter().chain(report_sentences(120, 8)).chain(reports).collect();
    assert_eq!(texts.len(), 240 + 120 + 6);
    let theirs: Vec<Vec<i64>> = texts.iter().map(|t| file.encode(t).unwrap()).collect();
    assert_ids("built-in vs tokenizer.json", &ClipBpe::builtin(77).unwrap(), &texts, &theirs);
}

#[test]
fn clip_bpe_hugging_face_tokenizer_json_ids_equal_open_clip() {
    // transformers writes the file as an open_clip hub upload does (tools/parity/hf_clip_tokenizer.py).
    let dir = tempfile::tempdir().unwrap();
    let made: serde_json::Value = serde_json::from_str(&run_py("hf_clip_tokenizer.py", &[dir.path().to_str().unwrap()], None)).unwrap();
    assert_eq!(made["class"], "CLIPTokenizer", "{made}");
    let file = dir.path().join("tokenizer.json");
    // What would break the ids unless ignored is there: its own specials, padding to 77 with the
    // end id, truncation, and a post-processor adding start and end.
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(json["padding"]["strategy"]["Fixed"], 77, "{}", json["padding"]);
    assert_eq!(json["padding"]["pad_id"], 49407);
    assert_eq!(json["truncation"]["max_length"], 77);
    assert_eq!(json["post_processor"]["type"], "RobertaProcessing");
    let specials: Vec<&str> = json["added_tokens"].as_array().unwrap().iter().map(|t| t["content"].as_str().unwrap()).collect();
    assert_eq!(specials, ["<|startoftext|>", "<|endoftext|>"]);
    let tok = ClipBpe::load(dir.path(), 77).unwrap();
    assert!(!tok.is_builtin());
    let texts = report_sentences(240, 7);
    assert_ids("CLIPTokenizerFast tokenizer.json", &tok, &texts, &open_clip_ids(&texts));
}

/// Report-like texts over the phrases of `vocab`: every slot filled with a severity (also the
/// adverbs and ranges cleaning rewrites), an integer (past 100, so numbers split), a decimal or
/// a date-like number; lower case, spaced units, `pulmonary artery`, `was`, noise sentences the
/// vocabulary does not know (holding numbers of their own), literal `<#>`, long texts.
fn template_sentences(vocab: &str, n: usize, seed: u64) -> Vec<String> {
    let phrases: Vec<&str> = vocab.lines().filter(|l| !l.trim().is_empty()).collect();
    let severities = [
        "mild",
        "mildly",
        "moderate",
        "Moderately",
        "severe",
        "SEVERELY",
        "mild to moderate",
        "mild/moderate",
        "moderate/severe",
        "very severe",
        "trace",
    ];
    let noise = [
        "Patient tolerated the study well.",
        "Images are of fair quality",
        "see comment 12 and 4.5",
        "LV was big",
        "Dx I50.9 heart failure, unspecified",
        "Study of 01/02/2020",
        "[Limited] study ^ CRLF",
        "RA 5 + CVP mmHg",
        "<#>",
        "ok",
        "Shortness breath",
        // Unicode the two regex engines must read alike: no-break and em spaces, separators
        // Python counts as whitespace, Arabic-Indic digits, ß and ligatures that upper-case
        // into two letters, backticks, the separator itself, dot dates, AND/OR, WERE.
        "Valves were thin and/or normal",
        "Seen on 03.04.2021\u{a0}ok",
        "EF\u{2003}\u{663}\u{665} %\u{1c}done",
        "Stra\u{df}e \u{fb01}ne`s \u{2021} note",
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let mut parts = Vec::new();
            for _ in 0..rng.random_range(1..6) {
                let p = phrases[rng.random_range(0..phrases.len())].trim_end();
                let mut filled = String::new();
                for (j, piece) in p.split("<#>").enumerate() {
                    if j > 0 {
                        let v = match rng.random_range(0..5) {
                            0 => severities[rng.random_range(0..severities.len())].to_string(),
                            1 => format!("{}.{}", rng.random_range(0..20), rng.random_range(0..100)),
                            2 => rng.random_range(0..2500).to_string(),
                            3 => format!("{} ", rng.random_range(0..100)),
                            _ => rng.random_range(0..100).to_string(),
                        };
                        filled.push_str(&v);
                    }
                    filled.push_str(piece);
                }
                let filled = if rng.random_bool(0.5) { filled.to_lowercase() } else { filled };
                let filled = filled
                    .replace("MMHG", if rng.random_bool(0.5) { " mm Hg" } else { " MMHG" })
                    .replace("%", if rng.random_bool(0.3) { " %" } else { "%" })
                    .replace(" PA ", if rng.random_bool(0.5) { " pulmonary artery " } else { " PA " })
                    .replace(" IS ", if rng.random_bool(0.2) { " was " } else { " IS " });
                parts.push(filled);
                if rng.random_bool(0.4) {
                    parts.push(noise[rng.random_range(0..noise.len())].to_string());
                }
            }
            let s = parts.join(if rng.random_bool(0.5) { " " } else { "  \n" });
            if i % 25 == 0 {
                s.repeat(30)
            } else if i % 31 == 0 {
                "no phrase here at all".to_string()
            } else {
                s
            }
        })
        .collect()
}

/// Our template tokenizer against `tools/parity/template_ref.py`, an independent Python
/// implementation of the same specification (Python's `re` for the cleaning, the `tokenizers`
/// Python package for the matching).
#[test]
fn template_tokenizer_equals_independent_python() {
    let vocab_path = root().join("data-samples/template-vocab.txt");
    let vocab = std::fs::read_to_string(&vocab_path).unwrap();
    let tok = TemplateTokenizer::load(&vocab_path, 77).unwrap();
    let texts = template_sentences(&vocab, 400, 11);
    let ours: Vec<Option<Vec<i64>>> = texts.iter().map(|t| tok.encode(t).ok()).collect();
    let theirs: Vec<Option<Vec<i64>>> =
        serde_json::from_str(&run_py("template_ref.py", &[vocab_path.to_str().unwrap()], Some(&serde_json::to_string(&texts).unwrap())))
            .unwrap();
    for (t, (a, b)) in texts.iter().zip(ours.iter().zip(&theirs)) {
        assert_eq!(a, b, "text: {t:?}");
    }
    // The corpus exercises what it should: slots with values, drops, truncation, refusals.
    let t = tok.phrase_vocab();
    let ok: Vec<&Vec<i64>> = ours.iter().flatten().collect();
    assert!(ours.iter().filter(|r| r.is_none()).count() >= 5, "texts with a literal <#> are refused");
    assert!(ok.iter().any(|r| r[1] == tok.end_id()), "some texts match no phrase");
    assert!(ok.iter().any(|r| r[76] == tok.end_id()), "some texts are truncated");
    let values = |lo: i64, hi: i64| ok.iter().flat_map(|r| r.iter()).filter(|&&i| (t + lo..=t + hi).contains(&i)).count();
    assert!(values(112, 121) >= 20, "decimals appear");
    assert!(values(107, 111) >= 20, "severities appear");
    assert!(values(122, 131) >= 5, "leading-zero pairs appear (numbers past 100)");
    assert!(values(106, 106) >= 10, "separators appear");
    assert!(values(0, 0) >= 5, "unknown value pieces appear");
}

fn compare(name: &str, ours: &Tensor, theirs: &Tensor, min_cos: f64, max_abs: f64) -> (f64, f64) {
    assert_eq!(ours.size(), theirs.size(), "{name}");
    let cos = (ours * theirs).sum_dim_intlist([1i64].as_slice(), false, Kind::Double).min().double_value(&[]);
    let diff = (ours - theirs).abs().max().double_value(&[]);
    assert!(cos >= min_cos, "{name}: min cosine {cos}");
    assert!(diff <= max_abs, "{name}: max abs difference {diff}");
    (cos, diff)
}

fn model_parity(dir: &Path, n_images: i64, n_texts: usize) {
    let model = Clip::load(dir, Device::Cpu, Precision::F32).unwrap();
    // config + .bin only: texts go through the built-in CLIP BPE (its ids equal open_clip's:
    // clip_bpe_builtin_ids_equal_open_clip), so this is the whole text path of a hub download.
    assert!(!dir.join("tokenizer.json").exists() && dir.join("open_clip_pytorch_model.bin").exists());
    let s = model.image_size();
    tch::manual_seed(3);
    let images = Tensor::randn([n_images, 3, s, s], (Kind::Float, Device::Cpu));
    let tok = ClipBpe::load(dir, 77).unwrap();
    let texts = report_sentences(n_texts, 5);
    let ids: Vec<Vec<i64>> = texts.iter().map(|t| tok.encode(t).unwrap()).collect();
    let flat: Vec<i64> = ids.iter().flatten().copied().collect();
    let id_tensor = Tensor::from_slice(&flat).reshape([n_texts as i64, 77]);
    let tmp = tempfile::tempdir().unwrap();
    let inp = tmp.path().join("in.safetensors");
    let out = tmp.path().join("out.safetensors");
    Tensor::write_safetensors(&[("images", &images), ("texts", &id_tensor)], &inp).unwrap();
    run_py("embed_ref.py", &[dir.to_str().unwrap(), inp.to_str().unwrap(), out.to_str().unwrap()], None);
    let reference: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    let img = model.encode_images(&images).unwrap();
    let txt = model.encode_texts(&ids).unwrap();
    let (ci, di) = compare("image", &img, &reference["image_features"], 0.9999, 1e-4);
    let (ct, dt) = compare("text", &txt, &reference["text_features"], 0.9999, 1e-4);
    println!("{}: image min cos {ci:.7} max |Δ| {di:.2e}; text min cos {ct:.7} max |Δ| {dt:.2e}", dir.display());
    assert!(clip::rows(&img).unwrap().len() as i64 == n_images);
}

#[test]
fn tiny_config_embeddings_equal_open_clip() {
    model_parity(&checkpoint("tiny", 1, &TINY_LAYOUTS), 8, 24);
}

#[test]
fn convnext_base_embeddings_equal_open_clip() {
    model_parity(&checkpoint("convnext_base", 2, &[]), 8, 20);
}

fn kind_of(torch_dtype: &str) -> Kind {
    match torch_dtype {
        "float32" => Kind::Float,
        "float64" => Kind::Double,
        "float16" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "int64" => Kind::Int64,
        "int32" => Kind::Int,
        "int16" => Kind::Int16,
        "int8" => Kind::Int8,
        "uint8" => Kind::Uint8,
        "bool" => Kind::Bool,
        "float8_e4m3fn" => Kind::Float8e4m3fn,
        "float8_e5m2" => Kind::Float8e5m2,
        other => panic!("dtype {other} not covered by this test"),
    }
}

/// Every tensor of torch.save files written by the pinned torch, read by `torch_zip`, equals
/// (bit for bit, dtype and shape) what `torch.load` gives for the same file, written back by
/// Python as safetensors. The files cover: an OrderedDict with `_metadata` (a model's
/// `state_dict()`), `module.` keys, a zip prefix other than `archive`, pickle protocols 2 and 5,
/// a training wrapper, every typed-storage dtype, float8 (`_rebuild_tensor_v3`), a Parameter, 0-d
/// and empty tensors, views sharing a storage at offsets, transposed, strided and stride-0.
#[test]
fn torch_save_layouts_equal_torch_load() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = vec![checkpoint("tiny", 1, &TINY_LAYOUTS).join("open_clip_pytorch_model.bin")];
    for protocol in ["2", "5"] {
        let f = tmp.path().join(format!("cases-p{protocol}.pt"));
        run_py("torch_save_cases.py", &[f.to_str().unwrap(), protocol], None);
        files.push(f);
    }
    let mut seen: Vec<serde_json::Value> = Vec::new();
    for file in &files {
        let st = tmp.path().join("reference.safetensors");
        let desc: serde_json::Value =
            serde_json::from_str(&run_py("checkpoint_tensors.py", &[file.to_str().unwrap(), st.to_str().unwrap()], None)).unwrap();
        let theirs: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&st).unwrap().into_iter().collect();
        let ours = echovault::model::torch_zip::read_state_dict(file).unwrap();
        let want = desc["tensors"].as_object().unwrap();
        let order: Vec<String> = serde_json::from_value(desc["keys"].clone()).unwrap();
        assert_eq!(ours.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), order, "{}: keys in the file's order", file.display());
        for (k, t) in &ours {
            let kind = kind_of(want[k]["dtype"].as_str().unwrap());
            let shape: Vec<i64> = serde_json::from_value(want[k]["shape"].clone()).unwrap();
            assert_eq!((t.kind(), t.size()), (kind, shape), "{}: {k}", file.display());
            assert!(t.is_contiguous(), "{k}");
            let t = if matches!(kind, Kind::Float8e4m3fn | Kind::Float8e5m2) { t.view_dtype(Kind::Uint8) } else { t.shallow_clone() };
            assert!(t.equal(&theirs[k]), "{}: {k} differs from torch.load", file.display());
        }
        seen.push(desc);
    }
    // The layouts this test means to cover are really in the files.
    let all = || seen.iter().flat_map(|d| d["tensors"].as_object().unwrap().iter());
    let has = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| assert!(all().any(|(_, v)| f(v)), "no {what} in the files");
    for dtype in ["float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool", "float8_e4m3fn"] {
        has(dtype, &|v| v["dtype"] == dtype);
    }
    has("non-contiguous tensor", &|v| v["contiguous"] == false);
    has("storage offset", &|v| v["offset"].as_i64().unwrap() > 0);
    has("stride 0", &|v| v["stride"].as_array().unwrap().iter().any(|s| s == 0));
    has("parameter", &|v| v["parameter"] == true);
    has("0-d tensor", &|v| v["shape"].as_array().unwrap().is_empty());
    has("empty tensor", &|v| v["shape"].as_array().unwrap().iter().any(|s| s == 0));
    let model = &seen[0];
    assert_eq!((model["type"].as_str(), model["metadata"].as_bool()), (Some("OrderedDict"), Some(true)));
    assert_ne!(model["prefix"], "archive");
    let keys = model["tensors"].as_object().unwrap();
    assert!(keys.keys().all(|k| k.starts_with("module.")));
    let mut storages: Vec<i64> = keys.values().map(|v| v["storage"].as_i64().unwrap()).collect();
    let n = storages.len();
    storages.sort();
    storages.dedup();
    assert!(storages.len() < n, "some tensors of the model checkpoint share a storage");
}

#[test]
fn preprocessing_matches_the_reference_on_real_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pre.safetensors");
    let mut worst_mean: f64 = 0.0;
    let mut worst_max: f64 = 0.0;
    for clip_name in ["a4c_normal_01.avi", "a4c_normal_04.mp4"] {
        let video = root().join("data-samples/clips").join(clip_name);
        run_py("preprocess_ref.py", &[video.to_str().unwrap(), out.to_str().unwrap()], None);
        let t: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&out).unwrap().into_iter().collect();
        let bgr = &t["frames_bgr"];
        let (n, h, w, _) = bgr.size4().unwrap();
        // The same decoded frames go through our preprocessing (frames are RGB in echovault).
        let frames: Vec<Frame> = (0..n)
            .map(|i| {
                let rgb = bgr.get(i).flip([2]).contiguous().reshape([-1]);
                Frame::new(w as usize, h as usize, Vec::<u8>::try_from(&rgb).unwrap()).unwrap()
            })
            .collect();
        let p = Preprocess {
            size: 224,
            mean: echovault::model::config::CLIP_MEAN,
            std: echovault::model::config::CLIP_STD,
            order: ChannelOrder::Bgr,
        };
        let ours = p.frames(&frames).unwrap();
        let diff = (&ours - &t["pixels"]).abs();
        let mean = diff.mean(Kind::Double).double_value(&[]);
        let max = diff.max().double_value(&[]);
        println!("{clip_name}: mean |Δ| {mean:.5}, max |Δ| {max:.5} (normalised units)");
        worst_mean = worst_mean.max(mean);
        worst_max = worst_max.max(max);
    }
    // Tolerance: OpenCV's INTER_CUBIC on uint8 uses fixed-point weights (11 fractional bits) and
    // saturating rounding; ours is float bicubic (same a = -0.75 kernel) rounded to 8-bit levels.
    // They may differ by one or two 8-bit levels: 2/255/0.2613 ≈ 0.030 after normalisation.
    assert!(worst_mean <= 0.004, "mean {worst_mean}");
    assert!(worst_max <= 0.031, "max {worst_max}");
}
