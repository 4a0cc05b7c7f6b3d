//! The tch model and tokenizer on the sample snapshot: shapes, unit norms, determinism, and
//! checkpoint errors that name the weight.

#![allow(clippy::unwrap_used)]

use echovault::model::{clip, Clip, Precision};
use echovault::tokenize::ClipBpe;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data-samples/echovault-tiny")
}

#[test]
fn embeds_images_and_texts_as_unit_vectors() {
    let model = Clip::load(&sample(), Device::Cpu, Precision::F32).unwrap();
    assert_eq!(model.dim(), 64);
    tch::manual_seed(0);
    let images = Tensor::randn([3, 3, 224, 224], (Kind::Float, Device::Cpu));
    let a = model.encode_images(&images).unwrap();
    let b = model.encode_images(&images).unwrap();
    assert_eq!(a.size(), vec![3, 64]);
    assert!(a.equal(&b), "deterministic");
    let norms = clip::rows(&a).unwrap().iter().map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt()).collect::<Vec<_>>();
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
    let rows = clip::rows(&a).unwrap();
    let cos: f32 = rows[0].iter().zip(&rows[1]).map(|(x, y)| x * y).sum();
    assert!(cos < 0.99999, "different images give different embeddings ({cos})");

    let tok = ClipBpe::load(&sample(), 77).unwrap();
    let ids = vec![tok.encode("severe mitral regurgitation").unwrap(), tok.encode("normal ejection fraction").unwrap()];
    let t = clip::rows(&model.encode_texts(&ids).unwrap()).unwrap();
    assert_eq!(t.len(), 2);
    assert!(t.iter().all(|r| r.len() == 64 && (r.iter().map(|x| x * x).sum::<f32>().sqrt() - 1.0).abs() < 1e-5));
    assert_ne!(t[0], t[1]);
    assert!(model.encode_images(&Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu))).is_err(), "wrong size is an error");
}

#[test]
fn clip_bpe_frames_ids_with_start_end_and_padding() {
    let tok = ClipBpe::load(&sample(), 77).unwrap();
    let ids = tok.encode("Normal LV function").unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[0], 49406);
    let end = ids.iter().position(|&i| i == 49407).unwrap();
    assert!(end > 1 && ids[end + 1..].iter().all(|&i| i == 0));
    assert_eq!(tok.encode("normal lv FUNCTION").unwrap(), ids, "lower-cased");
    let long = "ejection fraction ".repeat(60);
    let ids = tok.encode(&long).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[76], 49407, "truncation keeps the end token last");
}

#[test]
fn checkpoint_errors_name_the_weight() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::copy(sample().join("open_clip_config.json"), dir.join("open_clip_config.json")).unwrap();
    let tensors = Tensor::read_safetensors(sample().join("open_clip_model.safetensors")).unwrap();
    let missing: Vec<(String, Tensor)> =
        tensors.iter().filter(|(k, _)| k != "ln_final.weight").map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
    Tensor::write_safetensors(&missing, dir.join("open_clip_model.safetensors")).unwrap();
    let err = Clip::load(dir, Device::Cpu, Precision::F32).unwrap_err().to_string();
    assert!(err.contains("missing weight 'ln_final.weight'"), "{err}");

    let mut extra: Vec<(String, Tensor)> = tensors.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
    extra.push(("visual.trunk.extra.weight".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu))));
    Tensor::write_safetensors(&extra, dir.join("open_clip_model.safetensors")).unwrap();
    let err = Clip::load(dir, Device::Cpu, Precision::F32).unwrap_err().to_string();
    assert!(err.contains("visual.trunk.extra.weight"), "{err}");

    let wrong: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| {
            if k == "text_projection" {
                (k.clone(), Tensor::zeros([32, 63], (Kind::Half, Device::Cpu)))
            } else {
                (k.clone(), t.shallow_clone())
            }
        })
        .collect();
    Tensor::write_safetensors(&wrong, dir.join("open_clip_model.safetensors")).unwrap();
    let err = Clip::load(dir, Device::Cpu, Precision::F32).unwrap_err().to_string();
    assert!(err.contains("text_projection") && err.contains("[32, 63]") && err.contains("[32, 64]"), "{err}");
}

