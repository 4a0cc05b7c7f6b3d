//! `echovault-engine`: the binary that links LibTorch and runs every command, those that load a
//! model included. Users call `echovault` (src/main.rs), which runs the model-free commands
//! itself and `exec`s this one, beside it, for the rest; calling it directly works the same.

#[path = "../cli/mod.rs"]
mod cli;

fn main() {
    std::process::exit(cli::run());
}
