//! tools/ray/ingest.py on a local Ray cluster: a head without CPUs and two worker nodes of one
//! CPU each (`--local-nodes 2`: separate raylets on this machine, so the two shards run on two
//! Ray nodes and their Parquet files come back through the object store, as on a real cluster),
//! two shards of a phantom export ingested with the phantom model, exported as Parquet and
//! imported into one index. That index holds exactly the items of one single-process ingest of
//! the same export, with the same records and vectors (read from both indexes through
//! echovault-index), and every shard's items are its own studies'; the shard files are gone
//! after the import. Where .venv has no `ray` the test fails (tools/setup installs it from
//! tools/requirements.txt) unless ECHOVAULT_SKIP_RAY=1 asks to skip it, so that a skip is never
//! mistaken for a run.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use echovault::index::{Index, ItemId, Kind};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

fn python() -> std::path::PathBuf {
    common::root().join(".venv/bin/python")
}

/// Why the test cannot run here, if it cannot.
fn no_ray() -> Option<String> {
    let out = Command::new(python()).args(["-c", "import ray, sys; sys.stdout.write(ray.__version__)"]).output();
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("{} cannot import ray: {}", python().display(), String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Some(format!("no {}: {e}", python().display())),
    }
}

type Items = BTreeMap<String, (Kind, Option<String>, Option<String>, Option<String>, Option<String>)>;

fn items(index: &Path) -> Items {
    let ix = Index::open_reader(index).unwrap();
    ix.items(None)
        .unwrap()
        .into_iter()
        .map(|r| (r.id.0.clone(), (r.kind, r.study, r.patient, r.date.map(|d| d.to_string()), r.text)))
        .collect()
}

fn vectors(index: &Path, items: &Items) -> BTreeMap<(String, String), Vec<f32>> {
    let ix = Index::open_reader(index).unwrap();
    let mut out = BTreeMap::new();
    for space in ix.spaces() {
        for (id, (kind, ..)) in items {
            if let Some(v) = ix.get_vector(space.id, *kind, &ItemId(id.clone())).unwrap() {
                out.insert((space.name.clone(), id.clone()), v);
            }
        }
    }
    out
}

#[test]
fn ray_shards_imported_equal_one_ingest() {
    if let Some(why) = no_ray() {
        let hint = "tools/setup installs ray from tools/requirements.txt";
        if std::env::var("ECHOVAULT_SKIP_RAY").is_ok_and(|v| v == "1") {
            eprintln!("SKIPPED ray_shards_imported_equal_one_ingest (ECHOVAULT_SKIP_RAY=1): {why} ({hint})");
            return;
        }
        panic!("{why}: run {hint}, or set ECHOVAULT_SKIP_RAY=1 to skip this test");
    }
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    let o = Command::new(env!("CARGO_BIN_EXE_echovault"))
        .args(["phantom", "--out", export.to_str().unwrap(), "--patients", "6", "--studies", "2:2", "--size", "64", "--frames", "8"])
        .args(["--formats", "dicom-jpeg,avi,dicom-native", "--seed", "5"])
        .output()
        .unwrap();
    assert!(o.status.success(), "phantom: {}", String::from_utf8_lossy(&o.stderr));
    let model = common::root().join("data-samples/echovault-phantom");
    let secret = dir.path().join("secret.hex");
    let reports = export.join("reports.jsonl");

    // One process, everything.
    let single = dir.path().join("single");
    let out = Command::new(env!("CARGO_BIN_EXE_echovault"))
        .args(["--index", single.to_str().unwrap(), "--model", model.to_str().unwrap(), "--device", "cpu"])
        .args(["--secret-file", secret.to_str().unwrap(), "--json", "ingest", export.to_str().unwrap()])
        .args(["--reports", reports.to_str().unwrap(), "--progress", "none"])
        .env_remove("ECHOVAULT_SECRET_FILE")
        .output()
        .unwrap();
    assert!(out.status.success(), "single ingest: {}", String::from_utf8_lossy(&out.stderr));
    let one = common::json(&out);

    // Two shards as Ray tasks on two Ray nodes, then one import (the same secret file).
    let merged = dir.path().join("merged");
    let out = Command::new(python())
        .arg(common::root().join("tools/ray/ingest.py"))
        .arg(&export)
        .args(["--index", merged.to_str().unwrap(), "--shards", "2", "--local-nodes", "2"])
        .args(["--echovault", env!("CARGO_BIN_EXE_echovault"), "--model", model.to_str().unwrap(), "--device", "cpu"])
        .args(["--secret-file", secret.to_str().unwrap(), "--", "--reports", reports.to_str().unwrap(), "--workers", "1"])
        .env("RAY_DISABLE_USAGE_STATS", "1")
        .env_remove("ECHOVAULT_SECRET_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tools/ray/ingest.py: exit {:?}\n{stderr}", out.status.code());
    let run: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap()).unwrap();
    let shards = run["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2, "{run}");
    let nodes: BTreeSet<&str> = shards.iter().map(|s| s["node"].as_str().unwrap()).collect();
    assert_eq!(nodes.len(), 2, "each shard on a node of its own: {run}");
    for s in shards {
        // Patient keys and report text: deleted after the import (no --keep).
        let file = s["parquet"].as_str().unwrap();
        assert!(!Path::new(file).exists(), "{file} left behind");
    }
    let ingested: u64 = shards.iter().map(|s| s["summary"]["ingested"].as_u64().unwrap()).sum();
    assert_eq!(Some(ingested), one["ingested"].as_u64(), "{run}\n{one}");
    for (i, s) in shards.iter().enumerate() {
        assert!(s["summary"]["ingested"].as_u64().unwrap() > 0, "shard {i} is empty: pick other phantoms");
        for id in s["ids"].as_array().unwrap() {
            assert!(one["ids"].as_array().unwrap().contains(id), "shard {i} wrote {id}, the single ingest did not");
        }
    }

    // The merged index: the single ingest's items, records and vectors.
    let (want, got) = (items(&single), items(&merged));
    assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>());
    assert_eq!(want, got, "the same records (patient keys under the shared secret)");
    for (id, (_, study, ..)) in &got {
        // The shard the rule names (first 8 bytes of SHA-256, big-endian, mod 2) wrote it.
        let study = study.as_deref().unwrap();
        let d = Sha256::digest(study.as_bytes());
        let shard = (u64::from_be_bytes(d[..8].try_into().unwrap()) % 2) as usize;
        if got[id].0 == Kind::Video {
            assert!(shards[shard]["ids"].as_array().unwrap().iter().any(|v| v == id.as_str()), "{id} of {study} not from shard {shard}");
        }
    }
    let (vw, vg) = (vectors(&single, &want), vectors(&merged, &got));
    assert_eq!(vw.keys().collect::<Vec<_>>(), vg.keys().collect::<Vec<_>>());
    for (key, v) in &vw {
        let worst = v.iter().zip(&vg[key]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{key:?} differs by {worst}");
    }
    eprintln!(
        "ray: start {:.1} s, shards {:.1} s, import {:.1} s",
        run["ray_start_s"].as_f64().unwrap(),
        run["shards_s"].as_f64().unwrap(),
        run["import_s"].as_f64().unwrap()
    );
}
