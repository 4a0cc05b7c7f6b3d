//! Links the echovault binaries so they run without `LD_LIBRARY_PATH`: an rpath to LibTorch's
//! `lib` directory (from torch-sys, `DEP_TCH_LIBTORCH_LIB`).
//!
//! `libtorch_cuda` is deliberately *not* kept in the link (no `--no-as-needed`): nothing
//! references it by symbol, so the default `--as-needed` drops it, and loading it with its CUDA
//! libraries cost every command ≈ 0.3 s and ≈ 400 MB before `main` ran. `engine::parse_device`
//! loads it at run time (`dlopen`, through this rpath or `LD_LIBRARY_PATH`) when `--device` is
//! `auto` or `cuda`, before LibTorch first asks for CUDA.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
}
