//! Start-up: the binary does not link LibTorch's CUDA library (build.rs); `--device auto`
//! loads it at run time where a driver is present and still works without one.
#![allow(clippy::unwrap_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_echovault");

/// `ldd` lists every library the loader maps before `main`: LibTorch's CPU library but not its
/// CUDA library (nor the CUDA libraries only that one needs).
#[cfg(target_os = "linux")]
#[test]
fn version_does_not_load_torch_cuda() {
    let out = Command::new("ldd").arg(BIN).output().expect("ldd (glibc) runs");
    assert!(out.status.success(), "ldd failed: {}", String::from_utf8_lossy(&out.stderr));
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(libs.contains("libtorch_cpu.so"), "ldd output lists the linked libraries:\n{libs}");
    for cuda_only in ["libtorch_cuda.so", "libc10_cuda.so", "libcudnn.so", "libcublas.so", "libnccl.so"] {
        assert!(!libs.contains(cuda_only), "{cuda_only} is loaded at start-up:\n{libs}");
    }
    let v = Command::new(BIN).arg("--version").output().unwrap();
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("echovault "));
}

/// `--device auto` embeds (on the CPU here, on a GPU where there is one) and `--device cuda`
/// without a driver is refused with the reason.
#[test]
fn device_auto_embeds() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/data-samples/echovault-tiny");
    let out = Command::new(BIN).args(["embed", "--model", model, "--device", "auto", "--text", "normal LV function"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dim"], 64);
    assert_eq!(v["embedding"].as_array().unwrap().len(), 64);
    if !std::path::Path::new("/proc/driver/nvidia").exists() {
        let out = Command::new(BIN).args(["embed", "--model", model, "--device", "cuda", "--text", "x"]).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--device cuda"), "{err}");
    }
}
