//! Helpers shared by the integration tests that run the built `echovault` binary.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `echovault --index INDEX --model <tiny sample> --device cpu ARGS...`, not yet run (the
/// environment's index and model unset).
pub fn command(index: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_echovault"));
    c.args([
        "--index",
        index.to_str().unwrap(),
        "--model",
        root().join("data-samples/echovault-tiny").to_str().unwrap(),
        "--device",
        "cpu",
    ])
    .args(args)
    .env_remove("ECHOVAULT_INDEX")
    .env_remove("ECHOVAULT_MODEL");
    c
}

/// Runs `echovault --index INDEX --model <tiny sample> --device cpu ARGS...`.
pub fn echovault(index: &Path, args: &[&str]) -> Output {
    command(index, args).output().expect("run echovault")
}

/// The one JSON object a `--json` command printed.
pub fn json(out: &Output) -> Value {
    let s = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}\nstderr: {}", String::from_utf8_lossy(&out.stderr)))
}