/// The fixture written by another torch release (tools/parity/make_old_torch_fixture.sh).
fn old_torch_fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/old-torch-checkpoint")
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Float => "float32",
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Double => "float64",
        Kind::Int64 => "int64",
        _ => "other",
    }
}

#[test]
fn checkpoint_saved_by_another_torch_gives_its_recorded_embeddings() {
    let dir = old_torch_fixture();
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let torch = expected["torch"].as_str().unwrap();
    assert!(!torch.starts_with("2.11."), "the fixture must come from a torch other than the pinned 2.11 (got {torch})");

    // Every tensor: the dtype and shape that torch saved, contiguous.
    let sd = echovault::model::torch_zip::read_state_dict(&dir.join("open_clip_pytorch_model.bin")).unwrap();
    let want = expected["tensors"].as_object().unwrap();
    let mut keys: Vec<&str> = sd.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort();
    assert_eq!(keys, want.keys().map(String::as_str).collect::<Vec<_>>());
    for (k, t) in &sd {
        let shape: Vec<i64> = want[k]["shape"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        assert_eq!((kind_name(t.kind()), t.size()), (want[k]["dtype"].as_str().unwrap(), shape), "{k}");
        assert!(t.is_contiguous(), "{k}");
    }
    let dtypes: Vec<&str> = want.values().map(|v| v["dtype"].as_str().unwrap()).collect();
    assert!(dtypes.contains(&"bfloat16") && dtypes.contains(&"float16"), "the fixture covers bf16 and f16");
    assert!(want.values().any(|v| v["contiguous"] == false), "the fixture covers a non-contiguous tensor");

    // Embeddings: open_clip under that torch vs ours on the same f32 weights, f32 on CPU. Tolerance
    // as the parity tests: float summation order differs between the two libtorch builds.
    let model = Clip::load(&dir, Device::Cpu, Precision::F32).unwrap();
    let shape: Vec<i64> = expected["images"]["shape"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    let opts = (Kind::Int64, Device::Cpu);
    let idx = |d: usize| Tensor::arange(shape[d], opts).view(&*(0..4).map(|i| if i == d { -1 } else { 1 }).collect::<Vec<i64>>());
    let images = ((idx(0) * 7 + idx(1) * 13 + idx(2) * 3 + idx(3) * 5).remainder(17) - 8).to_kind(Kind::Float) / 4.0;
    assert_eq!(images.size(), shape);
    let texts: Vec<Vec<i64>> = serde_json::from_value(expected["texts"].clone()).unwrap();
    let features = |name: &str| {
        let rows: Vec<Vec<f32>> = serde_json::from_value(expected[name].clone()).unwrap();
        let n = rows.len() as i64;
        Tensor::from_slice(&rows.concat()).reshape([n, -1])
    };
    for (name, ours) in [("image_features", model.encode_images(&images).unwrap()), ("text_features", model.encode_texts(&texts).unwrap())]
    {
        let theirs = features(name);
        assert_eq!(ours.size(), theirs.size(), "{name}");
        let diff = (&ours - &theirs).abs().max().double_value(&[]);
        println!("{name}: max |Δ| {diff:.2e} against open_clip under torch {torch}");
        assert!(diff <= 1e-4, "{name}: max |Δ| {diff}");
    }
}

#[test]
fn truncated_or_garbled_checkpoint_names_the_file() {
    let src = std::fs::read(old_torch_fixture().join("open_clip_pytorch_model.bin")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::copy(old_torch_fixture().join("open_clip_config.json"), dir.join("open_clip_config.json")).unwrap();
    let bin = dir.join("open_clip_pytorch_model.bin");
    let mut garbled = src.clone();
    let mid = garbled.len() / 2;
    garbled[mid..mid + 64].iter_mut().for_each(|b| *b ^= 0x5a);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "not a torch.save zip"),
        ("cut in half", src[..src.len() / 2].to_vec(), "not a torch.save zip"),
        ("last bytes cut", src[..src.len() - 10].to_vec(), "not a torch.save zip"),
        ("bytes flipped inside a storage", garbled, "checksum"),
    ];
    for (what, bytes, reason) in cases {
        std::fs::write(&bin, &bytes).unwrap();
        let err = Clip::load(dir, Device::Cpu, Precision::F32).unwrap_err().to_string();
        assert!(err.contains(&bin.display().to_string()) && err.contains(reason), "{what}: {err}");
    }
}
