//! `echovault info` (counts per kind, spaces, format version, how the graphs loaded) and
//! `echovault repair`. Neither needs a model.

use super::{Global, IndexOpts};
use echovault::index::Index;

#[derive(clap::Args, Debug)]
pub struct RepairArgs {
    /// Only check: every table file's block checksums, then graphs against vectors, mappings,
    /// records, frame embeddings and the ingest log; change nothing (and write nothing under the
    /// index: works on read-only media). Exit 1 if anything is wrong.
    #[arg(long)]
    pub check: bool,
    /// Accept a new patient-key secret where the damaged index lost its own: every video
    /// ingested afterwards gets a new patient key, so a patient's earlier and later videos no
    /// longer match. Without it, such a repair stops before changing anything.
    #[arg(long)]
    pub new_secret: bool,
    /// Move the patient-key secret stored in the index out to the new file FILE (mode 0600):
    /// the index keeps only its fingerprint, patient keys stay the same, and commands that key
    /// patient ids then need `--secret-file FILE` (or $ECHOVAULT_SECRET_FILE). Does nothing else.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["check", "new_secret"])]
    pub export_secret: Option<std::path::PathBuf>,
    /// Kept for older scripts: a damaged database is now always salvaged first.
    #[arg(long, hide = true)]
    pub salvage: bool,
    #[command(flatten)]
    pub index: IndexOpts,
}

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub index: IndexOpts,
}

pub fn run_repair(g: &Global, a: &RepairArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(g.index.is_dir(), "no index at {}", g.index.display());
    if let Some(file) = &a.export_secret {
        return export_secret(g, file);
    }
    let report = if a.check { echovault::repair::check_path(&g.index)? } else { echovault::repair::repair_path(&g.index, a.new_secret)? };
    if g.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        if let Some(s) = &report.salvage {
            if let Some(why) = &s.wal_damaged {
                println!("salvaged: the write-ahead log was damaged ({why}); its readable records were kept");
            }
            if let Some(why) = &s.rocksdb_repair {
                println!("salvaged: the database did not open ({why}); RocksDB's repair rebuilt it from its files");
            }
            for f in &s.set_aside {
                println!("  set aside (unreadable): {f}");
            }
            for d in &s.damaged {
                println!("  damaged table {} of `{}`: {}", d.file, d.column_family, d.meaning);
            }
            for r in &s.rewritten {
                let more = if r.unreadable_blocks { " (and an unknown number in blocks that did not decompress)" } else { "" };
                println!("  `{}` rewritten: {} keys kept, {} lost{more}", r.column_family, r.kept, r.lost);
            }
            for m in &s.meta {
                println!("  meta: {m}");
            }
        }
        for (c, n) in &report.live {
            println!("{c}: {n} live vectors, {} stored", report.stored.get(c).copied().unwrap_or(0));
        }
        for p in &report.problems {
            println!("problem: {p}");
        }
        if !report.reingest.is_empty() {
            println!(
                "{} inputs were lost and forgotten; the next `echovault ingest` of the same export embeds them again:",
                report.reingest.len()
            );
            for r in &report.reingest {
                println!("  {r}");
            }
        }
        println!("{}", if report.ok { "index is consistent" } else { "index has problems: run `echovault repair`" });
    }
    Ok(if report.ok { 0 } else { 1 })
}

/// `repair --export-secret FILE`.
fn export_secret(g: &Global, file: &std::path::Path) -> anyhow::Result<i32> {
    let opts = echovault::index::IndexOptions {
        writer: Some("echovault repair --export-secret".into()),
        passive_open: true,
        ..Default::default()
    };
    Index::open(&g.index, opts)?.export_secret(file)?;
    if g.json {
        println!("{}", serde_json::json!({ "secret_file": file }));
    } else {
        println!(
            "the patient-key secret of {} is now in {} and only its fingerprint in the index: pass --secret-file {} (or set ECHOVAULT_SECRET_FILE) to ingest, serve, and to timeline, search or eval with patient ids",
            g.index.display(),
            file.display(),
            file.display()
        );
    }
    Ok(0)
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
