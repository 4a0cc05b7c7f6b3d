//! `echovault info` (counts per kind, spaces, format version, how the graphs loaded) and
//! `echovault repair`. Neither needs a model.

use super::Global;
use echovault::index::{Index, IndexOptions};

#[derive(clap::Args, Debug)]
pub struct RepairArgs {
    /// Only check (graphs against vectors, mappings, records); change nothing. Exit 1 if
    /// anything is wrong.
    #[arg(long)]
    pub check: bool,
    /// First let RocksDB salvage a damaged database (a truncated or corrupt table file): what it
    /// cannot read is dropped. Then rebuild as usual.
    #[arg(long)]
    pub salvage: bool,
}

pub fn run_repair(g: &Global, a: &RepairArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(g.index.is_dir(), "no index at {}", g.index.display());
    if a.salvage {
        echovault::index::salvage(&g.index)?;
    }
    let index = if a.check {
        Index::open_reader(&g.index)?
    } else {
        Index::open(&g.index, IndexOptions { writer: Some("echovault repair".into()), ..IndexOptions::default() })?
    };
    let report = echovault::info::repair(&index, a.check)?;
    if g.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for (c, n) in &report.live {
            println!("{c}: {n} live vectors, {} stored", report.stored.get(c).copied().unwrap_or(0));
        }
        for p in &report.problems {
            println!("problem: {p}");
        }
        println!("{}", if report.ok { "index is consistent" } else { "index has problems: run `echovault repair`" });
    }
    Ok(if report.ok { 0 } else { 1 })
}

pub fn run(g: &Global) -> anyhow::Result<i32> {
    anyhow::ensure!(g.index.is_dir(), "no index at {} (run `echovault ingest` first, or pass --index DIR)", g.index.display());
    let index = Index::open_reader(&g.index)?;
    let info = echovault::info::index_info(&index)?;
    if g.json {
        println!("{}", serde_json::to_string(&info)?);
    } else {
        println!("index {} (format v{})", info.index, info.format_version);
        for (k, n) in &info.counts {
            println!("  {k:<7} {n}");
        }
        for s in &info.spaces {
            println!("  space {} (dim {})", s.name, s.dim);
        }
        for (k, n) in &info.vectors {
            println!("  vectors {k}: {n}");
        }
        println!("  errors  {}", info.errors);
        for l in &info.graphs {
            let why = l.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            println!("  graph {}: {} from {}{why}, {} replayed, {} ms", l.collection, l.live, l.how, l.replayed, l.millis);
        }
    }
    Ok(0)
}
