//! `echovault`, the front binary: it does not link LibTorch, so the commands that load no model
//! (`--help`, `--version`, `info`, `errors`, `inspect`, `repair`, `phantom`, and usage errors)
//! start without paying for it (≈ 0.3–0.45 s and 110 MB before `main`: ARCHITECTURE.md,
//! start-up). Every other command is handed to the engine binary, `echovault-engine`, found
//! beside this one: `exec`, so it runs in this process with the same arguments, environment,
//! standard streams and exit code.
//!
//! Both binaries compile the same `cli` module; the front's `main` reaches only the model-free
//! commands, so rustc and the linker (`--gc-sections`, then `--as-needed` over what is left)
//! keep no LibTorch symbol and no LibTorch library in it. tests/startup.rs checks that.

// The front compiles the whole CLI but reaches only the model-free commands (`cli::run_front`);
// dead code is checked in the engine binary, which reaches all of it.
#[allow(dead_code)]
mod cli;

/// The engine binary's file name, beside this executable.
const ENGINE: &str = "echovault-engine";

fn main() {
    std::process::exit(cli::run_front(exec_engine));
}

/// Replaces this process with the engine binary, same arguments (and `argv[0]`, so usage
/// messages still say `echovault`); returns only when that fails, with exit code 1.
fn exec_engine() -> i32 {
    let engine = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name(ENGINE),
        Err(e) => return engine_error(&format!("cannot find this executable's directory to run {ENGINE} from: {e}")),
    };
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "echovault".into());
    exec(&engine, argv0, args)
}

#[cfg(unix)]
fn exec(engine: &std::path::Path, argv0: std::ffi::OsString, args: std::env::ArgsOs) -> i32 {
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new(engine).arg0(argv0).args(args).exec();
    engine_error(&format!(
        "this command loads a model and runs in {}, which could not be started ({e}); \
         it is built and installed with `echovault` (cargo build, tools/build-release): put it beside this executable",
        engine.display()
    ))
}

#[cfg(not(unix))]
fn exec(engine: &std::path::Path, argv0: std::ffi::OsString, args: std::env::ArgsOs) -> i32 {
    let _ = argv0;
    match std::process::Command::new(engine).args(args).status() {
        Ok(s) => s.code().unwrap_or(cli::EXIT_ERROR),
        Err(e) => engine_error(&format!("this command loads a model and runs in {}, which could not be started ({e})", engine.display())),
    }
}

/// The engine could not be run: said on stderr (and as JSON on stdout with `--json`, as every
/// error), exit 1.
#[allow(clippy::print_stderr)]
fn engine_error(msg: &str) -> i32 {
    if std::env::args_os().skip(1).take_while(|a| a != "--").any(|a| a == "--json") {
        println!("{}", serde_json::json!({ "error": msg }));
    } else {
        eprintln!("error: {msg}");
    }
    cli::EXIT_ERROR
}
