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
