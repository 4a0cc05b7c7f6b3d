//! Links the echovault binaries so they run without `LD_LIBRARY_PATH`: an rpath to LibTorch's
//! `lib` directory (from torch-sys, `DEP_TCH_LIBTORCH_LIB`).
//!
//! `libtorch_cuda` is deliberately *not* kept in the link (no `--no-as-needed`): nothing
//! references it by symbol, so the default `--as-needed` drops it, and loading it with its CUDA
//! libraries cost every command ≈ 0.3 s and ≈ 400 MB before `main` ran. `engine::parse_device`
//! loads it at run time (`dlopen`, through this rpath or `LD_LIBRARY_PATH`) when `--device` is
//! `auto` or `cuda`, before LibTorch first asks for CUDA.
//!
//! The front binary `echovault` (src/main.rs) reaches no LibTorch code, but the C++ glue of
//! torch-sys (`torch_api.o`) is still pulled into its link by dead Rust code of the same object
//! files, and its inline template instantiations that `libtorch_cpu.so` also defines would be
//! exported from the executable (so the library could bind to them): exported symbols are roots
//! of the linker's garbage collection, they reference `libc10`, and the binary would need
//! LibTorch after all. `--exclude-libs=ALL` exports nothing from static archives, so only what
//! `main` reaches stays, and `--as-needed` drops LibTorch (tests/startup.rs checks `readelf -d`).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rustc-link-arg-bin=echovault=-Wl,--exclude-libs=ALL");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
}
