//! Links the echovault binaries so they run without `LD_LIBRARY_PATH`:
//! an rpath to LibTorch's `lib` directory (from torch-sys, `DEP_TCH_LIBTORCH_LIB`), and
//! `libtorch_cuda` kept with `--no-as-needed` — otherwise the linker drops it, as nothing
//! references it by symbol, and CUDA is silently never used (a known tch pitfall).
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-ltorch,--as-needed");
    }
}
