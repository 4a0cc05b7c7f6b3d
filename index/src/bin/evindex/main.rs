//! `evindex`: developer tool of `echovault-index` (not the user CLI, which is `echovault`).
//!
//! ```text
//! evindex crash-writer DIR SEED    write random batches into DIR forever, narrating on stdout
//!                                  (the crash test kills it with SIGKILL and checks the index)
//! evindex bench ARGS...            ANN benchmark on .npy vectors (see tools/bench-ann)
//! evindex probe ARGS...            open + first search, resident memory, first insert (bench.rs)
//! evindex lookups DIR [N] [DIM]    look-ups and filtered searches on N synthetic records
//! evindex salvage DIR              `echovault_index::salvage` of DIR (the damage test kills it)
//! ```
//!
//! The crash writer's narration, one line each, flushed before the next step:
//! `begin N`, then `put ID PATIENT X1,X2,...` / `del ID` for the batch's operations, then
//! `commit N` just before `Index::commit` and `ack N` once it returned `Ok`. Also
//! `checkpoint` / `repair` before those calls. Batches with an `ack` must survive a crash whole;
//! the one with `commit` but no `ack` may be there whole or not at all; nothing else may be.

use echovault_index::{Index, IndexOptions, ItemId, ItemRecord, Kind, VectorEncoding};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::io::Write;
use std::process::ExitCode;

mod bench;
mod lookups;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("crash-writer") if args.len() == 3 => crash_writer(&args[1], &args[2]),
        Some("bench") => bench::run(&args[1..]),
        Some("probe") => bench::probe(&args[1..]),
        Some("lookups") => lookups::run(&args[1..]),
        Some("salvage") if args.len() == 2 => echovault_index::salvage(std::path::Path::new(&args[1]), false).map(drop).map_err(Into::into),
        _ => Err("usage: evindex crash-writer DIR SEED | evindex bench --help | evindex lookups DIR [N] [DIM]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("evindex: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

/// Dimension of the crash writer's vectors.
const DIM: usize = 16;

fn crash_writer(dir: &str, seed: &str) -> Res {
    let seed: u64 = seed.parse()?;
    let mut rng = StdRng::seed_from_u64(seed);
    let encoding = if seed % 2 == 0 { VectorEncoding::F32 } else { VectorEncoding::F16 };
    let index = Index::open(dir, IndexOptions { encoding: Some(encoding), ..IndexOptions::default() })?;
    let space = index.ensure_space("crash", DIM)?;
    let mut live: Vec<String> = index.items(Some(Kind::Video))?.into_iter().map(|r| r.id.0).collect();
    let out = std::io::stdout();
    let say = |line: String| -> Res {
        let mut o = out.lock();
        writeln!(o, "{line}")?;
        o.flush()?;
        Ok(())
    };
    for n in 0u64.. {
        say(format!("begin {n}"))?;
        let mut batch = index.batch();
        let puts = rng.random_range(1..=40);
        for i in 0..puts {
            // Now and then replace the vector of an existing item instead of adding one.
            let id =
                if !live.is_empty() && rng.random_bool(0.2) { live[rng.random_range(0..live.len())].clone() } else { format!("b{n}-{i}") };
            let patient = format!("p{}", rng.random_range(0..50));
            let v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let mut rec = ItemRecord::new(id.as_str(), Kind::Video, "crash-writer");
            rec.patient = Some(patient.clone());
            batch.put_item(rec);
            batch.put_vector(space, id.as_str(), Kind::Video, v.clone());
            let xs: Vec<String> = v.iter().map(f32::to_string).collect();
            say(format!("put {id} {patient} {}", xs.join(",")))?;
            if !live.contains(&id) {
                live.push(id);
            }
        }
        if live.len() > 10 && rng.random_bool(0.3) {
            let id = live.swap_remove(rng.random_range(0..live.len()));
            // A delete of an item put earlier in this same batch is fine too: the delete wins.
            batch.delete_item(ItemId(id.clone()));
            say(format!("del {id}"))?;
        }
        say(format!("commit {n}"))?;
        index.commit(batch)?;
        say(format!("ack {n}"))?;
        if rng.random_bool(0.15) {
            say("checkpoint".into())?;
            index.checkpoint()?;
        } else if rng.random_bool(0.03) {
            say("repair".into())?;
            index.repair()?;
        }
    }
    Ok(())
}
