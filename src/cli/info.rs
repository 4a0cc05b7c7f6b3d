//! `echovault info`: counts per kind, spaces, format version. Needs no model.

use super::Global;
use echovault::index::{Index, IndexOptions, FORMAT_VERSION};
use serde_json::json;

pub fn run(g: &Global) -> anyhow::Result<i32> {
    anyhow::ensure!(g.index.is_dir(), "no index at {} (run `echovault ingest` first, or pass --index DIR)", g.index.display());
    let index = Index::open(&g.index, IndexOptions::default())?;
    let counts = index.counts()?;
    let spaces = index.spaces();
    if g.json {
        let spaces: Vec<_> = spaces.iter().map(|s| json!({ "name": s.name, "dim": s.dim })).collect();
        println!(
            "{}",
            json!({
                "index": g.index.display().to_string(),
                "format_version": FORMAT_VERSION,
                "counts": counts.items,
                "vectors": counts.vectors,
                "errors": counts.errors,
                "spaces": spaces,
            })
        );
    } else {
        println!("index {} (format v{FORMAT_VERSION})", g.index.display());
        for (k, n) in &counts.items {
            println!("  {k:<7} {n}");
        }
        for s in &spaces {
            println!("  space {} (dim {})", s.name, s.dim);
        }
        for (k, n) in &counts.vectors {
            println!("  vectors {k}: {n}");
        }
        println!("  errors  {}", counts.errors);
    }
    Ok(0)
}
