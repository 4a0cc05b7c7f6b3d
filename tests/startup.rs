//! Start-up: `echovault` is a front binary that links no LibTorch (src/main.rs). It runs the
//! commands that load no model itself and `exec`s `echovault-engine`, which links LibTorch (but
//! not its CUDA library: build.rs), for the others — same arguments, environment, standard
//! streams and exit code. Timings are in BENCHMARKS.md (start-up), never asserted here.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const FRONT: &str = env!("CARGO_BIN_EXE_echovault");
const ENGINE: &str = env!("CARGO_BIN_EXE_echovault-engine");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model() -> String {
    root().join("data-samples/echovault-tiny").to_str().unwrap().to_owned()
}

/// The libraries an ELF binary names as NEEDED (what the loader maps before `main`).
#[cfg(target_os = "linux")]
fn needed(bin: &str) -> Vec<String> {
    let out = Command::new("readelf").args(["-d", bin]).output().expect("readelf (binutils) runs");
    assert!(out.status.success(), "readelf -d {bin}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let libs: Vec<String> = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once("Shared library: [")?.1.trim_end_matches(']').to_owned()))
        .collect();
    assert!(libs.iter().any(|l| l.starts_with("libc.so")), "readelf -d {bin} parsed:\n{text}");
    libs
}

/// `bin ARGS` with the environment's index, model and patient id unset.
fn command(bin: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.args(args).env_remove("ECHOVAULT_INDEX").env_remove("ECHOVAULT_MODEL").env_remove("ECHOVAULT_PATIENT_ID");
    c
}

fn run(bin: &str, args: &[&str]) -> Output {
    command(bin, args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", text(&o.stdout), text(&o.stderr)))
}

/// The front binary has no LibTorch library among its NEEDED entries (nor FFmpeg's CUDA-only
/// ones); the engine has LibTorch's CPU library but not its CUDA library.
#[cfg(target_os = "linux")]
#[test]
fn the_front_binary_links_no_libtorch() {
    let front = needed(FRONT);
    for lib in &front {
        assert!(!lib.starts_with("libtorch") && !lib.starts_with("libc10"), "{FRONT} needs {lib}: {front:?}");
    }
    let engine = needed(ENGINE);
    for lib in ["libtorch_cpu.so", "libc10.so"] {
        assert!(engine.iter().any(|l| l == lib), "{ENGINE} needs {lib}: {engine:?}");
    }
    // `ldd` follows the NEEDED entries of the libraries too.
    let out = Command::new("ldd").arg(ENGINE).output().expect("ldd (glibc) runs");
    assert!(out.status.success(), "ldd failed: {}", text(&out.stderr));
    let libs = text(&out.stdout);
    for cuda_only in ["libtorch_cuda.so", "libc10_cuda.so", "libcudnn.so", "libcublas.so", "libnccl.so"] {
        assert!(!libs.contains(cuda_only), "{cuda_only} is loaded at start-up of the engine:\n{libs}");
    }
    let v = run(FRONT, &["--version"]);
    assert!(v.status.success());
    assert!(text(&v.stdout).starts_with("echovault "), "{}", text(&v.stdout));
}

/// `info --json` without the graph load times (they differ from run to run).
fn info_without_times(o: &Output) -> Value {
    let mut v = json(o);
    for g in v["graphs"].as_array_mut().into_iter().flatten() {
        let g = g.as_object_mut().unwrap();
        g.remove("millis");
        g.remove("phases_ms");
    }
    v
}

/// Phantom DICOM cines of 2 patients × 2 studies (32², 4 frames) in `dir`, and a file named
/// `.dcm` that is not DICOM beside them (an ingest of the folder then partly fails: exit 3).
fn phantoms(dir: &Path, bin: &str) -> Output {
    let o = run(
        bin,
        &[
            "phantom",
            "--out",
            dir.to_str().unwrap(),
            "--patients",
            "2",
            "--studies",
            "2:2",
            "--size",
            "32",
            "--num-frames",
            "4",
            "--formats",
            "dicom-native",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    o
}

/// Through the front, every command gives the answer and exit code the engine gives when called
/// directly: the model-free ones run in the front (they work with no engine beside it, see
/// `a_missing_engine_is_a_clear_error`), the others in the engine it execs, with its standard
/// input and environment.
#[test]
fn the_front_answers_as_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let ph = tmp.path().join("ph");
    let ph_engine = tmp.path().join("ph-engine");
    // phantom: same summary (paths aside) and the same files, byte for byte.
    let a = json(&phantoms(&ph, FRONT));
    let b = json(&phantoms(&ph_engine, ENGINE));
    assert_eq!(a["videos"], 4);
    assert_eq!((&a["videos"], &a["patients"], &a["events"]), (&b["videos"], &b["patients"], &b["events"]));
    let manifest = std::fs::read_to_string(ph.join("manifest.jsonl")).unwrap();
    assert_eq!(manifest, std::fs::read_to_string(ph_engine.join("manifest.jsonl")).unwrap());
    let truth: Vec<Value> = manifest.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first = ph.join(truth[0]["file"].as_str().unwrap());
    assert_eq!(std::fs::read(&first).unwrap(), std::fs::read(ph_engine.join(truth[0]["file"].as_str().unwrap())).unwrap());
    std::fs::write(ph.join("dicom").join("BROKEN.dcm"), b"not a DICOM file").unwrap();

    // ingest through the front (the engine): partial success, exit 3 passed on.
    let index = tmp.path().join("idx");
    let idx = index.to_str().unwrap().to_owned();
    let m = model();
    let ingest = run(FRONT, &["ingest", ph.join("dicom").to_str().unwrap(), "--index", &idx, "--model", &m, "--device", "cpu", "--json"]);
    assert_eq!(ingest.status.code(), Some(3), "{}", text(&ingest.stderr));
    assert_eq!(json(&ingest)["ingested"], 4);

    let first = first.to_str().unwrap();
    let same = |args: &[&str]| {
        let (f, e) = (run(FRONT, args), run(ENGINE, args));
        assert_eq!(f.status.code(), e.status.code(), "{args:?}: front {}, engine {}", text(&f.stderr), text(&e.stderr));
        (f, e)
    };
    // Model-free commands.
    for args in [
        &["--version"][..],
        &["--help"],
        &["info", "--help"],
        &["errors", "--index", &idx, "--json"],
        &["inspect", first, "--index", &idx, "--json"],
        &["repair", "--check", "--index", &idx, "--json"],
    ] {
        let (f, e) = same(args);
        assert_eq!(f.status.code(), Some(0), "{args:?}: {}", text(&f.stderr));
        assert_eq!(text(&f.stdout), text(&e.stdout), "{args:?}");
    }
    let (f, e) = same(&["info", "--index", &idx, "--json"]);
    assert_eq!(info_without_times(&f), info_without_times(&e));
    assert_eq!(info_without_times(&f)["counts"]["video"], 4);
    let errors = json(&run(FRONT, &["errors", "--index", &idx, "--json"]));
    assert!(errors["errors"][0]["path"].as_str().unwrap().ends_with("BROKEN.dcm"), "{errors}");
    // inspect keys the file's patient with the index's secret: the key ingest stored.
    let inspect = json(&run(FRONT, &["inspect", first, "--index", &idx, "--json"]));
    assert!(inspect["patient_key"].is_string(), "{inspect}");

    // Model commands: the engine's output and exit code, whoever is called.
    let (f, e) = same(&["embed", "--model", &m, "--device", "cpu", "--text", "normal LV function", "--json"]);
    assert_eq!(f.status.code(), Some(0), "{}", text(&f.stderr));
    assert_eq!(f.stdout, e.stdout);
    assert_eq!(json(&f)["dim"], 64);
    let search = ["search", "--index", &idx, "--model", &m, "--device", "cpu", "--text", "heart", "-k", "10", "--json"];
    let (f, e) = same(&search);
    assert_eq!(f.stdout, e.stdout);
    assert_eq!(json(&f)["hits"].as_array().unwrap().len(), 4);
    // An error (1) and a usage error found by the engine (2: timeline without a patient).
    let (f, e) = same(&["embed", "--model", "/nonexistent/model", "--device", "cpu", "--text", "x"]);
    assert_eq!(f.status.code(), Some(1));
    assert_eq!(text(&f.stderr), text(&e.stderr));
    let (f, _) = same(&["timeline", "--index", &idx, "--model", &m]);
    assert_eq!(f.status.code(), Some(2), "{}", text(&f.stderr));
    // Usage errors clap finds are answered by the front (2), as by the engine.
    for args in [&["search", "-k", "0", "--text", "x"][..], &["embed", "--device", "gpu", "--text", "x"], &["no-such-command"]] {
        let (f, e) = same(args);
        assert_eq!(f.status.code(), Some(2), "{args:?}");
        assert_eq!(text(&f.stderr), text(&e.stderr), "{args:?}");
    }

    // The environment and standard input reach the engine: the index from $ECHOVAULT_INDEX, the
    // patient id from stdin.
    let mrn = truth[0]["patient"].as_str().unwrap();
    let timeline = |bin: &str| {
        let mut c = command(bin, &["timeline", "--patient-id", "-", "--model", &m, "--device", "cpu", "--json"]);
        c.env("ECHOVAULT_INDEX", &index).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), format!("{mrn}\n").as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let (f, e) = (timeline(FRONT), timeline(ENGINE));
    assert_eq!(f.status.code(), Some(0), "{}", text(&f.stderr));
    assert_eq!(f.stdout, e.stdout);
    assert_eq!(json(&f)["studies"].as_array().unwrap().len(), 2, "{}", text(&f.stdout));
}

/// The front alone (no `echovault-engine` beside it) still runs the model-free commands, and a
/// model command says which binary it could not start (exit 1; JSON with --json).
#[test]
fn a_missing_engine_is_a_clear_error() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let alone = dir.path().join("echovault");
    // A hard link: `current_exe` is then the link, whose directory has no engine.
    if std::fs::hard_link(FRONT, &alone).is_err() {
        std::fs::copy(FRONT, &alone).unwrap();
    }
    let alone = alone.to_str().unwrap();
    assert!(run(alone, &["--version"]).status.success());
    let ph = dir.path().join("ph");
    phantoms(&ph, alone);
    let manifest = std::fs::read_to_string(ph.join("manifest.jsonl")).unwrap();
    let file = ph.join(serde_json::from_str::<Value>(manifest.lines().next().unwrap()).unwrap()["file"].as_str().unwrap());
    let inspect = run(alone, &["inspect", file.to_str().unwrap(), "--json"]);
    assert_eq!(inspect.status.code(), Some(0), "{}", text(&inspect.stderr));
    assert_eq!(json(&inspect)["frames"], 4);
    let info = run(alone, &["info", "--index", dir.path().join("none").to_str().unwrap()]);
    assert_eq!(info.status.code(), Some(1));
    assert!(text(&info.stderr).contains("no index at"), "{}", text(&info.stderr));

    let engine = dir.path().join("echovault-engine");
    let o = run(alone, &["embed", "--model", &model(), "--text", "x"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(engine.to_str().unwrap()) && err.contains("could not be started") && err.contains("No such file"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let o = run(alone, &["embed", "--model", &model(), "--text", "x", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(json(&o)["error"].as_str().unwrap().contains("echovault-engine"), "{}", text(&o.stdout));
}

/// `--device auto` embeds (on the CPU here, on a GPU where there is one) and `--device cuda`
/// without a driver is refused with the reason.
#[test]
fn device_auto_embeds() {
    let model = model();
    let out = run(FRONT, &["embed", "--model", &model, "--device", "auto", "--text", "normal LV function"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dim"], 64);
    assert_eq!(v["embedding"].as_array().unwrap().len(), 64);
    if !Path::new("/proc/driver/nvidia").exists() {
        let out = run(FRONT, &["embed", "--model", &model, "--device", "cuda", "--text", "x"]);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains("--device cuda"), "{err}");
    }
}
